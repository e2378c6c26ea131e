#!/usr/bin/env python
"""Benchmark the LABO loss op against fairseq's label-smoothed cross-entropy path and peers.

Measures forward+backward time and peak extra memory of one loss evaluation.

On the logits [N, V] (ratios against `fairseq`):
  fairseq                  log_softmax(logits.float()) + fairseq label_smoothed_nll_loss  (baseline)
  torch-ls                 F.cross_entropy(logits, target, label_smoothing=alpha)
  liger-ce                 Liger-Kernel LigerCrossEntropyLoss(label_smoothing=alpha)      (peer)
  reference                labo_cross_entropy_reference (dense LABO, autograd)
  chunked[torch]           labo_cross_entropy(..., impl="torch")          ("chunked" is an alias)
  chunked[torch,inplace]   labo_cross_entropy(..., impl="torch", inplace_grad=True)
  chunked[triton]          labo_cross_entropy(..., impl="triton")
  chunked[triton,inplace]  labo_cross_entropy(..., impl="triton", inplace_grad=True)
On hidden [N, d] and the output projection [V, d] (ratios against `linear+fairseq`):
  linear+fairseq           F.linear(hidden, weight) + the fairseq path                    (baseline)
  liger-fused              Liger-Kernel LigerFusedLinearCrossEntropyLoss(label_smoothing=alpha)
  cce                      Apple cut_cross_entropy.linear_cross_entropy (no label smoothing)
  fused[torch]             labo_linear_cross_entropy(..., impl="torch")   ("fused" is an alias)
  fused[triton]            labo_linear_cross_entropy(..., impl="triton")
Rows are also compared with Liger's row of the same kind when it was measured. torch and Liger
spread alpha/V over every class, fairseq alpha/(V-1) over the non-target ones; CCE has no
smoothing: peers are references for speed and memory, not for the loss value.

Optional rows are skipped, with the reason printed, when they cannot run: Liger-Kernel and CCE
when their package does not import or the device is not CUDA (both are Triton-only); the
Triton rows when labo_fairseq.functional has no `impl` argument, triton does not import, or the
device is not CUDA and --interpret is not given. --interpret sets TRITON_INTERPRET=1 in the
workers so the Triton rows run on CPU tensors: a smoke test on tiny shapes, not a timing.

Every measurement runs in a fresh process (``--worker``); a CUDA out-of-memory error is
reported as "OOM" in the table.
  CPU: per process, one warm-up iteration, then --iters timed iterations (min); --repeats
    processes per variant and shape, interleaved across variants, median reported. Memory:
    peak RSS above a baseline taken after the inputs and their gradient buffers exist and the
    warm-up has run; the peak is reset by writing "5" to /proc/self/clear_refs and read back
    as VmHWM.
  CUDA: one process per variant and shape: --warmup iterations, then --repeats timed
    iterations, each between torch.cuda.synchronize() calls (median). Memory:
    torch.cuda.max_memory_allocated() above memory_allocated() at the same point (after
    reset_peak_memory_stats).
Ops that overwrite the logits with their gradient (liger-ce, the inplace rows) get
them restored from a copy before each iteration, outside the timed region.

    labo-bench loss --threads 1 --repeats 3                  # CPU table (scripts/bench_loss.py in a checkout)
    labo-bench loss --device cuda --shapes gpu --json gpu.json
"""
import argparse
import ctypes
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

# the directory holding labo_fairseq (a checkout or site-packages): workers run this file as a
# script and import the package from there
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (tokens, vocab, d). The CPU shapes keep the names of the published CPU tables.
CPU_SHAPES = {"4096x10k": (4096, 10_000, 512), "4096x32k": (4096, 32_000, 512),
              "2048x64k": (2048, 64_000, 512), "1024x250k": (1024, 250_000, 512)}
GPU_SHAPES = {"8192x32768": (8192, 32_768, 1024), "8192x131072": (8192, 131_072, 4096),
              "16384x262144": (16384, 262_144, 4096)}
