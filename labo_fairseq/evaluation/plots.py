"""PNG plots of the report (matplotlib, Agg backend: no display).

Every figure records its panels' titles, axis labels and legend entries as JSON in the PNG's
"Description" text chunk (`figure_info` reads it back), so tests and scripts can check what a
plot shows without looking at pixels.
"""
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from labo_fairseq.evaluation.buckets import bucket_label  # noqa: E402


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def plot_longtail(results_by_label: Dict[str, List[dict]], path, level: Optional[str] = None) -> Path:
    """Grouped bars per frequency bucket: F1 (left) and hyp/ref ratio (right), one colour per
    label, bar height the mean over the label's results (seeds) and error bar their std.
    A bucket with no reference and no hypothesis token has no F1 and gets no bar (nor does a
    bucket without reference tokens get a ratio)."""
    labels = list(results_by_label)
    level = level or results_by_label[labels[0]][0].get("level") or "token"
    buckets = results_by_label[labels[0]][0]["buckets"]
    names = [bucket_label(bucket) for bucket in buckets]
    x = np.arange(len(names))
    width = 0.8 / max(len(labels), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = (("f1", f"F1 of {level} matches by training frequency", "F1 (0–1)"),
              ("ratio", f"{level}s produced / {level}s in the reference", "hyp / ref count"))
    for panel, (metric, title, ylabel) in zip(axes, panels):
        for i, label in enumerate(labels):
            means, stds = [], []
            for b in range(len(names)):
                values = []
                for result in results_by_label[label]:
                    bucket = result["buckets"][b]
                    empty = bucket["ref_count"] == 0 and bucket["hyp_count"] == 0
                    if bucket[metric] is not None and not empty:
                        values.append(bucket[metric])
                mean, std = _mean_std(values) if values else (np.nan, 0.0)
                means.append(mean)
                stds.append(std)
            panel.bar(x + (i - (len(labels) - 1) / 2) * width, means, width, yerr=stds, label=label, capsize=2)
        if metric == "ratio":
            panel.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="ratio 1 (as often as the reference)")
        panel.set_xticks(x)
        panel.set_xticklabels(names, rotation=30)
        panel.set_xlabel(f"frequency of the {level} in the training target text")
        panel.set_ylabel(ylabel)
        panel.set_title(title)
        panel.legend(fontsize="small")
    return _save(fig, path)


