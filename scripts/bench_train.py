#!/usr/bin/env python
"""fairseq-train throughput and peak memory: label_smoothed_cross_entropy vs label_smoothed_labo
(fused and unfused), on the same synthetic data, model and seed, runs alternating.

For each vocabulary size a synthetic parallel corpus is generated (Zipf-distributed words over
V types, each type present) and binarised with a joined dictionary; then each criterion trains
the same transformer for --updates updates, --repeats times, in the order ls, labo-fused,
labo-unfused, ls, ... Reported per variant (median over repeats):
  - words/s: mean of fairseq's `wps` over the train_inner lines after the first (start-up and
    the first updates excluded);
  - peak RSS: the fairseq-train process's maximum resident set size (getrusage of the child).
Ratios are against label_smoothed_cross_entropy measured in the same run.

    python scripts/bench_train.py --vocab 10000 32000 --updates 30 --repeats 2 --out bench.json
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

VARIANTS = {
    "ls": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
    "labo-fused": ["--user-dir", str(REPO / "labo_fairseq"), "--criterion", "label_smoothed_labo",
                   "--label-smoothing", "0.1", "--labo-tau", "1.25"],
    "labo-unfused": ["--user-dir", str(REPO / "labo_fairseq"), "--criterion", "label_smoothed_labo",
                     "--label-smoothing", "0.1", "--labo-tau", "1.25", "--no-labo-fused"],
}


def write_corpus(directory: Path, vocab: int, sentences: int, seed: int = 0) -> None:
    """Source/target text over `vocab` word types per side (Zipf-like, every type appears)."""
    rng = random.Random(seed)
    half = vocab // 2  # joined dictionary: half the types on each side
    weights = [1.0 / (rank + 1) for rank in range(half)]
    for split, n in (("train", sentences), ("valid", 100)):
        with open(directory / f"{split}.src", "w") as src, open(directory / f"{split}.tgt", "w") as tgt:
            for i in range(n):
                length = rng.randint(10, 40)
                words = rng.choices(range(half), weights, k=length)
                if split == "train":  # walk through every type so the dictionary has them all
                    words[0] = (i * 7) % half
                src.write(" ".join(f"s{w}" for w in words) + "\n")
                tgt.write(" ".join(f"t{w}" for w in reversed(words)) + "\n")


def preprocess(text: Path, dest: Path) -> int:
    subprocess.run([str(BIN / "fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
                    "--trainpref", str(text / "train"), "--validpref", str(text / "valid"),
                    "--destdir", str(dest), "--joined-dictionary", "--workers", "2"],
                   check=True, capture_output=True)
    return sum(1 for _ in open(dest / "dict.src.txt")) + 4  # + fairseq's special symbols


def train_once(data_bin: Path, variant: str, args) -> dict:
    save_dir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    command = [str(BIN / "fairseq-train"), str(data_bin), "--cpu", "--arch", "transformer",
               "--encoder-layers", str(args.layers), "--decoder-layers", str(args.layers),
               "--encoder-embed-dim", str(args.dim), "--decoder-embed-dim", str(args.dim),
               "--encoder-ffn-embed-dim", str(4 * args.dim), "--decoder-ffn-embed-dim", str(4 * args.dim),
               "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings",
               "--optimizer", "adam", "--lr", "5e-4", "--max-tokens", str(args.max_tokens),
               "--max-update", str(args.updates), "--seed", "1", "--no-save", "--disable-validation",
               "--num-workers", "0", "--log-format", "simple", "--log-interval", str(args.log_interval),
               "--no-progress-bar", "--save-dir", str(save_dir), *VARIANTS[variant]]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{variant} failed:\n{output[-3000:]}")
    wps = [float(m) for m in re.findall(r"\| train_inner \|.*?wps=([\d.]+)", output)]
    if len(wps) < 2:
        raise RuntimeError(f"{variant}: too few train_inner lines; raise --updates")
    return {"wps": statistics.mean(wps[1:]), "peak_rss_mb": usage.ru_maxrss / 1024}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[10000, 32000], help="joined vocabulary sizes")
    parser.add_argument("--sentences", type=int, default=20000, help="synthetic training pairs")
    parser.add_argument("--updates", type=int, default=30, help="updates per training run")
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant (alternating)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    if "ls" not in args.variants:
        parser.error("--variants must include ls, the baseline of the ratios")

    results = []
    for vocab in args.vocab:
        with tempfile.TemporaryDirectory(prefix="bench-train-data-") as tmp:
            text, data_bin = Path(tmp) / "text", Path(tmp) / "bin"
            text.mkdir()
            write_corpus(text, vocab, args.sentences)
            size = preprocess(text, data_bin)
            runs = {v: [] for v in args.variants}
            for repeat in range(args.repeats):
                for variant in args.variants:
                    runs[variant].append(train_once(data_bin, variant, args))
                    print(f"V={size} {variant} run {repeat + 1}: {runs[variant][-1]}", file=sys.stderr, flush=True)
            for variant, measured in runs.items():
                results.append({"vocab": size, "variant": variant,
                                "wps": statistics.median(r["wps"] for r in measured),
                                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in measured),
                                "runs": measured})

    print("| V | criterion | words/s | × LS | peak RSS (MB) | × LS |\n|---|---|---|---|---|---|")
    for row in results:
        base = next(r for r in results if r["vocab"] == row["vocab"] and r["variant"] == "ls")
        print(f"| {row['vocab']:,} | {row['variant']} | {row['wps']:,.0f} | {row['wps'] / base['wps']:.2f} | "
              f"{row['peak_rss_mb']:,.0f} | {row['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
