"""Label noise for the training targets: `--target-noise RATE [--target-noise-mode uniform|by-class]
[--target-noise-seed S]` of every `labo-prepare` dataset.

After the subword model is learned on the clean text and applied, target subword tokens of the
training split are substituted by other types of the training target vocabulary (the types that
occur in the subworded training targets); nothing is inserted or deleted, so the clean and noisy
files align token by token, and valid/test stay clean. The clean training target is kept beside
the noisy one as `train.clean.<tgt>`.

Each token is replaced independently with the rate of its type, by a type drawn uniformly from
the other types:
- uniform: every type has rate RATE.
- by-class (class-dependent errors): types are ranked by training frequency, i = 0 for the most
  frequent, and rate_i = clip(k + beta * i, 0, 1) with k = RATE / 2 (even the most frequent type
  is corrupted at half the mean rate) and beta >= 0 chosen (by bisection) so that the
  token-weighted mean rate, sum_i n_i rate_i / sum_i n_i, is RATE: both modes replace the same
  expected fraction of tokens, and rarer types are noisier. A RATE the clipped ramp cannot reach
  (RATE close to 1) is refused.

Reproducible: the draws come from numpy's PCG64 seeded with --target-noise-seed, consumed in
fixed blocks of tokens, so the same text and seed give the same noisy file. prepare.json records
mode, rate, seed, k and beta (by-class), the tokens and the measured fraction replaced.
"""
import os
from collections import Counter
from typing import Dict, List, Sequence

import numpy as np

from . import common
from .common import PrepError, log

MODES = ("uniform", "by-class")
DEFAULT_SEED = 1
BLOCK_LINES = 10000  # the random stream is consumed per block: fixed, for reproducibility


def add_arguments(parser) -> None:
    parser.add_argument("--target-noise", type=float, default=0.0, metavar="RATE",
                        help="replace this fraction of the training target subword tokens by other target "
                             "types (label noise; valid and test stay clean), in [0, 1) (default: 0, none)")
    parser.add_argument("--target-noise-mode", choices=MODES, default="uniform",
                        help="uniform: every type at RATE; by-class: a rate rising linearly with the type's "
                             "frequency rank, token-weighted mean RATE (default: %(default)s)")
    parser.add_argument("--target-noise-seed", type=int, default=DEFAULT_SEED, metavar="S",
                        help="seed of the noise (default: %(default)s)")


def check_arguments(parser, args) -> None:
    rate = args.target_noise
    if not 0.0 <= rate < 1.0:  # NaN fails this too
        parser.error(f"--target-noise must be in [0, 1), got {rate}")
    if args.target_noise_seed < 0:
        parser.error(f"--target-noise-seed must be >= 0, got {args.target_noise_seed}")


def by_class_rates(counts: Sequence[int], rate: float, tol: float = 1e-12) -> (np.ndarray, float, float):
    """Per-type rates for types sorted by decreasing frequency `counts`: (rates, k, beta)."""
    n = np.asarray(counts, dtype=np.float64)
    rank = np.arange(n.size, dtype=np.float64)
    k = rate / 2

    def mean(beta):
        return float((n * np.clip(k + beta * rank, 0.0, 1.0)).sum() / n.sum())

    if n.size < 2 or mean(1.0) < rate - tol:  # beta = 1 already puts every type but the first at 1
        raise PrepError(f"--target-noise {rate} --target-noise-mode by-class: the rate ramp cannot reach a "
                        f"mean of {rate} over {n.size} target types; use a lower rate or --target-noise-mode uniform")
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) < rate else (lo, mid)
    beta = hi
    return np.clip(k + beta * rank, 0.0, 1.0), k, beta


def _blocks(lines: List[str], size: int):
    for start in range(0, len(lines), size):
        yield lines[start:start + size]


def corrupt_lines(lines: List[str], rate: float, mode: str, seed: int):
    """(noisy lines, record) for subworded lines; see the module doc."""
    counts = Counter(token for line in lines for token in line.split())
    types = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]  # frequency rank
    index: Dict[str, int] = {t: i for i, t in enumerate(types)}
    record = {"mode": mode, "rate": rate, "seed": seed, "types": len(types)}
    if mode == "uniform":
        type_rates = np.full(len(types), rate)
    else:
        type_rates, k, beta = by_class_rates([counts[t] for t in types], rate)
        record.update(k=k, beta=beta)
    if len(types) < 2:
        raise PrepError(f"--target-noise: the training targets have {len(types)} type(s); substitution needs two")
    rng = np.random.Generator(np.random.PCG64(seed))
    out, replaced, total = [], 0, 0
    for block in _blocks(lines, BLOCK_LINES):
        tokens = [line.split() for line in block]
        ids = np.fromiter((index[t] for toks in tokens for t in toks), dtype=np.int64)
        hit = rng.random(ids.size) < type_rates[ids]
        # a uniform draw among the other T - 1 types
        draw = rng.integers(0, len(types) - 1, size=ids.size)
        new = np.where(hit, draw + (draw >= ids), ids)
        replaced += int(hit.sum())
        total += ids.size
        pos = 0
        for toks in tokens:
            out.append(" ".join(types[j] for j in new[pos:pos + len(toks)]))
            pos += len(toks)
    record.update(tokens=total, replaced=replaced, measured_fraction=replaced / total if total else 0.0)
    return out, record


def apply_to_training_target(args, text_dir, tgt: str, tag: str):
    """Noises <text_dir>/train.<tgt> when --target-noise > 0 (clean copy kept as train.clean.<tgt>);
    returns {"target_noise": record} for prepare.json, or {} without noise."""
    if not args.target_noise:
        return {}
    timer = common.Timer()
    path = text_dir / f"train.{tgt}"
    clean = text_dir / f"train.clean.{tgt}"
    lines = list(common.iter_lines(path))
    noisy, record = corrupt_lines(lines, args.target_noise, args.target_noise_mode, args.target_noise_seed)
    os.replace(path, clean)
    common.write_lines(path, noisy)
    record["clean_train_target"] = clean.name
    log(tag, f"target noise ({record['mode']}, rate {record['rate']}, seed {record['seed']}): replaced "
             f"{record['replaced']} of {record['tokens']} training target tokens "
             f"({record['measured_fraction']:.4f}) ({timer})")
    return {"target_noise": record}
