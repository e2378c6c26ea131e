"""The comparison report over evaluated runs (see `runs` for the run-directory convention): does
each method beat label smoothing, on every test set, over all seeds?

Runs are grouped by their label (run.json); runs with one label are seeds of one configuration,
and its scores are the mean ± sample standard deviation (ddof=1) over seeds. Each group is
compared with a label-smoothing group (method "ls"): the one with the same α when there are
several, else the only one; `baseline` names one explicitly. The significance test uses every
seed of both groups (see `significance`); verdicts are counted over the test sets.

Writes, into `out_dir` (built in a temporary directory beside it and swapped in at the end, so a
failure leaves the previous report whole): REPORT.md, REPORT.html (images embedded),
report.json (the headline `build_report` returns), longtail.png, curves.png, for a τ/α sweep
sweep.png, and .labo-report (the names of these files). `out_dir` is the report's own: a new or
empty directory, or a previous report's (all its files named in its .labo-report), which is
replaced; a directory holding anything else (run directories, a user's files), the current
directory and a run directory are refused before anything is written. Only the previous
report's files are removed.
"""
import argparse
import base64
import html
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from labo_fairseq.errors import run_command
from labo_fairseq.evaluation import significance
from labo_fairseq.arguments import int_at_least, output_dir
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.leftovers import remove_stale
from labo_fairseq.evaluation.buckets import bucket_label
from labo_fairseq.evaluation.runs import Run, load_run
from labo_fairseq.textfiles import read_lines, write_json_atomic, write_text_atomic

BASELINE_METHOD = "ls"
# run.json's "method" (and a SAM or IVON run's "criterion") as the report names it
METHOD_NAMES = {"ls": "LS", "tsla": "TSLA", "labo": "LABO", "ivon": "IVON", "ols": "OLS", "sam": "SAM", "ce": "CE"}
# run.json keys that are a method's hyper-parameters, in the order the report shows them, with their names
HYPERPARAMETERS = (("criterion", "on"), ("label_smoothing", "α"), ("tau", "τ"), ("stop_update", "stop at update"),
                   ("ols_weight", "w"), ("ols_topk", "top-K"), ("sam_rho", "ρ"), ("sam_adaptive", "adaptive (ASAM)"),
                   ("lr", "lr"), ("mc_samples", "MC samples"), ("ess", "ess"), ("hess_init", "hess init"))
SCORE_KEYS = (("bleu", "BLEU (tok.)"), ("sacrebleu", "sacreBLEU"), ("chrf", "chrF"), ("ter", "TER"))
SIGNIFICANCE_METRICS = (("sacrebleu", "sacreBLEU"), ("chrf", "chrF"))
DEFAULT_RARE_BELOW = 10
DEFAULT_EXAMPLES = 5
DASH = "–"
MANIFEST = ".labo-report"   # in every report directory: {"written_by": "labo-report", "files": [names]}
# what a report written before manifests held; with report.json among them, such a directory is a report's
UNLISTED_REPORT_FILES = ("REPORT.md", "REPORT.html", "report.json", "longtail.png", "curves.png", "sweep.png")


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


# ------------------------------------------------------------------------------------- grouping


def _group_runs(runs: Sequence[Run]) -> List[dict]:
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
        first = group["runs"][0]
        group["config"] = first.config
        group["tau"] = first.hyperparameter("tau") if group["method"] != BASELINE_METHOD else None
        group["tau_value"] = first.hyperparameter_value("tau") if group["method"] != BASELINE_METHOD else None
        group["label_smoothing"] = first.hyperparameter("label_smoothing")
        group["hyperparameters"] = _hyperparameters(first)
    return list(groups.values())


def _hyperparameters(run: Run) -> Dict[str, object]:
    """{key: value} of the HYPERPARAMETERS run.json records (τ and α also from its train_command)."""
    out = {}
    for key, _ in HYPERPARAMETERS:
        value = run.info.get(key)
        if value is None and key in ("tau", "label_smoothing"):
            value = run.hyperparameter(key)
        if value is not None and value is not False:
            out[key] = value
    return out


def _hyperparameter_text(values: Dict[str, object]) -> str:
    """'on LS, α 0.1, ρ 0.05' for the report's methods table."""
    names = dict(HYPERPARAMETERS)
    words = [names[k] if v is True else f"{names[k]} {METHOD_NAMES.get(v, v)}" if k == "criterion" else
             f"{names[k]} {v:g}" if isinstance(v, float) else f"{names[k]} {v}" for k, v in values.items()]
    return ", ".join(words) or DASH


def _choose_baselines(groups: List[dict], baseline: Optional[str]) -> Tuple[Optional[dict], Dict[str, dict]]:
    """The main baseline group and, per group label, the group it is compared with."""
    if baseline is not None:
        chosen = next((g for g in groups if g["label"] == baseline), None)
        if chosen is None:
            raise EvaluationError(f"baseline {baseline!r} is not a run label; labels: "
                                  f"{', '.join(g['label'] for g in groups)}")
        return chosen, {g["label"]: chosen for g in groups if g is not chosen}
    candidates = [g for g in groups if g["method"] == BASELINE_METHOD]
    if not candidates:
        return None, {}
    main = next((g for g in candidates if g["label_smoothing"] in ("0.1", None)), candidates[0])
    pairing = {}
    for group in groups:
        if group["method"] == BASELINE_METHOD:
            continue
        same_alpha = [c for c in candidates if c["label_smoothing"] == group["label_smoothing"]]
        pairing[group["label"]] = same_alpha[0] if len(same_alpha) == 1 else main
    return main, pairing


# ----------------------------------------------------------------------------------------- scores


