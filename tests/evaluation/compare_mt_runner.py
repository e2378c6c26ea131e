"""Runs compare-mt's own word-accuracy-by-frequency code (FreqWordBucketer.calc_statistics, what
`compare-mt --compare_word_accuracies bucket_type=freq,freq_corpus_file=...` prints) and writes
its per-bucket statistics as JSON to stdout.

usage: python compare_mt_runner.py TRAIN REF HYP CUTOFF,CUTOFF,...

compare-mt 0.2.10 imports `six` (through its bundled rouge scorer) without declaring it; when
`six` is not installed, a minimal stand-in with the few names it uses is registered first. The
bucketing code under test does not use it.
"""
import builtins
import contextlib
import json
import sys
import types


def ensure_six():
    try:
        import six  # noqa: F401
        return
    except ImportError:
        pass
    six = types.ModuleType("six")
    moves = types.ModuleType("six.moves")
    moves.map, moves.range, moves.xrange, moves.zip = builtins.map, builtins.range, builtins.range, builtins.zip
    six.moves = moves
    six.ensure_str = lambda s, *a, **k: s.decode() if isinstance(s, bytes) else s
    six.iteritems = lambda d, **k: iter(d.items())
    six.iterkeys = lambda d, **k: iter(d.keys())
    sys.modules["six"], sys.modules["six.moves"] = six, moves


def main():
    train, ref, hyp, cutoffs = sys.argv[1:5]
    ensure_six()
    from compare_mt import corpus_utils
    from compare_mt.bucketers import FreqWordBucketer

    with contextlib.redirect_stdout(sys.stderr):  # compare-mt prints progress messages
        bucketer = FreqWordBucketer(freq_corpus_file=train, bucket_cutoffs=[int(c) for c in cutoffs.split(",")])
        statistics, *_ = bucketer.calc_statistics(corpus_utils.load_tokens(ref), [corpus_utils.load_tokens(hyp)])
    keys = ("matches", "ref_count", "hyp_count", "recall", "precision", "f1")
    print(json.dumps({"bucket_strs": bucketer.bucket_strs,
                      "buckets": [dict(zip(keys, map(float, row))) for row in statistics[0]]}))


if __name__ == "__main__":
    main()
