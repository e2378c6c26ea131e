"""The comparison report built from fake runs with known numbers and planted differences."""
import json
import os
import random
import shutil
import sys
from pathlib import Path

import matplotlib.image
import pytest

from labo_fairseq.evaluation import significance
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.plots import figure_info
from labo_fairseq.evaluation.report import build_report, format_headline, merged_f1
from labo_fairseq.evaluation.training_log import parse_train_lines, parse_valid_lines
from tests.evaluation.helpers import assert_one_line_error, dead_pid
from tests.toy import REPO_ROOT, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EDGES = [(0, 1), (1, 2), (2, 10), (10, None)]
N_SENTENCES = 120


def bucket(lo, hi, ref_count, hyp_count, matches):
    precision = matches / hyp_count if matches else 0.0
    recall = matches / ref_count if matches else 0.0
    f1 = 2 * precision * recall / (precision + recall) if matches else 0.0
    return {"lo": lo, "hi": hi, "types": 3, "ref_count": ref_count, "hyp_count": hyp_count,
            "ratio": hyp_count / ref_count if ref_count else None, "precision": precision, "recall": recall, "f1": f1}


def simple_valid_line(updates, loss):
    return (f"2024-01-01 00:00:00 | INFO | valid | epoch 001 | valid on 'valid' subset | loss {loss:.3f} | "
            f"nll_loss {loss - 0.1:.3f} | ppl {2 ** loss:.2f} | wps 100 | num_updates {updates}")


def json_valid_line(updates, loss):
    stats = {"epoch": 1, "valid_loss": f"{loss:.3f}", "valid_nll_loss": f"{loss - 0.1:.3f}",
             "valid_ppl": f"{2 ** loss:.2f}", "valid_num_updates": str(updates)}
    return f"2024-01-01 00:00:00 | INFO | valid | {json.dumps(stats)}"


def train_inner_line(updates, loss, q_entropy=None):
    q = f" q_entropy={q_entropy:.3f}," if q_entropy is not None else ""
    return (f"2024-01-01 00:00:00 | INFO | train_inner | epoch 001:     {updates} / 8 loss={loss:.3f}, "
            f"nll_loss={loss - 0.2:.3f},{q} ppl={2 ** loss:.2f}, wps=100, num_updates={updates}, lr=0.001")


REFS = [" ".join(f"word{random.Random(i * 7 + j).randrange(50)}" for j in range(8)) + f" end{i}"
        for i in range(N_SENTENCES)]


def hypotheses(quality, seed):
    rng = random.Random(seed * 1000 + int(quality * 100))
    return [" ".join(w for w in ref.split() if rng.random() < quality) for ref in REFS]


