"""labo_fairseq.evaluation.score: parsing fairseq-generate output, fairseq's tokenized BLEU,
sacreBLEU/chrF and the score CLI's errors."""
import json
import math
import random
import sys

import pytest
import sacrebleu

from labo_fairseq.errors import run_command
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.score import (TEXT_FILES, detokenize, main, parse_generate_output, sacrebleu_scores,
                                          score_generate_output,
                                           tokenized_bleu)
from tests.evaluation.helpers import assert_one_line_error
from tests.toy import run_cli

# one xdist worker runs the modules that share the toy checkpoint and evaluation (session
# fixtures), so that they are built once (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("toy-checkpoint")

SCORE = [sys.executable, "-m", "labo_fairseq.evaluation.score"]

GENERATE_OUT = """\
S-2\tc d
T-2\tC D
H-2\t-0.5\tC D
D-2\t-0.5\tC D
P-2\t-0.1 -0.2 -0.3
S-0\ta b
T-0\tA B
H-0\t-0.7\t
D-0\t-0.7\t
P-0\t-0.1
H-0\t-0.9\tA
D-0\t-0.9\tA
S-1\te\tf
T-1\tE
H-1\t-0.2\tE
D-1\t-0.2\tE
Generate test with beam=5: BLEU4 = 0.00, 50.0/0.0/0.0/0.0 (BP=1.000, ratio=1.000, syslen=4, reflen=4)
"""


def test_parse_generate_output_restores_id_order_keeps_best_and_empty():
    output = parse_generate_output(GENERATE_OUT)
    assert output.ids == [0, 1, 2]
    assert output.hypotheses == ["", "E", "C D"]   # id 0: first (best) of nbest, empty
    assert output.references == ["A B", "E", "C D"]
    assert output.sources == ["a b", "e\tf", "c d"]
    assert output.bleu_line.startswith("BLEU4 = 0.00, 50.0/")


def test_parse_generate_output_errors():
    with pytest.raises(EvaluationError, match="no hypotheses"):
        parse_generate_output("S-0\ta\nT-0\tA\n")
    with pytest.raises(EvaluationError, match=r"ids \[1\]"):
        parse_generate_output("T-0\tA\nD-0\t-1\tA\nD-1\t-1\tB\nGenerate test with beam=1: BLEU4 = 0.00\n")


def test_parse_generate_output_refuses_incomplete_output():
    lines = GENERATE_OUT.splitlines()
    truncated = "\n".join(lines[:-1])   # all sentences, but not fairseq-generate's final line
    with pytest.raises(EvaluationError, match=r"^out.txt is incomplete: no final 'Generate"):
        parse_generate_output(truncated, "out.txt")
    without_1 = "\n".join(line for line in lines if not line.startswith(("S-1\t", "T-1\t", "H-1\t", "D-1\t")))
    with pytest.raises(EvaluationError, match=r"^out.txt: sentence ids are not 0..1: ids 1 are missing"):
        parse_generate_output(without_1, "out.txt")
    no_hypothesis = "\n".join(line for line in lines if not line.startswith(("H-1\t", "D-1\t")))
    with pytest.raises(EvaluationError, match=r"ids 1 have a source \(S- line\) but no hypothesis"):
        parse_generate_output(no_hypothesis, "out.txt")
    with pytest.raises(EvaluationError, match=r"^out.txt has 3 sentences but the test split has 4$"):
        parse_generate_output(GENERATE_OUT, "out.txt", expected=4, expected_from="the test split")
    assert parse_generate_output(GENERATE_OUT, expected=3).ids == [0, 1, 2]


def test_parse_generate_output_other_scorer_line_completes_the_output():
    # `-- --scoring sacrebleu` changes the final line's score; the output is complete all the same
    text = GENERATE_OUT.replace("BLEU4 = 0.00, 50.0/0.0/0.0/0.0", "BLEU = 12.3 50.0/0.0/0.0/0.0")
    output = parse_generate_output(text)
    assert output.ids == [0, 1, 2] and output.bleu_line is None


