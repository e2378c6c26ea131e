import json
import shutil

import pytest

from tests.toy import REPO_ROOT, run_cli


@pytest.fixture(scope="session")
def toy_evaluation(toy_data_bin, toy_ls_checkpoint, tmp_path_factory):
    """OUT_DIR of scripts/evaluate.sh run on the toy test set with the toy LS checkpoint."""
    out_dir = tmp_path_factory.mktemp("toy-eval") / "eval" / "test"
    run_cli(["bash", REPO_ROOT / "scripts" / "evaluate.sh", toy_data_bin, toy_ls_checkpoint, out_dir,
             "--cpu", "--batch-size", "16", "--beam", "5"])
    return out_dir


def raw_style(line):
    """A 'published' form of a toy target line: sentence case and a final period, so that case and
    detokenisation matter to sacreBLEU."""
    words = line.split()
    return " ".join([words[0]] + [w.lower() for w in words[1:]]) + "." if words else ""


@pytest.fixture(scope="session")
def toy_raw_evaluation(toy_data_bin, toy_ls_checkpoint, tmp_path_factory):
    """evaluate.sh on a copy of the toy data-bin whose prepare.json names a raw, cased reference
    and says the data was lowercased (as the Multi30k and IWSLT'14 preparations do)."""
    root = tmp_path_factory.mktemp("toy-raw")
    data_bin = root / "data-bin"
    shutil.copytree(toy_data_bin, data_bin)
    targets = (toy_data_bin.parent / "text" / "test.tgt").read_text().splitlines()
    (data_bin / "test.raw.tgt").write_text("".join(raw_style(line) + "\n" for line in targets))
    (data_bin / "prepare.json").write_text(json.dumps({
        "source_lang": "src", "target_lang": "tgt", "lowercase": True,
        "raw_references": {"test": "test.raw.tgt"}}))
    out_dir = root / "eval"
    run_cli(["bash", REPO_ROOT / "scripts" / "evaluate.sh", data_bin, toy_ls_checkpoint, out_dir,
             "--cpu", "--batch-size", "16", "--beam", "5"])
    return data_bin, out_dir
