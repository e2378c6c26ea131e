"""prepare-iwslt14.sh end to end on a tiny archive in the release's layout, and its error paths."""
import json
import re
import tarfile


from labo_fairseq.data_prep import common, iwslt14
from tests.data_prep import fixtures
from tests.data_prep.conftest import lines, run_script, text_hashes, undo_bpe

NAME = "iwslt14.tokenized.de-en"


def expected_clean_pairs():
    """The train pairs clean-corpus-n keeps plus the title/description lines, lowercased, in file order."""
    pairs = fixtures.iwslt_train_pairs()
    per_talk = -(-len(pairs) // 3)
    out = []
    for talk in range(3):
        header = {lang: fixtures.iwslt_talk_header(talk + 1, lang) for lang in ("de", "en")}
        for i in (3, 4):  # title, description: tags stripped, text kept
            de, en = header["de"][i], header["en"][i]
            for tag in iwslt14.STRIPPED_TAGS:
                de, en = de.replace(tag, ""), en.replace(tag, "")
            out.append((de.lower(), en.lower()))
        out += [(de.lower(), en.lower()) for de, en, kept in pairs[talk * per_talk:(talk + 1) * per_talk] if kept]
    return out


def test_splits_follow_fairseq_rules(iwslt_prepared):
    out, proc = iwslt_prepared
    text = out / NAME
    cleaned = expected_clean_pairs()
    for index, lang in enumerate(("de", "en")):
        side = [pair[index] for pair in cleaned]
        # The fixture's titles contain ':' which tokenises to ' : '.
        side = [line.replace(":", " :") for line in side]
        valid = [undo_bpe(line) for line in lines(text / f"valid.{lang}")]
        train = [undo_bpe(line) for line in lines(text / f"train.{lang}")]
        assert valid == side[22::23]
        assert train == [line for n, line in enumerate(side, 1) if n % 23]
    test_sets = fixtures.iwslt_test_segments()
    expected_test_en = [en.lower().replace("’s", " &apos;s") for name in fixtures.IWSLT_TEST_SETS
                        for _, en in test_sets[name]]
    assert [undo_bpe(line) for line in lines(text / "test.en")] == expected_test_en
    assert "the cat &apos;s house" in expected_test_en  # ’ -> ' then English contraction rule
    # Console progress names the counts in and out of every filter.
    assert "131 pairs in, 128 kept (dropped: 1 empty, 1 length ratio over 1.5, 1 over 175 tokens)" in proc.stdout
    assert "123 train, 5 valid" in proc.stdout and "= 25 pairs" in proc.stdout


def test_tags_removed_and_lowercased(iwslt_prepared):
    out, _ = iwslt_prepared
    text = " ".join(undo_bpe(line) for split in ("train", "valid") for line in lines(out / NAME / f"{split}.en"))
    for fragment in ("url", "talkid", "keywords", "&lt;", "title&gt;", "http"):
        assert fragment not in text
    assert "jane doe : a talk about cats 1" in text
    assert text == text.lower()


def test_bpe_is_the_learned_code_applied(iwslt_prepared):
    from subword_nmt.apply_bpe import BPE
    out, _ = iwslt_prepared
    code = out / NAME / "code"
    assert len(lines(code)) == 51  # header + 50 merges
    with open(code, encoding="utf-8") as f:
        bpe = BPE(f)
    for split in ("train", "valid", "test"):
        subworded = lines(out / NAME / f"{split}.de")
        assert [bpe.process_line(undo_bpe(line)) for line in subworded] == subworded
    assert any("@@" in line for line in lines(out / NAME / "train.de"))


def test_binarised_with_separate_dictionaries(iwslt_prepared):
    out, _ = iwslt_prepared
    data_bin = out / "data-bin" / NAME
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            assert (data_bin / f"{split}.de-en.{lang}.bin").stat().st_size > 0
    assert lines(data_bin / "dict.de.txt") != lines(data_bin / "dict.en.txt")
    record = json.loads((data_bin / "prepare.json").read_text())
    assert record["subwords"] == "bpe" and record["remove_bpe"] == "subword_nmt"
    assert record["pairs"] == {"train": 123, "valid": 5, "test": 25}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_raw_test_reference_is_kept_as_published(iwslt_prepared):
    out, _ = iwslt_prepared
    data_bin = out / "data-bin" / NAME
    record = json.loads((data_bin / "prepare.json").read_text())
    assert record["raw_references"] == {"test": "test.raw.en"} and record["lowercase"] is True
    test_sets = fixtures.iwslt_test_segments()
    raw = lines(data_bin / "test.raw.en")
    # the <seg> text itself: cased, untokenised, ’ kept (only the tokenised copy turns it into ')
    assert raw == [en for name in fixtures.IWSLT_TEST_SETS for _, en in test_sets[name]]
    assert raw[0] == "the cat’s house" and any(ch.isupper() for line in raw for ch in line)


def test_deterministic(iwslt_archive, iwslt_prepared, tmp_path):
    out, _ = iwslt_prepared
    run_script("prepare-iwslt14.sh", "--archive", iwslt_archive, "--out", tmp_path, "--bpe-tokens", "50",
               "--workers", "1")
    first, second = text_hashes(out), text_hashes(tmp_path)
    assert "iwslt14.tokenized.de-en/train.de" in first and first == second


def run_prepare(capsys, *args):
    code = iwslt14.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_refuses_to_overwrite_and_failed_force_keeps_previous_output(iwslt_archive, iwslt_prepared, tmp_path,
                                                                      capsys):
    out, _ = iwslt_prepared
    code, err = run_prepare(capsys, "--archive", iwslt_archive, "--out", out, "--bpe-tokens", "50")
    assert code == 2 and "already exists; pass --force" in err
    before = text_hashes(out)
    broken = fixtures.make_iwslt_archive(
        tmp_path / "broken.tgz",
        xml_override={"de-en/IWSLT14.TED.tst2011.de-en.en.xml": '<doc>\n<seg id="1">no end\n</doc>\n'})
    code, err = run_prepare(capsys, "--archive", broken, "--out", out, "--bpe-tokens", "50", "--force")
    assert code == 2
    assert f"de-en/IWSLT14.TED.tst2011.de-en.en.xml in {broken}: line 2: malformed segment" in err
    assert ".tmp-" not in err
    assert text_hashes(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_interrupted_run_keeps_previous_output(iwslt_archive, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    (out / NAME).mkdir(parents=True)
    (out / NAME / "train.de").write_text("previous\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(common, "binarise", interrupted)
    code, err = run_prepare(capsys, "--archive", iwslt_archive, "--out", out, "--bpe-tokens", "50", "--force",
                         "--workers", "1")
    assert code == 130 and "interrupted" in err
    assert (out / NAME / "train.de").read_text() == "previous\n"
    assert not (out / "data-bin").exists()
    assert sorted(p.name for p in out.iterdir()) == [NAME]


def make_archive(path, texts):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in texts.items():
            fixtures.add_bytes(tar, name, text.encode())
    return path


def error_cases(tmp_path):
    good_members = {m: '<seg id="1">a</seg>\n' for m in iwslt14.archive_members()}
    mismatch = dict(good_members, **{"de-en/train.tags.de-en.de": "a\nb\n", "de-en/train.tags.de-en.en": "a\n"})
    empty = dict(good_members, **{"de-en/train.tags.de-en.de": "a b c d\n", "de-en/train.tags.de-en.en": "a\n"})
    segment_counts = dict(empty, **{"de-en/train.tags.de-en.en": "a b c\n",
                                    "de-en/IWSLT14.TED.tst2010.de-en.en.xml": '<seg id="1">a</seg>\n<seg id="2">b</seg>\n'})
    corrupt = tmp_path / "corrupt.tgz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    (tmp_path / "file").write_text("not a directory\n")
    return [
        (["--archive", tmp_path / "absent.tgz"], "absent.tgz: file not found"),
        (["--archive", corrupt], "corrupt.tgz: corrupt or unreadable archive"),
        (["--archive", make_archive(tmp_path / "partial.tgz", {"de-en/README": "x\n"})],
         "partial.tgz: missing de-en/IWSLT14.TED.dev2010.de-en.de.xml"),
        (["--archive", make_archive(tmp_path / "mismatch.tgz", mismatch)],
         "line-count mismatch: de-en/train.tags.de-en.de in .*mismatch.tgz has 2 lines without tags, "
         "de-en/train.tags.de-en.en in .*mismatch.tgz has 1$"),
        (["--archive", make_archive(tmp_path / "empty.tgz", empty)],
         "no training pairs left after cleaning .*train.tags.de-en.de"),
        (["--archive", make_archive(tmp_path / "segments.tgz", segment_counts)],
         "segment-count mismatch in IWSLT14.TED.tst2010: 1 de segments, 2 en"),
        (["--archive", make_archive(tmp_path / "ok.tgz", empty), "--out", tmp_path / "file" / "sub"],
         "cannot write to .*file/sub"),
        (["--url", "http://127.0.0.1:9/de-en.tgz"], "cannot download http://127.0.0.1:9/de-en.tgz .*--archive PATH"),
    ]


def test_errors_name_the_file_and_values(tmp_path, capsys):
    for args, message in error_cases(tmp_path):
        if "--out" not in args:
            args = args + ["--out", tmp_path / "out"]
        code, err = run_prepare(capsys, *args, "--workers", "1")
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("prepare-iwslt14: error: "), err
        assert re.search(message, err), (message, err)
    assert not (tmp_path / "out" / NAME).exists()


def test_script_errors_are_one_line_without_traceback(tmp_path):
    for args, message in [case for case in error_cases(tmp_path) if "corrupt" in str(case[0][1])]:
        proc = run_script("prepare-iwslt14.sh", *args, "--out", tmp_path / "out", check=False)
        error_lines = [line for line in proc.stderr.splitlines() if "tensorboardX" not in line]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(error_lines) == 1 and re.search(message, error_lines[0]), proc.stderr


def test_help():
    proc = run_script("prepare-iwslt14.sh", "--help")
    assert "--archive" in proc.stdout and "--bpe-tokens" in proc.stdout and "--force" in proc.stdout