SHAPES = {**CPU_SHAPES, **GPU_SHAPES}
PRESETS = {"cpu": list(CPU_SHAPES), "gpu": list(GPU_SHAPES)}

LOGITS, LINEAR = "logits", "linear"
VARIANTS = {
    "fairseq": LOGITS, "torch-ls": LOGITS, "liger-ce": LOGITS, "reference": LOGITS,
    "chunked[torch]": LOGITS, "chunked[torch,inplace]": LOGITS, "chunked[triton]": LOGITS,
    "chunked[triton,inplace]": LOGITS,
    "linear+fairseq": LINEAR, "liger-fused": LINEAR, "cce": LINEAR,
    "fused[torch]": LINEAR, "fused[triton]": LINEAR,
}
ALIASES = {"chunked": "chunked[torch]", "fused": "fused[torch]"}
BASELINE = {LOGITS: "fairseq", LINEAR: "linear+fairseq"}
LIGER = {LOGITS: "liger-ce", LINEAR: "liger-fused"}
PEER_PACKAGES = {"liger-ce": "liger_kernel", "liger-fused": "liger_kernel", "cce": "cut_cross_entropy"}
TRITON_VARIANTS = ("chunked[triton]", "chunked[triton,inplace]", "fused[triton]")
CLOBBERS_LOGITS = ("liger-ce", "chunked[torch,inplace]", "chunked[triton,inplace]")
DEFAULT_CPU = ["fairseq", "reference", "chunked[torch]", "linear+fairseq", "fused[torch]"]
DEFAULT_CUDA = ["fairseq", "torch-ls", "liger-ce", "chunked[torch]", "chunked[triton]",
                "chunked[triton,inplace]", "linear+fairseq", "liger-fused", "cce", "fused[torch]",
                "fused[triton]"]
DTYPES = ("float32", "bfloat16", "float16")


# ---------------------------------------------------------------------------------------------
# worker side

def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _error_text(exc):
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def probe(args):
    """What this environment can run: device name, triton, the op's keyword arguments, peers."""
    import torch

    sys.path.insert(0, PACKAGE_PARENT)
    from labo_fairseq.functional import labo_cross_entropy, labo_linear_cross_entropy

    info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda}
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            info["device_error"] = "CUDA is not available to torch " + torch.__version__
        else:
            info["device_name"] = torch.cuda.get_device_name(dev)
    else:
        info["device_name"] = cpu_model()
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as exc:  # any import failure means the Triton rows cannot run
        info["triton_error"] = _error_text(exc)
    chunked = inspect.signature(labo_cross_entropy).parameters
    fused = inspect.signature(labo_linear_cross_entropy).parameters
    info["labo_impl"] = "impl" in chunked and "impl" in fused
    info["labo_inplace_grad"] = "inplace_grad" in chunked
    info["packages"] = {}
    for package in sorted(set(PEER_PACKAGES.values())):
        if importlib.util.find_spec(package) is None:
            info["packages"][package] = {"error": f"{package} is not installed"}
            continue
        try:
            module = __import__(package)
            info["packages"][package] = {"version": getattr(module, "__version__", "?")}
        except Exception as exc:
            info["packages"][package] = {"error": f"{package} does not import ({_error_text(exc)})"}
    print(json.dumps(info))


def _loss_tensor(out):
    # peers return a tensor, a (loss, extra) tuple or an output object, depending on version
    if isinstance(out, (tuple, list)):
        out = out[0]
    return getattr(out, "loss", out)


def worker(args):
    import torch

    try:
        result = measure(args)
    except torch.cuda.OutOfMemoryError as exc:
        result = {"status": "OOM", "reason": _error_text(exc)[:200]}
    print(json.dumps(result))


