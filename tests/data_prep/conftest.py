import hashlib
from pathlib import Path

import pytest

from tests.data_prep import fixtures
from tests.toy import REPO_ROOT, run_cli

DATA_PREP = REPO_ROOT / "data-prep"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def run_script(name, *args, check=True):
    """Runs data-prep/<name> through bash, as users do."""
    return run_cli(["bash", DATA_PREP / name, *args], timeout=300, check=check)


def text_hashes(directory):
    """sha256 of every file under directory except fairseq's binary outputs and logs."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.suffix not in (".bin", ".idx", ".log")}


def lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def undo_bpe(line):
    return (line + " ").replace("@@ ", "").rstrip(" ")


@pytest.fixture(scope="session")
def iwslt_archive(tmp_path_factory):
    return fixtures.make_iwslt_archive(tmp_path_factory.mktemp("iwslt-raw") / "de-en.tgz")


@pytest.fixture(scope="session")
def iwslt_prepared(iwslt_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("iwslt-out")
    proc = run_script("prepare-iwslt14.sh", "--archive", iwslt_archive, "--out", out, "--bpe-tokens", "50",
                      "--workers", "2")
    return out, proc


@pytest.fixture(scope="session")
def multi30k_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("multi30k-raw")
    return raw, fixtures.make_multi30k_raw_dir(raw)


@pytest.fixture(scope="session")
def multi30k_prepared(multi30k_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi30k-out")
    proc = run_script("prepare-multi30k.sh", "--raw-dir", multi30k_raw[0], "--out", out, "--vocab", "60",
                      "--test-sets", "test_2016_flickr,test_2017_flickr", "--workers", "2")
    return out, proc


@pytest.fixture(scope="session")
def wmt_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("wmt-raw")
    return raw, fixtures.make_wmt_raw_dir(raw)
