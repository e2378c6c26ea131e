"""The comparison report built from fake runs with known numbers."""
import json
import random
import shutil
import sys
from pathlib import Path

import matplotlib.image
import pytest

from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.report import build_report, merged_f1
from labo_fairseq.evaluation.training_log import parse_valid_lines
from tests.toy import REPO_ROOT, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EDGES = [(0, 1), (1, 2), (2, 10), (10, None)]


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


REFS = [" ".join(f"word{random.Random(i).randrange(50)}" for _ in range(8)) + f" end{i}" for i in range(40)]


def make_run(root: Path, name, method, label, seed, scores, rare_counts, quality, json_log=False):
    """A run directory following the convention; `quality` = share of reference words kept in hyps."""
    run_dir = root / name
    eval_dir = run_dir / "eval" / "test"
    eval_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"method": method, "label": label, "seed": seed, "lr": 5e-4}))
    line = json_valid_line if json_log else simple_valid_line
    (run_dir / "train.log").write_text("\n".join(
        ["2024-01-01 00:00:00 | INFO | fairseq_cli.train | begin training"] +
        [line(updates, loss) for updates, loss in ((100, 6.0 - seed * 0.1), (200, 5.0 - seed * 0.1))]) + "\n")
    bleu, sacre, chrf = scores
    (eval_dir / "scores.json").write_text(json.dumps({
        "bleu": {"score": bleu}, "sacrebleu": {"score": sacre, "signature": "nrefs:1|case:mixed|tok:13a"},
        "chrf": {"score": chrf, "signature": "nrefs:1|nc:6"}}))
    (m1, h1), (m2, h2) = rare_counts
    (eval_dir / "longtail.json").write_text(json.dumps({"level": "word", "buckets": [
        bucket(0, 1, 5, 2, 1), bucket(1, 2, 8, h1, m1), bucket(2, 10, 12, h2, m2), bucket(10, None, 100, 98, 90)]}))
    rng = random.Random(seed * 1000 + int(quality * 100))
    hyps = [" ".join(w for w in ref.split() if rng.random() < quality) for ref in REFS]
    (eval_dir / "hyp.detok.txt").write_text("".join(h + "\n" for h in hyps))
    (eval_dir / "ref.detok.txt").write_text("".join(r + "\n" for r in REFS))
    return run_dir


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [
        make_run(root, "labo-s1", "labo", "LABO τ=1.25", 1, (33.0, 32.5, 56.0), ((4, 6), (9, 12)), 0.97),
        make_run(root, "ls-s2", "ls", "LS", 2, (32.0, 31.0, 54.0), ((2, 4), (6, 10)), 0.6, json_log=True),
        make_run(root, "ls-s1", "ls", "LS", 1, (30.0, 29.0, 50.0), ((2, 4), (6, 10)), 0.6),
        make_run(root, "labo-s2", "labo", "LABO τ=1.25", 2, (34.0, 33.5, 57.0), ((4, 6), (9, 12)), 0.97),
    ]


@pytest.fixture(scope="module")
def report(fake_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    proc = run_cli([sys.executable, REPO_ROOT / "scripts" / "report.py", *fake_runs, "--out", out,
                    "--bootstrap-samples", "300"])
    return out, proc.stdout


def rare_f1(m1, h1, m2, h2):
    precision, recall = (m1 + m2) / (h1 + h2), (m1 + m2) / (8 + 12)
    return 2 * precision * recall / (precision + recall)


def test_headline_numbers(report):
    out, stdout = report
    headline = json.loads((out / "report.json").read_text())
    assert headline["baseline"] == "LS" and headline["level"] == "word" and headline["rare_range"] == [1, 10]
    ls, labo = headline["methods"]
    assert (ls["label"], ls["method"], ls["seeds"]) == ("LS", "ls", [1, 2])
    assert (labo["label"], labo["method"], labo["seeds"]) == ("LABO τ=1.25", "labo", [1, 2])
    assert ls["bleu"]["mean"] == pytest.approx(31.0) and ls["bleu"]["std"] == pytest.approx(2 ** 0.5)
    assert labo["sacrebleu"]["mean"] == pytest.approx(33.0) and labo["chrf"]["std"] == pytest.approx(0.5 ** 0.5)
    assert ls["rare_f1"]["mean"] == pytest.approx(rare_f1(2, 4, 6, 10))
    assert labo["rare_f1"]["mean"] == pytest.approx(rare_f1(4, 6, 9, 12))
    assert ls["significance"] is None
    sig = labo["significance"]
    assert (sig["system_seed"], sig["baseline_seed"]) == (1, 1)
    assert sig["sacrebleu"]["p_value"] < 0.05 and sig["sacrebleu"]["score"] > sig["sacrebleu"]["baseline_score"]
    assert "bs:300" in sig["sacrebleu"]["signature"]
    assert "LABO τ=1.25" in stdout and "31.00 ± 1.41" in stdout


def test_markdown_tables(report):
    out, _ = report
    markdown = (out / "REPORT.md").read_text()
    assert "| LS | 1, 2 | 31.00 ± 1.41 | 30.00 ± 1.41 | 52.00 ± 2.83 | " in markdown
    assert "| LABO τ=1.25 | 1, 2 | 33.50 ± 0.71 | 33.00 ± 0.71 | 56.50 ± 0.71 | " in markdown
    assert f"{rare_f1(4, 6, 9, 12):.3f}" in markdown
    # long-tail table: bucket, reference tokens, then F1 and hyp/ref per method (LS first)
    assert f"| [2,10) | 12 | {2 * 0.6 * 0.5 / (0.6 + 0.5):.3f} ± 0.000 | 0.833 ± 0.000 | 0.750 ± 0.000 | 1.000 ± 0.000 |" in markdown
    assert "| Bucket | Ref tokens | LS F1 | LS hyp/ref | LABO τ=1.25 F1 | LABO τ=1.25 hyp/ref |" in markdown
    assert "![longtail.png](longtail.png)" in markdown and "![valid.png](valid.png)" in markdown


def test_plots_are_valid_pngs_and_html_embeds_them(report):
    out, _ = report
    for name in ("longtail.png", "valid.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        height, width, channels = matplotlib.image.imread(out / name).shape
        assert height > 100 and width > 100 and channels in (3, 4)
    page = (out / "REPORT.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and 'src="longtail.png"' not in page
    assert "<td>LABO τ=1.25</td>" in page


def test_single_group_without_baseline(fake_runs, tmp_path):
    headline = build_report([fake_runs[0]], tmp_path / "report", rare_below=2)
    (only,) = headline["methods"]
    assert headline["baseline"] is None and only["significance"] is None
    assert only["bleu"] == {"mean": 33.0, "std": 0.0, "n": 1, "values": [33.0]}
    assert only["rare_f1"]["mean"] == pytest.approx(2 * (4 / 6) * (4 / 8) / (4 / 6 + 4 / 8))
    assert "No comparison" in (tmp_path / "report" / "REPORT.md").read_text()


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
                      "x | INFO | train | epoch 001 | loss 7.0 | num_updates 10"])
    entries = parse_valid_lines(text)
    assert [(e["num_updates"], e["loss"], e["ppl"]) for e in entries] == [(10, 4.0, 16.0), (20, 3.5, 11.31)]
    assert entries[1]["nll_loss"] == 3.4
    assert [e["loss"] for e in parse_valid_lines(text, subset="valid1")] == [9.0]