def _mean_curve(runs: Sequence[List[dict]], metric: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs at the updates every run logged `metric` at (the last value of an
    update wins, as after a resumed training)."""
    per_run = []
    for entries in runs:
        values = {e["num_updates"]: e[metric] for e in entries if metric in e}
        per_run.append(values)
    common = sorted(set.intersection(*(set(v) for v in per_run))) if per_run else []
    if not common:
        return np.array([]), np.array([]), np.array([])
    matrix = np.array([[values[u] for u in common] for values in per_run])
    std = matrix.std(axis=0, ddof=1) if len(per_run) > 1 else np.zeros(len(common))
    return np.array(common), matrix.mean(axis=0), std


def plot_training_curves(curves: Dict[str, Dict[str, List[List[dict]]]], path) -> Path:
    """Four panels over updates: validation NLL and perplexity, training NLL (all criteria
    comparable: the criterion's own `loss` is not, LS and LABO optimise different objectives),
    and LABO's q entropy during training. One line per label: the mean over its seeds, with a
    ±1 sd band when there are several. `curves`: label -> {"valid": [entries per run],
    "train": [entries per run]}."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = ((axes[0][0], "valid", "nll_loss", "validation NLL per target token", "NLL (bits/token)"),
              (axes[0][1], "valid", "ppl", "validation perplexity", "perplexity (2^NLL)"),
              (axes[1][0], "train", "nll_loss", "training NLL per target token", "NLL (bits/token)"),
              (axes[1][1], "train", "q_entropy", "entropy of LABO's smoothing distribution q (training)",
               "H(q) (bits)"))
    for panel, source, metric, title, ylabel in panels:
        drawn = False
        for i, (label, data) in enumerate(curves.items()):
            runs = data.get(source) or []
            updates, mean, std = _mean_curve(runs, metric)
            if not len(updates):
                continue
            colour = colours[i % len(colours)]
            suffix = f" (mean of {len(runs)} seeds ± sd)" if len(runs) > 1 else ""
            panel.plot(updates, mean, marker=".", color=colour, label=label + suffix)
            if len(runs) > 1:
                panel.fill_between(updates, mean - std, mean + std, color=colour, alpha=0.2)
            drawn = True
        panel.set_xlabel("updates")
        panel.set_ylabel(ylabel)
        panel.set_title(title)
        if drawn:
            panel.legend(fontsize="small")
        else:
            panel.text(0.5, 0.5, "not logged", ha="center", va="center", transform=panel.transAxes)
    return _save(fig, path)


def tau_position(tau: float, finite: Sequence[float]) -> float:
    """x position of τ on the sweep plot: τ itself, or for τ = inf a point right of the largest
    finite τ (the axis is logarithmic)."""
    if math.isinf(tau):
        return (max(finite) if finite else 1.0) * 1.6
    return tau


def plot_sweep(points: Dict[str, Dict[str, List[Tuple[float, float, float]]]],
               baselines: Dict[str, Dict[str, Tuple[float, float]]], path, metric_label: str = "sacreBLEU") -> Path:
    """Score against τ, one line per α, one panel per test set; LS as a horizontal line (±1 sd
    band). τ = inf (uniform smoothing) sits at the right edge, labelled.

    `points`: subset -> {"α=0.1": [(tau, mean, std), ...]}; `baselines`: subset -> {label: (mean, std)}."""
    subsets = list(points)
    fig, axes = plt.subplots(1, len(subsets), figsize=(6 * len(subsets), 4.5), squeeze=False)
    for panel, subset in zip(axes[0], subsets):
        finite = sorted({tau for series in points[subset].values() for tau, _, _ in series if not math.isinf(tau)})
        has_inf = any(math.isinf(tau) for series in points[subset].values() for tau, _, _ in series)
        for series_label, series in sorted(points[subset].items()):
            series = sorted(series, key=lambda p: p[0])
            xs = [tau_position(tau, finite) for tau, _, _ in series]
            panel.errorbar(xs, [m for _, m, _ in series], yerr=[s for _, _, s in series], marker="o", capsize=3,
                           label=series_label)
        for j, (label, (mean, std)) in enumerate(baselines.get(subset, {}).items()):
            line = panel.axhline(mean, color="black", linestyle=("--", ":", "-.")[j % 3], linewidth=1,
                                 label=f"{label} (baseline)")
            if std:
                panel.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.08)
        panel.set_xscale("log")
        ticks = finite + ([tau_position(math.inf, finite)] if has_inf else [])
        panel.set_xticks(ticks)
        panel.set_xticklabels([f"{t:g}" for t in finite] + (["∞ (uniform)"] if has_inf else []))
        panel.minorticks_off()
        panel.set_xlabel("LABO temperature τ (log scale)")
        panel.set_ylabel(f"{metric_label} (mean over seeds ± sd)")
        panel.set_title(f"τ/α sweep on {subset}")
        panel.legend(fontsize="small")
    return _save(fig, path)


def _axes_info(fig) -> List[dict]:
    info = []
    for ax in fig.get_axes():
        legend = ax.get_legend()
        info.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                     "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
                     "legend": [t.get_text() for t in legend.get_texts()] if legend else []})
    return info


def figure_info(path) -> List[dict]:
    """The panels' titles, axis labels and legend entries recorded in a PNG written here."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text["Description"])


def _save(fig, path) -> Path:
    """Writes the PNG aside and renames it: a reader never sees half an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        fig.tight_layout()
        fig.savefig(part, format="png", dpi=100,
                    metadata={"Description": json.dumps(_axes_info(fig), ensure_ascii=False)})
        part.replace(path)
    finally:
        plt.close(fig)
        part.unlink(missing_ok=True)
    return path