def _sentences(generate_out):
    """{id: its lines} of a fairseq-generate output, and its final line."""
    by_id, final = {}, None
    for line in generate_out.read_text(encoding="utf-8").splitlines():
        if line.startswith("Generate "):
            final = line
        else:
            by_id.setdefault(int(line.split("\t", 1)[0].split("-", 1)[1]), []).append(line)
    return by_id, final


def _write_generate_out(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_score_cli_refuses_a_truncated_generate_output(toy_evaluation, tmp_path):
    lines = (toy_evaluation / "generate.out").read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("S-")]
    truncated = _write_generate_out(tmp_path / "generate.out", lines[:starts[17]])   # 17 of 40 sentences
    out = tmp_path / "out"
    proc = run_cli([*SCORE, "--generate-out", truncated, "--target-lang", "tgt", "--out-dir", out], check=False)
    assert_one_line_error(proc, "score", truncated, "incomplete", "no final", "after 17 sentences")
    assert not out.exists() or not any(out.iterdir())


def test_score_cli_refuses_missing_sentence_ids(toy_evaluation, tmp_path):
    by_id, final = _sentences(toy_evaluation / "generate.out")
    gappy = _write_generate_out(tmp_path / "gappy.out",
                                [line for i, group in by_id.items() if i not in (5, 7) for line in group] + [final])
    proc = run_cli([*SCORE, "--generate-out", gappy, "--target-lang", "tgt", "--out-dir", tmp_path / "out"],
                   check=False)
    assert_one_line_error(proc, "score", gappy, "ids 5, 7 are missing")


def test_score_cli_refuses_fewer_sentences_than_the_split(toy_evaluation, toy_data_bin, tmp_path):
    by_id, final = _sentences(toy_evaluation / "generate.out")
    short = _write_generate_out(tmp_path / "short.out",
                                [line for i, group in by_id.items() if i != 39 for line in group] + [final])
    out = tmp_path / "out"
    args = ["--generate-out", short, "--target-lang", "tgt", "--out-dir", out]
    assert run_cli([*SCORE, *args]).returncode == 0   # ids 0..38: whole, for all it can tell alone
    proc = run_cli([*SCORE, *args, "--data-bin", toy_data_bin, "--subset", "test"], check=False)
    assert_one_line_error(proc, "score", short, "39 sentences", f"split 'test' of data-bin {toy_data_bin} has 40")
    # the earlier scoring's results are left whole: nothing was written
    assert json.loads((out / "scores.json").read_text())["num_sentences"] == 39


