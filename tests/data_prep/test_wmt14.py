"""prepare-wmt14en2de.sh end to end on tiny archives in statmt.org's layout (.sgm test sets)."""
import json

from labo_fairseq.data_prep import wmt14
from tests.data_prep import fixtures
from tests.data_prep.conftest import lines, run_script, text_hashes

NAME = "wmt14_en_de"


def undo_spm(line):
    return line.replace(" ", "").replace("▁", " ").strip()


def test_sentencepiece_default(wmt_raw, tmp_path):
    raw_dir, written = wmt_raw
    proc = run_script("prepare-wmt14en2de.sh", "--raw-dir", raw_dir, "--out", tmp_path, "--vocab", "70",
                      "--workers", "2")
    text, data_bin = tmp_path / NAME, tmp_path / "data-bin" / NAME
    assert (text / "spm.model").exists()
    test_en = [undo_spm(line) for line in lines(text / "test.en")]
    assert len(test_en) == 10 and test_en[0] == "The cat &apos;s house ."  # <seg> text, ’ -> '
    assert len(lines(text / "valid.de")) == 12  # newstest2013
    train_en = [undo_spm(line) for line in lines(text / "train.en")]
    # normalize-punctuation ("«»" -> '"', "…" -> "...") before tokenisation, no lowercasing
    assert 'He said &quot; hello &quot; - twice ...' in train_en
    assert "clean-corpus-n on subworded train (1..250 tokens, ratio 1.5): 130 pairs in" in proc.stdout
    assert lines(data_bin / "dict.en.txt") == lines(data_bin / "dict.de.txt")
    record = json.loads((data_bin / "prepare.json").read_text())
    assert record["subwords"] == "spm" and record["test_sets"] == {"valid": "newstest2013", "test": "newstest2014"}
    # raw German references: the .sgm segments' text and newstest2013 as published, not tokenised
    assert record["raw_references"] == {"valid": "valid.raw.de", "test": "test.raw.de"}
    assert record["lowercase"] is False
    assert lines(data_bin / "test.raw.de") == [de for _, de in written["newstest2014"]]
    assert lines(data_bin / "test.raw.de")[0] == "Das Haus der Katze."
    assert lines(data_bin / "valid.raw.de") == [de for _, de in written["newstest2013"]]


def test_bpe_with_extracted_files_and_determinism(wmt_raw, tmp_path):
    raw_dir, _ = wmt_raw
    # Half the inputs already extracted, as users often have them; the rest come from the archives.
    extracted = tmp_path / "raw"
    extracted.mkdir()
    for path in raw_dir.iterdir():
        if path.name != "training-parallel-europarl-v7.tgz":
            (extracted / path.name).write_bytes(path.read_bytes())
    from labo_fairseq.data_prep.common import extract_members
    members = ["training/europarl-v7.de-en.en", "training/europarl-v7.de-en.de"]
    extract_members(raw_dir / "training-parallel-europarl-v7.tgz", members, extracted)
    for out, source in ((tmp_path / "a", raw_dir), (tmp_path / "b", extracted)):
        run_script("prepare-wmt14en2de.sh", "--raw-dir", source, "--out", out, "--subwords", "bpe",
                   "--vocab", "40", "--workers", "2")
    first, second = text_hashes(tmp_path / "a"), text_hashes(tmp_path / "b")
    assert f"{NAME}/code" in first and first == second
    assert any("@@" in line for line in lines(tmp_path / "a" / NAME / "train.de"))


def test_errors(tmp_path, capsys):
    raw_dir = tmp_path / "raw"
    fixtures.make_wmt_raw_dir(raw_dir, override={
        "test-full/newstest2014-deen-ref.de.sgm": '<refset>\n<seg id="1">Hallo\n</refset>\n',
        "commoncrawl.de-en.de": "nur eine Zeile\n"})

    def run(*args):
        code = wmt14.main([str(a) for a in args] + ["--out", str(tmp_path / "out"), "--workers", "1"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("prepare-wmt14en2de: error: "), err
        return err

    commoncrawl = raw_dir / "training-parallel-commoncrawl.tgz"
    assert (f"line-count mismatch: commoncrawl.de-en.en in {commoncrawl} has 40 lines, "
            f"commoncrawl.de-en.de in {commoncrawl} has 1\n") in run("--raw-dir", raw_dir)
    fixtures.make_wmt_raw_dir(raw_dir, override={
        "test-full/newstest2014-deen-ref.de.sgm": '<refset>\n<seg id="1">Hallo\n</refset>\n'})
    assert (f"test-full/newstest2014-deen-ref.de.sgm in {raw_dir / 'test-full.tgz'}: line 2: malformed segment"
            in run("--raw-dir", raw_dir))
    (raw_dir / "dev.tgz").unlink()
    assert "dev.tgz: file not found" in run("--raw-dir", raw_dir)
    assert not (tmp_path / "out" / NAME).exists()