def measure(args):
    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sys.path.insert(0, PACKAGE_PARENT)
    from labo_fairseq.functional import (labo_cross_entropy, labo_cross_entropy_reference,
                                         labo_linear_cross_entropy)

    variant = args.worker
    kind = VARIANTS[variant]
    if variant in ("fairseq", "linear+fairseq"):
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    N, V, d = args.tokens, args.vocab, args.dim
    g = torch.Generator().manual_seed(0)
    pad = 1
    target = torch.randint(2, V, (N,), generator=g)
    n_pad = int(N * args.pad_fraction)
    target[N - n_pad:] = pad
    target = target.to(dev)
    a, tau = args.alpha, args.tau
    # CUDA inputs are drawn on the device (a [16384, 262144] draw on the host takes a minute);
    # CPU inputs come from the same generator as before, so the CPU data are unchanged.
    gen = g if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=dev, dtype=dtype)

    pristine = None
    if kind == LOGITS:
        logits = randn(N, V).mul_(3).requires_grad_()
        logits.grad = torch.zeros_like(logits)
        pristine = logits.detach().clone() if variant in CLOBBERS_LOGITS else None
    else:
        hidden = randn(N, d).requires_grad_()
        weight = randn(V, d).div_(math.sqrt(d)).requires_grad_()
        for p in (hidden, weight):
            p.grad = torch.zeros_like(p)

    # impl is passed only where the op has it: before the Triton kernels, torch is the only impl
    impl = variant[variant.index("[") + 1:].split(",")[0].rstrip("]") if "[" in variant else None
    kwargs = {}
    if impl is not None:
        fn = labo_cross_entropy if kind == LOGITS else labo_linear_cross_entropy
        if "impl" in inspect.signature(fn).parameters:
            kwargs["impl"] = impl
        elif impl != "torch":
            raise RuntimeError(f"{fn.__name__} has no impl argument")
        if "inplace" in variant:
            kwargs["inplace_grad"] = True

    if variant == "liger-ce":
        from liger_kernel.transformers import LigerCrossEntropyLoss
        peer = LigerCrossEntropyLoss(label_smoothing=a, ignore_index=pad, reduction="sum")
    elif variant == "liger-fused":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        peer = LigerFusedLinearCrossEntropyLoss(label_smoothing=a, ignore_index=pad, reduction="sum")
    elif variant == "cce":
        from cut_cross_entropy import linear_cross_entropy as peer

    def step():
        if variant == "fairseq":
            lprobs = torch.log_softmax(logits.float(), -1)
            loss, _ = label_smoothed_nll_loss(lprobs, target, a, ignore_index=pad)
        elif variant == "torch-ls":
            loss = F.cross_entropy(logits, target, ignore_index=pad, reduction="sum", label_smoothing=a)
        elif variant == "liger-ce":
            loss = peer(logits, target)
        elif variant == "reference":
            loss, _, _ = labo_cross_entropy_reference(logits, target, a, tau, ignore_index=pad)
        elif variant.startswith("chunked"):
            loss, _ = labo_cross_entropy(logits, target, a, tau, ignore_index=pad, **kwargs)
        elif variant == "linear+fairseq":
            lprobs = torch.log_softmax(F.linear(hidden, weight).float(), -1)
            loss, _ = label_smoothed_nll_loss(lprobs, target, a, ignore_index=pad)
        elif variant == "liger-fused":
            loss = peer(weight, hidden, target)
        elif variant == "cce":
            loss = peer(hidden, weight, target, ignore_index=pad, reduction="sum")
        elif variant.startswith("fused"):
            loss, _ = labo_linear_cross_entropy(hidden, weight, target, a, tau, ignore_index=pad, **kwargs)
        else:
            raise ValueError(variant)
        _loss_tensor(loss).backward()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def restore():
        if pristine is not None:
            with torch.no_grad():
                logits.copy_(pristine)
            sync()

    for _ in range(args.warmup):  # thread pools, allocator, lazy init, Triton compilation
        restore()
        step()
        sync()
    restore()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
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
        restore()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        extra = torch.cuda.max_memory_allocated(dev) - base
        t = statistics.median(times)
    else:
        extra = _status_kib("VmHWM") * 1024 - base
        t = min(times)  # the CPU tables' method: best of --iters within a process
    return {"status": "ok", "time": t, "times": times, "extra": extra}


