"""Significance of a difference between two systems that were each trained with several seeds.

The quantity compared is what the report shows: the corpus score of each seed's output, averaged
over the seeds, system minus baseline (Δ). Seeds and test sentences are both sources of variance;
testing one seed pair ignores the first, a t-test over a handful of seeds has almost no power
and ignores the second. Each resample recomputes Δ exactly as the report does:

- paired two-level bootstrap (Koehn 2004, with seeds as the upper level): each resample draws
  every system's seeds with replacement (as many as it has) and test sentence ids with
  replacement, the same ids for every seed of both systems; the null distribution is the
  bootstrap distribution of Δ shifted to zero; p = (1 + #{|Δ* − Δ| ≥ |Δ|}) / (B + 1),
  two-sided. Also gives a 95% percentile interval of Δ and each system's bootstrap mean. With
  one seed per system this is the ordinary paired bootstrap; with two or three, the seed level
  is coarse but keeps a lucky seed from passing for a better method.
- approximate randomization (Riezler & Maxwell 2005), when both systems have as many seeds:
  seeds are paired in order and, per sentence, the two systems' outputs are swapped with
  probability 1/2; p = (1 + #{|Δ'| ≥ |Δ|}) / (R + 1), two-sided. It is conditional on the
  seeds (sentence variance only), a second opinion beside the bootstrap.

Identical outputs (the same set of per-seed output files) are reported as such, with p = 1:
there is nothing to test. Corpus scores are sacreBLEU's, computed from its sufficient statistics
(as sacrebleu.significance does), so a resample's score is exactly the metric's corpus score.
"""
from typing import List, Optional, Sequence

import numpy as np

from labo_fairseq.evaluation.errors import EvaluationError

ALPHA = 0.05
DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 12345
METRICS = ("sacrebleu", "chrf")   # both higher-is-better


def _metric(name: str, lowercase: bool):
    from sacrebleu.metrics import BLEU, CHRF

    if name == "sacrebleu":
        return BLEU(lowercase=lowercase)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}")


def _scores(metric, sums: np.ndarray) -> np.ndarray:
    """Corpus score of each row of summed sufficient statistics."""
    return np.array([metric._compute_score_from_stats(row.tolist()).score for row in sums])


def _seed_resampled_mean(per_seed: np.ndarray, rng) -> np.ndarray:
    """per_seed [seeds, resamples] -> each resample's mean over seeds drawn with replacement."""
    k, n_samples = per_seed.shape
    picks = rng.integers(0, k, size=(n_samples, k))
    return per_seed[picks, np.arange(n_samples)[:, None]].mean(1)


def identical_outputs(system: Sequence[Sequence[str]], baseline: Sequence[Sequence[str]]) -> bool:
    """True when both systems produced the same collection of per-seed outputs."""
    return sorted(map(tuple, system)) == sorted(map(tuple, baseline))


