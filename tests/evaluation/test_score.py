"""labo_fairseq.evaluation.score: parsing fairseq-generate output, fairseq's tokenized BLEU,
sacreBLEU/chrF and the score CLI's errors."""
import json
import math
import random

import pytest
import sacrebleu

from labo_fairseq.cli.errors import run_command
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.score import (detokenize, main, parse_generate_output, sacrebleu_scores,
                                           tokenized_bleu)
from tests.toy import run_cli

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
        parse_generate_output("T-0\tA\nD-0\t-1\tA\nD-1\t-1\tB\n")


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