def test_score_cli_output_files_are_one_scoring(toy_evaluation, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ref.raw.txt").write_text("left by an earlier evaluation with a raw reference\n")
    run_cli([*SCORE, "--generate-out", toy_evaluation / "generate.out", "--target-lang", "tgt", "--out-dir", out])
    assert sorted(p.name for p in out.iterdir()) == sorted({*TEXT_FILES, "scores.json"} - {"ref.raw.txt"})
    for name in ("hyp.txt", "ref.txt", "src.txt", "hyp.detok.txt", "ref.detok.txt"):
        assert (out / name).read_bytes() == (toy_evaluation / name).read_bytes()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_sentences"] == 40 and scores["reference"]["file"] == "ref.detok.txt"


def test_typed_scoring_call_matches_the_cli_and_keeps_the_types(toy_evaluation, toy_data_bin, tmp_path, capsys):
    """What labo-evaluate calls in-process: the same files as the CLI, the metadata as given
    (a path that looks like a number stays a string), and the split's size checked."""
    metadata = {"subset": "test", "beam": 5, "lenpen": 1.0, "checkpoint": "1e3", "source_lang": "null"}
    scores = score_generate_output(toy_evaluation / "generate.out", tmp_path / "typed", "tgt", "src",
                                   str(toy_data_bin), "test", metadata=metadata)
    assert {k: scores[k] for k in metadata} == metadata and isinstance(scores["lenpen"], float)
    assert json.loads((tmp_path / "typed" / "scores.json").read_text()) == scores
    assert capsys.readouterr().out.startswith(f"BLEU (tokenized, fairseq): {scores['bleu']['string']}\n")
    run_cli([*SCORE, "--generate-out", toy_evaluation / "generate.out", "--target-lang", "tgt", "--out-dir",
             tmp_path / "cli", "--data-bin", toy_data_bin, "--source-lang", "src"])
    for name in TEXT_FILES:
        assert (tmp_path / "typed" / name).exists() == (tmp_path / "cli" / name).exists()
        if (tmp_path / "cli" / name).exists():
            assert (tmp_path / "typed" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    with pytest.raises(EvaluationError, match="40"):
        lines = (toy_evaluation / "generate.out").read_text().splitlines()
        short = _write_generate_out(tmp_path / "short.out", [x for x in lines if not x.split("\t")[0].endswith("-39")])
        score_generate_output(short, tmp_path / "short", "tgt", "src", str(toy_data_bin), "test")


def test_tokenized_bleu_hand_computed():
    hyps = ["the cat sat on the mat", "a b c d e"]
    refs = ["the cat is on the mat", "a b c d e"]
    # n-gram matches / hypothesis n-grams, summed over both sentences (clipped per sentence):
    # 1: 5/6 + 5/5, 2: 3/5 + 4/4, 3: 1/4 + 3/3, 4: 0/3 + 2/2; lengths 11 = 11, so BP = 1
    expected = math.exp((math.log(10 / 11) + math.log(7 / 9) + math.log(4 / 7) + math.log(2 / 5)) / 4) * 100
    result = tokenized_bleu(hyps, refs)
    assert result["score"] == pytest.approx(expected)
    assert result["precisions"] == pytest.approx([1000 / 11, 700 / 9, 400 / 7, 40.0])
    assert (result["sys_len"], result["ref_len"], result["bp"]) == (11, 11, 1.0)
    assert result["string"] == f"BLEU4 = {expected:.2f}, 90.9/77.8/57.1/40.0 (BP=1.000, ratio=1.000, syslen=11, reflen=11)"


def test_tokenized_bleu_brevity_unk_and_empty_lines():
    # fairseq's scorer: a reference <unk> never matches; an empty line counts as one token (</s>)
    result = tokenized_bleu(["<unk> b", ""], ["<unk> b", "x y z"])
    assert result["precisions"][0] == pytest.approx(100 * 1 / 3)   # only "b" matches; </s> does not
    assert (result["sys_len"], result["ref_len"]) == (3, 5)
    assert result["bp"] == pytest.approx(math.exp(1 - 5 / 3))
    assert result["score"] == 0.0


def _random_corpus(rng, n=30, vocab=12):
    refs, hyps = [], []
    for _ in range(n):
        ref = [f"t{rng.randrange(vocab)}" for _ in range(rng.randint(1, 12))]
        hyp = [w if rng.random() < 0.7 else f"t{rng.randrange(vocab)}" for w in ref]
        hyp = hyp[: rng.randint(0, len(hyp))] if rng.random() < 0.2 else hyp
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    return hyps, refs


def test_tokenized_bleu_agrees_with_fairseq_score_cli(tmp_path):
    hyps, refs = _random_corpus(random.Random(3))
    hyps[5] = ""  # an empty hypothesis line is part of the comparison
    (tmp_path / "hyp.txt").write_text("".join(h + "\n" for h in hyps))
    (tmp_path / "ref.txt").write_text("".join(r + "\n" for r in refs))
    proc = run_cli(["fairseq-score", "--sys", tmp_path / "hyp.txt", "--ref", tmp_path / "ref.txt"])
    result = tokenized_bleu(hyps, refs)
    assert result["score"] > 10
    assert proc.stdout.strip().splitlines()[-1] == result["string"]


def test_sacrebleu_scores_agree_with_sacrebleu_api():
    hyps, refs = _random_corpus(random.Random(4))
    scores = sacrebleu_scores(hyps, refs)
    assert scores["sacrebleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores["sacrebleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert scores["chrf"]["signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_detokenize_uses_moses_rules_of_the_language():
    assert detokenize(["Hallo , wie geht &apos;s ?", ""], "de") == ["Hallo, wie geht 's?", ""]
    assert detokenize(["C&apos; est la vie ."], "fr") == ["C'est la vie."]


def test_score_cli_from_files(tmp_path, capsys):
    (tmp_path / "hyp.txt").write_text("the cat sat on the mat\na b c d e\n")
    (tmp_path / "ref.txt").write_text("the cat is on the mat\na b c d e\n")
    assert run_command("score", lambda: main(["--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.txt"),
                                    "--target-lang", "en", "--out-dir", str(tmp_path / "out"),
                                    "--meta", "subset=test", "--meta", "beam=5"])) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["bleu"]["string"] == tokenized_bleu(["the cat sat on the mat", "a b c d e"],
                                                      ["the cat is on the mat", "a b c d e"])["string"]
    assert (scores["subset"], scores["beam"], scores["num_sentences"]) == ("test", 5, 2)
    assert (tmp_path / "out" / "hyp.detok.txt").read_text() == "the cat sat on the mat\na b c d e\n"
    assert "BLEU4 = " in capsys.readouterr().out


def test_score_cli_line_count_mismatch_and_empty_file(tmp_path, capsys):
    hyp, ref, empty = tmp_path / "hyp.txt", tmp_path / "ref.txt", tmp_path / "empty.txt"
    hyp.write_text("a\nb\nc\n")
    ref.write_text("a\nb\n")
    empty.write_text("")
    args = ["--target-lang", "en", "--out-dir", str(tmp_path / "out")]
    assert run_command("score", lambda: main(["--hyp", str(hyp), "--ref", str(ref)] + args)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"score: error: line counts differ: hypothesis file {hyp} has 3 lines, "
                   f"reference file {ref} has 2")
    assert run_command("score", lambda: main(["--hyp", str(empty), "--ref", str(ref)] + args)) == 2
    assert capsys.readouterr().err.strip() == f"score: error: hypothesis file {empty} is empty"
    assert run_command("score", lambda: main(["--generate-out", str(tmp_path / "nope.out")] + args)) == 2
    assert "nope.out does not exist" in capsys.readouterr().err


def test_raw_reference_lowercased_scores_and_signatures(tmp_path, capsys):
    hyps = ["the cat sat on the mat .", "a dog , running ."]
    raw = ["The cat sat on the mat.", "A dog, running."]
    (tmp_path / "hyp.txt").write_text("".join(h + "\n" for h in hyps))
    (tmp_path / "ref.txt").write_text("".join(h + "\n" for h in hyps))
    (tmp_path / "raw.txt").write_text("".join(r + "\n" for r in raw))
    args = ["--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.txt"), "--target-lang", "en",
            "--raw-ref", str(tmp_path / "raw.txt")]
    assert run_command("score", lambda: main(args + ["--out-dir", str(tmp_path / "lc"), "--lowercase"])) == 0
    lc = json.loads((tmp_path / "lc" / "scores.json").read_text())
    assert lc["sacrebleu"]["score"] == pytest.approx(100.0)  # detokenised and case-blind: identical
    assert lc["sacrebleu"]["signature"].startswith("nrefs:1|case:lc|")
    assert lc["chrf"]["signature"].startswith("nrefs:1|case:lc|") and lc["ter"]["score"] == 0.0
    assert run_command("score", lambda: main(args + ["--out-dir", str(tmp_path / "cased")])) == 0
    cased = json.loads((tmp_path / "cased" / "scores.json").read_text())
    expected = sacrebleu.corpus_bleu(detokenize(hyps, "en"), [raw])
    assert cased["sacrebleu"]["score"] == pytest.approx(expected.score) and expected.score < 100
    assert "case:mixed" in cased["sacrebleu"]["signature"] and cased["reference"]["kind"] == "raw"
    assert "warning" not in capsys.readouterr().err
