"""fairseq's tokenized BLEU (what `fairseq-generate` prints as `BLEU4 = ...` and `fairseq-score`
computes), in plain Python, so that scoring a test set does not import torch and fairseq.

It reproduces fairseq 0.12.2's scorer (`fairseq.scoring.bleu.Scorer` over its C library, on ids of
a fresh `Dictionary`) number for number, quirks included; tests compare the two on random corpora:
- tokens are whitespace-separated words, each sentence ending in `</s>`; the words `<pad>`,
  `</s>` and `<unk>` are fairseq's special symbols;
- leading `<pad>` tokens are dropped, then trailing `</s>`/`<pad>` ones, but never the first
  token: an empty line counts as one token (`</s>`);
- a reference `<unk>` matches nothing;
- n-gram matches are clipped per sentence; a precision with no n-grams is 0.
"""
import math
from collections import Counter
from typing import List, Optional, Sequence

from labo_fairseq.evaluation.errors import EvaluationError

ORDER = 4
_PAD, _EOS, _UNK = "<pad>", "</s>", "<unk>"


def _trimmed_tokens(line: str, unk_matches: bool) -> List[Optional[str]]:
    tokens: List[Optional[str]] = line.split() + [_EOS]
    if not unk_matches:
        tokens = [None if t == _UNK else t for t in tokens]
    start = 0
    while tokens[start] == _PAD:  # stops at the final </s> at the latest
        start += 1
    end = len(tokens) - 1
    while end > start and tokens[end] in (_EOS, _PAD):
        end -= 1
    return tokens[start:end + 1]


def _ngrams(tokens: Sequence[Optional[str]], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """sys_len, ref_len and, per n-gram order, matches and hypothesis n-grams, summed over sentences."""
    stats = {"sys_len": 0, "ref_len": 0, "matches": [0] * ORDER, "totals": [0] * ORDER}
    for hyp_line, ref_line in zip(hypotheses, references):
        hyp, ref = _trimmed_tokens(hyp_line, unk_matches=True), _trimmed_tokens(ref_line, unk_matches=False)
        stats["sys_len"] += len(hyp)
        stats["ref_len"] += len(ref)
        for n in range(1, ORDER + 1):
            if len(hyp) < n:
                continue
            stats["totals"][n - 1] += len(hyp) - n + 1
            if len(ref) >= n:
                ref_counts = _ngrams(ref, n)
                stats["matches"][n - 1] += sum(min(c, ref_counts[g]) for g, c in _ngrams(hyp, n).items())
    return stats


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """{"score", "precisions" (percent), "bp", "sys_len", "ref_len", "string"}; `string` is
    fairseq's `BLEU4 = ...` line. Hypotheses and references are equally many (> 0) lines."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise EvaluationError(f"tokenized BLEU needs equally many (>0) hypotheses and references, "
                              f"got {len(hypotheses)} and {len(references)}")
    stats = corpus_statistics(hypotheses, references)
    precisions = [m / t if t > 0 else 0 for m, t in zip(stats["matches"], stats["totals"])]
    sys_len, ref_len = stats["sys_len"], stats["ref_len"]
    brevity = min(1.0, math.exp(1 - ref_len / sys_len))
    log_sum = sum(math.log(p) if p > 0 else float("-inf") for p in precisions)
    score = brevity * math.exp(log_sum / ORDER) * 100
    percent = [p * 100 for p in precisions]
    string = (f"BLEU{ORDER} = {score:2.2f}, " + "/".join(f"{p:2.1f}" for p in percent)
              + f" (BP={brevity:.3f}, ratio={sys_len / ref_len:.3f}, syslen={sys_len}, reflen={ref_len})")
    return {"score": score, "precisions": percent, "bp": brevity, "sys_len": sys_len, "ref_len": ref_len,
            "string": string}
