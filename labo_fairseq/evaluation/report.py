"""Comparison report over evaluated runs (see `runs` for the run-directory convention).

Runs are grouped by their label (run.json); each group's scores are the mean ± sample standard
deviation (ddof=1) over its seeds, or the single value for one seed. The baseline is the group
whose method is "ls" (or the one named by `baseline`); each other group is compared with it by
sacreBLEU's paired bootstrap resampling (sacrebleu.significance.PairedTest, test_type "bs") on
detokenized hypotheses of one seed of each: the lowest seed both have, else the lowest of each.

Writes REPORT_DIR/REPORT.md, REPORT_DIR/REPORT.html (images embedded), REPORT_DIR/report.json
(the headline numbers build_report returns), longtail.png and valid.png.
"""
import argparse
import base64
import html
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from labo_fairseq.evaluation.errors import EvaluationError, read_lines, run_main
from labo_fairseq.evaluation.longtail import bucket_label
from labo_fairseq.evaluation.runs import Run, load_run

BASELINE_METHOD = "ls"
SCORE_KEYS = (("bleu", "BLEU (tok.)"), ("sacrebleu", "sacreBLEU"), ("chrf", "chrF"))
DEFAULT_RARE_BELOW = 10


def summarize(values: Sequence[float]) -> dict:
    """{"mean", "std", "n", "values"}; std is the sample std (ddof=1), 0.0 for a single value."""
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def merged_f1(buckets: Sequence[dict], lo: int, hi: int) -> Optional[float]:
    """F1 of the buckets lying within [lo, hi) taken together (compare-mt's counting).

    Match counts are not stored in longtail.json; they are recovered exactly as
    precision * hyp_count (precision = matches / hyp_count, both integers)."""
    inside = [b for b in buckets if b["lo"] >= lo and b["hi"] is not None and b["hi"] <= hi]
    if not inside:
        return None
    matches = sum(round(b["precision"] * b["hyp_count"]) for b in inside)
    if not matches:
        return 0.0
    precision = matches / sum(b["hyp_count"] for b in inside)
    recall = matches / sum(b["ref_count"] for b in inside)
    return 2 * precision * recall / (precision + recall)


def _group_runs(runs: Sequence[Run], baseline: Optional[str]) -> Tuple[List[dict], Optional[dict]]:
    groups: Dict[str, dict] = {}
    for run in runs:
        group = groups.setdefault(run.label, {"label": run.label, "method": run.method, "runs": []})
        if group["method"] != run.method:
            raise EvaluationError(f"runs labelled {run.label!r} have different methods "
                                  f"({group['method']!r}, {run.method!r} in {run.path})")
        group["runs"].append(run)
    for group in groups.values():
        seeds = [run.seed for run in group["runs"]]
        if len(set(seeds)) != len(seeds):
            raise EvaluationError(f"runs labelled {group['label']!r} repeat a seed: "
                                  f"{', '.join(str(run.path) for run in group['runs'])}")
        group["runs"].sort(key=lambda run: (run.seed is None, run.seed or 0))
    if baseline is not None:
        if baseline not in groups:
            raise EvaluationError(f"baseline {baseline!r} is not a run label; labels: {', '.join(groups)}")
        base = groups[baseline]
    else:
        candidates = [g for g in groups.values() if g["method"] == BASELINE_METHOD]
        if len(candidates) > 1:
            raise EvaluationError(f"several groups have method {BASELINE_METHOD!r} "
                                  f"({', '.join(g['label'] for g in candidates)}); choose one with --baseline")
        base = candidates[0] if candidates else None
    ordered = ([base] if base else []) + [g for g in groups.values() if g is not base]
    return ordered, base


def _paired_runs(group: dict, base: dict) -> Tuple[Run, Run]:
    base_by_seed = {run.seed: run for run in base["runs"]}
    for run in group["runs"]:
        if run.seed in base_by_seed:
            return run, base_by_seed[run.seed]
    return group["runs"][0], base["runs"][0]