def _hyps(run: Run, subset: str) -> List[str]:
    return read_lines(run.evals[subset].directory / "hyp.detok.txt", "hypothesis file", allow_empty=True)


def _references(runs: Sequence[Run], subset: str) -> Tuple[List[str], bool, Path]:
    """The reference sacreBLEU scored (shared by all runs, else an error), and its case setting."""
    first = runs[0].evals[subset]
    refs = read_lines(first.reference_file, "reference file", allow_empty=False)
    for run in runs[1:]:
        other = run.evals[subset]
        if other.lowercase != first.lowercase or read_lines(other.reference_file, "reference file", allow_empty=False) != refs:
            raise EvaluationError(f"runs {runs[0].path} and {run.path} were evaluated on different references "
                                  f"({first.reference_file}, {other.reference_file})")
    return refs, first.lowercase, first.reference_file


def _length_ratio(scores: dict) -> Optional[float]:
    sacre = scores.get("sacrebleu", {})
    if sacre.get("length_ratio") is not None:
        return sacre["length_ratio"]
    bleu = scores.get("bleu", {})
    if bleu.get("ref_len") and bleu.get("sys_len") is not None:
        return bleu["sys_len"] / bleu["ref_len"]
    return None


def _subset_summary(group: dict, subset: str, rare_below: int) -> dict:
    runs = group["runs"]
    entry = {}
    for key, _ in SCORE_KEYS:
        values = [run.evals[subset].scores.get(key, {}).get("score") for run in runs]
        entry[key] = None if any(v is None for v in values) else summarize(values)
    ratios = [_length_ratio(run.evals[subset].scores) for run in runs]
    entry["length_ratio"] = None if any(r is None for r in ratios) else summarize(ratios)
    rare = [merged_f1(run.evals[subset].longtail["buckets"], 1, rare_below) for run in runs]
    entry["rare_f1"] = None if any(value is None for value in rare) else summarize(rare)
    return entry


def _significance(group: dict, base: dict, subset: str, n_samples: int) -> dict:
    refs, lowercase, _ = _references(base["runs"] + group["runs"], subset)
    system = [_hyps(run, subset) for run in group["runs"]]
    baseline = [_hyps(run, subset) for run in base["runs"]]
    for run, hyps in zip(group["runs"] + base["runs"], system + baseline):
        if len(hyps) != len(refs):
            raise EvaluationError(f"line counts differ: hypothesis file {run.evals[subset].directory / 'hyp.detok.txt'} "
                                  f"has {len(hyps)} lines, reference file has {len(refs)}")
    out = {"baseline": base["label"], "seeds": [r.seed for r in group["runs"]],
           "baseline_seeds": [r.seed for r in base["runs"]], "lowercase": lowercase}
    for key, _ in SIGNIFICANCE_METRICS:
        out[key] = significance.compare(system, baseline, refs, key, lowercase, n_samples)
    out["identical"] = out["sacrebleu"]["identical"]
    out["verdict"] = significance.verdict(out["sacrebleu"])
    out["verdict_text"] = significance.verdict_text(out["sacrebleu"])
    return out


# --------------------------------------------------------------------------------- sanity checks

LENGTH_RATIO_RANGE = (0.5, 2.0)
MAX_TER = 100.0
MIN_BLEU = 1.0
NOT_COMPARABLE = "its scores are not comparable with the other runs'"


def _sacrebleu_length_ratio(run: Run, subset: str) -> Optional[float]:
    """hyp/ref length as sacreBLEU's BLEU counts it (scores.json's sacrebleu.length_ratio; for a
    scores.json written before it was recorded, recomputed from hyp.detok.txt and the reference)."""
    evaluation = run.evals[subset]
    sacre = evaluation.scores.get("sacrebleu") or {}
    if isinstance(sacre.get("length_ratio"), (int, float)):
        return float(sacre["length_ratio"])
    from sacrebleu.metrics import BLEU

    refs = read_lines(evaluation.reference_file, "reference file", allow_empty=False)
    hyps = _hyps(run, subset)
    if len(hyps) != len(refs):
        return None   # the significance test names this error
    result = BLEU(lowercase=evaluation.lowercase).corpus_score(hyps, [refs])
    return result.sys_len / result.ref_len if result.ref_len else None


