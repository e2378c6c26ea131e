#!/usr/bin/env python
"""Benchmark one training step (forward + backward) of a Marian model with Hugging Face
Transformers, per loss, side by side in one run:

  hf-ls         model logits + Transformers' LabelSmoother (`label_smoothing_factor`)  (baseline)
  labo-unfused  model logits + labo_fairseq.hf.labo_loss (`compute_loss_func`)
  labo-fused    labo_fairseq.hf.fused_loss: decoder states x output projection, no logits
                (what LaboSeq2SeqTrainer trains with)

Each variant and repeat runs in a fresh process (interleaved across variants): one warm-up step,
then --iters timed steps (min); the median over --repeats processes is reported. Memory: peak
RSS (VmHWM of /proc/self/status, reset by writing "5" to /proc/self/clear_refs) above the RSS
after the warm-up step, when the model, its gradient buffers and the batch exist: what one
step adds. (tracemalloc does not see torch's tensor allocations, and torch keeps no CPU
allocator statistics, so RSS is the measure.) CPU only; on a GPU, max_memory_allocated would be
the measure (not measured on a GPU).

    labo-bench hf --json hf.json --csv hf.csv       # Marian, V = 8000, 2048 target tokens
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

from labo_fairseq.arguments import positive_int
from labo_fairseq.benchmarks.loss import _reset_peak_rss, _status_kib, cpu_model

VARIANTS = ("hf-ls", "labo-unfused", "labo-fused")
BASELINE = "hf-ls"


def parse_args(argv=None, prog="labo-bench hf"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab", type=positive_int, default=8000, help="vocabulary size V")
    p.add_argument("--batch", type=positive_int, default=16, help="sentences per batch")
    p.add_argument("--tgt-len", type=positive_int, default=128, help="target tokens per sentence")
    p.add_argument("--src-len", type=positive_int, default=64, help="source tokens per sentence")
    p.add_argument("--d-model", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--ffn", type=positive_int, default=1024)
    p.add_argument("--alpha", type=float, default=0.1, help="LABO alpha (LS: epsilon = alpha V / (V-1))")
    p.add_argument("--tau", type=float, default=1.25)
    p.add_argument("--iters", type=positive_int, default=3, help="timed steps per process (min)")
    p.add_argument("--repeats", type=positive_int, default=3, help="processes per variant (median)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--csv", help="write the table's rows here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or BASELINE not in args.variants:
        p.error(f"--variants: {'unknown variant ' + repr(unknown[0]) if unknown else BASELINE + ' (the baseline) is needed'}"
                f" (choose from {', '.join(VARIANTS)})")
    if not 0.0 <= args.alpha < 1.0:
        p.error(f"--alpha must be in [0, 1), got {args.alpha}")
    return args


def worker(args):
    """One variant in this process: prints {"seconds": min step time, "peak_bytes": ...}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import MarianConfig, MarianMTModel
    from transformers.trainer_pt_utils import LabelSmoother

    from labo_fairseq.hf import fused_loss, labo_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    v = args.vocab
    model = MarianMTModel(MarianConfig(vocab_size=v, decoder_vocab_size=v, d_model=args.d_model,
                                       encoder_layers=args.layers, decoder_layers=args.layers,
                                       encoder_ffn_dim=args.ffn, decoder_ffn_dim=args.ffn,
                                       max_position_embeddings=max(args.src_len, args.tgt_len) + 2,
                                       pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, dropout=0.0))
    model.train()
    input_ids = torch.randint(3, v, (args.batch, args.src_len))
    labels = torch.randint(3, v, (args.batch, args.tgt_len))
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels)}
    labo = labo_loss(args.alpha, args.tau, impl="torch")
    smoother = LabelSmoother(epsilon=args.alpha * v / (v - 1))
    step = {
        "hf-ls": lambda: smoother(model(**inputs), labels),
        "labo-unfused": lambda: labo(model(**inputs), labels),
        "labo-fused": lambda: fused_loss(model, labo, labels, **inputs),
    }[args.worker]

    def run():
        loss = step()
        loss.backward()
        return float(loss)

    run()  # warm-up: gradient buffers exist from here on
    baseline = _status_kib("VmRSS")
    _reset_peak_rss()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    print(json.dumps({"seconds": min(times), "peak_bytes": max(0, peak - baseline) * 1024}))


def _measure(variant, args, argv):
    command = [sys.executable, "-m", "labo_fairseq.benchmarks.hf", *argv, "--worker", variant]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} worker failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None, prog="labo-bench hf"):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    if args.worker:
        worker(args)
        return 0
    from tabulate import tabulate

    worker_argv = [a for a in argv]
    measured = {v: [] for v in args.variants}
    for _ in range(args.repeats):  # interleaved: drift hits every variant alike
        for variant in args.variants:
            measured[variant].append(_measure(variant, args, worker_argv))
    results = {v: {"seconds": statistics.median(m["seconds"] for m in runs),
                   "peak_bytes": statistics.median(m["peak_bytes"] for m in runs)} for v, runs in measured.items()}
    base = results[BASELINE]
    rows = []
    for variant, r in results.items():
        rows.append({"variant": variant, "ms": r["seconds"] * 1e3, "peak_mib": r["peak_bytes"] / 2**20,
                     "time_vs_hf_ls": r["seconds"] / base["seconds"],
                     "memory_vs_hf_ls": r["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else None})
    shape = (f"Marian d={args.d_model}, {args.layers}+{args.layers} layers, V={args.vocab}, "
             f"{args.batch}x{args.tgt_len}={args.batch * args.tgt_len} target tokens, {args.batch}x{args.src_len} source")
    print(f"{shape}; {cpu_model()}; torch threads: {args.threads or 'default'}; "
          f"median of {args.repeats} processes, min of {args.iters} steps each")
    print(tabulate([[r["variant"], f"{r['ms']:.0f}", f"{r['peak_mib']:.0f}", f"{r['time_vs_hf_ls']:.2f}x",
                     "-" if r["memory_vs_hf_ls"] is None else f"{r['memory_vs_hf_ls']:.2f}x"] for r in rows],
                   headers=["variant", "step ms", "peak MiB above step start", "time vs hf-ls", "memory vs hf-ls"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpu_model(), "setting": shape, "args": {k: v for k, v in vars(args).items()
                                                                          if k not in ("json", "csv", "worker")},
                       "memory_measure": "peak RSS (VmHWM) above RSS after the warm-up step",
                       "rows": rows, "runs": measured}, f, indent=1)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
