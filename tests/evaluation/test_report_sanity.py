"""The report's sanity warnings (broken-looking scores) and verdict wording that never contradicts p."""
import json
import sys

import pytest

from labo_fairseq.evaluation import significance
from labo_fairseq.evaluation.report import build_report, format_headline
from tests.evaluation.test_report import N_SENTENCES, REFS, hypotheses, make_run
from tests.toy import REPO_ROOT, run_cli

TEST = "paired bootstrap over seeds and sentences"


def _set_scores(run_dir, subset="test", **changes):
    path = run_dir / "eval" / subset / "scores.json"
    scores = json.loads(path.read_text())
    for key, value in changes.items():
        scores.setdefault(key, {}).update(value)
    path.write_text(json.dumps(scores))


def _undertrained_hyps():
    """What a 30-update model writes: the same few words over and over, and some empty lines."""
    return ["" if i % 10 == 0 else " ".join(["the"] * 140) for i in range(N_SENTENCES)]


def test_undertrained_run_is_warned_about_in_every_output(tmp_path):
    # before: length ratio 16.06 and TER 1736 of a 30-update model were reported without a warning
    ls = make_run(tmp_path, "ls-s1", "ls", "LS", 1, (30.0, 29.0, 50.0), 0.8)
    broken = make_run(tmp_path, "labo-s1", "labo", "LABO", 1, (0.3, 0.12, 4.0), 0.8, hyps=_undertrained_hyps())
    _set_scores(broken, sacrebleu={"length_ratio": 16.06, "sys_len": 16060, "ref_len": 1000},
                ter={"score": 1736.0, "signature": "nrefs:1|tok:tercom"})
    out = tmp_path / "report"
    proc = run_cli([sys.executable, REPO_ROOT / "scripts" / "report.py", ls, broken, "--out", out,
                    "--bootstrap-samples", "50"])
    headline = json.loads((out / "report.json").read_text())
    warnings = {w["check"]: w for w in headline["warnings"]}
    assert sorted(warnings) == ["bleu", "empty_hypotheses", "length_ratio", "ter"]
    assert all(w["run"] == str(broken) and w["subset"] == "test" and w["name"] == "LABO (seed 1)"
               for w in headline["warnings"])   # the healthy LS run has none
    assert warnings["length_ratio"]["value"] == 16.06 and warnings["ter"]["value"] == 1736.0
    assert warnings["empty_hypotheses"]["value"] == N_SENTENCES // 10 and warnings["bleu"]["value"] == 0.12
    for check, value in (("length_ratio", "length ratio 16.06"), ("ter", "TER 1736.0"),
                         ("empty_hypotheses", f"12 of {N_SENTENCES} hypotheses are empty"),
                         ("bleu", "sacreBLEU 0.12")):
        text = warnings[check]["text"]
        assert text.startswith(f"LABO (seed 1) ({broken}) on test: {value}")
        assert "undertrained" in text
    # Markdown: near the top, before the setup; HTML: the same list; stdout: one line per warning
    markdown = (out / "REPORT.md").read_text()
    assert markdown.index("**Warning: the scores of 1 run(s) look broken**") < markdown.index("## Setup")
    assert all(f"- {w['text']}" in markdown for w in headline["warnings"])
    page = (out / "REPORT.html").read_text()
    assert "length ratio 16.06" in page and "TER 1736.0" in page and "look broken" in page
    lines = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    assert lines == [f"warning: {w['text']}" for w in headline["warnings"]]
    # the verdict that rests on the broken run says so
    assert "(caution: 1 run(s) behind it fail the sanity checks; see the warnings)" in markdown
    assert "fail the sanity checks" in proc.stdout


def test_length_ratio_not_recorded_is_computed_as_sacrebleu_does(tmp_path):
    from sacrebleu.metrics import BLEU

    short = hypotheses(0.3, 1)
    run = make_run(tmp_path, "ls-s1", "ls", "LS", 1, (10.0, 10.0, 30.0), 0.3, hyps=short)
    headline = build_report([run], tmp_path / "report")
    (warning,) = [w for w in headline["warnings"] if w["check"] == "length_ratio"]
    result = BLEU().corpus_score(short, [REFS])
    assert warning["check"] == "length_ratio" and warning["limit"] == [0.5, 2.0]
    assert warning["value"] == pytest.approx(result.sys_len / result.ref_len) and warning["value"] < 0.5
    assert f"length ratio {warning['value']:.2f}" in warning["text"] and "below 0.5" in warning["text"]


def test_healthy_runs_have_no_warnings(tmp_path):
    runs = [make_run(tmp_path, f"ls-s{s}", "ls", "LS", s, (30.0, 29.0, 50.0), 0.8) for s in (1, 2)]
    for run in runs:
        _set_scores(run, sacrebleu={"length_ratio": 0.98}, ter={"score": 55.0})
    headline = build_report(runs, tmp_path / "report")
    assert headline["warnings"] == []
    assert "look broken" not in (tmp_path / "report" / "REPORT.md").read_text()
    assert "warning:" not in format_headline(headline)


