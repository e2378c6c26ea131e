"""prepare-multi30k.sh end to end on .gz files in the multi30k/dataset layout (and on the shared copy
of the real data when present)."""
import gzip
import json
import time

import pytest

from labo_fairseq.data_prep import multi30k
from tests.data_prep.conftest import SHARED_DATA, lines, run_script, text_hashes, undo_bpe

NAME = "multi30k.de-en"


def test_layout_and_split_naming(multi30k_prepared, multi30k_raw):
    out, proc = multi30k_prepared
    text, data_bin = out / NAME, out / "data-bin" / NAME
    raw = multi30k_raw[1]
    assert lines(text / "test-sets.tsv") == ["test\ttest_2016_flickr", "test1\ttest_2017_flickr"]
    for split, raw_name in [("train", "train"), ("valid", "val"), ("test", "test_2016_flickr"),
                            ("test1", "test_2017_flickr")]:
        for index, lang in enumerate(("de", "en")):
            tokenised = lines(text / "tok" / f"{split}.{lang}")
            # lowercased, then the final period split off: "Kind spielt." -> "kind spielt ."
            assert tokenised == [pair[index].lower()[:-1] + " ." for pair in raw[raw_name]]
            assert [undo_bpe(line) for line in lines(text / f"{split}.{lang}")] == tokenised
            assert (data_bin / f"{split}.de-en.{lang}.bin").exists()
    assert lines(data_bin / "dict.de.txt") == lines(data_bin / "dict.en.txt")  # joined dictionary
    assert (text / "code").exists()
    record = json.loads((data_bin / "prepare.json").read_text())
    assert record["subwords"] == "bpe" and record["remove_bpe"] == "subword_nmt"
    assert record["test_sets"] == {"test": "test_2016_flickr", "test1": "test_2017_flickr"}
    assert record["pairs"] == {"train": 200, "valid": 20, "test": 15, "test1": 12}
    # the raw English of every evaluation split, as in the .gz files (cased, final period attached)
    assert record["raw_references"] == {"valid": "valid.raw.en", "test": "test.raw.en", "test1": "test1.raw.en"}
    assert record["lowercase"] is True
    for split, raw_name in [("valid", "val"), ("test", "test_2016_flickr"), ("test1", "test_2017_flickr")]:
        assert lines(data_bin / f"{split}.raw.en") == [pair[1] for pair in raw[raw_name]]
    assert lines(data_bin / "test.raw.en")[0][0].isupper() and lines(data_bin / "test.raw.en")[0].endswith(".")
    assert "test_2017_flickr -> test1: 12 pairs tokenised" in proc.stdout


def test_sentencepiece_and_determinism(multi30k_raw, tmp_path):
    for out in (tmp_path / "a", tmp_path / "b"):
        run_script("prepare-multi30k.sh", "--raw-dir", multi30k_raw[0], "--out", out, "--subwords", "spm",
                   "--vocab", "80", "--workers", "2")
    first, second = text_hashes(tmp_path / "a"), text_hashes(tmp_path / "b")
    assert f"{NAME}/spm.model" in first and first == second
    text = tmp_path / "a" / NAME
    assert not (text / "code").exists()
    assert lines(text / "train.en")[0].startswith("▁")
    record = json.loads((tmp_path / "a" / "data-bin" / NAME / "prepare.json").read_text())
    assert record["subwords"] == "spm" and record["remove_bpe"] == "sentencepiece"


def test_bpe_deterministic(multi30k_prepared, multi30k_raw, tmp_path):
    # "all" finds the raw directory's two test sets, in the order the fixture names them
    out, _ = multi30k_prepared
    run_script("prepare-multi30k.sh", "--raw-dir", multi30k_raw[0], "--out", tmp_path, "--vocab", "60",
               "--test-sets", "all", "--workers", "1")
    assert text_hashes(out) == text_hashes(tmp_path)


def test_all_test_sets(tmp_path):
    for name in ("test_2018_flickr.de", "test_2018_flickr.en", "test_2016_flickr.de", "test_2016_flickr.en",
                 "test_2017_mscoco.de", "train.de", "train.en"):
        (tmp_path / f"{name}.gz").write_bytes(b"")
    # sorted, and only sets with both sides
    assert multi30k.all_test_sets(tmp_path) == ["test_2016_flickr", "test_2018_flickr"]
    assert multi30k.all_test_sets(None) == list(multi30k.PUBLISHED_TEST_SETS)


def test_errors(multi30k_raw, tmp_path, capsys):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for path in multi30k_raw[0].iterdir():
        (raw_dir / path.name).write_bytes(path.read_bytes())

    def run(*args):
        code = multi30k.main([str(a) for a in args] + ["--raw-dir", str(raw_dir), "--out", str(tmp_path / "out"),
                                                       "--workers", "1", "--vocab", "20"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("prepare-multi30k: error: "), err
        return err

    assert "test_2018_flickr.de.gz: file not found" in run("--test-sets", "test_2018_flickr")
    with pytest.raises(SystemExit):
        multi30k.main(["--raw-dir", str(raw_dir), "--test-sets", "test_2016_flickr,test_2016_flickr"])
    assert "--test-sets names test_2016_flickr more than once" in capsys.readouterr().err
    with gzip.open(raw_dir / "val.en.gz", "wt") as f:
        f.write("one line\n")
    assert f"line-count mismatch: {raw_dir / 'val.de.gz'} has 20 lines, {raw_dir / 'val.en.gz'} has 1\n" in run()
    (raw_dir / "val.en.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03truncated")
    assert "val.en.gz: corrupt or truncated gzip file" in run()
    assert not (tmp_path / "out" / NAME).exists()


SHARED_MULTI30K = SHARED_DATA / "multi30k"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_MULTI30K / "train.de.gz").exists(),
                    reason=f"shared Multi30k copy not present at {SHARED_MULTI30K}")
def test_shared_multi30k(tmp_path):
    start = time.monotonic()
    proc = run_script("prepare-multi30k.sh", "--raw-dir", SHARED_MULTI30K, "--out", tmp_path, "--workers", "2")
    print(proc.stdout, f"\nprepared in {time.monotonic() - start:.0f}s")
    record = json.loads((tmp_path / "data-bin" / NAME / "prepare.json").read_text())
    assert record["pairs"] == {"train": 29000, "valid": 1014, "test": 1000}
    dictionary = lines(tmp_path / "data-bin" / NAME / "dict.en.txt")
    assert 6000 < len(dictionary) < 9000