def sanity_warnings(runs: Sequence[Run], subsets: Sequence[str]) -> List[dict]:
    """Scores that say the model or its decoding is broken, per run and test set: sacreBLEU's
    length ratio outside [0.5, 2], TER > 100, empty hypotheses, sacreBLEU < 1.

    Each warning: {"run" (directory), "name" (label and seed), "subset", "check" ("length_ratio" |
    "ter" | "empty_hypotheses" | "bleu"), "value", "limit", "text" (one line naming the run, the
    test set, the value and what it suggests)}."""
    warnings = []
    for run in runs:
        for subset in subsets:
            scores = run.evals[subset].scores
            where = f"{run.name} ({run.path}) on {subset}"

            def add(check, value, limit, text):
                warnings.append({"run": str(run.path), "name": run.name, "subset": subset, "check": check,
                                 "value": value, "limit": limit, "text": f"{where}: {text}"})

            ratio = _sacrebleu_length_ratio(run, subset)
            low, high = LENGTH_RATIO_RANGE
            if ratio is not None and ratio > high:
                add("length_ratio", ratio, [low, high],
                    f"length ratio {ratio:.2f} (hyp/ref, sacreBLEU) is above {high:g}: the output is far longer "
                    f"than the reference (repetition, no end of sentence); the model is probably undertrained "
                    f"or decoding is broken; {NOT_COMPARABLE}")
            elif ratio is not None and ratio < low:
                add("length_ratio", ratio, [low, high],
                    f"length ratio {ratio:.2f} (hyp/ref, sacreBLEU) is below {low:g}: the output is far shorter "
                    f"than the reference; the model is probably undertrained or decoding stops early; "
                    f"{NOT_COMPARABLE}")
            ter = (scores.get("ter") or {}).get("score")
            if isinstance(ter, (int, float)) and ter > MAX_TER:
                add("ter", float(ter), MAX_TER,
                    f"TER {ter:.1f} is above {MAX_TER:g} (more edits than reference words): the output is "
                    f"mostly wrong or far too long; the model is probably undertrained; {NOT_COMPARABLE}")
            hyps = _hyps(run, subset)
            empty = sum(not line.strip() for line in hyps)
            if empty:
                add("empty_hypotheses", empty, 0,
                    f"{empty} of {len(hyps)} hypotheses are empty: the model ends sentences at once (probably "
                    f"undertrained) or decoding failed on them; the empty lines score zero")
            bleu = (scores.get("sacrebleu") or {}).get("score")
            if isinstance(bleu, (int, float)) and bleu < MIN_BLEU:
                add("bleu", float(bleu), MIN_BLEU,
                    f"sacreBLEU {bleu:.2f} is below {MIN_BLEU:g}: the output barely overlaps the reference; the "
                    f"model is probably undertrained (or the wrong reference was scored); {NOT_COMPARABLE}")
    return warnings


# ----------------------------------------------------------------------------------------- report


def build_report(run_dirs: Sequence, out_dir, subsets: Optional[Sequence[str]] = None, baseline: Optional[str] = None,
                 rare_below: int = DEFAULT_RARE_BELOW, bootstrap_samples: int = significance.DEFAULT_SAMPLES,
                 failed: Optional[Dict[str, str]] = None, examples: int = DEFAULT_EXAMPLES,
                 subset: Optional[str] = None, prog: str = "labo-report") -> dict:
    """Writes the report into `out_dir` and returns its headline (also saved as report.json):

        {"subsets": [...], "subset": subsets[0], "baseline": label | None, "level": "word" | "token",
         "rare_range": [1, rare_below], "test": {"description", "samples", "alpha", "sided"},
         "methods": [{"label", "method", "config", "tau", "label_smoothing", "seeds", "runs",
                      "hyperparameters": {run.json key: value} (HYPERPARAMETERS),
                      "baseline": label of the LS group it is compared with | None,
                      "by_subset": {subset: {"bleu" | "sacrebleu" | "chrf" | "ter" | "length_ratio" | "rare_f1":
                                                 {"mean", "std", "n", "values"} | None,
                                             "delta": {"bleu", "sacrebleu", "chrf"} | None,
                                             "significance": None | {"baseline", "seeds", "baseline_seeds",
                                                 "identical", "verdict", "verdict_text" (with p),
                                                 "sacrebleu" | "chrf": significance.compare()}}},
                      "verdict": None | significance.summarize_verdicts() over the subsets,
                      # the first subset's numbers, for callers that print one test set:
                      "bleu", "sacrebleu", "chrf", "ter", "length_ratio", "rare_f1", "delta", "significance"},
                     ...],   # the main baseline first
         "failed": {run name: reason}, "figures": {png name: figure_info}, "files": {...},
         "warnings": sanity_warnings(): [{"run", "name", "subset", "check", "value", "limit", "text"}, ...]}

    `subset` (one name) is accepted for older callers; `failed` lists runs that did not finish
    (run directories holding a FAILED file are added to it instead of being read).
    """
    from labo_fairseq.evaluation.plots import figure_info, plot_longtail, plot_sweep, plot_training_curves

    out_dir = Path(out_dir)
    target = out_dir.resolve()
    check_out_dir(out_dir, run_dirs)
    if subsets is None:
        subsets = [subset or "test"]
    subsets = list(subsets)
    if not subsets:
        raise EvaluationError("no subsets given")
    failed = dict(failed or {})
    loadable = []
    for run_dir in run_dirs:
        marker = Path(run_dir) / "FAILED"
        if marker.is_file():
            failed.setdefault(Path(run_dir).name, marker.read_text(encoding="utf-8", errors="replace").strip())
        else:
            loadable.append(run_dir)
    if not loadable:
        raise EvaluationError("no finished run directories given" + (f" ({len(failed)} failed)" if failed else ""))
    runs = [load_run(run_dir, subsets) for run_dir in loadable]
    for s in subsets:
        _check_same_buckets(runs, s)
    groups = _group_runs(runs)
    main, pairing = _choose_baselines(groups, baseline)
    ordered = ([main] if main else []) + [g for g in groups if g is not main]
    level = runs[0].evals[subsets[0]].longtail.get("level")
    warnings = sanity_warnings(runs, subsets)

    methods = []
    for group in ordered:
        base = pairing.get(group["label"])
        entry = {"label": group["label"], "method": group["method"], "config": group["config"],
                 "tau": group["tau"], "label_smoothing": group["label_smoothing"],
                 "hyperparameters": group["hyperparameters"],
                 "seeds": [run.seed for run in group["runs"]], "runs": [str(run.path) for run in group["runs"]],
                 "baseline": base["label"] if base else None, "by_subset": {}}
        for s in subsets:
            numbers = _subset_summary(group, s, rare_below)
            numbers["delta"], numbers["significance"] = None, None
            if base is not None:
                base_numbers = _subset_summary(base, s, rare_below)
                numbers["delta"] = {key: numbers[key]["mean"] - base_numbers[key]["mean"]
                                    for key in ("bleu", "sacrebleu", "chrf")}
                numbers["significance"] = _significance(group, base, s, bootstrap_samples)
            entry["by_subset"][s] = numbers
        entry["verdict"] = (significance.summarize_verdicts(
            [entry["by_subset"][s]["significance"]["sacrebleu"] for s in subsets]) if base is not None else None)
        entry.update({key: entry["by_subset"][subsets[0]][key]
                      for key in ("bleu", "sacrebleu", "chrf", "ter", "length_ratio", "rare_f1", "delta",
                                  "significance")})
        methods.append(entry)

    target.parent.mkdir(parents=True, exist_ok=True)
    # what a killed report left beside out_dir: its staging directory; a previous report moved aside
    remove_stale(target.parent, rf"\.{re.escape(target.name)}\.tmp-(?P<pid>\d+)-.*", prog)
    remove_stale(target.parent, rf"\.{re.escape(target.name)}\.old-(?P<pid>\d+)-.*", prog, _remove_report)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)   # mkdtemp's 0700 would make the report private
    try:
        figures = {"longtail.png": plot_longtail(
            {g["label"]: [run.evals[subsets[0]].longtail for run in g["runs"]] for g in ordered},
            staging / "longtail.png", level)}
        figures["curves.png"] = plot_training_curves(
            {g["label"]: {"valid": [run.valid for run in g["runs"]], "train": [run.train for run in g["runs"]]}
             for g in ordered}, staging / "curves.png")
        sweep = _sweep_data(ordered, methods, subsets)
        if sweep is not None:
            figures["sweep.png"] = plot_sweep(*sweep, staging / "sweep.png")
        headline = {
            "subsets": subsets, "subset": subsets[0], "baseline": main["label"] if main else None, "level": level,
            "rare_range": [1, rare_below],
            "test": {"description": significance.describe(bootstrap_samples), "samples": bootstrap_samples,
                     "alpha": significance.ALPHA, "sided": "two-sided", "metric": "sacrebleu"},
            "methods": methods, "failed": failed, "warnings": warnings,
            "figures": {name: figure_info(path) for name, path in figures.items()},
            "files": {"markdown": str(out_dir / "REPORT.md"), "html": str(out_dir / "REPORT.html"),
                      "json": str(out_dir / "report.json"),
                      **{name.replace(".", "_"): str(out_dir / name) for name in figures}},
        }
        sections = _sections(headline, ordered, runs, pairing, examples)
        write_text_atomic(staging / "REPORT.md", _render_markdown(sections))
        write_text_atomic(staging / "REPORT.html", _render_html(sections, staging))
        write_json_atomic(staging / "report.json", headline)
        write_json_atomic(staging / MANIFEST, {"written_by": "labo-report",
                                               "files": sorted(p.name for p in staging.iterdir())})
        check_out_dir(out_dir, run_dirs)   # still the report's own after the minutes it took
        _swap_in(staging, target, prog)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return headline


