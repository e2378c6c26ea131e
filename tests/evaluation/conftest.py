import pytest

from tests.toy import REPO_ROOT, run_cli


@pytest.fixture(scope="session")
def toy_evaluation(toy_data_bin, toy_ls_checkpoint, tmp_path_factory):
    """OUT_DIR of scripts/evaluate.sh run on the toy test set with the toy LS checkpoint."""
    out_dir = tmp_path_factory.mktemp("toy-eval") / "eval" / "test"
    run_cli(["bash", REPO_ROOT / "scripts" / "evaluate.sh", toy_data_bin, toy_ls_checkpoint, out_dir,
             "--cpu", "--batch-size", "16", "--beam", "5"])
    return out_dir
