"""examples/hf_marian_multi30k.py end to end on a tiny synthetic corpus (CI-sized)."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hf_marian_multi30k.py"
WORDS = {"ein": "a", "mann": "man", "frau": "woman", "hund": "dog", "läuft": "runs", "sitzt": "sits",
         "auf": "on", "der": "the", "straße": "street", "wiese": "meadow", "rot": "red", "klein": "small"}


def _corpus(directory: Path, n: int, seed: int, split: str):
    rng = random.Random(seed)
    german = [" ".join(rng.choice(list(WORDS)) for _ in range(rng.randrange(3, 8))) for _ in range(n)]
    (directory / f"{split}.de").write_text("".join(s + "\n" for s in german), encoding="utf-8")
    english = [" ".join(WORDS[w] for w in s.split()).capitalize() + "." for s in german]
    (directory / f"{split}.en").write_text("".join(s + "\n" for s in english), encoding="utf-8")


def _run(*args, timeout=110):
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=timeout,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
                               "PYTHONPATH": str(REPO)}, cwd=REPO)


def test_example_trains_both_methods_and_writes_scores(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _corpus(data, 300, 0, "train")
    _corpus(data, 20, 1, "test_2016_flickr")
    out = tmp_path / "out"
    result = _run("--data-dir", str(data), "--out", str(out), "--vocab-size", "60", "--max-steps", "15",
                  "--batch-size", "16", "--d-model", "32", "--ffn", "64", "--heads", "2", "--layers", "1",
                  "--warmup-steps", "5", "--beam", "2", "--max-len", "16", "--cpu", "--log-steps", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    for method in ("ls", "labo"):
        scores = json.loads((out / method / "eval" / "test" / "scores.json").read_text())
        assert scores["num_sentences"] == 20 and scores["reference"]["kind"] == "raw"
        assert 0.0 <= scores["sacrebleu"]["score"] <= 100.0 and scores["sacrebleu"]["signature"].startswith("nrefs:1")
        hyp = (out / method / "eval" / "test" / "hyp.txt").read_text().splitlines()
        assert len(hyp) == 20
        run = json.loads((out / method / "run.json").read_text())
        assert run["method"] == method and run["tau"] == ("inf" if method == "ls" else 1.25)  # as the pipeline's
        log = json.loads((out / method / "train_log.json").read_text())
        assert any("loss" in entry for entry in log)
    labo_log = json.loads((out / "labo" / "train_log.json").read_text())
    assert any("q_entropy" in entry for entry in labo_log)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"ls", "labo"}
    assert "sacreBLEU" in result.stdout  # the table


def test_example_help_and_bad_input(tmp_path):
    assert _run("--help").returncode == 0
    bad = _run("--out", str(tmp_path / "o"), "--methods", "ls,nope")
    assert bad.returncode == 2 and "--methods: unknown method 'nope'" in bad.stderr
    tiny_tau = _run("--out", str(tmp_path / "o"), "--tau", "1e-9")  # the LABO op's own rule
    assert tiny_tau.returncode == 2 and "--tau must be >= 0.0001 (or inf), got 1e-09" in tiny_tau.stderr
    missing = _run("--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "absent"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"--data-dir {tmp_path / 'absent'} is not a directory" in missing.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    busy = _run("--out", str(tmp_path / "full"), "--data-dir", str(tmp_path))
    assert busy.returncode == 2 and "exists and is not an empty directory" in busy.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "multi30k" / "train.de.gz").is_file(),
                    reason="Multi30k's raw files are not in ../shared/data/multi30k")
def test_example_reads_the_published_multi30k_files(tmp_path):
    """The real files parse (gzip, line counts); one short step only."""
    out = tmp_path / "out"
    result = _run("--out", str(out), "--methods", "labo", "--max-train", "500", "--max-test", "8",
                  "--vocab-size", "300", "--max-steps", "2", "--d-model", "32", "--ffn", "64", "--heads", "2",
                  "--layers", "1", "--beam", "1", "--max-len", "24", "--cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((out / "labo" / "eval" / "test" / "scores.json").read_text())
    assert scores["num_sentences"] == 8 and scores["reference"]["path"].endswith("test_2016_flickr.en.gz")