# ---------------------------------------------------------------------------------------------
# parent side

def _worker_env(args):
    env = dict(os.environ)
    if args.interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def _last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def run_probe(args):
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(args))
    info = _last_json(proc.stdout) if proc.returncode == 0 else None
    if info is None:
        sys.stderr.write(proc.stderr[-2000:])
        raise SystemExit("bench_loss.py: the environment probe failed (see above)")
    return info


def run_worker(variant, shape, args, iters):
    N, V, d = shape
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--tokens", str(N),
           "--vocab", str(V), "--dim", str(d), "--alpha", str(args.alpha), "--tau", str(args.tau),
           "--device", args.device, "--dtype", args.dtype, "--iters", str(iters),
           "--warmup", str(args.warmup), "--pad-fraction", str(args.pad_fraction)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(args))
    result = _last_json(proc.stdout) if proc.returncode == 0 else None
    if result is not None:
        return result
    if "out of memory" in proc.stderr.lower():  # an OOM raised outside torch's allocator
        return {"status": "OOM", "reason": "out of memory"}
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    sys.stderr.write(f"[{variant} {N}x{V}] failed:\n{proc.stderr[-2000:]}\n")
    return {"status": "error", "reason": lines[-1][:200] if lines else f"exit code {proc.returncode}"}


def skip_reason(variant, info, args):
    """Why `variant` cannot run here, or None."""
    on_cuda = args.device.startswith("cuda")
    if variant in PEER_PACKAGES:
        package = PEER_PACKAGES[variant]
        status = info["packages"][package]
        if "error" in status:
            return status["error"]
        if not on_cuda:
            return f"{package} is Triton-only: needs --device cuda"
    if "inplace" in variant and not info["labo_inplace_grad"]:
        return "labo_cross_entropy has no inplace_grad argument in this checkout"
    if variant in TRITON_VARIANTS:
        if not info["labo_impl"]:
            return "labo_fairseq.functional has no impl argument (no Triton kernels in this checkout)"
        if "triton_error" in info:
            return f"triton does not import ({info['triton_error']})"
        if not on_cuda and not args.interpret:
            return "the Triton kernels need --device cuda (or --interpret for a CPU smoke run)"
    return None


def _ratio(value, base):
    return value / base if value is not None and base else None


def build_rows(shapes, variants, measured, skipped):
    rows = []
    for name, (N, V, d) in shapes:
        for variant in variants:
            kind = VARIANTS[variant]
            row = {"shape": name, "tokens": N, "vocab": V, "dim": d if kind == LINEAR else None,
                   "variant": variant, "input": kind, "baseline": BASELINE[kind]}
            if variant in skipped:
                row.update(status="skipped", reason=skipped[variant])
            else:
                runs = measured.get((name, variant), [])
                bad = [r for r in runs if r["status"] != "ok"]
                if bad:
                    row.update(status=bad[0]["status"], reason=bad[0].get("reason"))
                else:
                    row.update(status="ok", time_s=statistics.median(r["time"] for r in runs),
                               extra_bytes=statistics.median(r["extra"] for r in runs))
                row["runs"] = runs
            rows.append(row)
    by_key = {(r["shape"], r["variant"]): r for r in rows}
    for row in rows:
        if row["status"] != "ok":
            continue
        for label, other in (("baseline", row["baseline"]), ("liger", LIGER[row["input"]])):
            ref = by_key.get((row["shape"], other))
            ok = ref is not None and ref["status"] == "ok"
            row[f"time_vs_{label}"] = _ratio(row["time_s"], ref["time_s"]) if ok else None
            row[f"mem_vs_{label}"] = _ratio(row["extra_bytes"], ref["extra_bytes"]) if ok else None
    return rows