def _report_files(directory: Path) -> set:
    """The names of the files a previous report wrote in `directory`: those its manifest lists, or,
    without a manifest, the report's file names when report.json is one of them; empty when the
    directory is no report's."""
    files = {p.name for p in directory.iterdir() if p.is_file() and not p.is_symlink()}
    try:
        listed = json.loads((directory / MANIFEST).read_text(encoding="utf-8")).get("files")
        if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
            return {MANIFEST, *listed} & files
        return set()
    except FileNotFoundError:
        return set(UNLISTED_REPORT_FILES) & files if "report.json" in files else set()
    except (OSError, ValueError, AttributeError):   # unreadable, not JSON, not an object
        return set()


def _remove_report(directory: Path) -> bool:
    """Removes a previous report's files from `directory`, and the directory when that empties it
    (returns whether it did)."""
    for name in _report_files(directory):
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


def check_out_dir(out_dir, run_dirs: Sequence = ()) -> None:
    """Refuses, naming the directory, a report directory that is not the report's own: the current
    directory or one holding it, a run directory or one holding one, a file, or a directory holding
    anything but a previous report's files."""
    out_dir = Path(out_dir)
    target, cwd = out_dir.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise EvaluationError(f"report directory {out_dir} is the current directory or holds it; give the report a "
                              f"directory of its own (e.g. --out report)")
    for run_dir in run_dirs:
        run = Path(run_dir).resolve()
        if target == run or target in run.parents:
            raise EvaluationError(f"report directory {out_dir} is or holds run directory {run_dir}; give the "
                                  f"report a directory of its own")
    if not target.exists():
        return
    if not target.is_dir():
        raise EvaluationError(f"report directory {out_dir} exists and is not a directory")
    foreign = sorted(set(os.listdir(target)) - _report_files(target))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise EvaluationError(f"report directory {out_dir} holds files the report did not write ({shown}); give "
                              f"a new or empty directory, or a previous report's")


def _swap_in(staging: Path, out_dir: Path, prog: str) -> None:
    """Replaces out_dir (new, empty, or a previous report) by the finished staging directory; the
    old one is moved aside and only its report files removed after, or put back when the new one
    cannot be moved in."""
    aside = None
    if out_dir.exists():
        aside = out_dir.with_name(f".{out_dir.name}.old-{staging.name[len(f'.{out_dir.name}.tmp-'):]}")
        out_dir.rename(aside)
    try:
        staging.rename(out_dir)
    except BaseException:
        if aside is not None:
            aside.rename(out_dir)
        raise
    if aside is not None and not _remove_report(aside):
        print(f"{prog}: kept {aside} (the previous {out_dir.name}): it holds files the report did not write",
              file=sys.stderr)


