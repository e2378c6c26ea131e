"""Long-tail analysis: how well a system produces target types, bucketed by how often each type
occurs in the training target text. NMT under-produces rare types; a fairer label distribution
should raise their hypothesis/reference ratio and F1.

This is compare-mt's word accuracy by frequency (`--compare_word_accuracies
bucket_type=freq,freq_corpus_file=TRAIN`), with the same defaults and counting:

- Bucket edges are the lower edges of half-open ranges of training frequency; the defaults are
  compare-mt's cutoffs 1,2,3,4,5,10,100,1000, giving the buckets [0,1) (types unseen in
  training), [1,2), [2,3), [3,4), [4,5), [5,10), [10,100), [100,1000), [1000,inf). Edge 1 is
  always added, so the first bucket holds exactly the unseen types.
- Matches are clipped per sentence: a hypothesis token matches if its type has not yet been
  matched as often as it occurs in that sentence's reference. Match, hypothesis and reference
  counts are summed over the corpus per bucket; precision = matches / hyp_count, recall =
  matches / ref_count, F1 their harmonic mean. As in compare-mt, all three are 0.0 when a
  bucket has no matches (this covers every zero denominator).
- `types`: distinct types of the bucket that occur in the reference or the hypothesis.
- `ratio` = hyp_count / ref_count (< 1: the system under-produces the bucket); null when the
  reference has no token of the bucket.
- Tokens are whitespace-separated and case-sensitive. (compare-mt splits on single spaces, so
  an empty line is one empty-string token there and nothing here.)

Levels: `token` counts the units as given (subwords when the files hold subwords, as the model
sees them); `word` first joins subwords (BPE `@@ ` or sentencepiece U+2581) in all three inputs.
Both sides must be at the same level, or nearly every word lands in the wrong bucket (a whole
hypothesis word is "unseen" among training subwords). So the markers are looked for: `auto`
(the default) counts words when either side has subwords, and `token` is refused when only one
side has them.
"""
import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from labo_fairseq.errors import run_command
from labo_fairseq.arguments import output_file
from labo_fairseq.evaluation.buckets import (DEFAULT_BUCKETS, bucket_label, bucket_of,  # noqa: F401
                                             bucket_ranges, parse_buckets)
from labo_fairseq.evaluation.errors import EvaluationError, read_parallel
from labo_fairseq.evaluation.subwords import POST_PROCESS_FOR_SUBWORDS, SENTENCEPIECE_SPACE, remove_subwords
from labo_fairseq.textfiles import read_json_object, read_lines, write_json_atomic

LEVELS = ("token", "word")
LEVEL_CHOICES = ("auto",) + LEVELS
SUBWORD_MARKERS = {"bpe": "@@ ", "spm": SENTENCEPIECE_SPACE}
DETECT_LINES = 10000
BUCKET_KEYS = ("lo", "hi", "types", "ref_count", "hyp_count", "ratio", "precision", "recall", "f1")


def count_types(lines: Iterable[str]) -> Counter:
    counts = Counter()
    for line in lines:
        counts.update(line.split())
    return counts


def analyse(train_counts: Dict[str, int], hypotheses: Sequence[str], references: Sequence[str],
            lower_edges: Sequence[int] = DEFAULT_BUCKETS) -> List[dict]:
    """Per-bucket statistics (the `buckets` list of longtail.json) of already-split text lines."""
    if len(hypotheses) != len(references):
        raise EvaluationError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    ranges = bucket_ranges(lower_edges)
    n = len(ranges)
    ref_count, hyp_count, matches = [0] * n, [0] * n, [0] * n
    types = [set() for _ in range(n)]
    bucket_cache: Dict[str, int] = {}

    def bucket(token: str) -> int:
        if token not in bucket_cache:
            bucket_cache[token] = bucket_of(train_counts.get(token, 0), ranges)
        return bucket_cache[token]

    for hyp, ref in zip(hypotheses, references):
        ref_tokens = Counter(ref.split())
        hyp_tokens = Counter(hyp.split())
        for token, count in ref_tokens.items():
            b = bucket(token)
            ref_count[b] += count
            types[b].add(token)
        for token, count in hyp_tokens.items():
            b = bucket(token)
            hyp_count[b] += count
            matches[b] += min(count, ref_tokens.get(token, 0))
            types[b].add(token)

    buckets = []
    for b, (lo, hi) in enumerate(ranges):
        if matches[b]:
            precision = matches[b] / hyp_count[b]
            recall = matches[b] / ref_count[b]
            f1 = 2 * precision * recall / (precision + recall)
        else:
            precision = recall = f1 = 0.0
        buckets.append({
            "lo": lo, "hi": hi, "types": len(types[b]),
            "ref_count": ref_count[b], "hyp_count": hyp_count[b],
            "ratio": hyp_count[b] / ref_count[b] if ref_count[b] else None,
            "precision": precision, "recall": recall, "f1": f1,
        })
    return buckets