@pytest.mark.parametrize("changes, check", [
    ({"sacrebleu": {"length_ratio": 2.01}}, "length_ratio"),
    ({"sacrebleu": {"length_ratio": 0.49}}, "length_ratio"),
    ({"ter": {"score": 100.5}}, "ter"),
    ({"sacrebleu": {"score": 0.99}}, "bleu"),
])
def test_each_limit_is_checked(tmp_path, changes, check):
    run = make_run(tmp_path, "ls-s1", "ls", "LS", 1, (30.0, 29.0, 50.0), 0.8)
    _set_scores(run, **{"sacrebleu": {"length_ratio": 1.0}, **changes})
    headline = build_report([run], tmp_path / "report")
    assert [w["check"] for w in headline["warnings"]] == [check]


# ------------------------------------------------------------------------------------- verdicts


def test_identical_outputs_never_claim_significance(tmp_path):
    # before: "identical on 1 of 1 test set (p < 0.05, two-sided)" with p = 1
    shared = hypotheses(0.8, 1)
    runs = [make_run(tmp_path, "ls-s1", "ls", "LS", 1, (30.0, 29.0, 50.0), 0.8, hyps=shared),
            make_run(tmp_path, "labo-s1", "labo", "LABO", 1, (30.0, 29.0, 50.0), 0.8, hyps=shared)]
    headline = build_report(runs, tmp_path / "report", bootstrap_samples=50)
    labo = headline["methods"][1]
    assert labo["significance"]["sacrebleu"]["bootstrap"]["p_value"] == 1.0
    assert labo["verdict"]["text"] == "identical on 1 of 1 test set (the same outputs; p = 1, nothing to test)"
    assert labo["significance"]["verdict_text"] == "identical (the same outputs; p = 1, nothing to test)"
    markdown = (tmp_path / "report" / "REPORT.md").read_text()
    printed = format_headline(headline)
    for text in (markdown, printed):
        assert "identical on 1 of 1 test set" in text and "p < 0.05, two-sided" not in text


def test_different_outputs_with_p_one_are_not_identical(tmp_path):
    # one hypothesis differs by a word: not identical, no significant difference, and p is stated
    base = hypotheses(0.8, 1)
    changed = list(base)
    changed[3] = changed[3] + " extra"
    runs = [make_run(tmp_path, "ls-s1", "ls", "LS", 1, (30.0, 29.0, 50.0), 0.8, hyps=base),
            make_run(tmp_path, "labo-s1", "labo", "LABO", 1, (30.0, 29.0, 50.0), 0.8, hyps=changed)]
    headline = build_report(runs, tmp_path / "report", bootstrap_samples=100)
    sig = headline["methods"][1]["significance"]
    p = sig["sacrebleu"]["bootstrap"]["p_value"]
    assert not sig["identical"] and sig["verdict"] == "no significant difference" and p >= 0.05
    shown = significance.format_p(p)
    assert sig["verdict_text"] == f"no significant difference (p = {shown}, two-sided {TEST})"
    assert headline["methods"][1]["verdict"]["text"] == (
        f"no significant difference on 1 of 1 test set (p = {shown}, two-sided); {TEST}")
    markdown = (tmp_path / "report" / "REPORT.md").read_text()
    assert "identical" not in markdown.split("## Setup")[0] and "p < 0.05" not in markdown.split("## Setup")[0]
    assert f"no significant difference vs LS (p = {shown})" in markdown


def _result(p, delta, identical=False):
    return {"identical": identical, "delta": delta, "bootstrap": {"p_value": p}}


@pytest.mark.parametrize("result, text", [
    (_result(0.003, 2.0), f"better (p = 0.003 < 0.05, two-sided {TEST})"),
    (_result(0.0123, -1.5), f"worse (p = 0.012 < 0.05, two-sided {TEST})"),
    (_result(1.0, 0.0), f"no significant difference (p = 1.00, two-sided {TEST})"),
    (_result(0.41, 0.7), f"no significant difference (p = 0.41, two-sided {TEST})"),
    (_result(1.0, 0.0, identical=True), "identical (the same outputs; p = 1, nothing to test)"),
])
def test_verdict_text_states_p_for_each_outcome(result, text):
    assert significance.verdict_text(result) == text


def test_summary_puts_the_threshold_only_beside_significant_results():
    results = [_result(0.003, 2.0), _result(0.41, 0.3), _result(1.0, 0.0), _result(1.0, 0.0, identical=True)]
    summary = significance.summarize_verdicts(results)
    assert summary["word"] == "better on some test sets"
    assert summary["text"] == ("better on 1 of 4 test sets (p < 0.05, two-sided: p = 0.003), "
                               "no significant difference on 2 of 4 test sets (p = 0.41, 1.00, two-sided), "
                               "identical on 1 of 4 test sets (the same outputs; p = 1, nothing to test); "
                               f"{TEST}")
    worse = significance.summarize_verdicts([_result(0.001, -3.0), _result(0.02, -1.0)])
    assert worse["word"] == "worse" and worse["text"] == (
        f"worse on 2 of 2 test sets (p < 0.05, two-sided: p = 0.001, 0.020); {TEST}")


@pytest.mark.parametrize("p, shown", [(0.04995, "0.04995"), (0.0504, "0.050"), (0.0499, "0.0499"), (1.0, "1.00"),
                                      (0.00042, "0.00042")])
def test_p_is_never_rounded_across_the_threshold(p, shown):
    assert significance.format_p(p) == shown
    assert (float(shown) < significance.ALPHA) == (p < significance.ALPHA)