def _check_same_buckets(runs: Sequence[Run], subset: str) -> None:
    first = runs[0].evals[subset]
    edges = [(b["lo"], b["hi"]) for b in first.longtail["buckets"]]
    for run in runs[1:]:
        other = run.evals[subset]
        if other.longtail.get("level") != first.longtail.get("level") or \
                [(b["lo"], b["hi"]) for b in other.longtail["buckets"]] != edges:
            raise EvaluationError(f"long-tail files differ in level or buckets: {first.directory / 'longtail.json'} "
                                  f"and {other.directory / 'longtail.json'}")


def _sweep_data(groups: List[dict], methods: List[dict], subsets: Sequence[str]):
    """(points, baselines) for plot_sweep when at least two non-LS configurations have a τ."""
    swept = [(g, m) for g, m in zip(groups, methods)
             if g["method"] != BASELINE_METHOD and g["tau_value"] is not None]
    if len(swept) < 2:
        return None
    points, baselines = {}, {}
    for s in subsets:
        points[s] = {}
        for group, entry in swept:
            alpha = group["label_smoothing"] or "?"
            series = f"α={alpha}" if group["method"] == "labo" else f"{group['method'].upper()} α={alpha}"
            stop = group["runs"][0].info.get("stop_update")
            if stop is not None:
                series += f", stop {stop}"
            summary = entry["by_subset"][s]["sacrebleu"]
            points[s].setdefault(series, []).append((group["tau_value"], summary["mean"], summary["std"]))
        baselines[s] = {m["label"]: (m["by_subset"][s]["sacrebleu"]["mean"], m["by_subset"][s]["sacrebleu"]["std"])
                        for g, m in zip(groups, methods) if g["method"] == BASELINE_METHOD}
    return points, baselines


# ------------------------------------------------------------------------------------- formatting


def _fmt(summary: Optional[dict], digits: int = 2) -> str:
    if summary is None:
        return DASH
    if summary["n"] > 1:
        return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"
    return f"{summary['mean']:.{digits}f}"


def _fmt_p(p: Optional[float]) -> str:
    if p is None:
        return DASH
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _fmt_delta(value: Optional[float]) -> str:
    return DASH if value is None else f"{value:+.2f}"


def _test_set_name(runs: Sequence[Run], subset: str) -> str:
    """The published name of a split (prepare.json's test_sets), else the split name."""
    data_bin = runs[0].evals[subset].scores.get("data_bin")
    if data_bin:
        try:
            prepare = json.loads((Path(data_bin) / "prepare.json").read_text(encoding="utf-8"))
            name = (prepare.get("test_sets") or {}).get(subset)
            if name:
                return f"{subset} ({' + '.join(map(str, name)) if isinstance(name, list) else name})"
        except (OSError, ValueError, AttributeError):   # best effort: the split name will do
            pass
    return subset


def _flagged_runs(method: dict, headline: Optional[dict]) -> int:
    """How many runs of the method and of its baseline have a sanity warning."""
    if not headline or not headline.get("warnings"):
        return 0
    flagged = {w["run"] for w in headline["warnings"]}
    base = next((m for m in headline["methods"] if m["label"] == method.get("baseline")), None)
    return len(flagged & set(method.get("runs", []) + (base.get("runs", []) if base else [])))


def _verdict_line(method: dict, headline: Optional[dict] = None) -> str:
    verdict = method["verdict"]
    deltas = [method["by_subset"][s]["delta"]["sacrebleu"] for s in method["by_subset"]]
    mean_delta = sum(deltas) / len(deltas)
    # "BETTER — better on 3 of 4 ..." stresses a clear outcome; other outcomes are stated once
    head = f"{verdict['word'].upper()} — " if verdict["word"] in ("better", "worse", "mixed") else ""
    flagged = _flagged_runs(method, headline)
    caveat = f" (caution: {flagged} run(s) behind it fail the sanity checks; see the warnings)" if flagged else ""
    return (f"{method['label']} vs {method['baseline']}: {head}{verdict['text']}; "
            f"mean Δ sacreBLEU {mean_delta:+.2f} over {verdict['of']} test set{'s' if verdict['of'] != 1 else ''}"
            f"{caveat}")


