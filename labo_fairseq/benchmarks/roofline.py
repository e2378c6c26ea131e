"""Roofline model of one loss evaluation (forward + backward) on a GPU: what to expect, and why.

Per op the model counts, as the code does the work (see `OPS`):
  * HBM bytes: every pass over an [N, V] tensor that cannot stay in L2, plus the projection
    weight each GEMM reads once per token chunk and the float32 grad_weight accumulation;
  * GEMM FLOPs (fused ops): logits, grad_hidden and grad_weight, 2 N V d each;
  * instruction issue and exp2 (MUFU) throughput of the Triton kernels, from their SASS
    instructions per element in an offline compile (`labo-bench kernels`), when available.
Each GEMM of a token chunk takes max(FLOPs / peak, bytes / bandwidth); streaming kernels take
max(bytes / bandwidth, issue time, MUFU time). The prediction is their sum: a lower bound that
assumes peak bandwidth and peak tensor-core throughput, not a measurement.

Default machine: H100 SXM (3.35 TB/s HBM3, 989 TFLOP/s dense bf16, 132 SMs at 1.755 GHz, four
warp schedulers and 16 MUFU lanes per SM); `--bandwidth`, `--tflops`, `--sms`, `--clock-ghz`
describe another.
"""
from dataclasses import dataclass

import torch
from typing import Dict, List, Optional

from labo_fairseq.functional.triton_configs import token_rows as launcher_token_rows


@dataclass(frozen=True)
class Machine:
    """Defaults: H100 SXM."""

    bandwidth: float = 3.35e12  # bytes/s
    flops: float = 989e12  # dense bf16/fp16 tensor-core FLOP/s
    sms: int = 132
    clock: float = 1.755e9
    schedulers_per_sm: int = 4  # one warp instruction per clock each
    mufu_per_sm: int = 16  # exp2 lanes per clock

    def issue_time(self, thread_instructions: float) -> float:
        return thread_instructions / 32 / (self.sms * self.schedulers_per_sm * self.clock)

    def mufu_time(self, operations: float) -> float:
        return operations / (self.sms * self.mufu_per_sm * self.clock)


# fairseq's label_smoothed_cross_entropy on logits of `s` bytes, bytes per logit element:
# logits.float() (s + 4), log_softmax (8), the smoothing sum (4); backward: the gather's zero
# gradient (4), adding the two gradients (8), log_softmax's backward (12), the cast back (4 + s)
def fairseq_bytes_per_element(s: int) -> int:
    return (s + 4) + 8 + 4 + 4 + 8 + 12 + (4 + s)


@dataclass
class Step:
    what: str
    seconds: float
    bound: str
    hbm_bytes: float
    flops: float = 0.0


def _stream(machine: Machine, what: str, elements: float, bytes_moved: float,
            sass: Optional[Dict[str, float]]) -> Step:
    """A pass of a streaming kernel over `elements` logits moving `bytes_moved` bytes."""
    times = {"memory": bytes_moved / machine.bandwidth}
    if sass:
        times["issue"] = machine.issue_time(elements * sass["sass_per_element"])
        times["mufu"] = machine.mufu_time(elements * sass["mufu_per_element"])
    bound = max(times, key=times.get)
    return Step(what, times[bound], bound, bytes_moved)


def _gemm(machine: Machine, what: str, m: int, n: int, k: int, s: int, extra_bytes: float = 0.0) -> Step:
    flops = 2.0 * m * n * k
    bytes_moved = s * (m * k + k * n + m * n) + extra_bytes
    compute, memory = flops / machine.flops, bytes_moved / machine.bandwidth
    return Step(what, max(compute, memory), "compute" if compute >= memory else "memory", bytes_moved, flops)


