"""LABO loss on materialised logits, streamed over vocabulary chunks (autograd.Function).

Forward makes one pass over the logits per block of rows, keeping only per-row statistics.
When the logits need a gradient (and are not float16) the gradient of the block is written
right after its statistics are final, while the block is still in cache; backward then only
rescales it by the incoming gradient. That buffer (logits' dtype) is the only [N, V] tensor.
float16 logits instead recompute the gradient in backward so that the loss scale is applied
before rounding to float16 (small probabilities would otherwise underflow).
"""
from typing import Optional

import torch

from ._streaming import (
    LaboStats, RowAccumulator, RowResults, compute_dtype, finalize, grad_block, grad_from_exps,
)
from ._validate import check_logits, check_scalars, check_target

# Measured on CPU (see benchmarks/RESULTS.md): 8k columns keeps per-op overhead low while a
# block of rows stays cache-sized.
DEFAULT_CHUNK = 8192
BLOCK_ELEMENTS = 1 << 18  # elements per (rows x chunk) block
STORE_ELEMENTS = 1 << 20  # elements per [rows, V] exp store kept for the gradient sweep


def _block_rows(n_rows: int, chunk: int) -> int:
    return max(1, min(n_rows, BLOCK_ELEMENTS // chunk))


def _scratch(rows: int, cols: int, like: torch.Tensor, dtype: torch.dtype):
    return torch.empty(rows * cols, device=like.device, dtype=dtype)


def _view(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return buf[: rows * cols].view(rows, cols)


def _row_scale(keep: Optional[torch.Tensor], reduction: str, n: int, device, dtype) -> torch.Tensor:
    """d(reduced loss)/d(loss_i) for a unit incoming gradient."""
    if keep is None:
        scale = torch.ones(n, device=device, dtype=dtype)
        if reduction == "mean":
            scale /= max(n, 1)
        return scale
    scale = keep.to(dtype)
    if reduction == "mean":
        scale = scale / keep.sum().clamp(min=1).to(dtype)
    return scale


def _reduce(rows: torch.Tensor, keep: Optional[torch.Tensor], reduction: str) -> torch.Tensor:
    if keep is not None:
        rows = torch.where(keep, rows, 0.0)
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "mean":
        n = rows.new_tensor(rows.numel()) if keep is None else keep.sum().clamp(min=1).to(rows.dtype)
        total = total / n.clamp(min=1)
    return total


class _LaboChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, keep, alpha, inv_tau, reduction, chunk, want_stats):
        N, V = logits.shape
        cdt = compute_dtype(logits.dtype)
        dev = logits.device
        y = target if keep is None else torch.where(keep, target, 0)
        rows_per_block = _block_rows(N, chunk)
        row_scale = _row_scale(keep, reduction if reduction != "none" else "sum", N, dev, cdt)

        precompute = ctx.needs_input_grad[0] and logits.dtype != torch.float16
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if precompute else None

        z_gold = logits.gather(1, y.unsqueeze(1)).squeeze(1).to(cdt)
        rows_out = RowResults(N, dev, cdt, want_stats)

        if precompute:
            # keep the row block's exps (one or two [rows, V] stores) for the gradient sweep
            rows_per_block = max(1, min(N, STORE_ELEMENTS // V))
        keep_eq = precompute and alpha > 0.0 and inv_tau not in (0.0, 1.0)
        bw = min(chunk, V)
        work = _scratch(rows_per_block, bw, logits, cdt)
        if precompute:
            e_store = _scratch(rows_per_block, V, logits, cdt)
            eq_store = _scratch(rows_per_block, V, logits, cdt) if keep_eq else None
            gwork = _scratch(rows_per_block, bw, logits, cdt) if grad.dtype != cdt else None
        else:
            e_store = _scratch(rows_per_block, bw, logits, cdt)
            eq_store = None
        need_q = alpha > 0.0 or want_stats
        eq_work = None if keep_eq or not need_q or inv_tau in (0.0, 1.0) else _scratch(rows_per_block, bw, logits, cdt)
        for r0 in range(0, N, rows_per_block):
            r1 = min(N, r0 + rows_per_block)
            nr = r1 - r0
            yb = y[r0:r1]
            acc = RowAccumulator(yb, inv_tau, want_stats, cdt, need_q)
            refs = []
            for c0 in range(0, V, chunk):
                c1 = min(V, c0 + chunk)
                z = logits[r0:r1, c0:c1]
                if z.dtype != cdt:
                    z = z.to(cdt)
                off = nr * c0 if precompute else 0
                e_out = e_store[off: off + nr * (c1 - c0)].view(nr, c1 - c0)
                if keep_eq:
                    eq_out = eq_store[off: off + nr * (c1 - c0)].view(nr, c1 - c0)
                else:
                    eq_out = None if eq_work is None else _view(eq_work, nr, c1 - c0)
                refs.append(acc.update(z, c0, _view(work, nr, c1 - c0), e_out, eq_out))
            res = finalize(acc, z_gold[r0:r1], alpha)
            rows_out.store(r0, r1, res)
            if precompute:
                for k, c0 in enumerate(range(0, V, chunk)):
                    c1 = min(V, c0 + chunk)
                    n = nr * (c1 - c0)
                    e = e_store[nr * c0: nr * c0 + n].view(nr, c1 - c0)
                    eq = eq_store[nr * c0: nr * c0 + n].view(nr, c1 - c0) if keep_eq else e
                    dst = grad[r0:r1, c0:c1]
                    out = dst if gwork is None else _view(gwork, nr, c1 - c0)
                    grad_from_exps(e, eq, refs[k], z_gold[r0:r1], c0, yb, res, alpha, inv_tau,
                                   row_scale[r0:r1], out)
                    if gwork is not None:
                        dst.copy_(out)

        loss = _reduce(rows_out.loss, keep, reduction)
        nll = _reduce(rows_out.nll, keep, reduction)
        ctx.mark_non_differentiable(nll)
        outputs = [loss, nll]
        if want_stats:
            stats = _make_stats(rows_out.q_entropy, rows_out.correct, keep, N)
            ctx.mark_non_differentiable(*stats)
            outputs += list(stats)
        ctx.save_for_backward(logits, y, rows_out.lse, rows_out.m_ref, rows_out.log_sum_q, row_scale)
        ctx.grad = grad
        ctx.alpha, ctx.inv_tau, ctx.reduction, ctx.chunk = alpha, inv_tau, reduction, chunk
        return tuple(outputs)

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        logits, y, lse, m_ref, log_sq, row_scale = ctx.saved_tensors
        nones = (None,) * 7
        if not ctx.needs_input_grad[0]:
            return (None,) + nones
        grad = ctx.grad
        if grad is not None:
            # precomputed in forward for a unit incoming gradient; consumed once (a second
            # backward through a retained graph recomputes below)
            ctx.grad = None
            if ctx.reduction == "none":
                grad.mul_(grad_loss.reshape(-1, 1).to(grad.dtype))
            elif not (grad_loss.device.type == "cpu" and grad_loss.item() == 1.0):
                grad.mul_(grad_loss.to(grad.dtype))
            return (grad,) + nones

        N, V = logits.shape
        cdt = lse.dtype
        if ctx.reduction == "none":
            scale = row_scale * grad_loss.reshape(-1).to(cdt)
        else:
            scale = row_scale * grad_loss.to(cdt)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        chunk = ctx.chunk
        rows_per_block = _block_rows(N, chunk)
        bw = min(chunk, V)
        work = _scratch(rows_per_block, bw, logits, cdt)
        work2 = _scratch(rows_per_block, bw, logits, cdt)
        for r0 in range(0, N, rows_per_block):
            r1 = min(N, r0 + rows_per_block)
            for c0 in range(0, V, chunk):
                c1 = min(V, c0 + chunk)
                z = logits[r0:r1, c0:c1]
                if z.dtype != cdt:
                    z = z.to(cdt)
                shape = (r1 - r0, c1 - c0)
                grad_block(z, c0, y[r0:r1], lse[r0:r1], m_ref[r0:r1], log_sq[r0:r1], ctx.alpha,
                           ctx.inv_tau, scale[r0:r1], grad[r0:r1, c0:c1],
                           _view(work, *shape), _view(work2, *shape))
        return (grad,) + nones


def _make_stats(q_ent, correct, keep, n):
    if keep is None:
        return LaboStats(q_ent.sum(), correct.sum(), torch.tensor(n, device=q_ent.device))
    return LaboStats(
        torch.where(keep, q_ent, 0.0).sum(), (correct & keep).sum(), keep.sum()
    )


def labo_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    tau: float,
    ignore_index: Optional[int] = None,
    reduction: str = "sum",
    chunk_size: Optional[int] = None,
    return_stats: bool = False,
):
    """LABO loss of `logits` [..., V] against `target` [...]; see the package docstring."""
    check_logits(logits)
    alpha, tau = check_scalars(alpha, tau, reduction, chunk_size)
    V = logits.shape[-1]
    lead = logits.shape[:-1]
    flat_target, keep = check_target(target, lead, V, ignore_index, "logits")
    logits2d = logits.reshape(-1, V)
    if logits2d.stride(-1) != 1:
        logits2d = logits2d.contiguous()
    chunk = chunk_size if chunk_size is not None else DEFAULT_CHUNK
    inv_tau = 1.0 / tau  # 0.0 for tau = inf
    out = _LaboChunkedFunction.apply(
        logits2d, flat_target, keep, alpha, inv_tau, reduction, min(chunk, V), return_stats
    )
    loss, nll = out[0], out[1]
    if reduction == "none":
        loss, nll = loss.view(lead), nll.view(lead)
    if return_stats:
        return loss, nll, LaboStats(*out[2:])
    return loss, nll