def detect_subwords(lines: Sequence[str], limit: int = DETECT_LINES) -> Optional[str]:
    """"bpe" or "spm" when the first `limit` lines carry that segmentation's markers, else None."""
    for line in lines[:limit]:
        if "@@ " in line or line.endswith("@@"):
            return "bpe"
        if SENTENCEPIECE_SPACE in line:
            return "spm"
    return None


def choose_level(level: str, train_kind: Optional[str], hyp_kind: Optional[str], train_ref, hyp) -> Tuple[str, Optional[str]]:
    """(level to use, a message when it was chosen automatically); refuses a token-level count
    of subwords against words."""
    if level == "auto":
        if train_kind or hyp_kind:
            return "word", (f"{train_kind or hyp_kind} subword markers in "
                            f"{'the training text' if train_kind else 'the hypotheses'}: counting words "
                            f"(pass --level token to count subword units on subworded files)")
        return "token", None
    if level == "token" and bool(train_kind) != bool(hyp_kind):
        marked, plain = ("--train-ref", train_ref) if train_kind else ("--hyp", hyp), \
            ("--hyp", hyp) if train_kind else ("--train-ref", train_ref)
        raise EvaluationError(f"{marked[0]} {marked[1]} has {train_kind or hyp_kind} subword markers but {plain[0]} "
                              f"{plain[1]} has none: token-level buckets would be wrong; pass --level word "
                              f"(or --level auto)")
    return level, None


def analyse_files(train_ref, hyp, ref, lower_edges: Sequence[int] = DEFAULT_BUCKETS, level: str = "auto",
                  subwords: Optional[str] = None) -> dict:
    """longtail.json's content for text files. `level` auto | token | word (see the module doc);
    `subwords` (bpe | spm) says how `word` level joins units, by default what the files show."""
    if level not in LEVEL_CHOICES:
        raise EvaluationError(f"level must be one of {LEVEL_CHOICES}, got {level!r}")
    train_lines = read_lines(train_ref, "training target text", allow_empty=False)
    hypotheses, references = read_parallel(hyp, ref)
    train_kind = detect_subwords(train_lines)
    hyp_kind = detect_subwords(hypotheses) or detect_subwords(references)
    level, note = choose_level(level, train_kind, hyp_kind, train_ref, hyp)
    detected = train_kind or hyp_kind
    if subwords is None:
        subwords = detected or "bpe"
    elif detected and subwords != detected:
        raise EvaluationError(f"--subwords {subwords} does not match the {detected} markers in "
                              f"{train_ref if train_kind else hyp}")
    if level == "word":
        mode = POST_PROCESS_FOR_SUBWORDS[subwords]
        train_lines, hypotheses, references = (
            [remove_subwords(line, mode) for line in lines] for lines in (train_lines, hypotheses, references))
    result = {"level": level, "buckets": analyse(count_types(train_lines), hypotheses, references, lower_edges)}
    if note:
        result["note"] = note
    return result


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bucket_problem(bucket) -> Optional[str]:
    """What is wrong with one entry of longtail.json's "buckets", or None."""
    if not isinstance(bucket, dict):
        return f"is not an object: {bucket!r}"
    missing = [key for key in BUCKET_KEYS if key not in bucket]
    if missing:
        return f"has no {', '.join(missing)}"
    for key in ("lo", "types", "ref_count", "hyp_count"):
        if not _is_count(bucket[key]):
            return f"\"{key}\" must be a non-negative integer, got {bucket[key]!r}"
    if bucket["hi"] is not None and not _is_count(bucket["hi"]):
        return f"\"hi\" must be a non-negative integer or null, got {bucket['hi']!r}"
    for key in ("ratio", "precision", "recall", "f1"):
        if not (_is_number(bucket[key]) or (key == "ratio" and bucket[key] is None)):
            return f"\"{key}\" must be a number, got {bucket[key]!r}"
    return None