def make_run(root: Path, name, method, label, seed, scores, quality, rare_counts=((2, 4), (6, 10)),
             json_log=False, subsets=("test",), hyps=None, info=None):
    """A run directory following the convention; `quality` = share of reference words kept in hyps."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"method": method, "label": label, "seed": seed, "lr": 5e-4,
                                                  **(info or {})}))
    line = json_valid_line if json_log else simple_valid_line
    q = 5.0 if method != "ls" else None
    (run_dir / "train.log").write_text("\n".join(
        ["2024-01-01 00:00:00 | INFO | fairseq_cli.train | begin training"] +
        [train_inner_line(50, 7.0 - seed * 0.1, q), train_inner_line(150, 6.0 - seed * 0.1, q)] +
        [line(updates, loss) for updates, loss in ((100, 6.0 - seed * 0.1), (200, 5.0 - seed * 0.1))]) + "\n")
    bleu, sacre, chrf = scores
    (m1, h1), (m2, h2) = rare_counts
    for subset in subsets:
        eval_dir = run_dir / "eval" / subset
        eval_dir.mkdir(parents=True)
        (eval_dir / "scores.json").write_text(json.dumps({
            "bleu": {"score": bleu, "sys_len": 90, "ref_len": 100},
            "sacrebleu": {"score": sacre, "signature": "nrefs:1|case:mixed|tok:13a"},
            "chrf": {"score": chrf, "signature": "nrefs:1|nc:6"}, "beam": 5, "lenpen": 1.0,
            "checkpoint": f"{run_dir}/checkpoints/checkpoint_best.pt", "num_sentences": N_SENTENCES}))
        (eval_dir / "longtail.json").write_text(json.dumps({"level": "word", "buckets": [
            bucket(0, 1, 5, 2, 1), bucket(1, 2, 8, h1, m1), bucket(2, 10, 12, h2, m2),
            bucket(10, 1000, 100, 98, 90), bucket(1000, None, 0, 0, 0)]}))   # the last bucket is empty
        lines = hyps if hyps is not None else hypotheses(quality, seed)
        (eval_dir / "hyp.detok.txt").write_text("".join(h + "\n" for h in lines))
        (eval_dir / "ref.detok.txt").write_text("".join(r + "\n" for r in REFS))
        (eval_dir / "src.txt").write_text("".join(f"quelle {i}\n" for i in range(N_SENTENCES)))
    return run_dir


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [
        make_run(root, "labo-s1", "labo", "LABO τ=1.25", 1, (33.0, 32.5, 56.0), 0.97, ((4, 6), (9, 12))),
        make_run(root, "ls-s2", "ls", "LS", 2, (32.0, 31.0, 54.0), 0.6, json_log=True),
        make_run(root, "ls-s1", "ls", "LS", 1, (30.0, 29.0, 50.0), 0.6),
        make_run(root, "labo-s2", "labo", "LABO τ=1.25", 2, (34.0, 33.5, 57.0), 0.97, ((4, 6), (9, 12))),
    ]


@pytest.fixture(scope="module")
def report(fake_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report"
    failed = tmp_path_factory.mktemp("failed") / "labo-tau-1-seed1"
    failed.mkdir()
    (failed / "train.log").write_text("step 1\nValueError: --labo-tau must be > 0, got -1.0\n")
    proc = run_cli([sys.executable, REPO_ROOT / "scripts" / "report.py", *fake_runs, "--out", out,
                    "--bootstrap-samples", "300",
                    "--failed", f"labo-tau-1-seed1=training labo-tau-1-seed1 failed; see {failed / 'train.log'}"])
    return out, proc.stdout


def rare_f1(m1, h1, m2, h2):
    precision, recall = (m1 + m2) / (h1 + h2), (m1 + m2) / (8 + 12)
    return 2 * precision * recall / (precision + recall)


def test_headline_numbers_and_seed_pooled_significance(report):
    out, stdout = report
    headline = json.loads((out / "report.json").read_text())
    assert headline["baseline"] == "LS" and headline["level"] == "word" and headline["rare_range"] == [1, 10]
    assert headline["subsets"] == ["test"] and headline["test"]["sided"] == "two-sided"
    ls, labo = headline["methods"]
    assert (ls["label"], ls["method"], ls["seeds"]) == ("LS", "ls", [1, 2])
    assert (labo["label"], labo["method"], labo["seeds"], labo["baseline"]) == ("LABO τ=1.25", "labo", [1, 2], "LS")
    assert ls["bleu"]["mean"] == pytest.approx(31.0) and ls["bleu"]["std"] == pytest.approx(2 ** 0.5)
    assert labo["sacrebleu"]["mean"] == pytest.approx(33.0) and labo["chrf"]["std"] == pytest.approx(0.5 ** 0.5)
    assert labo["delta"]["sacrebleu"] == pytest.approx(33.0 - 30.0)
    assert ls["rare_f1"]["mean"] == pytest.approx(rare_f1(2, 4, 6, 10))
    assert labo["length_ratio"]["mean"] == pytest.approx(0.9)
    assert ls["significance"] is None and ls["verdict"] is None
    sig = labo["by_subset"]["test"]["significance"]
    assert (sig["seeds"], sig["baseline_seeds"]) == ([1, 2], [1, 2])   # all seeds, not one pair
    result = sig["sacrebleu"]
    # the test's own scores are the seed means of sacreBLEU on the hypothesis files
    assert result["score"] == pytest.approx(sum(
        significance.compare([hypotheses(0.97, s)], [hypotheses(0.6, s)], REFS)["score"] for s in (1, 2)) / 2)
    assert result["bootstrap"]["p_value"] < 0.01 and result["ar"]["p_value"] < 0.01
    assert result["bootstrap"]["ci"][0] > 0 and sig["verdict"] == "better"
    assert labo["verdict"]["word"] == "better" and labo["verdict"]["better"] == 1 and labo["verdict"]["of"] == 1
    assert "LABO τ=1.25 vs LS: BETTER" in stdout and "31.00 ± 1.41" in stdout
    assert "labo-tau-1-seed1" in stdout


def test_markdown_has_verdict_tables_and_failed_run(report):
    out, _ = report
    markdown = (out / "REPORT.md").read_text()
    p = json.loads((out / "report.json").read_text())["methods"][1]["significance"]["sacrebleu"]["bootstrap"]["p_value"]
    assert (f"- LABO τ=1.25 vs LS: BETTER — better on 1 of 1 test set (p < 0.05, two-sided: "
            f"p = {significance.format_p(p)}); paired bootstrap over seeds and sentences") in markdown
    assert "| LS " in markdown and "31.00 ± 1.41" in markdown and "33.50 ± 0.71" in markdown
    # p column next to the metric it tests, actual scores in the significance details
    header = next(line for line in markdown.splitlines() if line.startswith("| Method") and "Δ sacreBLEU" in line)
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells.index("p (sacreBLEU)") == cells.index("Δ sacreBLEU") + 1 == cells.index("sacreBLEU") + 2
    assert cells.index("p (chrF)") == cells.index("chrF") + 2
    assert "95% CI of Δ" in markdown and "p approx. randomization" in markdown
    # per-seed table: every run with its own numbers
    assert "## Per-seed scores" in markdown
    assert any(line.startswith("| LS ") and "| 1 " in line and "| 30.00 " in line for line in markdown.splitlines())
    assert any(line.startswith("| LABO τ=1.25 ") and "| 2 " in line and "| 34.00 " in line for line in markdown.splitlines())
    # long tail: the empty [1000, inf) bucket shows a dash, not 0.000
    row = next(line for line in markdown.splitlines() if line.startswith("| >=1000"))
    assert "0.000" not in row and row.count("–") == 4
    # setup, signatures labelled, failed run with its reason and log tail
    assert "beam 5, length penalty 1.0" in markdown and "checkpoint_best.pt" in markdown
    assert "BLEU: `nrefs:1|case:mixed|tok:13a`" in markdown and "chrF: `nrefs:1|nc:6`" in markdown
    assert "NOT comparable" in markdown   # fake runs have no raw reference
    assert "## Failed runs" in markdown and "training labo-tau-1-seed1 failed" in markdown
    assert "--labo-tau must be > 0" in markdown
    assert "Last valid loss" not in markdown and "Valid NLL (last)" in markdown
    assert "## Where the outputs differ" in markdown and "quelle " in markdown


def test_plots_have_labelled_axes_and_html_embeds_them(report):
    out, _ = report
    for name in ("longtail.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        height, width, channels = matplotlib.image.imread(out / name).shape
        assert height > 100 and width > 100 and channels in (3, 4)
        for panel in figure_info(out / name):
            assert panel["xlabel"] and panel["ylabel"] and panel["title"]
    longtail = figure_info(out / "longtail.png")
    assert all("word" in panel["title"] or "word" in panel["xlabel"] for panel in longtail)
    assert "LS" in longtail[0]["legend"] and "LABO τ=1.25" in longtail[0]["legend"]
    curves = {panel["title"]: panel for panel in figure_info(out / "curves.png")}
    valid = curves["validation NLL per target token"]
    assert valid["ylabel"] == "NLL (bits/token)" and valid["xlabel"] == "updates"
    assert valid["legend"] == ["LS (mean of 2 seeds ± sd)", "LABO τ=1.25 (mean of 2 seeds ± sd)"]
    q_panel = next(p for title, p in curves.items() if title.startswith("entropy of LABO"))
    assert q_panel["legend"] == ["LABO τ=1.25 (mean of 2 seeds ± sd)"]   # LS logs no q entropy
    page = (out / "REPORT.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and 'src="longtail.png"' not in page
    assert "<td>LABO τ=1.25</td>" in page


def test_identical_outputs_are_reported_as_identical(tmp_path):
    shared = hypotheses(0.8, 1)
    runs = [make_run(tmp_path, "ls-s1", "ls", "LS", 1, (30.0, 29.0, 50.0), 0.8, hyps=shared),
            make_run(tmp_path, "tsla-s1", "tsla", "TSLA (LS, stop 0)", 1, (30.0, 29.0, 50.0), 0.8, hyps=shared)]
    headline = build_report(runs, tmp_path / "report", bootstrap_samples=100)
    sig = headline["methods"][1]["significance"]
    assert sig["identical"] and sig["verdict"] == "identical"
    assert sig["sacrebleu"]["bootstrap"]["p_value"] == 1.0 and sig["sacrebleu"]["delta"] == 0.0
    assert headline["methods"][1]["verdict"]["word"] == "identical"
    assert "identical (p = 1)" in (tmp_path / "report" / "REPORT.md").read_text()
    assert "identical" in format_headline(headline)


def test_significantly_worse_method_says_worse_on_every_test_set(tmp_path):
    subsets = ("test", "test1")
    runs = [make_run(tmp_path, f"ls-s{s}", "ls", "LS", s, (35.0, 35.0, 60.0), 0.95, subsets=subsets) for s in (1, 2)]
    runs += [make_run(tmp_path, f"labo-s{s}", "labo", "LABO τ=1.25", s, (30.0, 30.0, 55.0), 0.55, subsets=subsets)
             for s in (1, 2, 3)]
    headline = build_report(runs, tmp_path / "report", subsets=list(subsets), bootstrap_samples=200)
    labo = headline["methods"][1]
    assert labo["seeds"] == [1, 2, 3] and set(labo["by_subset"]) == set(subsets)
    for s in subsets:
        sig = labo["by_subset"][s]["significance"]
        assert sig["verdict"] == "worse" and sig["sacrebleu"]["delta"] < 0 and sig["sacrebleu"]["bootstrap"]["ci"][1] < 0
        assert sig["sacrebleu"]["ar"] is None    # 3 seeds against 2: no seed pairing for randomization
    p_values = [significance.format_p(labo["by_subset"][s]["significance"]["sacrebleu"]["bootstrap"]["p_value"])
                for s in subsets]
    assert labo["verdict"] == {"better": 0, "worse": 2, "no_difference": 0, "identical": 0, "of": 2, "word": "worse",
                               "text": f"worse on 2 of 2 test sets (p < 0.05, two-sided: p = {', '.join(p_values)}); "
                                       f"paired bootstrap over seeds and sentences"}
    markdown = (tmp_path / "report" / "REPORT.md").read_text()
    assert "LABO τ=1.25 vs LS: WORSE — worse on 2 of 2 test sets" in markdown
    assert "## Test set test" in markdown and "## Test set test1" in markdown
    assert "test1 sacreBLEU" in markdown   # per-seed table covers every test set


def test_planted_difference_is_significant_in_both_directions():
    good, bad = [hypotheses(0.95, s) for s in (1, 2)], [hypotheses(0.6, s) for s in (1, 2)]
    better = significance.compare(good, bad, REFS, n_samples=300)
    worse = significance.compare(bad, good, REFS, n_samples=300)
    assert better["delta"] == pytest.approx(-worse["delta"]) and better["delta"] > 10
    for result, word in ((better, "better"), (worse, "worse")):
        assert result["bootstrap"]["p_value"] < 0.01 and result["ar"]["p_value"] < 0.01
        assert significance.verdict(result) == word
    # two-sided: a small difference in either direction is not significant, and p is symmetric in sign
    near = [hypotheses(0.95, s + 10) for s in (1, 2)]
    a, b = significance.compare(good, near, REFS, n_samples=300), significance.compare(near, good, REFS, n_samples=300)
    assert a["bootstrap"]["p_value"] > 0.05 and significance.verdict(a) == "no significant difference"
    assert a["bootstrap"]["p_value"] == pytest.approx(b["bootstrap"]["p_value"], abs=0.05)


def test_one_lucky_seed_is_not_a_significant_difference():
    # seeds 0.99 / 0.55 against two 0.75 seeds: the seed mean is higher, but it rests on one seed.
    # Resampling sentences alone would call it significant; resampling the seeds too does not.
    lucky = [hypotheses(0.99, 1), hypotheses(0.55, 2)]
    steady = [hypotheses(0.75, 3), hypotheses(0.75, 4)]
    result = significance.compare(lucky, steady, REFS, n_samples=300)
    assert result["delta"] > 1
    assert result["bootstrap"]["p_value"] > 0.05 and significance.verdict(result) == "no significant difference"
    assert result["ar"]["p_value"] < 0.05  # conditional on the seeds, the difference is real


def test_sweep_plot_for_a_tau_alpha_grid(tmp_path):
    runs = [make_run(tmp_path, f"ls-s{s}", "ls", "LS α=0.1", s, (30.0, 30.0, 50.0), 0.7,
                     info={"label_smoothing": 0.1}) for s in (1, 2)]
    for alpha in ("0.1", "0.2"):
        for tau in ("1.25", "inf"):
            for s in (1, 2):
                quality = 0.75 if tau == "inf" else 0.8
                runs.append(make_run(tmp_path, f"labo-a{alpha}-tau{tau}-s{s}", "labo", f"LABO α={alpha} τ={tau}", s,
                                     (31.0, 31.0, 51.0), quality,
                                     info={"label_smoothing": float(alpha), "tau": tau, "config": f"labo-a{alpha}-tau{tau}"}))
    headline = build_report(runs, tmp_path / "report", bootstrap_samples=50, examples=2)
    assert (tmp_path / "report" / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    (panel,) = headline["figures"]["sweep.png"]
    assert panel["xlabel"].startswith("LABO temperature τ") and "sacreBLEU" in panel["ylabel"]
    assert sorted(panel["legend"]) == ["LS α=0.1 (baseline)", "α=0.1", "α=0.2"]
    assert panel["xticklabels"] == ["1.25", "∞ (uniform)"]
    assert [m["baseline"] for m in headline["methods"][1:]] == ["LS α=0.1"] * 4
    assert "![sweep.png](sweep.png)" in (tmp_path / "report" / "REPORT.md").read_text()


def test_run_directory_with_failed_marker_is_listed_not_read(fake_runs, tmp_path):
    broken = tmp_path / "labo-broken-seed1"
    broken.mkdir()
    (broken / "FAILED").write_text("evaluation of labo-broken-seed1 failed; see nowhere\n")
    headline = build_report([fake_runs[2], broken], tmp_path / "report", bootstrap_samples=10)
    assert headline["failed"] == {"labo-broken-seed1": "evaluation of labo-broken-seed1 failed; see nowhere"}
    assert "labo-broken-seed1" in (tmp_path / "report" / "REPORT.md").read_text()


def test_single_group_without_baseline(fake_runs, tmp_path):
    headline = build_report([fake_runs[0]], tmp_path / "report", rare_below=2)
    (only,) = headline["methods"]
    assert headline["baseline"] is None and only["significance"] is None and only["verdict"] is None
    assert only["bleu"] == {"mean": 33.0, "std": 0.0, "n": 1, "values": [33.0]}
    assert only["rare_f1"]["mean"] == pytest.approx(2 * (4 / 6) * (4 / 8) / (4 / 6 + 4 / 8))
    assert "No comparison" in (tmp_path / "report" / "REPORT.md").read_text()


def test_failed_build_leaves_the_previous_report(fake_runs, tmp_path):
    out = tmp_path / "report"
    build_report([fake_runs[0]], out)
    before = (out / "REPORT.md").read_text()
    with pytest.raises(EvaluationError):
        build_report([fake_runs[0]], out, subsets=["test", "test9"])
    assert (out / "REPORT.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]   # no staging left behind


def test_merged_f1_recovers_match_counts():
    buckets = [bucket(lo, hi, 7, 3, 1) for lo, hi in EDGES]
    assert merged_f1(buckets, 1, 10) == pytest.approx(2 * (2 / 6) * (2 / 14) / (2 / 6 + 2 / 14))
    assert merged_f1(buckets, 1, 1) is None


def test_missing_file_is_a_one_line_cli_error(fake_runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fake_runs[0], broken)
    (broken / "eval" / "test" / "longtail.json").unlink()
    proc = run_cli([sys.executable, REPO_ROOT / "scripts" / "report.py", fake_runs[1], broken,
                    "--out", tmp_path / "out"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"report.py: error: run directory {broken} has no test evaluation file {broken / 'eval/test/longtail.json'}")


def test_runs_with_different_references_are_rejected(fake_runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(fake_runs[0], other)
    (other / "eval" / "test" / "ref.detok.txt").write_text("".join(f"x{i}\n" for i in range(len(REFS))))
    with pytest.raises(EvaluationError, match="different references"):
        build_report([fake_runs[2], other], tmp_path / "out", bootstrap_samples=10)
    (other / "run.json").unlink()
    with pytest.raises(EvaluationError, match=f"{other} has no run.json"):
        build_report([other], tmp_path / "out")


def test_training_log_simple_and_json_lines():
    text = "\n".join([simple_valid_line(10, 4.0), json_valid_line(20, 3.5),
                      "x | INFO | valid | epoch 001 | valid on 'valid1' subset | loss 9.0 | num_updates 10",
                      "x | INFO | train | epoch 001 | loss 7.0 | num_updates 10",
                      train_inner_line(5, 6.0, 4.5),
                      'x | INFO | train_inner | {"epoch": 1, "loss": "5.5", "nll_loss": "5.3", "num_updates": "7"}'])
    entries = parse_valid_lines(text)
    assert [(e["num_updates"], e["loss"], e["ppl"]) for e in entries] == [(10, 4.0, 16.0), (20, 3.5, 11.31)]
    assert entries[1]["nll_loss"] == 3.4
    assert [e["loss"] for e in parse_valid_lines(text, subset="valid1")] == [9.0]
    train = parse_train_lines(text)
    assert [(e["num_updates"], e["nll_loss"]) for e in train] == [(5, 5.8), (7, 5.3)]
    assert train[0]["q_entropy"] == 4.5 and "q_entropy" not in train[1]


REPORT = [sys.executable, REPO_ROOT / "scripts" / "report.py"]


def _broken_copy(run, root, name="broken"):
    copy = root / name
    shutil.copytree(run, copy)
    return copy


@pytest.mark.parametrize("flag, value, message", [
    ("--bootstrap-samples", "0", "must be at least 1, got 0"),
    ("--bootstrap-samples", "-5", "must be at least 1, got -5"),
    ("--rare-below", "-3", "must be at least 2, got -3"),
    ("--rare-below", "1", "must be at least 2, got 1"),
    ("--examples", "-1", "must be at least 0, got -1"),
])
def test_bad_numbers_are_refused_at_parsing(fake_runs, tmp_path, flag, value, message):
    proc = run_cli([*REPORT, fake_runs[0], "--out", tmp_path / "out", f"{flag}={value}"], check=False)
    assert_one_line_error(proc, "report.py", f"argument {flag}: {message}")
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused_at_parsing(fake_runs, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    proc = run_cli([*REPORT, fake_runs[0], "--out", existing], check=False)
    assert_one_line_error(proc, "report.py", f"argument --out: {existing} exists and is not a directory")
    proc = run_cli([*REPORT, fake_runs[0], "--out", existing / "report"], check=False)
    assert_one_line_error(proc, "report.py", f"cannot write {existing / 'report'}: {existing} is a file")
    assert existing.read_text() == "keep me\n"


@pytest.mark.parametrize("key, value, message", [
    ("sacrebleu", {"score": "abc"}, "sacrebleu.score must be a number, got 'abc'"),
    ("bleu", {"score": None}, "bleu.score must be a number, got None"),
    ("ter", {"score": [1]}, "ter.score must be a number, got [1]"),
    ("chrf", "50", "has no chrf.score"),
    ("reference", "ref.raw.txt", "\"reference\" must be an object"),
])
def test_non_numeric_score_names_the_file_and_key(fake_runs, tmp_path, key, value, message):
    broken = _broken_copy(fake_runs[0], tmp_path)
    path = broken / "eval" / "test" / "scores.json"
    scores = json.loads(path.read_text())
    scores[key] = value
    path.write_text(json.dumps(scores))
    proc = run_cli([*REPORT, broken, fake_runs[2], "--out", tmp_path / "out"], check=False)
    assert_one_line_error(proc, "report.py", path, message)


@pytest.mark.parametrize("content, message", [
    (b"{\"method\": \"ls\",", "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    (b"[\"ls\"]", "must hold a JSON object, got list"),
    (b"{\"method\": 3}", "needs a \"method\" string"),
    (b"{\"method\": \"ls\", \"seed\": \"1\"}", "\"seed\" must be an integer, got '1'"),
    (b"{\"method\": \"ls\", \"seed\": true}", "\"seed\" must be an integer, got True"),
    (b"{\"method\": \"ls\", \"train_command\": 5}", "\"train_command\" must be a list of strings, got 5"),
    (b"{\"method\": \"ls\", \"label\": [\"LS\"]}", "\"label\" must be a string"),
])
def test_broken_run_json_names_the_file(fake_runs, tmp_path, content, message):
    broken = _broken_copy(fake_runs[0], tmp_path)
    (broken / "run.json").write_bytes(content)
    proc = run_cli([*REPORT, broken, "--out", tmp_path / "out"], check=False)
    assert_one_line_error(proc, "report.py", broken / "run.json", message)


def test_non_utf8_inputs_are_one_line_errors(fake_runs, tmp_path):
    broken = _broken_copy(fake_runs[0], tmp_path)
    hyp = broken / "eval" / "test" / "hyp.detok.txt"
    hyp.write_bytes(hyp.read_bytes().replace(b"\n", b"\n\xc3(", 1))
    proc = run_cli([*REPORT, broken, fake_runs[2], "--out", tmp_path / "out"], check=False)
    assert_one_line_error(proc, "report.py", f"hypothesis file {hyp}: line 2 is not valid UTF-8")
    scores = broken / "eval" / "test" / "scores.json"
    scores.write_bytes(b"\xff" + scores.read_bytes())
    proc = run_cli([*REPORT, broken, fake_runs[2], "--out", tmp_path / "out"], check=False)
    assert_one_line_error(proc, "report.py", f"{scores} is not valid JSON")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]   # no report, nothing half-built


def test_rebuilt_report_replaces_the_old_one_whole(fake_runs, tmp_path):
    out = tmp_path / "report"
    build_report([fake_runs[0], fake_runs[2]], out, bootstrap_samples=10)
    assert (out / "sweep.png").exists() is False and json.loads((out / ".labo-report").read_text())["files"] == [
        "REPORT.html", "REPORT.md", "curves.png", "longtail.png", "report.json"]
    old_md = (out / "REPORT.md").read_text()
    build_report([fake_runs[0]], out)
    assert sorted(p.name for p in out.iterdir()) == [".labo-report", "REPORT.html", "REPORT.md", "curves.png",
                                                     "longtail.png", "report.json"]
    assert (out / "REPORT.md").read_text() != old_md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask   # not the private mode of a temporary directory


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.fixture
def experiment_dir(fake_runs, tmp_path):
    """An experiment directory as a user has it: two run directories and notes of their own."""
    exp = tmp_path / "exp"
    runs = [exp / "ls-s1", exp / "labo-s1"]
    shutil.copytree(fake_runs[2], runs[0])
    shutil.copytree(fake_runs[0], runs[1])
    (exp / "NOTES.txt").write_text("keep me\n")
    return exp, runs


def test_out_holding_runs_or_other_files_is_refused_and_left_whole(experiment_dir):
    # before: `--out EXP` removed the run directories and NOTES.txt, exit status 0
    exp, runs = experiment_dir
    before = _tree(exp)
    proc = run_cli([*REPORT, *runs, "--out", exp, "--bootstrap-samples", "10"], check=False)
    assert_one_line_error(proc, "report.py", f"report directory {exp} is or holds run directory {runs[0]}")
    for out, message in ((runs[0], "is or holds run directory"),
                         (runs[0] / "eval", r"holds files the report did not write \(test\)")):
        with pytest.raises(EvaluationError, match=message) as refused:
            build_report(runs, out, bootstrap_samples=10)
        assert str(out) in str(refused.value)
    notes = exp / "notes"
    notes.mkdir()
    (notes / "NOTES.txt").write_text("mine\n")
    (notes / "REPORT.md").write_text("my own report\n")   # a report's file name, but no report's directory
    with pytest.raises(EvaluationError, match=r"holds files the report did not write \(NOTES.txt, REPORT.md\)"):
        build_report(runs, notes, bootstrap_samples=10)
    assert _tree(exp) == {**before, "notes": None, "notes/NOTES.txt": b"mine\n",
                          "notes/REPORT.md": b"my own report\n"}


def test_a_file_added_to_a_report_directory_is_refused_and_kept(experiment_dir):
    exp, runs = experiment_dir
    out = exp / "report"
    build_report(runs, out, bootstrap_samples=10)
    (out / "mine.txt").write_text("mine\n")
    before = _tree(out)
    proc = run_cli([*REPORT, *runs, "--out", out, "--bootstrap-samples", "10"], check=False)
    assert_one_line_error(proc, "report.py", f"report directory {out} holds files the report did not write "
                                             f"(mine.txt)")
    assert _tree(out) == before


def test_out_dot_is_a_one_line_error(experiment_dir, tmp_path):
    # before: a traceback (PosixPath('.') has an empty name)
    exp, runs = experiment_dir
    for cwd in (exp, tmp_path / "empty"):
        cwd.mkdir(exist_ok=True)
        before = _tree(cwd)
        proc = run_cli([*REPORT, *runs, "--out", ".", "--bootstrap-samples", "10"], cwd=cwd, check=False)
        assert_one_line_error(proc, "report.py", "report directory . is the current directory")
        assert _tree(cwd) == before


def test_report_from_before_manifests_is_replaced(fake_runs, tmp_path):
    out = tmp_path / "report"
    build_report([fake_runs[0]], out)
    (out / ".labo-report").unlink()   # what an earlier version of the report left
    build_report([fake_runs[0], fake_runs[2]], out, bootstrap_samples=10)
    assert (out / ".labo-report").is_file() and "LS" in (out / "REPORT.md").read_text()


def test_staging_of_a_killed_report_is_removed_a_running_ones_kept(fake_runs, tmp_path, capsys):
    # before: a SIGKILLed report's .report.tmp-* stayed beside the report for good
    dead, live = dead_pid(), os.getpid()
    stale = tmp_path / f".report.tmp-{dead}-x1y2"
    running = tmp_path / f".report.tmp-{live}-a3b4"
    for folder in (stale, running):
        folder.mkdir()
        (folder / "longtail.png").write_bytes(PNG_MAGIC)
    (tmp_path / ".report.tmp-old").mkdir()   # no process id: whose it is cannot be told, kept
    previous = tmp_path / f".report.old-{dead}-c5d6"   # a previous report moved aside, killed before removing it
    build_report([fake_runs[0]], previous)
    mixed = tmp_path / f".report.old-{dead}-e7f8"   # ... and one that holds a file of the user's too
    build_report([fake_runs[0]], mixed)
    (mixed / "mine.txt").write_text("mine\n")
    capsys.readouterr()
    build_report([fake_runs[0]], tmp_path / "report", prog="labo-report")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mixed.name, running.name, ".report.tmp-old", "report"]
    assert [p.name for p in mixed.iterdir()] == ["mine.txt"]   # only the report's files went
    assert capsys.readouterr().err.splitlines() == [
        f"labo-report: removed {stale}, left by process {dead}, which no longer runs",
        f"labo-report: removed {previous}, left by process {dead}, which no longer runs"]
