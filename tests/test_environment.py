"""The patched fairseq 0.12.2 environment: install, import, the CLI round trip, checkpoint safety."""
import argparse
import dataclasses
import pickle
import re
import struct
import subprocess
import sys

import pytest
import torch

from tests.toy import REPO_ROOT, run_cli, train

# installs into, builds from or checks the checkout and its .venv/: one xdist worker runs these
# modules one after another (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("installs")


def test_setup_env_is_a_no_op_when_nothing_changed():
    proc = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", f"setup_env.sh rebuilt something on a second run:\n{proc.stdout}"


def test_run_tests_fails_when_no_test_is_collected():
    proc = subprocess.run(["bash", "scripts/run_tests.sh", "-k", "no_test_has_this_name",
                           "tests/test_environment.py"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "collected no tests" in proc.stderr


def test_patched_fairseq_imports_with_nested_configs_as_factories():
    import fairseq
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.dataclass.initialize import hydra_init
    from fairseq.models.transformer.transformer_config import TransformerConfig

    assert fairseq.__version__ == "0.12.2"
    common = FairseqConfig.__dataclass_fields__["common"]
    assert common.default_factory is not dataclasses.MISSING
    assert TransformerConfig().encoder is not TransformerConfig().encoder  # not a shared default
    hydra_init()  # reads the factories; raised on the unpatched sources


def test_fairseq_cython_extensions_are_built():
    from fairseq import libbleu  # noqa: F401
    from fairseq.data import data_utils_fast, token_block_utils_fast  # noqa: F401


def test_preprocess_train_generate_round_trip(toy_data_bin, toy_ls_checkpoint, tmp_path):
    assert (toy_data_bin / "dict.src.txt").exists() and (toy_data_bin / "train.src-tgt.src.bin").exists()
    assert toy_ls_checkpoint.exists() and (toy_ls_checkpoint.parent / "checkpoint_last.pt").exists()
    proc = run_cli(["fairseq-generate", toy_data_bin, "--path", toy_ls_checkpoint, "--cpu",
                    "--beam", "2", "--batch-size", "16", "--gen-subset", "test"])
    hyps = [line for line in proc.stdout.splitlines() if line.startswith("H-")]
    assert len(hyps) == 40  # one hypothesis per test sentence
    for line in hyps:
        sent_id, score, _text = line.split("\t")
        assert int(sent_id[2:]) in range(40) and float(score) <= 0
    assert re.search(r"BLEU4 = \d+\.\d+", proc.stdout)


def test_checkpoint_loads_with_weights_only_allowlist(toy_ls_checkpoint):
    from fairseq import checkpoint_utils

    assert argparse.Namespace in torch.serialization.get_safe_globals()
    state = checkpoint_utils.load_checkpoint_to_cpu(str(toy_ls_checkpoint))
    assert "model" in state and state["cfg"]["model"] is not None


def test_checkpoint_load_survives_another_load_finishing_meanwhile(toy_ls_checkpoint, monkeypatch):
    """Parallel runs average checkpoints in threads. A loader that allowlisted argparse.Namespace
    with torch's safe_globals() context would fail here: the context is process-wide, and a load
    that finishes inside another one's window removes the type on its way out. The patched
    loader's allowlist is set once, at import."""
    from fairseq import checkpoint_utils

    real_load = torch.load
    inner_loads = []

    def load_with_another_load_inside(*args, **kwargs):
        if not inner_loads:  # another thread's whole load, between this one's start and its unpickling
            inner_loads.append(None)
            inner_loads[0] = checkpoint_utils.load_checkpoint_to_cpu(str(toy_ls_checkpoint))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load_with_another_load_inside)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(toy_ls_checkpoint))
    assert len(inner_loads) == 1 and "model" in state and "model" in inner_loads[0]


class _WritesAFile:
    """A pickled object whose unpickling would run code: create a marker file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_foreign_pickled_code_is_refused(tmp_path):
    from fairseq import checkpoint_utils

    marker = tmp_path / "code-ran"
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "payload": _WritesAFile(str(marker))}, bad)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        checkpoint_utils.load_checkpoint_to_cpu(str(bad))
    assert not marker.exists()


@pytest.mark.parametrize("user_dir", ["labo_fairseq", str(REPO_ROOT / "labo_fairseq")])
def test_user_dir_imports_the_plugin(user_dir):
    code = ("import argparse; from fairseq import utils; "
            f"utils.import_user_module(argparse.Namespace(user_dir={user_dir!r})); "
            "import sys; assert 'labo_fairseq' in sys.modules; print('ok')")
    proc = run_cli(["python", "-c", code], cwd=REPO_ROOT)
    assert proc.stdout.strip().endswith("ok")


def event_tags(path):
    """Scalar tags in a TensorBoard event file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    from tensorboardX.proto import event_pb2

    data, tags, offset = path.read_bytes(), set(), 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        tags.update(value.tag for value in event.summary.value)
        offset += 12 + length + 4
    return tags


def test_tensorboard_logdir_records_q_entropy(toy_data_bin, tmp_path):
    logdir = tmp_path / "tb"
    proc = train(toy_data_bin, tmp_path / "ckpt", ["--user-dir", REPO_ROOT / "labo_fairseq",
                                                    "--criterion", "label_smoothed_labo"],
                 max_update=3, extra=["--tensorboard-logdir", logdir])
    output = proc.stdout + proc.stderr
    assert "Please install tensorboardX" not in output and "tensorboard not found" not in output
    for split in ("train_inner", "valid"):
        files = list((logdir / split).glob("events.out.tfevents.*"))
        assert len(files) == 1, split
        tags = event_tags(files[0])
        assert {"loss", "nll_loss", "q_entropy"} <= tags, (split, tags)


def test_fairseq_commands_print_no_known_deprecation_warnings(toy_data_bin, tmp_path):
    # the patch replaces torch.cuda.amp.autocast and silences hydra's deprecation notices of
    # fairseq's config composition; any other warning still shows
    proc = train(toy_data_bin, tmp_path / "ckpt", ["--criterion", "label_smoothed_cross_entropy"], max_update=2)
    output = proc.stdout + proc.stderr
    for notice in ("FutureWarning", "hydra.experimental", "version_base", "package header",
                   "ConfigStore schema", "strict flag", "Please install tensorboardX"):
        assert notice not in output, notice


def test_plugin_registers_with_fairseq_imported_after_it():
    """fairseq's --user-dir skips a package that is already imported; register_with_fairseq()
    is the way for a process that imported labo_fairseq first."""
    code = ("import labo_fairseq.errors\n"
            "from fairseq.criterions import CRITERION_REGISTRY\n"
            "from fairseq.optim import OPTIMIZER_REGISTRY\n"
            "from fairseq.tasks import TASK_REGISTRY\n"
            "assert 'translation_ivon' not in TASK_REGISTRY\n"
            "import labo_fairseq\n"
            "labo_fairseq.register_with_fairseq()\n"
            "assert 'translation_ivon' in TASK_REGISTRY and 'ivon' in OPTIMIZER_REGISTRY\n"
            "assert 'label_smoothed_labo' in CRITERION_REGISTRY\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