def load_longtail(path) -> dict:
    """A longtail.json this module wrote; anything else is an EvaluationError naming the file."""
    path = Path(path)
    data = read_json_object(path, "long-tail file")
    if not isinstance(data.get("buckets"), list) or not data["buckets"]:
        raise EvaluationError(f"long-tail file {path} is not a long-tail JSON file (no \"buckets\" list)")
    if "level" in data and data["level"] not in LEVELS:
        raise EvaluationError(f"long-tail file {path}: \"level\" must be one of {LEVELS}, got {data['level']!r}")
    for index, bucket in enumerate(data["buckets"]):
        problem = _bucket_problem(bucket)
        if problem:
            raise EvaluationError(f"long-tail file {path}: bucket {index} {problem}")
    return data


def format_table(result: dict) -> str:
    """The buckets as a text table; "–" where a bucket has nothing to score."""
    from tabulate import tabulate

    rows = []
    for bucket in result["buckets"]:
        empty = bucket["ref_count"] == 0 and bucket["hyp_count"] == 0
        ratio = "–" if bucket["ratio"] is None else f"{bucket['ratio']:.3f}"
        scores = ["–"] * 3 if empty else [f"{bucket[k]:.3f}" for k in ("precision", "recall", "f1")]
        rows.append([bucket_label(bucket), bucket["types"], bucket["ref_count"], bucket["hyp_count"], ratio, *scores])
    level = result.get("level", "token")
    return f"{level} level\n" + tabulate(rows, headers=["bucket", "types", f"ref {level}s", f"hyp {level}s", "hyp/ref",
                                                         "prec", "rec", "F1"], disable_numparse=True)


def main(argv=None, prog="longtail.py"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Word/token accuracy by training frequency (compare-mt's analysis): per bucket "
                    "types, reference and hypothesis counts, hyp/ref ratio, precision, recall, F1.")
    parser.add_argument("--train-ref", required=True, help="training target text (as binarised: subwords)")
    parser.add_argument("--hyp", required=True, help="hypotheses, one per line")
    parser.add_argument("--ref", required=True, help="references, one per line")
    parser.add_argument("--buckets", type=parse_buckets, default=list(DEFAULT_BUCKETS),
                        help="lower edges of training-frequency buckets; a bucket for unseen types "
                             "is always added (default: compare-mt's " + ",".join(map(str, DEFAULT_BUCKETS)) + ")")
    parser.add_argument("--level", choices=LEVEL_CHOICES, default="auto",
                        help="token: units as given; word: join subwords first; auto: word when the "
                             "training text or the hypotheses carry subword markers (default: %(default)s)")
    parser.add_argument("--subwords", choices=("bpe", "spm"),
                        help="segmentation undone by --level word (default: detected from the markers, else bpe)")
    parser.add_argument("--json", required=True, type=output_file, help="output JSON file")
    parser.add_argument("--png", type=output_file, help="also plot F1 and hyp/ref ratio per bucket")
    args = parser.parse_args(argv)
    result = analyse_files(args.train_ref, args.hyp, args.ref, args.buckets, args.level, args.subwords)
    if result.get("note"):
        print(f"{prog}: {result['note']}", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, result)
    if args.png:
        from labo_fairseq.evaluation.plots import plot_longtail

        plot_longtail({Path(args.hyp).name: [result]}, args.png)
    print(format_table(result))


if __name__ == "__main__":
    sys.exit(run_command("longtail.py", main))