def _sections(headline: dict, groups: List[dict], runs: List[Run], pairing: Dict[str, dict],
              n_examples: int) -> List[tuple]:
    """The report as ("h1"|"h2"|"h3"|"p"|"table"|"img"|"pre", content) items for Markdown and HTML."""
    methods, subsets = headline["methods"], headline["subsets"]
    rare_lo, rare_hi = headline["rare_range"]
    first = runs[0].evals[subsets[0]].scores
    items = [("h1", "Does each method beat label smoothing?")]

    compared = [m for m in methods if m["verdict"]]
    if compared:
        items.append(("p", "**Verdict** (sacreBLEU on every test set, all seeds, two-sided paired bootstrap):"))
        items.append(("list", [_verdict_line(m, headline) for m in compared]))
    else:
        items.append(("p", "No comparison: there is no baseline group (method \"ls\") or no other group."))
    if headline.get("warnings"):
        runs_named = sorted({w["run"] for w in headline["warnings"]})
        items.append(("p", f"**Warning: the scores of {len(runs_named)} run(s) look broken** (sanity checks: "
                           f"sacreBLEU length ratio within [{LENGTH_RATIO_RANGE[0]:g}, {LENGTH_RATIO_RANGE[1]:g}], "
                           f"TER ≤ {MAX_TER:g}, no empty hypotheses, sacreBLEU ≥ {MIN_BLEU:g}); verdicts that "
                           f"involve them say little:"))
        items.append(("list", [w["text"] for w in headline["warnings"]]))
    if headline["failed"]:
        items.append(("p", f"**{len(headline['failed'])} run(s) failed** and are not in the numbers below: "
                           f"{', '.join(headline['failed'])} (see \"Failed runs\")."))

    # Setup: what was decoded, how, against what
    checkpoints = sorted({str(run.info.get("checkpoint") or Path(str(run.evals[subsets[0]].scores.get("checkpoint", "?"))).name)
                          for run in runs})
    reference = first.get("reference", {})
    ref_text = ("the raw reference text as published" if reference.get("kind") == "raw" else
                "the detokenized binarised reference (no raw reference was recorded: NOT comparable with "
                "published sacreBLEU)")
    items.append(("h2", "Setup"))
    items.append(("list", [
        "Test sets: " + ", ".join(_test_set_name(runs, s) + f" ({first_num(runs, s)} sentences)" for s in subsets),
        f"Decoding: beam {first.get('beam', '?')}, length penalty {first.get('lenpen', '?')}",
        f"Evaluated checkpoint: {'; '.join(checkpoints)}",
        f"BLEU (tok.) is fairseq-generate's tokenized BLEU; sacreBLEU, chrF and TER score the detokenized output "
        f"against {ref_text}" + (", case-insensitively (the training data is lowercased)"
                                 if reference.get("lowercase") else "") + ".",
        "Scores are mean ± sample sd over seeds; Δ is against the LS group named in each row.",
    ]))
    items.append(("table", (["Method", "Kind", "Hyper-parameters", "Seeds"],
                            [[m["label"], METHOD_NAMES.get(m["method"], m["method"]),
                              _hyperparameter_text(m["hyperparameters"]), len(m["seeds"])] for m in methods])))
    items.append(("p", "Signatures: " + "; ".join(
        f"{name}: `{first[key]['signature']}`" for key, name in (("sacrebleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER"))
        if isinstance(first.get(key), dict) and first[key].get("signature"))))
    if first.get("sacrebleu_command"):
        items.append(("p", f"Reproduce in a run's eval/<subset>/ directory: `{first['sacrebleu_command']}`"))
    items.append(("p", "Significance: " + headline["test"]["description"]))

    for s in subsets:
        items.append(("h2", f"Test set {_test_set_name(runs, s)}"))
        headers = ["Method", "Seeds", "BLEU (tok.)", "sacreBLEU", "Δ sacreBLEU", "p (sacreBLEU)", "chrF", "Δ chrF",
                   "p (chrF)", "TER", "Length ratio", f"Rare F1 ({rare_lo}–{rare_hi - 1})", "Verdict"]
        rows = []
        for m in methods:
            numbers = m["by_subset"][s]
            sig = numbers["significance"]
            delta = numbers["delta"] or {}
            rows.append([m["label"], len(m["seeds"]), _fmt(numbers["bleu"]), _fmt(numbers["sacrebleu"]),
                         _fmt_delta(delta.get("sacrebleu")), _p_cell(sig, "sacrebleu"),
                         _fmt(numbers["chrf"]), _fmt_delta(delta.get("chrf")), _p_cell(sig, "chrf"),
                         _fmt(numbers["ter"]), _fmt(numbers["length_ratio"], 3), _fmt(numbers["rare_f1"], 3),
                         (_verdict_cell(sig) if sig else "baseline" if m["label"] == headline["baseline"] else DASH)])
        items.append(("table", (headers, rows)))
        detail = []
        for m in methods:
            sig = m["by_subset"][s]["significance"]
            if not sig:
                continue
            for key, name in SIGNIFICANCE_METRICS:
                result = sig[key]
                boot = result["bootstrap"]
                detail.append([m["label"], name, f"{result['score']:.2f}", f"{result['baseline_score']:.2f}",
                               f"{result['delta']:+.2f}",
                               "identical" if result["identical"] else f"[{boot['ci'][0]:+.2f}, {boot['ci'][1]:+.2f}]",
                               f"{boot['mean']:.2f} / {boot['baseline_mean']:.2f}",
                               "1 (identical)" if result["identical"] else _fmt_p(boot["p_value"]),
                               _fmt_p(result["ar"]["p_value"]) if result["ar"] else "n/a (seed counts differ)"])
        if detail:
            items.append(("p", "Significance details: actual scores (mean over seeds), Δ with its bootstrap 95% "
                               "interval, bootstrap means, two-sided p-values."))
            items.append(("table", (["Method", "Metric", "Score", "LS score", "Δ", "95% CI of Δ",
                                     "Bootstrap mean (method / LS)", "p bootstrap", "p approx. randomization"],
                                    detail)))

    items.append(("h2", "Per-seed scores"))
    headers = ["Method", "Seed"] + [f"{s} {name}" for s in subsets for name in ("BLEU (tok.)", "sacreBLEU", "chrF")]
    rows = []
    for group in groups:
        for run in group["runs"]:
            rows.append([group["label"], run.seed if run.seed is not None else DASH] +
                        [f"{run.evals[s].scores[key]['score']:.2f}" for s in subsets for key in ("bleu", "sacrebleu", "chrf")])
    items.append(("table", (headers, rows)))

    if "sweep.png" in headline["figures"]:
        items += [("h2", "τ/α sweep"),
                  ("p", "sacreBLEU (mean ± sd over seeds) against LABO's temperature τ, one line per α; LS as a "
                        "horizontal line. τ = ∞ (uniform smoothing) is drawn at the right edge."),
                  ("img", "sweep.png")]

    items += [("h2", "Training curves"),
              ("p", "Validation and training NLL (bits per target token) and perplexity: comparable across "
                    "criteria, unlike each criterion's own loss. q entropy: LABO's smoothing distribution (bits; "
                    "log2(V−1) is uniform). Lines are means over seeds with ±1 sd bands."),
              ("img", "curves.png")]

    level = headline["level"]
    for s in subsets:
        items.append(("h2", f"Long tail on {s}: accuracy by training frequency ({level} level)"))
        headers = ["Bucket", f"Ref {level}s"] + [f"{g['label']} {col}" for g in groups for col in ("F1", "hyp/ref")]
        rows = []
        for b, bucket in enumerate(groups[0]["runs"][0].evals[s].longtail["buckets"]):
            row = [bucket_label(bucket), bucket["ref_count"]]
            for group in groups:
                entries = [run.evals[s].longtail["buckets"][b] for run in group["runs"]]
                empty = all(e["ref_count"] == 0 and e["hyp_count"] == 0 for e in entries)
                f1 = None if empty else summarize([e["f1"] for e in entries])
                ratios = [e["ratio"] for e in entries]
                ratio = None if any(r is None for r in ratios) else summarize(ratios)
                row += [_fmt(f1, 3), _fmt(ratio, 3)]
            rows.append(row)
        items.append(("table", (headers, rows)))
        if s == subsets[0]:
            items.append(("img", "longtail.png"))
    items.append(("p", f"{DASH}: the bucket has no {level} in the reference (hyp/ref) or in neither (F1)."))

    items += _example_sections(groups, pairing, subsets[0], n_examples)

    if headline["failed"]:
        items.append(("h2", "Failed runs"))
        items.append(("table", (["Run", "Reason"], [[name, reason.splitlines()[0] if reason else "?"]
                                                    for name, reason in headline["failed"].items()])))
        for name, reason in headline["failed"].items():
            tail = _log_tail(reason)
            if tail:
                items += [("p", f"Last lines of the log of {name}:"), ("pre", tail)]

    headers = ["Run directory", "Label", "Seed", "Updates", "Valid NLL (last)", "Valid ppl (last)", "Checkpoint"]
    rows = [[str(run.path), run.label, run.seed if run.seed is not None else DASH,
             run.valid[-1]["num_updates"] if run.valid else DASH,
             f"{run.valid[-1]['nll_loss']:.3f}" if run.valid and "nll_loss" in run.valid[-1] else DASH,
             f"{run.valid[-1]['ppl']:.2f}" if run.valid and "ppl" in run.valid[-1] else DASH,
             str(run.info.get("checkpoint") or Path(str(run.scores.get("checkpoint", DASH))).name)] for run in runs]
    items += [("h2", "Runs"), ("table", (headers, rows))]
    return items


