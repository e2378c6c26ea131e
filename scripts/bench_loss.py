#!/usr/bin/env python
"""Benchmark the LABO loss op against fairseq's label-smoothed cross-entropy path.

Measures forward+backward wall time and peak extra memory of:

  fairseq        log_softmax(logits.float()) + fairseq label_smoothed_nll_loss   (baseline)
  reference      labo_cross_entropy_reference (dense LABO, autograd through log_softmax)
  chunked        labo_cross_entropy
  linear+fairseq F.linear(hidden, weight) + the fairseq path                     (baseline)
  fused          labo_linear_cross_entropy(hidden, weight, ...)

Every measurement runs in a fresh process (``--worker``). Memory on CPU: peak RSS above a
baseline taken after the inputs and their gradient buffers exist and one warm-up iteration
has run; the peak is reset by writing "5" to /proc/self/clear_refs and read back as VmHWM.
On CUDA: torch.cuda.max_memory_allocated above memory_allocated at the same point.
Runs are interleaved across variants and repeated; the table reports medians, and ratios
against the baseline measured in the same run (fused rows against linear+fairseq).
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time

SHAPES = {"4096x10k": (4096, 10_000), "4096x32k": (4096, 32_000), "2048x64k": (2048, 64_000),
          "1024x250k": (1024, 250_000)}
LOGIT_VARIANTS = ("fairseq", "reference", "chunked")
LINEAR_VARIANTS = ("linear+fairseq", "fused")


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args):
    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from labo_fairseq.functional import (labo_cross_entropy, labo_cross_entropy_reference,
                                         labo_linear_cross_entropy)

    if args.worker in ("fairseq", "linear+fairseq"):
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    N, V, d = args.tokens, args.vocab, args.dim
    g = torch.Generator().manual_seed(0)
    pad = 1
    target = torch.randint(2, V, (N,), generator=g)
    n_pad = int(N * args.pad_fraction)
    target[N - n_pad:] = pad
    target = target.to(dev)
    a, tau = args.alpha, args.tau

    if args.worker in LOGIT_VARIANTS:
        logits = (torch.randn(N, V, generator=g) * 3).to(dev).requires_grad_()
        logits.grad = torch.zeros_like(logits)
        params = [logits]
    else:
        hidden = torch.randn(N, d, generator=g).to(dev).requires_grad_()
        weight = (torch.randn(V, d, generator=g) / math.sqrt(d)).to(dev).requires_grad_()
        params = [hidden, weight]
        for p in params:
            p.grad = torch.zeros_like(p)

    def step():
        if args.worker == "fairseq":
            lprobs = torch.log_softmax(logits.float(), -1)
            loss, _ = label_smoothed_nll_loss(lprobs, target, a, ignore_index=pad)
        elif args.worker == "reference":
            loss, _, _ = labo_cross_entropy_reference(logits, target, a, tau, ignore_index=pad)
        elif args.worker == "chunked":
            loss, _ = labo_cross_entropy(logits, target, a, tau, ignore_index=pad)
        elif args.worker == "linear+fairseq":
            lprobs = torch.log_softmax(F.linear(hidden, weight).float(), -1)
            loss, _ = label_smoothed_nll_loss(lprobs, target, a, ignore_index=pad)
        elif args.worker == "fused":
            loss, _ = labo_linear_cross_entropy(hidden, weight, target, a, tau, ignore_index=pad)
        else:
            raise ValueError(args.worker)
        loss.backward()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: thread pools, allocator, lazy init
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        _reset_peak_rss()
        base = _status_kib("VmRSS") * 1024
        if _status_kib("VmHWM") * 1024 > base + (64 << 20):
            raise RuntimeError("writing 5 to /proc/self/clear_refs did not reset VmHWM")
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        extra = torch.cuda.max_memory_allocated() - base
    else:
        extra = _status_kib("VmHWM") * 1024 - base
    print(json.dumps({"time": min(times), "extra": extra}))


def run_worker(variant, shape, args):
    N, V = SHAPES[shape]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--tokens", str(N),
           "--vocab", str(V), "--dim", str(args.dim), "--alpha", str(args.alpha), "--tau",
           str(args.tau), "--device", args.device, "--iters", str(args.iters),
           "--pad-fraction", str(args.pad_fraction)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(f"[{variant} {shape}] failed:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES),
                   help="(tokens x vocab) shapes to run (default: all)")
    p.add_argument("--variants", nargs="+", default=list(LOGIT_VARIANTS + LINEAR_VARIANTS),
                   choices=list(LOGIT_VARIANTS + LINEAR_VARIANTS))
    p.add_argument("--repeats", type=int, default=3, help="processes per variant and shape (median)")
    p.add_argument("--iters", type=int, default=1, help="timed iterations per process (min)")
    p.add_argument("--dim", type=int, default=512, help="hidden size for the fused rows")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--tau", type=float, default=2.0)
    p.add_argument("--pad-fraction", type=float, default=0.0, help="fraction of ignored positions")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    results = {}
    for shape in args.shapes:
        for rep in range(args.repeats):
            for variant in args.variants:  # interleaved so that load changes hit all variants
                r = run_worker(variant, shape, args)
                if r is not None:
                    results.setdefault((shape, variant), []).append(r)
                    print(f"# {shape} {variant} rep {rep}: {r['time']:.3f} s, "
                          f"{r['extra'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)

    def med(shape, variant, key):
        rs = results.get((shape, variant))
        return statistics.median(r[key] for r in rs) if rs else None

    print("| tokens x V | variant | time (s) | time vs baseline | extra mem (MiB) | mem vs baseline |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in args.shapes:
        for variant in args.variants:
            t, m = med(shape, variant, "time"), med(shape, variant, "extra")
            if t is None:
                continue
            base = "linear+fairseq" if variant in LINEAR_VARIANTS else "fairseq"
            bt, bm = med(shape, base, "time"), med(shape, base, "extra")
            rt = f"{t / bt:.2f}x" if bt else "-"
            rm = f"{m / bm:.3f}x" if bm else "-"
            print(f"| {shape} | {variant} | {t:.3f} | {rt} | {m / 2**20:.0f} | {rm} |")


if __name__ == "__main__":
    main()