def paired_bootstrap(system: Run, baseline: Run, n_samples: int = 1000) -> dict:
    """sacreBLEU's paired bootstrap test of `system` against `baseline` (BLEU and chrF on the
    detokenized text): per metric the score, the bootstrap mean, the 95% CI half-width and the
    p-value; plus the test signatures (seed from SACREBLEU_SEED, default 12345)."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    refs = read_lines(baseline.eval_dir / "ref.detok.txt", "reference file")
    system_refs = read_lines(system.eval_dir / "ref.detok.txt", "reference file")
    if refs != system_refs:
        raise EvaluationError(f"runs {baseline.path} and {system.path} were evaluated on different references "
                              f"({baseline.eval_dir / 'ref.detok.txt'}, {system.eval_dir / 'ref.detok.txt'})")
    named_hyps = []
    for run in (baseline, system):
        hyps = read_lines(run.eval_dir / "hyp.detok.txt", "hypothesis file", allow_empty=True)
        if len(hyps) != len(refs):
            raise EvaluationError(f"line counts differ: hypothesis file {run.eval_dir / 'hyp.detok.txt'} has "
                                  f"{len(hyps)} lines, reference file {run.eval_dir / 'ref.detok.txt'} has {len(refs)}")
        named_hyps.append((run.name, hyps))
    signatures, results = PairedTest(named_hyps,
                                     {"BLEU": BLEU(), "chrF": CHRF()}, [refs],
                                     test_type="bs", n_samples=n_samples)()
    out = {"system": str(system.path), "baseline": str(baseline.path),
           "system_seed": system.seed, "baseline_seed": baseline.seed}
    for key, name in (("sacrebleu", "BLEU"), ("chrf", "chrF2")):
        base_result, result = results[name]
        out[key] = {"score": result.score, "mean": result.mean, "ci": result.ci, "p_value": result.p_value,
                    "baseline_score": base_result.score, "baseline_mean": base_result.mean,
                    "baseline_ci": base_result.ci, "signature": str(signatures[name])}
    return out


def _fmt(summary: Optional[dict], digits: int = 2) -> str:
    if summary is None:
        return "-"
    if summary["n"] > 1:
        return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"
    return f"{summary['mean']:.{digits}f}"


def _table_md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _table_html(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _check_same_buckets(runs: Sequence[Run]) -> None:
    first = runs[0]
    edges = [(b["lo"], b["hi"]) for b in first.longtail["buckets"]]
    for run in runs[1:]:
        if run.longtail.get("level") != first.longtail.get("level") or \
                [(b["lo"], b["hi"]) for b in run.longtail["buckets"]] != edges:
            raise EvaluationError(f"long-tail files differ in level or buckets: {first.eval_dir / 'longtail.json'} "
                                  f"and {run.eval_dir / 'longtail.json'}")


def build_report(run_dirs: Sequence, out_dir, subset: str = "test", baseline: Optional[str] = None,
                 rare_below: int = DEFAULT_RARE_BELOW, bootstrap_samples: int = 1000) -> dict:
    """Writes the report files into `out_dir` and returns the headline numbers:

        {"subset", "baseline": label | None, "level", "rare_range": [1, rare_below],
         "methods": [{"label", "method", "seeds", "runs",
                      "bleu" | "sacrebleu" | "chrf" | "rare_f1": {"mean", "std", "n", "values"},
                      "significance": None | paired_bootstrap(...)}, ...],   # baseline first
         "files": {"markdown", "html", "json", "longtail_png", "valid_png"}}

    rare_f1 is the F1 of the seen types with training frequency in [1, rare_below), from the
    long-tail buckets inside that range; None when no bucket lies inside it.
    """
    from labo_fairseq.evaluation.plots import plot_longtail, plot_valid_curves

    if not run_dirs:
        raise EvaluationError("no run directories given")
    runs = [load_run(run_dir, subset) for run_dir in run_dirs]
    _check_same_buckets(runs)
    groups, base = _group_runs(runs, baseline)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    level = runs[0].longtail.get("level")

    methods = []
    for group in groups:
        entry = {"label": group["label"], "method": group["method"],
                 "seeds": [run.seed for run in group["runs"]], "runs": [str(run.path) for run in group["runs"]]}
        for key, _ in SCORE_KEYS:
            entry[key] = summarize([run.scores[key]["score"] for run in group["runs"]])
        rare = [merged_f1(run.longtail["buckets"], 1, rare_below) for run in group["runs"]]
        entry["rare_f1"] = None if any(value is None for value in rare) else summarize(rare)
        entry["significance"] = None
        if base is not None and group is not base:
            system_run, base_run = _paired_runs(group, base)
            entry["significance"] = paired_bootstrap(system_run, base_run, bootstrap_samples)
        methods.append(entry)

    longtail_png = plot_longtail({g["label"]: [run.longtail for run in g["runs"]] for g in groups},
                                 out_dir / "longtail.png")
    valid_png = plot_valid_curves({g["label"]: [(run.name, run.valid) for run in g["runs"]] for g in groups},
                                  out_dir / "valid.png")
    headline = {"subset": subset, "baseline": base["label"] if base else None, "level": level,
                "rare_range": [1, rare_below], "methods": methods,
                "files": {"markdown": str(out_dir / "REPORT.md"), "html": str(out_dir / "REPORT.html"),
                          "json": str(out_dir / "report.json"), "longtail_png": str(longtail_png),
                          "valid_png": str(valid_png)}}
    sections = _sections(headline, groups, runs)
    (out_dir / "REPORT.md").write_text(_render_markdown(sections), encoding="utf-8")
    (out_dir / "REPORT.html").write_text(_render_html(sections, out_dir), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(headline, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                                         encoding="utf-8")
    return headline


def _sections(headline: dict, groups: List[dict], runs: List[Run]) -> List[tuple]:
    """The report as ("h2"|"p"|"table"|"img", content) items, rendered to Markdown and HTML."""
    methods = headline["methods"]
    rare_lo, rare_hi = headline["rare_range"]
    items = [("h1", f"Evaluation report: {headline['subset']} set"),
             ("p", f"{len(runs)} runs in {len(groups)} groups. Scores are mean ± sample std over seeds "
                   f"where a group has several. BLEU (tok.) is fairseq-generate's tokenized BLEU; "
                   f"sacreBLEU and chrF are on Moses-detokenized text. Rare F1: F1 of types seen "
                   f"{rare_lo}–{rare_hi - 1} times in the training target text ({headline['level']} level).")]
    headers = ["Method", "Seeds", "BLEU (tok.)", "sacreBLEU", "chrF", "Rare F1"]
    rows = [[m["label"], ", ".join(str(s) for s in m["seeds"])] +
            [_fmt(m[key]) for key, _ in SCORE_KEYS] + [_fmt(m["rare_f1"], 3)] for m in methods]
    items += [("h2", "Scores"), ("table", (headers, rows))]
    signatures = {runs[0].scores[key].get("signature") for key in ("sacrebleu", "chrf")}
    items.append(("p", "sacreBLEU signatures: " + "; ".join(sorted(s for s in signatures if s))))

    items.append(("h2", f"Significance against {headline['baseline'] or '(no baseline)'}"))
    compared = [m for m in methods if m["significance"]]
    if not compared:
        items.append(("p", "No comparison: there is no baseline group (method \"ls\") or no other group."))
    else:
        headers = ["Method", "Seed (vs baseline seed)", "sacreBLEU μ ± 95% CI", "p", "chrF μ ± 95% CI", "p"]
        rows = []
        base_sig = compared[0]["significance"]
        rows.append([headline["baseline"], f"{base_sig['baseline_seed']}",
                     f"{base_sig['sacrebleu']['baseline_mean']:.2f} ± {base_sig['sacrebleu']['baseline_ci']:.2f}", "-",
                     f"{base_sig['chrf']['baseline_mean']:.2f} ± {base_sig['chrf']['baseline_ci']:.2f}", "-"])
        for m in compared:
            sig = m["significance"]
            rows.append([m["label"], f"{sig['system_seed']} (vs {sig['baseline_seed']})",
                         f"{sig['sacrebleu']['mean']:.2f} ± {sig['sacrebleu']['ci']:.2f}",
                         f"{sig['sacrebleu']['p_value']:.4f}",
                         f"{sig['chrf']['mean']:.2f} ± {sig['chrf']['ci']:.2f}", f"{sig['chrf']['p_value']:.4f}"])
        items.append(("table", (headers, rows)))
        items.append(("p", "Paired bootstrap resampling (sacreBLEU): " + compared[0]["significance"]["sacrebleu"]["signature"]))

    items.append(("h2", f"Long tail: accuracy by training frequency ({headline['level']} level)"))
    headers = ["Bucket", "Ref tokens"] + [f"{g['label']} {col}" for g in groups for col in ("F1", "hyp/ref")]
    rows = []
    for b, bucket in enumerate(runs[0].longtail["buckets"]):
        row = [bucket_label(bucket), bucket["ref_count"]]
        for group in groups:
            f1 = summarize([run.longtail["buckets"][b]["f1"] for run in group["runs"]])
            ratios = [run.longtail["buckets"][b]["ratio"] for run in group["runs"]]
            ratio = None if any(r is None for r in ratios) else summarize(ratios)
            row += [_fmt(f1, 3), _fmt(ratio, 3)]
        rows.append(row)
    items += [("table", (headers, rows)), ("img", "longtail.png")]
    items += [("h2", "Validation loss and perplexity"), ("img", "valid.png")]
    headers = ["Run directory", "Method", "Label", "Seed", "Last valid loss", "Updates"]
    rows = [[str(run.path), run.method, run.label, run.seed,
             f"{run.valid[-1]['loss']:.3f}" if run.valid and "loss" in run.valid[-1] else "-",
             run.valid[-1]["num_updates"] if run.valid else "-"] for run in runs]
    items += [("h2", "Runs"), ("table", (headers, rows))]
    return items


def _render_markdown(sections) -> str:
    parts = []
    for kind, content in sections:
        if kind == "h1":
            parts.append(f"# {content}")
        elif kind == "h2":
            parts.append(f"## {content}")
        elif kind == "p":
            parts.append(content)
        elif kind == "table":
            parts.append(_table_md(*content))
        elif kind == "img":
            parts.append(f"![{content}]({content})")
    return "\n\n".join(parts) + "\n"


def _render_html(sections, out_dir: Path) -> str:
    parts = []
    for kind, content in sections:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(content)}</p>")
        elif kind == "table":
            parts.append(_table_html(*content))
        elif kind == "img":
            data = base64.b64encode((out_dir / content).read_bytes()).decode("ascii")
            parts.append(f'<img alt="{html.escape(content)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #aaa;padding:2px 8px;text-align:right}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Evaluation report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def format_headline(headline: dict) -> str:
    """A plain-text table of the headline numbers (what the demo prints)."""
    lines = [f"{'method':<24} {'seeds':>5} {'BLEU':>14} {'sacreBLEU':>14} {'chrF':>14} {'rare F1':>14} {'p(BLEU)':>8}"]
    for m in headline["methods"]:
        p_value = m["significance"]["sacrebleu"]["p_value"] if m["significance"] else None
        lines.append(f"{m['label']:<24} {len(m['seeds']):>5} {_fmt(m['bleu']):>14} {_fmt(m['sacrebleu']):>14} "
                     f"{_fmt(m['chrf']):>14} {_fmt(m['rare_f1'], 3):>14} "
                     f"{'-' if p_value is None else f'{p_value:.4f}':>8}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="report.py",
        description="Compare evaluated runs (RUN_DIR/run.json, train.log, eval/<subset>/...): "
                    "score table, paired bootstrap vs LS, long-tail table, plots.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, help="report directory (REPORT.md, REPORT.html, PNGs)")
    parser.add_argument("--subset", default="test", help="evaluated subset to report (default: %(default)s)")
    parser.add_argument("--baseline", help="label of the baseline group (default: the group with method 'ls')")
    parser.add_argument("--rare-below", type=int, default=DEFAULT_RARE_BELOW,
                        help="rare F1 covers training frequencies 1..N-1 (default: %(default)s)")
    parser.add_argument("--bootstrap-samples", type=int, default=1000, help="paired bootstrap resamples")
    args = parser.parse_args(argv)
    headline = build_report(args.run_dirs, args.out, args.subset, args.baseline, args.rare_below,
                            args.bootstrap_samples)
    print(format_headline(headline))
    print(f"report: {headline['files']['markdown']} and {headline['files']['html']}")


if __name__ == "__main__":
    sys.exit(run_main(main, "report.py"))