def first_num(runs: Sequence[Run], subset: str) -> str:
    return str(runs[0].evals[subset].scores.get("num_sentences", "?"))


def _p_cell(sig: Optional[dict], key: str) -> str:
    if not sig:
        return DASH
    result = sig[key]
    return "identical (p = 1)" if result["identical"] else _fmt_p(result["bootstrap"]["p_value"])


def _verdict_cell(sig: dict) -> str:
    """'better vs LS (p = 0.003)', 'no significant difference vs LS (p = 1.00)', 'identical vs LS'."""
    if sig.get("identical"):
        return f"identical vs {sig['baseline']}"
    boot = (sig.get("sacrebleu") or {}).get("bootstrap") or {}
    p = f" (p = {significance.format_p(boot['p_value'])})" if boot.get("p_value") is not None else ""
    return f"{sig['verdict']} vs {sig['baseline']}{p}"


def _log_tail(reason: str, lines: int = 8) -> Optional[str]:
    """The last lines of a log file that a failure reason names ("...; see /path/train.log")."""
    for candidate in re.findall(r"(/\S+\.log)\b", reason or ""):
        path = Path(candidate)
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
            return "\n".join(text[-lines:])
    return None


def _example_sections(groups: List[dict], pairing: Dict[str, dict], subset: str, n: int) -> List[tuple]:
    """compare-mt-style examples: the sentences where a method and its LS baseline differ most in
    sentence chrF (one seed each: the lowest seed both have, else each one's lowest)."""
    from sacrebleu.metrics import CHRF

    items = []
    for group in groups:
        base = pairing.get(group["label"])
        if base is None or n <= 0:
            continue
        base_by_seed = {run.seed: run for run in base["runs"]}
        system_run = next((run for run in group["runs"] if run.seed in base_by_seed), group["runs"][0])
        base_run = base_by_seed.get(system_run.seed, base["runs"][0])
        refs, lowercase, _ = _references([base_run, system_run], subset)
        sources = read_lines(system_run.evals[subset].directory / "src.txt", "source file", allow_empty=True) \
            if (system_run.evals[subset].directory / "src.txt").is_file() else [""] * len(refs)
        hyp_sys, hyp_base = _hyps(system_run, subset), _hyps(base_run, subset)
        chrf = CHRF(lowercase=lowercase)
        differences = []
        for i, (ref, a, b) in enumerate(zip(refs, hyp_sys, hyp_base)):
            if a != b:
                score_a, score_b = chrf.sentence_score(a, [ref]).score, chrf.sentence_score(b, [ref]).score
                differences.append((abs(score_a - score_b), i, score_a, score_b))
        differences.sort(key=lambda d: (-d[0], d[1]))
        items.append(("h3", f"Examples on {subset}: {group['label']} (seed {system_run.seed}) vs {base['label']} "
                            f"(seed {base_run.seed})"))
        if not differences:
            items.append(("p", "The two outputs are identical."))
            continue
        rows = [[i, sources[i] if i < len(sources) else "", refs[i], hyp_base[i], f"{score_b:.1f}", hyp_sys[i],
                 f"{score_a:.1f}"] for _, i, score_a, score_b in differences[:n]]
        items.append(("p", f"{len(differences)} of {len(refs)} sentences differ; the {min(n, len(differences))} "
                           f"with the largest difference in sentence chrF:"))
        items.append(("table", (["Line", "Source", "Reference", base["label"], "chrF", group["label"], "chrF"], rows)))
    if items:
        items.insert(0, ("h2", "Where the outputs differ"))
    return items