def _mib(nbytes):
    mib = nbytes / 2**20
    return f"{mib:,.1f}" if abs(mib) < 10 else f"{mib:,.0f}"


def _x(ratio, digits):
    return "-" if ratio is None else f"{ratio:.{digits}f}x"


def render_table(rows):
    from tabulate import tabulate

    with_liger = any(r.get("time_vs_liger") is not None for r in rows)
    headers = ["tokens x V", "d", "variant", "time (ms)", "time vs baseline", "extra mem (MiB)",
               "mem vs baseline"]
    if with_liger:
        headers += ["time vs Liger", "mem vs Liger"]
    table = []
    for r in rows:
        line = [r["shape"], "" if r["dim"] is None else r["dim"], r["variant"]]
        if r["status"] == "ok":
            line += [f"{r['time_s'] * 1e3:,.1f}", _x(r["time_vs_baseline"], 2), _mib(r["extra_bytes"]),
                     _x(r["mem_vs_baseline"], 3)]
            if with_liger:
                line += [_x(r["time_vs_liger"], 2), _x(r["mem_vs_liger"], 3)]
        else:
            line += [r["status"], "", "", ""] + (["", ""] if with_liger else [])
        table.append(line)
    colalign = ["left", "right", "left"] + ["right"] * (len(headers) - 3)
    return tabulate(table, headers=headers, tablefmt="pipe", colalign=colalign, disable_numparse=True)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _device(text):
    if text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def print_model(args, shapes):
    """The roofline table (labo_fairseq.benchmarks.roofline) at `shapes`, in args.dtype
    (default bfloat16), with the kernels' SASS counts from an offline sm_90 compile."""
    from tabulate import tabulate

    from labo_fairseq.benchmarks import kernels, roofline

    dtype = args.dtype
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype]
    machine = roofline.Machine(bandwidth=args.bandwidth * 1e12,
                               flops=args.tflops * 1e12, sms=args.sms, clock=args.clock_ghz * 1e9)
    note = "instruction counts: offline sm_90 compile of the kernels (labo-bench kernels)"
    sass = None
    try:
        report = kernels.run("sm_90", max(v for _, (_, v, _) in shapes), [short], modes=["labo"])
        sass = roofline.sass_from_report(report, short)
    except kernels.ToolchainError as exc:
        note = f"no instruction counts ({exc}): memory and FLOPs only"
    rows = []
    for name, (n, vocab, dim) in shapes:
        ops = roofline.model_ops(n, vocab, dim, {"bf16": 2, "fp16": 2, "fp32": 4}[short], machine, sass)
        for row in roofline.summarise(ops):
            rows.append([name, dim, row["op"], f"{row['predicted_ms']:.2f}", f"{row['hbm_gb']:.2f}",
                         f"{row['tflop']:.1f}", row["bound"]])
    print(f"roofline model, {dtype}, alpha {args.alpha}, tau {args.tau}: {machine.bandwidth / 1e12:g} TB/s, "
          f"{machine.flops / 1e12:g} TFLOP/s, {machine.sms} SMs at {machine.clock / 1e9:g} GHz; {note}. "
          "Predicted lower bounds, not GPU timings.")
    print()
    print(tabulate(rows, ["shape", "d", "op", "predicted ms", "HBM GB", "TFLOP", "bound (share of time)"],
                   tablefmt="github"))
    return 0