def compare(system: Sequence[Sequence[str]], baseline: Sequence[Sequence[str]], references: Sequence[str],
            metric: str = "sacrebleu", lowercase: bool = False, n_samples: int = DEFAULT_SAMPLES,
            seed: int = DEFAULT_SEED) -> dict:
    """Two-sided tests of Δ = mean over seeds of system scores − the same for the baseline.

    `system`, `baseline`: one list of detokenized hypotheses per seed, each aligned with
    `references`. Returns {"metric", "score", "baseline_score", "delta", "identical",
    "bootstrap": {"p_value", "ci": [lo, hi] (95% of Δ), "mean", "baseline_mean", "samples"},
    "ar": {"p_value", "trials"} | None}.
    """
    if not system or not baseline:
        raise EvaluationError("significance test needs at least one output per system")
    n = len(references)
    for outputs in (*system, *baseline):
        if len(outputs) != n:
            raise EvaluationError(f"significance test: an output has {len(outputs)} lines for {n} references")
    scorer = _metric(metric, lowercase)
    refs = [list(references)]
    stats_sys = [np.asarray(scorer._extract_corpus_statistics(list(h), refs), dtype=np.float64) for h in system]
    stats_base = [np.asarray(scorer._extract_corpus_statistics(list(h), refs), dtype=np.float64) for h in baseline]
    score = float(np.mean([_scores(scorer, s.sum(0, keepdims=True))[0] for s in stats_sys]))
    baseline_score = float(np.mean([_scores(scorer, s.sum(0, keepdims=True))[0] for s in stats_base]))
    delta = score - baseline_score
    result = {"metric": metric, "score": score, "baseline_score": baseline_score, "delta": delta,
              "identical": identical_outputs(system, baseline), "bootstrap": None, "ar": None}
    if result["identical"]:
        result["bootstrap"] = {"p_value": 1.0, "ci": [0.0, 0.0], "mean": score, "baseline_mean": baseline_score,
                               "samples": 0}
        result["ar"] = {"p_value": 1.0, "trials": 0} if len(system) == len(baseline) else None
        return result

    rng = np.random.default_rng(seed)
    # How often each sentence is drawn in each resample; one matrix product per seed gives the
    # summed statistics of every resample.
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_samples).astype(np.float64)
    boot_sys = _seed_resampled_mean(np.array([_scores(scorer, counts @ s) for s in stats_sys]), rng)
    boot_base = _seed_resampled_mean(np.array([_scores(scorer, counts @ s) for s in stats_base]), rng)
    diffs = boot_sys - boot_base
    p_boot = (1 + np.sum(np.abs(diffs - delta) >= abs(delta) - 1e-12)) / (n_samples + 1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    result["bootstrap"] = {"p_value": float(min(p_boot, 1.0)), "ci": [float(lo), float(hi)],
                           "mean": float(boot_sys.mean()), "baseline_mean": float(boot_base.mean()),
                           "samples": n_samples}

    if len(system) == len(baseline):
        swaps = rng.integers(0, 2, size=(n_samples, n)).astype(np.float64)
        ar_sys, ar_base = [], []
        for a, b in zip(stats_sys, stats_base):
            moved = swaps @ (b - a)   # what swapping the chosen sentences adds to the system's sums
            ar_sys.append(_scores(scorer, a.sum(0) + moved))
            ar_base.append(_scores(scorer, b.sum(0) - moved))
        ar_diffs = np.mean(ar_sys, axis=0) - np.mean(ar_base, axis=0)
        p_ar = (1 + np.sum(np.abs(ar_diffs) >= abs(delta) - 1e-12)) / (n_samples + 1)
        result["ar"] = {"p_value": float(min(p_ar, 1.0)), "trials": n_samples}
    return result


TEST_NAME = "paired bootstrap over seeds and sentences"


def format_p(p: float, alpha: float = ALPHA) -> str:
    """p rounded for reading (two decimals from 0.1, three from 0.001, else two significant
    digits), with more digits where rounding would put it on the other side of `alpha` (0.04995
    is "0.04995", not "0.050")."""
    text = f"{p:.2f}" if p >= 0.1 else f"{p:.3f}" if p >= 0.001 else f"{p:.2g}"
    digits = 2
    while (float(text) < alpha) != (p < alpha) and digits < 17:
        digits += 1
        text = f"{p:.{digits}g}"
    return text


def verdict(result: dict, alpha: float = ALPHA) -> str:
    """'identical', 'better', 'worse' or 'no significant difference' (by the bootstrap p-value).

    'identical' only when the outputs are the same line for line (`identical_outputs`)."""
    if result["identical"]:
        return "identical"
    if result["bootstrap"]["p_value"] < alpha:
        return "better" if result["delta"] > 0 else "worse"
    return "no significant difference"


def verdict_text(result: dict, alpha: float = ALPHA) -> str:
    """The verdict of one comparison with its p-value, worded so that it never contradicts p:
    'better (p = 0.003 < 0.05, two-sided paired bootstrap over seeds and sentences)',
    'no significant difference (p = 1.00, two-sided ...)', 'identical (the same outputs; p = 1, nothing to
    test)'."""
    word = verdict(result, alpha)
    if word == "identical":
        return "identical (the same outputs; p = 1, nothing to test)"
    p = result["bootstrap"]["p_value"]
    bound = f" < {alpha:g}" if word in ("better", "worse") else ""
    return f"{word} (p = {format_p(p, alpha)}{bound}, two-sided {TEST_NAME})"


def summarize_verdicts(results: Sequence[dict], alpha: float = ALPHA) -> dict:
    """Counts over test sets and the one-line wording, e.g. 'worse on 4 of 4 test sets (p < 0.05,
    two-sided: p = 0.001, 0.002, 0.001, 0.004)'. `results`: one `compare` result per test set.

    Only a count of significant results carries "p < alpha"; the others state their p-values, and
    'identical' needs identical outputs."""
    m = len(results)
    verdicts = [verdict(r, alpha) for r in results]
    p_values = {key: [r["bootstrap"]["p_value"] for r, v in zip(results, verdicts) if v == key]
                for key in ("better", "worse", "no significant difference")}
    counts = {key: sum(v == key for v in verdicts)
              for key in ("better", "worse", "no significant difference", "identical")}
    parts = []
    for key, count in counts.items():
        if not count:
            continue
        of = f"{key} on {count} of {m} test set{'s' if m != 1 else ''}"
        listed = ", ".join(format_p(p, alpha) for p in p_values.get(key, []))
        if key in ("better", "worse"):
            parts.append(f"{of} (p < {alpha:g}, two-sided: p = {listed})")
        elif key == "no significant difference":
            parts.append(f"{of} (p = {listed}, two-sided)")
        else:
            parts.append(f"{of} (the same outputs; p = 1, nothing to test)")
    if counts["better"] == m:
        word = "better"
    elif counts["worse"] == m:
        word = "worse"
    elif counts["identical"] == m:
        word = "identical"
    elif counts["better"] and not counts["worse"]:
        word = "better on some test sets"
    elif counts["worse"] and not counts["better"]:
        word = "worse on some test sets"
    elif counts["better"] and counts["worse"]:
        word = "mixed"
    else:
        word = "no significant difference"
    text = ", ".join(parts)
    if counts["identical"] < m:
        text += f"; {TEST_NAME}"
    return {"better": counts["better"], "worse": counts["worse"],
            "no_difference": counts["no significant difference"], "identical": counts["identical"],
            "of": m, "word": word, "text": text}


def describe(n_samples: int, metric_names: Optional[List[str]] = None) -> str:
    """The one-paragraph statement of what was tested, for the report."""
    return (f"Δ = mean over seeds of each seed's corpus score, method minus baseline. Tests: paired "
            f"two-level bootstrap ({n_samples} resamples; each draws every system's seeds with replacement "
            f"and the test sentences with replacement, the same sentence ids for every seed of both systems, "
            f"so seed and sentence variance both enter), two-sided, "
            f"p = (1 + #{{|Δ* − Δ| ≥ |Δ|}}) / ({n_samples} + 1); approximate randomization (seeds paired in "
            f"order, outputs swapped per sentence; conditional on the seeds) as a second two-sided test when "
            f"both have as many seeds. "
            f"Verdicts use the bootstrap at p < {ALPHA:g} and state its p-value; only outputs that are the same "
            f"line for line are reported as 'identical' (p = 1). Why pooled: one seed pair ignores seed "
            f"variance; a t-test over 2–3 seeds ignores sentence variance and has almost no power.")
