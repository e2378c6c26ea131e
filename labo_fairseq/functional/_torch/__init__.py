"""The torch backend (`impl="torch"`): the per-row stages as streamed PyTorch ops, any device.

A block of rows is visited vocabulary chunk by vocabulary chunk (`streaming`), keeping only
per-row statistics. With a gradient to write, the chunks' exps are kept in a [rows, V] store
and turned into the gradient right after the statistics are final, while the block is still
in cache, so no exp is computed twice.

Block sizes depend on the device: CPU sizes keep a block in cache (measured, see
benchmarks/RESULTS.md); CUDA sizes keep the number of kernel launches low.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..backends import Backend
from ..params import LaboParams, RowResults, compute_dtype, spans
from .streaming import RowAccumulator, finalize, grad_block, grad_from_exps


@dataclass(frozen=True)
class TorchSizes:
    logits_chunk: int  # default vocabulary chunk width of the logits op
    fused_chunk: int  # ... and of the fused op
    block_elements: int  # elements per (rows x chunk) block without a gradient store
    store_elements: int  # logits op: elements of the [rows, V] exp store kept for the gradient
    token_block: int  # fused op: most rows per token block (matmuls compute bound)
    fused_store_elements: int  # fused op: [rows, V] elements per token block


CPU_SIZES = TorchSizes(logits_chunk=8192, fused_chunk=4096, block_elements=1 << 18, store_elements=1 << 20,
                       token_block=256, fused_store_elements=1 << 22)
# not tuned on a GPU: a launch-bound loop needs few, large blocks (about 64 MiB fp32 each)
CUDA_SIZES = TorchSizes(logits_chunk=32768, fused_chunk=32768, block_elements=1 << 24, store_elements=1 << 24,
                        token_block=2048, fused_store_elements=1 << 25)


def sizes_for(device: torch.device) -> TorchSizes:
    return CUDA_SIZES if device.type == "cuda" else CPU_SIZES


def logits_rows(n: int, vocab: int, params: LaboParams, with_grad: bool, device: torch.device) -> int:
    sizes = sizes_for(device)
    if with_grad:  # the block's [rows, V] exps are kept for the gradient
        return max(1, min(n, sizes.store_elements // vocab))
    return max(1, min(n, sizes.block_elements // min(params.chunk, vocab)))


def token_rows(n: int, vocab: int, element_size: int, workspace_bytes: Optional[int], device: torch.device) -> int:
    """The [rows, V] float32 exp store fills the fused store size (at most token_block rows),
    or `workspace_bytes` when given (then uncapped); at least 32 rows."""
    if workspace_bytes is not None:
        return max(1, min(n, max(32, workspace_bytes // (4 * vocab))))
    sizes = sizes_for(device)
    return max(1, min(n, sizes.token_block, max(32, sizes.fused_store_elements // vocab)))


def default_chunk(device: torch.device, fused: bool) -> int:
    sizes = sizes_for(device)
    return sizes.fused_chunk if fused else sizes.logits_chunk


def _scratch(rows: int, cols: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(rows * cols, device=like.device, dtype=dtype)


def _view(buf: torch.Tensor, rows: int, cols: int, offset: int = 0) -> torch.Tensor:
    return buf[offset: offset + rows * cols].view(rows, cols)


def _kept(target: torch.Tensor, ignore_index: Optional[int]):
    """(keep mask or None, target with ignored rows pointing at column 0)."""
    if ignore_index is None:
        return None, target
    keep = target.ne(ignore_index)
    return keep, torch.where(keep, target, 0)


def row_stats(z, target, ignore_index, params: LaboParams, out: RowResults, grad_out=None) -> None:
    n, V = z.shape
    if n == 0:
        return
    cdt = compute_dtype(z.dtype)
    alpha, inv_tau = params.alpha, params.inv_tau
    keep, y = _kept(target, ignore_index)
    chunk = min(params.chunk, V)
    store = grad_out is not None  # keep every chunk's exps for the gradient sweep
    keep_eq = store and alpha > 0.0 and inv_tau not in (0.0, 1.0)
    work = _scratch(n, chunk, z, cdt)
    e_store = _scratch(n, V if store else chunk, z, cdt)
    eq_store = None
    if params.need_q and inv_tau not in (0.0, 1.0):
        eq_store = _scratch(n, V if keep_eq else chunk, z, cdt)
    z_gold = z.gather(1, y.unsqueeze(1)).squeeze(1).to(cdt)  # before grad_out (maybe z) is written
    acc = RowAccumulator(y, inv_tau, params.track_order, cdt, params.need_q)
    refs = []
    for c0, c1 in spans(V, chunk):
        off = n * c0 if store else 0
        eq_out = None if eq_store is None else _view(eq_store, n, c1 - c0, off if keep_eq else 0)
        refs.append(acc.update(z[:, c0:c1].to(cdt), c0, _view(work, n, c1 - c0), _view(e_store, n, c1 - c0, off),
                               eq_out))
    res = finalize(acc, z_gold, alpha)
    if keep is not None:
        res.loss, res.nll, res.q_entropy = (torch.where(keep, t, 0.0) for t in (res.loss, res.nll, res.q_entropy))
        res.correct = None if res.correct is None else res.correct & keep
    out.copy_(res)
    if not store:
        return
    row_scale = torch.ones(n, device=z.device, dtype=cdt) if keep is None else keep.to(cdt)
    for ref, (c0, c1) in zip(refs, spans(V, chunk)):
        e = _view(e_store, n, c1 - c0, n * c0)
        eq = _view(eq_store, n, c1 - c0, n * c0) if keep_eq else e
        dst = grad_out[:, c0:c1]
        g = dst if dst.dtype == cdt else _view(work, n, c1 - c0)  # `work` is free once the stats are final
        grad_from_exps(e, eq, ref, z_gold, c0, y, res, alpha, inv_tau, row_scale, g)
        if g is not dst:
            dst.copy_(g)


def row_grads(z, target, ignore_index, rows: RowResults, scale, params: LaboParams, out) -> None:
    n, V = z.shape
    if n == 0:
        return
    cdt = rows.lse.dtype
    keep, y = _kept(target, ignore_index)
    if keep is not None:
        scale = scale * keep.to(cdt)
    chunk = min(params.chunk, V)
    work = _scratch(n, chunk, z, cdt)
    work2 = _scratch(n, chunk, z, cdt)
    for c0, c1 in spans(V, chunk):
        # reads the chunk of z before writing that chunk of out, which may be z itself
        grad_block(z[:, c0:c1].to(cdt), c0, y, rows.lse, rows.m_ref, rows.log_sum_q, params.alpha, params.inv_tau,
                   scale, out[:, c0:c1], _view(work, n, c1 - c0), _view(work2, n, c1 - c0))


BACKEND = Backend(name="torch", row_stats=row_stats, row_grads=row_grads, logits_rows=logits_rows,
                  token_rows=token_rows, default_chunk=default_chunk, skips_ignored_rows=False)
