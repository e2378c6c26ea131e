"""Every kernel configuration the Triton launchers use, for `labo-bench kernels`' offline
compile report (no GPU needed), and the token chunk the launchers choose (`token_rows`, for the
roofline model). The public window on `_triton` for tools outside `functional`."""
from dataclasses import dataclass, field
from typing import Dict, Tuple

import triton.language as tl

from ._triton.launch import MAX_BLOCK_V, block_width, num_warps_for, token_rows
from ._triton.row_grad import row_grad_kernel
from ._triton.row_stats import row_stats_kernel

__all__ = ["KernelSpec", "MODES", "shipped_configs", "token_rows"]


@dataclass
class KernelSpec:
    """One kernel configuration to compile: the kernel, its argument types and constexprs."""

    name: str  # the row's name
    kernel: object  # a @triton.jit function
    dtype: str  # of the logits: bf16, fp16, fp32
    block_v: int  # elements per loop iteration of a program
    num_warps: int
    signature: Dict[str, str]  # argument name -> Triton type ("*bf16", "i32", "constexpr", ...)
    constexprs: Dict[str, object]
    aligned: Tuple[str, ...] = ()  # arguments a launch sees 16-divisible / 16-aligned
    info: Dict[str, object] = field(default_factory=dict)  # extra columns (mode, V)

MODES = {  # what the criterion runs: LABO, LABO with accuracy, uniform LS, plain CE
    "labo": dict(TAU_INF=False, SMOOTH=True, NEED_Q=True, TRACK_ORDER=False),
    "labo+acc": dict(TAU_INF=False, SMOOTH=True, NEED_Q=True, TRACK_ORDER=True),
    "ls": dict(TAU_INF=True, SMOOTH=True, NEED_Q=True, TRACK_ORDER=False),
    "ce": dict(TAU_INF=False, SMOOTH=False, NEED_Q=False, TRACK_ORDER=False),
}


def _arg_type(name: str, dtype: str) -> str:
    if not name.endswith("_ptr"):
        return "i32"
    if name in ("z_ptr", "g_ptr"):
        return "*" + dtype
    return {"target_ptr": "*i64", "correct_ptr": "*i8"}.get(name, "*fp32")


def shipped_configs(vocab: int, dtypes=("bf16", "fp16", "fp32")):
    """Every kernel configuration the launchers (`launch`) use at vocabulary size `vocab`, as
    `KernelSpec`s for an offline compile (no GPU needed)."""
    specs = []
    for dtype in dtypes:
        block = block_width(vocab, MAX_BLOCK_V)
        for kernel, extra, label in ((row_stats_kernel, dict(WITH_GRAD=False), "row_stats"),
                                     (row_stats_kernel, dict(WITH_GRAD=True), "row_stats+grad"),
                                     (row_grad_kernel, {}, "row_grad")):
            for mode, flags in MODES.items():
                constexprs = {k: v for k, v in {**flags, **extra}.items() if k in kernel.arg_names}
                constexprs.update(BLOCK_V=block, ACC=tl.float32)
                signature = {n: ("constexpr" if n in constexprs else _arg_type(n, dtype)) for n in kernel.arg_names}
                aligned = tuple(n for n, t in signature.items() if t.startswith("*") or n in ("z_stride", "g_stride", "V"))
                specs.append(KernelSpec(name=label, kernel=kernel, dtype=dtype, block_v=block, num_warps=num_warps_for(block),
                                        signature=signature, constexprs=constexprs, aligned=aligned,
                                        info={"mode": mode, "vocab": vocab}))
    return specs
