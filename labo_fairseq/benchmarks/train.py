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
  - on CUDA (--device cuda), also peak GPU memory: the largest torch.cuda.max_memory_allocated()
    (and _reserved) of the training process, kept across the resets fairseq makes after every
    update (fairseq-train runs through this script's small wrapper so that the allocator can be
    read; one GPU, --distributed-world-size 1). --precision passes --fp16, --bf16 or --amp to fairseq-train.
Ratios are against label_smoothed_cross_entropy measured in the same run. The labo-*-torch and
labo-*-triton variants add --labo-impl and exist only when the criterion has that flag.

    labo-bench train --vocab 10000 32000 --updates 30 --repeats 2 --out bench.json   (scripts/bench_train.py)
    python scripts/bench_train.py --device cuda --precision fp16 --max-tokens 8192 --updates 300
"""
import argparse
import dataclasses
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# the directory holding labo_fairseq (a checkout or site-packages)
PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent

VARIANTS = {
    "ls": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
    "labo-fused": ["--user-dir", str(PACKAGE_PARENT / "labo_fairseq"), "--criterion", "label_smoothed_labo",
                   "--label-smoothing", "0.1", "--labo-tau", "1.25"],
    "labo-unfused": ["--user-dir", str(PACKAGE_PARENT / "labo_fairseq"), "--criterion", "label_smoothed_labo",
                     "--label-smoothing", "0.1", "--labo-tau", "1.25", "--no-labo-fused"],
}
IMPL_VARIANTS = {f"{base}-{impl}": [*VARIANTS[base], "--labo-impl", impl]
                 for base in ("labo-fused", "labo-unfused") for impl in ("torch", "triton")}
# the other label regularizers: Online Label Smoothing (dense S, top-K S) and SAM on label smoothing
REGULARIZER_VARIANTS = {
    "ols-dense": ["--user-dir", str(PACKAGE_PARENT / "labo_fairseq"), "--criterion", "label_smoothed_ols",
                  "--label-smoothing", "0.1", "--ols-topk", "0"],
    "ols-topk": ["--user-dir", str(PACKAGE_PARENT / "labo_fairseq"), "--criterion", "label_smoothed_ols",
                 "--label-smoothing", "0.1", "--ols-topk", "64"],
    "sam": ["--user-dir", str(PACKAGE_PARENT / "labo_fairseq"), "--task", "translation_sam",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
}
ALL_VARIANTS = {**VARIANTS, **IMPL_VARIANTS, **REGULARIZER_VARIANTS}
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"], "amp": ["--amp"]}
PEAK_TAG = "bench_train peak CUDA memory:"


class PeaksAcrossResets:
    """The CUDA allocator's peak allocated and reserved bytes over a whole run. fairseq's trainer
    resets the peak statistics after every update (to log gb_free), so the peak read at the end
    covers only what ran after the last update; this records the peaks before each reset."""

    def __init__(self, cuda):
        self.cuda, self.allocated, self.reserved = cuda, 0, 0
        self._reset = cuda.reset_peak_memory_stats
        cuda.reset_peak_memory_stats = self._recording_reset

    def _recording_reset(self, *args, **kwargs):
        self._record()
        return self._reset(*args, **kwargs)

    def _record(self) -> None:
        self.allocated = max(self.allocated, self.cuda.max_memory_allocated())
        self.reserved = max(self.reserved, self.cuda.max_memory_reserved())

    def peaks(self):
        self._record()
        return self.allocated, self.reserved


def fairseq_train_worker(argv) -> None:
    """fairseq-train in this process, then the CUDA allocator's peak, which only this process can read."""
    import torch
    from fairseq_cli.train import cli_main

    # this module imported labo_fairseq before fairseq, so --user-dir would skip it: importing
    # these after fairseq registers them (as labo_fairseq.register_with_fairseq does)
    from labo_fairseq import criterions, optim, tasks  # noqa: F401
    peaks = PeaksAcrossResets(torch.cuda) if torch.cuda.is_available() else None
    sys.argv = ["fairseq-train", *argv]
    cli_main()
    if peaks is not None:
        allocated, reserved = peaks.peaks()
        print(f"{PEAK_TAG} allocated={allocated} reserved={reserved} device={torch.cuda.get_device_name()}",
              flush=True)


def criterion_has_impl_flag() -> bool:
    # needs fairseq, so it is imported only when an impl variant is wanted
    sys.path.insert(0, str(PACKAGE_PARENT))
    from labo_fairseq.criterions.label_smoothed_labo import LabelSmoothedLaboConfig

    return "labo_impl" in {f.name for f in dataclasses.fields(LabelSmoothedLaboConfig)}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")),
                "unknown CPU")


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
    if args.device == "cpu":
        launch = [str(BIN / "fairseq-train"), str(data_bin), "--cpu"]
    else:
        launch = [sys.executable, str(Path(__file__).resolve()), "--fairseq-train-worker", str(data_bin),
                  "--distributed-world-size", "1", *PRECISION_FLAGS[args.precision]]
    command = [*launch, "--arch", "transformer",
               "--encoder-layers", str(args.layers), "--decoder-layers", str(args.layers),
               "--encoder-embed-dim", str(args.dim), "--decoder-embed-dim", str(args.dim),
               "--encoder-ffn-embed-dim", str(4 * args.dim), "--decoder-ffn-embed-dim", str(4 * args.dim),
               "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings",
               "--optimizer", "adam", "--lr", "5e-4", "--max-tokens", str(args.max_tokens),
               "--max-update", str(args.updates), "--seed", "1", "--no-save", "--disable-validation",
               "--num-workers", "0", "--log-format", "simple", "--log-interval", str(args.log_interval),
               "--no-progress-bar", "--save-dir", str(save_dir), *ALL_VARIANTS[variant]]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{variant} failed:\n{output[-3000:]}")
    wps = [float(m) for m in re.findall(r"\| train_inner \|.*?wps=([\d.]+)", output)]
    if len(wps) < 2:
        raise RuntimeError(f"{variant}: too few train_inner lines; raise --updates")
    result = {"wps": statistics.mean(wps[1:]), "peak_rss_mb": usage.ru_maxrss / 1024}
    if args.device != "cpu":
        peak = re.search(re.escape(PEAK_TAG) + r" allocated=(\d+) reserved=(\d+) device=(.*)", output)
        if peak is None:
            raise RuntimeError(f"{variant}: the wrapper printed no peak CUDA memory:\n{output[-3000:]}")
        result.update(peak_gpu_mib=int(peak.group(1)) / 2**20, peak_gpu_reserved_mib=int(peak.group(2)) / 2**20,
                      device=peak.group(3).strip())
    return result


