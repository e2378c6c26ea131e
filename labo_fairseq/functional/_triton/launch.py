"""Launchers of the Triton stages: block widths, warps, and rows per token block.

Stage 1 (`row_stats`) runs one program per row and, when a gradient is wanted, stage 2 right
after, while the row is still in L2, writing the gradient for a unit incoming gradient --
into the logits' own storage when the caller allows it. Stage 2 alone (`row_grads`) is the
recompute path. The kernels skip rows whose target is `ignore_index` themselves, so nothing
is read back to the host. On CPU tensors they run only under Triton's interpreter
(TRITON_INTERPRET=1).
"""
import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ..params import LaboParams, RowResults, compute_dtype
from .row_grad import row_grad_kernel
from .row_stats import row_stats_kernel

# Largest vocabulary block per loop step: every configuration up to it compiles for sm_90
# without register spills (`labo-bench kernels`); larger chunk sizes are capped to it.
MAX_BLOCK_V = 32768
# elements of a block each thread holds: the register budget the kernels were sized for
ELEMENTS_PER_THREAD = 32
MAX_NUM_WARPS = 32
# fused op: default logits workspace per token chunk (rows x V in the matmul dtype), grown to
# at least DEFAULT_MIN_ROWS rows: with fewer, the per-chunk reads of the weight and the float32
# grad_weight accumulation cost as much as the chunk's GEMMs (`labo-bench loss --model`)
DEFAULT_WORKSPACE_BYTES = 256 << 20
DEFAULT_MIN_ROWS = 2048
MIN_TOKEN_ROWS = 64


def block_width(vocab: int, chunk: int) -> int:
    """Largest power of two <= chunk, capped by MAX_BLOCK_V and the vocabulary's next power of two."""
    width = 1 << (max(1, min(chunk, MAX_BLOCK_V)).bit_length() - 1)
    return max(16, min(width, triton.next_power_of_2(vocab)))


def num_warps_for(block: int) -> int:
    """Warps per program: ELEMENTS_PER_THREAD elements per thread, 4 to MAX_NUM_WARPS warps."""
    return max(4, min(MAX_NUM_WARPS, block // (32 * ELEMENTS_PER_THREAD)))


def _flags(params: LaboParams, z: torch.Tensor):
    acc = tl.float64 if compute_dtype(z.dtype) == torch.float64 else tl.float32
    block = block_width(z.shape[1], params.chunk)
    flags = dict(BLOCK_V=block, ACC=acc, TAU_INF=params.inv_tau == 0.0, SMOOTH=params.alpha > 0.0)
    if z.is_cuda:
        flags["num_warps"] = num_warps_for(block)
    return flags


@functools.lru_cache(maxsize=64)
def _hyper(alpha: float, inv_tau: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(alpha, 1 / tau) on the device in the accumulation dtype; cached, so that repeated calls
    copy nothing to the device."""
    return torch.tensor([alpha, inv_tau], dtype=dtype, device=device)


def _hyper_for(params: LaboParams, z: torch.Tensor) -> torch.Tensor:
    return _hyper(params.alpha, params.inv_tau, compute_dtype(z.dtype), z.device)


def _ignore(ignore_index):
    # targets are validated to lie in [0, V) when there is no ignore_index: -1 never matches
    return -1 if ignore_index is None else int(ignore_index)


def row_stats(z, target, ignore_index, params: LaboParams, out: RowResults, grad_out=None) -> None:
    """Stage 1 over every row of z [N, V] into `out`; with `grad_out` stage 2 as well."""
    n, V = z.shape
    if n == 0:
        return
    g = z if grad_out is None else grad_out  # not written without WITH_GRAD
    row_stats_kernel[(n,)](z, z.stride(0), g, g.stride(0), target, _ignore(ignore_index), V,
                           _hyper_for(params, z), *out.pointers(), NEED_Q=params.need_q,
                           TRACK_ORDER=params.track_order, WITH_GRAD=grad_out is not None, **_flags(params, z))


def row_grads(z, target, ignore_index, rows: RowResults, scale, params: LaboParams, out) -> None:
    """Stage 2 over every row: out = d loss_i / d z_i * scale_i (out may be z itself)."""
    n, V = z.shape
    if n == 0:
        return
    row_grad_kernel[(n,)](z, z.stride(0), out, out.stride(0), target, _ignore(ignore_index), V,
                          rows.lse, rows.m_ref, rows.log_sum_q, scale, _hyper_for(params, z),
                          **_flags(params, z))


def logits_rows(n: int, vocab: int, params: LaboParams, with_grad: bool, device: torch.device) -> int:
    return max(1, n)  # one launch: a program per row


def token_rows(n: int, vocab: int, element_size: int, workspace_bytes: Optional[int], device: torch.device) -> int:
    """Rows per token chunk of the fused op: the logits of a chunk (rows x V in the matmul
    dtype) fill `workspace_bytes` (default: DEFAULT_WORKSPACE_BYTES or DEFAULT_MIN_ROWS rows,
    whichever is more), at most half the memory still free on a CUDA device, and at least
    MIN_TOKEN_ROWS rows."""
    if workspace_bytes is None:
        budget = max(DEFAULT_WORKSPACE_BYTES, DEFAULT_MIN_ROWS * vocab * element_size)
    else:
        budget = workspace_bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = min(budget, (free + cached) // 2)
    return max(1, min(n, max(MIN_TOKEN_ROWS, budget // (vocab * element_size))))


def default_chunk(device: torch.device, fused: bool) -> int:
    return MAX_BLOCK_V