def model_ops(n: int, vocab: int, dim: int, s: int, machine: Machine, sass: Optional[Dict[str, dict]] = None,
              workspace_bytes: Optional[int] = None) -> Dict[str, List[Step]]:
    """{op: steps} for logits [n, vocab] / hidden [n, dim] of `s` bytes per element. `sass` maps
    kernel names ("row_stats+grad") to {sass_per_element, mufu_per_element}."""
    sass = sass or {}
    elements = float(n) * vocab
    ops = {}
    ops["fairseq (logits)"] = [Step("log_softmax + label_smoothed_nll_loss, fwd + bwd",
                                    elements * fairseq_bytes_per_element(s) / machine.bandwidth, "memory",
                                    elements * fairseq_bytes_per_element(s))]
    # one program per row reads it, then reads it again from L2 for the gradient pass and
    # writes the gradient (in place); backward's rescale is skipped on the device
    ops["chunked[triton,inplace]"] = [_stream(machine, "row_stats+grad kernel", elements, 2.0 * s * elements,
                                              sass.get("row_stats+grad"))]
    if "liger" in sass:  # Liger's CE kernel moves the same bytes (in place, rescale skipped at 1)
        ops["liger-ce"] = [_stream(machine, "liger_cross_entropy_kernel", elements, 2.0 * s * elements,
                                   sass["liger"])]
    ops["linear+fairseq"] = [
        _gemm(machine, "logits = h W^T", n, vocab, dim, s),
        *ops["fairseq (logits)"],
        _gemm(machine, "grad_h = g W", n, dim, vocab, s),
        _gemm(machine, "grad_W = g^T h", vocab, dim, n, s),
    ]
    # the launcher's choice (on a CPU device: without the clamp to free GPU memory)
    rows = launcher_token_rows(n, vocab, s, workspace_bytes, torch.device("cpu"))
    chunks = -(-n // rows)
    fused = []
    for r in [rows] * (n // rows) + ([n % rows] if n % rows else []):
        # grad_W of a chunk: cuBLAS reads and writes the float32 accumulator (addmm's out_dtype)
        # instead of the matmul dtype's V x d output
        accumulate = vocab * dim * (8.0 - s) if s < 4 else 0.0
        fused += [_gemm(machine, "logits chunk", r, vocab, dim, s),
                  _stream(machine, "row_stats+grad kernel", float(r) * vocab, 2.0 * s * r * vocab,
                          sass.get("row_stats+grad")),
                  _gemm(machine, "grad_h chunk", r, dim, vocab, s),
                  _gemm(machine, "grad_W chunk", vocab, dim, r, s, accumulate)]
    ops[f"fused[triton] ({chunks} chunk{'s' if chunks > 1 else ''} of {rows} rows)"] = fused
    return ops


def summarise(ops: Dict[str, List[Step]]) -> List[Dict[str, object]]:
    rows = []
    for op, steps in ops.items():
        seconds = sum(step.seconds for step in steps)
        bounds = {}
        for step in steps:
            bounds[step.bound] = bounds.get(step.bound, 0.0) + step.seconds
        rows.append({"op": op, "predicted_ms": seconds * 1e3, "hbm_gb": sum(st.hbm_bytes for st in steps) / 1e9,
                     "tflop": sum(st.flops for st in steps) / 1e12,
                     "bound": ", ".join(f"{b} {t / seconds:.0%}" for b, t in sorted(bounds.items(), key=lambda x: -x[1]))})
    return rows


def sass_from_report(report: dict, dtype: str, mode: str = "labo") -> Dict[str, dict]:
    """{kernel name ("liger" for Liger's): {sass_per_element, mufu_per_element}} of a
    `labo-bench kernels` result."""
    out = {}
    for row in report["rows"]:
        if row["dtype"] == dtype and (row["info"].get("mode") == mode or row["name"].startswith("liger")):
            name = "liger" if row["name"].startswith("liger") else row["name"]
            out[name] = {"sass_per_element": row["sass_per_element"], "mufu_per_element": row["mufu_per_element"]}
    return out
