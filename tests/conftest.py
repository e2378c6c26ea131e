import os

import torch

# Without a GPU the Triton kernels run under Triton's interpreter; it is chosen when the
# kernels are defined, so before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (make test: 2 workers on a 2-core machine) every worker and the tools it
# runs (fairseq-train, ...) compute on one thread, so that workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

import pytest  # noqa: E402

from tests.toy import preprocess, train, write_toy_corpus  # noqa: E402


@pytest.fixture(scope="session")
def toy_data_bin(tmp_path_factory):
    """A tiny synthetic parallel corpus (src -> tgt), binarised with a joined dictionary."""
    root = tmp_path_factory.mktemp("toy")
    text = write_toy_corpus(root / "text")
    return preprocess(text, root / "data-bin")


@pytest.fixture(scope="session")
def toy_ls_checkpoint(toy_data_bin, tmp_path_factory):
    """A checkpoint of the tiny transformer trained a few updates with fairseq's label smoothing."""
    save_dir = tmp_path_factory.mktemp("toy-ls-ckpt")
    train(toy_data_bin, save_dir, ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
          max_update=20)
    return save_dir / "checkpoint_best.pt"