def main(argv=None, prog="labo-bench train"):
    from labo_fairseq.arguments import output_file

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--fairseq-train-worker"]:
        return fairseq_train_worker(argv[1:])
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[10000, 32000],
                        help="joined vocabulary sizes (default: 10000 32000)")
    parser.add_argument("--sentences", type=int, default=20000, help="synthetic training pairs (default 20000)")
    parser.add_argument("--updates", type=int, default=30, help="updates per training run (default 30)")
    parser.add_argument("--log-interval", type=int, default=5, help="updates per words/s line (default 5)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant, alternating (default 2)")
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (default 2)")
    parser.add_argument("--dim", type=int, default=256, help="model dimension, a multiple of 4 (default 256)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch (default 4096)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu (fairseq-train --cpu) or cuda (one GPU; peak GPU memory reported)")
    parser.add_argument("--precision", choices=list(PRECISION_FLAGS), default="fp32",
                        help="fp16, bf16 or amp pass --fp16, --bf16 or --amp to fairseq-train (CUDA only)")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(ALL_VARIANTS),
                        help="default: ls labo-fused labo-unfused; on CUDA, when the criterion has "
                             "--labo-impl: ls and the four labo-{fused,unfused}-{torch,triton}")
    parser.add_argument("--out", type=output_file, help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.precision != "fp32":
        parser.error(f"--precision {args.precision}: half precision needs --device cuda")
    triton_variants = [v for v in args.variants or [] if v.endswith("-triton")]
    if args.device == "cpu" and triton_variants:
        parser.error(f"--variants {' '.join(triton_variants)}: the Triton kernels need --device cuda")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device cuda: CUDA is not available to torch {torch.__version__}")
    if args.variants is None:
        args.variants = list(VARIANTS)
        if args.device == "cuda" and criterion_has_impl_flag():
            args.variants = ["ls", *IMPL_VARIANTS]
    elif any(v in IMPL_VARIANTS for v in args.variants) and not criterion_has_impl_flag():
        wanted = " ".join(v for v in args.variants if v in IMPL_VARIANTS)
        parser.error(f"--variants {wanted}: the label_smoothed_labo criterion here has no --labo-impl flag")
    if "ls" not in args.variants:
        parser.error("--variants must include ls, the baseline of the ratios")
    for name in ("sentences", "updates", "log_interval", "repeats", "layers", "dim", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    small = [v for v in args.vocab if v < 8]
    if small:
        parser.error(f"--vocab: every size must be >= 8 (four per side beside fairseq's specials), got {small[0]}")
    if args.dim % 4:
        parser.error(f"--dim: must be a multiple of 4 (the transformer has 4 attention heads), got {args.dim}")
    if args.updates < 2 * args.log_interval:
        # words/s is the mean of the train_inner lines after the first (which includes start-up)
        parser.error(f"--updates: must be at least 2 x --log-interval ({2 * args.log_interval}) to give a "
                     f"words/s line after the first, got {args.updates}")

    results = []
    device = cpu_model() if args.device == "cpu" else None  # CUDA: named by the training process
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
                row = {"vocab": size, "variant": variant,
                       "wps": statistics.median(r["wps"] for r in measured),
                       "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in measured),
                       "runs": measured}
                if args.device == "cuda":
                    row["peak_gpu_mib"] = statistics.median(r["peak_gpu_mib"] for r in measured)
                    device = measured[-1]["device"]
                results.append(row)

    from tabulate import tabulate

    headers = ["V", "criterion", "words/s", "× LS", "peak RSS (MB)", "× LS"]
    if args.device == "cuda":
        headers += ["peak GPU mem (MiB)", "× LS"]
    table = []
    for row in results:
        base = next(r for r in results if r["vocab"] == row["vocab"] and r["variant"] == "ls")
        line = [f"{row['vocab']:,}", row["variant"], f"{row['wps']:,.0f}", f"{row['wps'] / base['wps']:.2f}",
                f"{row['peak_rss_mb']:,.0f}", f"{row['peak_rss_mb'] / base['peak_rss_mb']:.2f}"]
        if args.device == "cuda":
            line += [f"{row['peak_gpu_mib']:,.0f}", f"{row['peak_gpu_mib'] / base['peak_gpu_mib']:.2f}"]
        table.append(line)
    print(f"device: {device} ({args.device}), precision {args.precision}")
    print(tabulate(table, headers=headers, tablefmt="pipe", disable_numparse=True,
                   colalign=["right", "left"] + ["right"] * (len(headers) - 2)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": device,
                                        "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
