"""PNG plots for long-tail results and validation curves (matplotlib, Agg backend: no display)."""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from labo_fairseq.evaluation.longtail import bucket_label  # noqa: E402


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def plot_longtail(results_by_label: Dict[str, List[dict]], path) -> Path:
    """Grouped bars per frequency bucket: F1 (left) and hyp/ref ratio (right), one colour per
    label, bar height the mean over the label's results (seeds) and error bar their std.
    Buckets without reference tokens have no ratio and get no bar."""
    labels = list(results_by_label)
    buckets = results_by_label[labels[0]][0]["buckets"]
    names = [bucket_label(bucket) for bucket in buckets]
    x = np.arange(len(names))
    width = 0.8 / max(len(labels), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for panel, (metric, title) in zip(axes, (("f1", "F1 of token matches"), ("ratio", "hyp / ref count"))):
        for i, label in enumerate(labels):
            means, stds = [], []
            for b in range(len(names)):
                values = [result["buckets"][b][metric] for result in results_by_label[label]]
                values = [v for v in values if v is not None]
                mean, std = _mean_std(values) if values else (np.nan, 0.0)
                means.append(mean)
                stds.append(std)
            panel.bar(x + (i - (len(labels) - 1) / 2) * width, means, width, yerr=stds, label=label, capsize=2)
        if metric == "ratio":
            panel.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        panel.set_xticks(x)
        panel.set_xticklabels(names, rotation=30)
        panel.set_xlabel("training frequency of the type")
        panel.set_title(title)
    axes[0].legend(fontsize="small")
    return _save(fig, path)


def plot_valid_curves(curves: Dict[str, List[Tuple[str, List[dict]]]], path) -> Path:
    """Validation loss (left) and perplexity (right) over updates; one colour per label, one
    line per run (seed) of it. `curves`: label -> [(run name, [{"num_updates", "loss", "ppl"}])]."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, runs) in enumerate(curves.items()):
        for j, (run_name, entries) in enumerate(runs):
            updates = [entry["num_updates"] for entry in entries]
            for panel, metric in zip(axes, ("loss", "ppl")):
                values = [entry.get(metric, np.nan) for entry in entries]
                panel.plot(updates, values, marker=".", color=colours[i % len(colours)],
                           linestyle=("-", "--", ":", "-.")[j % 4], label=label if j == 0 else None)
    for panel, title in zip(axes, ("validation loss", "validation perplexity")):
        panel.set_xlabel("updates")
        panel.set_title(title)
    axes[0].legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