def _render_markdown(sections) -> str:
    parts = []
    for kind, content in sections:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + content)
        elif kind == "p":
            parts.append(content)
        elif kind == "list":
            parts.append("\n".join(f"- {line}" for line in content))
        elif kind == "table":
            headers, rows = content
            parts.append(tabulate([[_md_cell(c) for c in row] for row in rows], headers=headers, tablefmt="github",
                                  disable_numparse=True))
        elif kind == "pre":
            parts.append("```\n" + content + "\n```")
        elif kind == "img":
            parts.append(f"![{content}]({content})")
    return "\n\n".join(parts) + "\n"


def _md_cell(cell) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def _inline_html(text: str) -> str:
    """Escapes text and turns the Markdown `code` and **bold** the report uses into HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]*)\*\*", r"<strong>\1</strong>", text)


def _render_html(sections, out_dir: Path) -> str:
    parts = []
    for kind, content in sections:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_html(content)}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(line)}</li>" for line in content) + "</ul>")
        elif kind == "table":
            headers, rows = content
            parts.append(tabulate(rows, headers=headers, tablefmt="html", disable_numparse=True))
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(content)}</pre>")
        elif kind == "img":
            data = base64.b64encode((out_dir / content).read_bytes()).decode("ascii")
            parts.append(f'<img alt="{html.escape(content)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #aaa;padding:2px 8px}"
             "img{max-width:100%}pre{background:#f4f4f4;padding:.5em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Evaluation report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def format_headline(headline: dict) -> str:
    """Plain-text tables of the headline numbers, one per test set, and the verdict lines."""
    blocks = []
    for s in headline.get("subsets") or [headline["subset"]]:
        rows = []
        for m in headline["methods"]:
            numbers = m["by_subset"][s] if "by_subset" in m else m
            sig = numbers.get("significance")
            delta = (numbers.get("delta") or {}).get("sacrebleu")
            rows.append([m["label"], len(m["seeds"]), _fmt(numbers["bleu"]), _fmt(numbers["sacrebleu"]),
                         _fmt_delta(delta), _p_cell(sig, "sacrebleu") if sig and "sacrebleu" in sig else DASH,
                         _fmt(numbers["chrf"]), _verdict_cell(sig) if sig and "verdict" in sig else DASH])
        blocks.append(f"{s}:\n" + tabulate(rows, headers=["method", "seeds", "BLEU (tok.)", "sacreBLEU", "Δ sacreBLEU",
                                                           "p (sacreBLEU)", "chrF", "verdict"],
                                           tablefmt="simple", disable_numparse=True))
    verdicts = [_verdict_line(m, headline) for m in headline["methods"] if m.get("verdict")]
    if verdicts:
        blocks.append(f"verdict (sacreBLEU; two-sided {significance.TEST_NAME}; significant: "
                      f"p < {significance.ALPHA:g}):\n" +
                      "\n".join(f"  {line}" for line in verdicts))
    if headline.get("warnings"):
        blocks.append("\n".join(f"warning: {w['text']}" for w in headline["warnings"]))
    if headline.get("failed"):
        blocks.append("failed runs (not in the numbers): " + ", ".join(headline["failed"]))
    return "\n\n".join(blocks)


def main(argv=None, prog="report.py"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare evaluated runs (RUN_DIR/run.json, train.log, eval/<subset>/...): scores per test "
                    "set, significance of each method against LS over all seeds, verdicts, per-seed table, "
                    "long-tail tables, plots. Run directories holding a FAILED file are listed as failed.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, type=output_dir,
                        help="report directory (REPORT.md, REPORT.html, PNGs): a new or empty one, or a "
                             "previous report's, which is replaced as a whole when the report is complete")
    parser.add_argument("--subset", action="append", dest="subsets", metavar="NAME",
                        help="evaluated subset to report; repeat for several (default: test)")
    parser.add_argument("--baseline", help="label of the baseline group (default: the group(s) with method 'ls')")
    parser.add_argument("--failed", action="append", default=[], metavar="NAME=REASON",
                        help="a run that did not finish, listed in the report")
    parser.add_argument("--rare-below", type=int_at_least(2), default=DEFAULT_RARE_BELOW,
                        help="rare F1 covers training frequencies 1..N-1 (default: %(default)s)")
    parser.add_argument("--bootstrap-samples", type=int_at_least(1), default=significance.DEFAULT_SAMPLES,
                        help="bootstrap resamples and randomization trials (default: %(default)s)")
    parser.add_argument("--examples", type=int_at_least(0), default=DEFAULT_EXAMPLES,
                        help="sentences shown per method where it differs most from LS (default: %(default)s)")
    args = parser.parse_args(argv)
    failed = {}
    for item in args.failed:
        name, sep, reason = item.partition("=")
        if not sep or not name:
            raise EvaluationError(f"--failed expects NAME=REASON, got {item!r}")
        failed[name] = reason
    headline = build_report(args.run_dirs, args.out, args.subsets or ["test"], args.baseline, args.rare_below,
                            args.bootstrap_samples, failed, args.examples, prog=prog)
    print(format_headline(headline))
    print(f"report: {headline['files']['markdown']} and {headline['files']['html']}")


if __name__ == "__main__":
    sys.exit(run_command("report.py", main))
