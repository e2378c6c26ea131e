"""Frequency buckets of the long-tail analysis: compare-mt's ranges of training-set frequency,
the bucket of a frequency and the name a bucket has in tables and figures."""
import argparse
from typing import List, Optional, Sequence, Tuple

from labo_fairseq.evaluation.errors import EvaluationError

DEFAULT_BUCKETS = (1, 2, 3, 4, 5, 10, 100, 1000)   # compare_mt.bucketers.FreqWordBucketer's default


def bucket_ranges(lower_edges: Sequence[int] = DEFAULT_BUCKETS) -> List[Tuple[int, Optional[int]]]:
    """[(lo, hi)] with hi exclusive and None for the open last bucket; [0, 1) comes first."""
    edges = [int(edge) for edge in lower_edges]
    if any(edge < 1 for edge in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise EvaluationError(f"bucket edges must be strictly increasing integers >= 1, got {edges}")
    if not edges or edges[0] != 1:
        edges = [1] + edges
    lows = [0] + edges
    return [(lo, lows[i + 1] if i + 1 < len(lows) else None) for i, lo in enumerate(lows)]


def parse_buckets(text: str) -> List[int]:
    """--buckets' value: comma-separated, strictly increasing integers >= 1 (argparse type)."""
    try:
        edges = [int(edge) for edge in text.split(",") if edge.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    try:
        bucket_ranges(edges)
    except EvaluationError as error:
        raise argparse.ArgumentTypeError(f"{error} (from {text!r})") from None
    return edges


def bucket_of(frequency: int, ranges: Sequence[Tuple[int, Optional[int]]]) -> int:
    for index, (lo, hi) in enumerate(ranges):
        if hi is None or frequency < hi:
            return index
    raise AssertionError("the last bucket is open")


def bucket_label(bucket: dict) -> str:
    """compare-mt's bucket names: 'unseen' for [0,1), '3' for [3,4), '[5,10)', '>=1000'."""
    lo, hi = bucket["lo"], bucket["hi"]
    if lo == 0:
        return "unseen"
    if hi is None:
        return f">={lo}"
    return str(lo) if hi == lo + 1 else f"[{lo},{hi})"