def main(argv=None, prog="labo-bench loss"):
    from labo_fairseq.arguments import output_file
    from labo_fairseq.labo_scalars import TAU_MIN

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="dtype of logits, hidden and weight (default: float32 on CPU, bfloat16 on CUDA and with --model)")
    p.add_argument("--shapes", nargs="+", default=None, choices=list(PRESETS) + list(SHAPES),
                   help="shapes or presets (cpu: %s; gpu: %s; default: the device's preset)"
                        % (", ".join(CPU_SHAPES), ", ".join(GPU_SHAPES)))
    p.add_argument("--tokens", type=_positive, default=None, help="custom shape: tokens (with --vocab)")
    p.add_argument("--vocab", type=_positive, default=None, help="custom shape: vocabulary size (with --tokens)")
    p.add_argument("--dim", type=_positive, default=None,
                   help="hidden size of the linear rows (default: 512 for CPU shapes and a custom "
                        "shape, the preset's for GPU shapes)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS) + list(ALIASES),
                   metavar="VARIANT",
                   help="rows to measure (quote the bracketed names in a shell): %s. Default on CPU: %s "
                        "(+ the Triton rows with --interpret); on CUDA: all but reference"
                        % (", ".join(VARIANTS), ", ".join(DEFAULT_CPU)))
    p.add_argument("--repeats", type=_positive, default=None,
                   help="CPU: processes per variant and shape (median; default 3). CUDA: timed "
                        "iterations after the warm-up (median; default 10)")
    p.add_argument("--iters", type=_positive, default=None, help="CPU only: timed iterations per process (min; default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before measuring (default 1)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--tau", type=float, default=1.25, help="LABO's temperature (default 1.25, the criterion's)")
    p.add_argument("--pad-fraction", type=float, default=0.0, help="fraction of ignored positions")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--interpret", action="store_true",
                   help="run the Triton rows with TRITON_INTERPRET=1 (CPU smoke run on tiny shapes; "
                        "its times are not performance numbers)")
    p.add_argument("--json", metavar="PATH", type=output_file, default=None, help="also write the device and the raw rows as JSON")
    model = p.add_argument_group("roofline model (--model: predicted GPU times, nothing is run)")
    model.add_argument("--model", action="store_true",
                       help="print the roofline model of each op at the shapes (default: the gpu preset) instead "
                            "of measuring; the Triton kernels' instruction counts come from an offline compile "
                            "when the triton wheel has ptxas")
    model.add_argument("--bandwidth", type=float, default=3.35, help="HBM bandwidth, TB/s (default: H100 SXM, 3.35)")
    model.add_argument("--tflops", type=float, default=989.0, help="dense bf16 tensor-core TFLOP/s (default 989)")
    model.add_argument("--sms", type=int, default=132, help="streaming multiprocessors (default 132)")
    model.add_argument("--clock-ghz", type=float, default=1.755, help="SM clock, GHz (default 1.755)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if on_cuda or args.model else "float32")
    if args.probe:
        return probe(args)
    if args.worker:
        args.dim = args.dim or 512
        return worker(args)

    if not 0.0 <= args.alpha < 1.0:
        p.error(f"--alpha: must be in [0, 1), got {args.alpha}")
    if not args.tau >= TAU_MIN:
        p.error(f"--tau: must be >= {TAU_MIN:g} (inf allowed), got {args.tau}")
    for flag in ("bandwidth", "tflops", "sms", "clock_ghz"):
        if not getattr(args, flag) > 0 or not math.isfinite(getattr(args, flag)):
            p.error(f"--{flag.replace('_', '-')}: must be a positive number, got {getattr(args, flag)}")
    if not 0.0 <= args.pad_fraction < 1.0:
        p.error(f"--pad-fraction: must be in [0, 1), got {args.pad_fraction}")
    if args.warmup < 0:
        p.error(f"--warmup: must be >= 0, got {args.warmup}")
    if args.threads < 0:
        p.error(f"--threads: must be >= 0, got {args.threads}")
    if on_cuda and args.iters is not None:
        p.error("--iters: CPU only; on CUDA --repeats is the number of timed iterations")
    if (args.tokens is None) != (args.vocab is None):
        p.error("--tokens and --vocab: give both for a custom shape")
    if args.tokens is not None and args.shapes:
        p.error("--shapes: give either --shapes or a custom --tokens/--vocab shape, not both")
    if args.vocab is not None and args.vocab < 3:
        p.error(f"--vocab: must be >= 3 (ids 0-1 are special), got {args.vocab}")

    if args.tokens is not None:
        shapes = [(f"{args.tokens}x{args.vocab}", (args.tokens, args.vocab, args.dim or 512))]
    else:
        names = []
        for name in args.shapes or [("gpu" if on_cuda or args.model else "cpu")]:
            for shape in PRESETS.get(name, [name]):
                if shape not in names:
                    names.append(shape)
        shapes = [(n, SHAPES[n][:2] + (args.dim or SHAPES[n][2],)) for n in names]
    if args.variants:
        variants = []
        for v in args.variants:
            v = ALIASES.get(v, v)
            if v not in variants:
                variants.append(v)
    else:
        wanted = set(DEFAULT_CUDA if on_cuda else DEFAULT_CPU + (list(TRITON_VARIANTS) if args.interpret else []))
        variants = [v for v in VARIANTS if v in wanted]  # logits rows first, then linear rows
    repeats = args.repeats or (10 if on_cuda else 3)
    if args.model:
        return print_model(args, shapes)

    info = run_probe(args)
    if "device_error" in info:
        p.error(f"--device {args.device}: {info['device_error']}")
    skipped = {v: r for v in variants if (r := skip_reason(v, info, args)) is not None}
    for v, reason in skipped.items():
        print(f"# skipping {v}: {reason}", file=sys.stderr, flush=True)

    measured = {}
    runnable = [v for v in variants if v not in skipped]
    for name, shape in shapes:
        if on_cuda:  # one process per row; the repeats are iterations inside it
            plan = [(0, v, repeats) for v in runnable]
        else:  # interleaved so that load changes hit all variants
            plan = [(rep, v, args.iters or 1) for rep in range(repeats) for v in runnable]
        for rep, v, iters in plan:
            runs = measured.setdefault((name, v), [])
            if runs and runs[-1]["status"] != "ok":
                continue  # an OOM or error does not get better with repeats
            r = run_worker(v, shape, args, iters)
            runs.append(r)
            if r["status"] == "ok":
                msg = f"{r['time'] * 1e3:.1f} ms, {r['extra'] / 2**20:.1f} MiB"
            else:
                msg = f"{r['status']}: {r.get('reason')}"
            print(f"# {name} {v} rep {rep}: {msg}", file=sys.stderr, flush=True)

    rows = build_rows(shapes, variants, measured, skipped)
    triton_text = info.get("triton") or "not importable"
    print(f"device: {info['device_name']} ({args.device}); torch {info['torch']}, triton {triton_text}; "
          f"dtype {args.dtype}, alpha {args.alpha}, tau {args.tau}, pad fraction {args.pad_fraction}")
    if on_cuda:
        print(f"time: median of {repeats} iterations after {args.warmup} warm-up; memory: "
              "max_memory_allocated above memory_allocated with inputs and .grad buffers allocated")
    else:
        print(f"time: median over {repeats} processes of the best of {args.iters or 1} iteration(s); "
              "memory: peak RSS above the RSS with inputs and .grad buffers allocated")
    print("baselines: fairseq for the logits rows, linear+fairseq for the linear rows (d)")
    if args.interpret:
        print("TRITON_INTERPRET=1: the Triton rows ran in the interpreter; their times are not "
              "performance numbers")
    print()
    print(render_table(rows))
    notes = {}
    for r in rows:
        if r["status"] != "ok":
            key = (r["variant"], r["status"], r.get("reason"))
            notes.setdefault(key, []).append(f"{r['tokens']}x{r['vocab']}")
    if notes:
        print()
        for (variant, status, reason), where in notes.items():
            print(f"{variant} {status} ({', '.join(where)}): {reason}")
    if args.json:
        settings = {k: getattr(args, k) for k in ("device", "dtype", "alpha", "tau", "pad_fraction", "warmup",
                                                  "iters", "threads", "interpret")}
        settings["repeats"] = repeats
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": info, "settings": settings, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
