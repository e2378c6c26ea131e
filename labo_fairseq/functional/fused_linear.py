"""LABO loss fused with the output projection: logits = hidden @ weight.T (+ bias) are never
materialised as [N, V].

Work is done per token block (rows) x vocabulary chunk, with the same online statistics as
the chunked op. Token blocks are the outer loop so that a block's statistics are final after
one sweep over the vocabulary; for reduction "sum" (and "mean", which is "sum" rescaled)
the gradients are then accumulated in a second sweep over that block, reusing the exps kept
from the first sweep, so the three matmuls of the unfused path (logits, grad_hidden,
grad_weight) are all that is done. Backward only rescales the accumulated gradients.
Reduction "none", float16 inputs and a second backward through a retained graph instead
recompute the logits block by block in backward (one more matmul).
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ._streaming import (
    LaboStats, RowAccumulator, RowResults, compute_dtype, finalize, grad_block, grad_from_exps,
)
from ._validate import check_linear, check_scalars, check_target

DEFAULT_CHUNK = 4096
TOKEN_BLOCK = 256  # rows per block: big enough that the matmuls are compute bound
STORE_ELEMENTS = 1 << 22  # [rows, V] exp store per token block (16 MiB in float32)


def _token_rows(n: int, vocab: int) -> int:
    return max(1, min(n, TOKEN_BLOCK, max(32, STORE_ELEMENTS // vocab)))


def _flat(buf, rows, cols, offset=0):
    return buf[offset: offset + rows * cols].view(rows, cols)


class _FusedLaboFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, alpha, inv_tau, per_row, chunk, want_stats):
        n, d = hidden.shape
        V = weight.shape[0]
        dt = hidden.dtype
        cdt = compute_dtype(dt)
        dev = hidden.device
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        precompute = (need_h or need_w or need_b) and dt != torch.float16 and not per_row
        rows = _token_rows(n, V)
        need_q = alpha > 0.0 or want_stats
        keep_eq = precompute and alpha > 0.0 and inv_tau not in (0.0, 1.0)
        bw = min(chunk, V)

        work = torch.empty(rows * bw, device=dev, dtype=cdt)
        e_store = torch.empty(rows * (V if precompute else bw), device=dev, dtype=cdt)
        eq_store = torch.empty(rows * (V if keep_eq else bw), device=dev, dtype=cdt) if need_q else None
        gwork = torch.empty(rows * bw, device=dev, dtype=cdt) if precompute else None
        grad_h = torch.zeros(n, d, device=dev, dtype=cdt) if precompute and need_h else None
        grad_w = torch.zeros(V, d, device=dev, dtype=cdt) if precompute and need_w else None
        grad_b = torch.zeros(V, device=dev, dtype=cdt) if precompute and need_b else None

        rows_out = RowResults(n, dev, cdt, want_stats)
        ones = torch.ones(rows, device=dev, dtype=cdt)

        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            nr = r1 - r0
            hb = hidden[r0:r1]
            yb = target[r0:r1]
            acc = RowAccumulator(yb, inv_tau, want_stats, cdt, need_q)
            z_gold = torch.zeros(nr, device=dev, dtype=cdt)
            refs = []
            for c0 in range(0, V, chunk):
                c1 = min(V, c0 + chunk)
                nc = c1 - c0
                z = F.linear(hb, weight[c0:c1], None if bias is None else bias[c0:c1])
                if z.dtype != cdt:
                    z = z.to(cdt)
                gold_local = yb - c0
                gold_in = (gold_local >= 0) & (gold_local < nc)
                z_gold = torch.where(gold_in, z.gather(1, gold_local.clamp(0, nc - 1).unsqueeze(1)).squeeze(1), z_gold)
                off = nr * c0 if precompute else 0
                e_out = _flat(e_store, nr, nc, off)
                eq_out = None
                if eq_store is not None:
                    eq_out = _flat(eq_store, nr, nc, off if keep_eq else 0)
                refs.append(acc.update(z, c0, _flat(work, nr, nc), e_out, eq_out))
            res = finalize(acc, z_gold, alpha)
            rows_out.store(r0, r1, res)
            if not precompute:
                continue
            for k, c0 in enumerate(range(0, V, chunk)):
                c1 = min(V, c0 + chunk)
                nc = c1 - c0
                e = _flat(e_store, nr, nc, nr * c0)
                eq = _flat(eq_store, nr, nc, nr * c0) if keep_eq else e
                g = grad_from_exps(e, eq, refs[k], z_gold, c0, yb, res, alpha, inv_tau,
                                   ones[:nr], _flat(gwork, nr, nc))
                _accumulate_grads(g, hb, weight, c0, c1, r0, r1, grad_h, grad_w, grad_b)

        if per_row:
            loss, nll = rows_out.loss, rows_out.nll
        else:
            loss, nll = rows_out.loss.sum(), rows_out.nll.sum()
        ctx.mark_non_differentiable(nll)
        outputs = [loss, nll]
        if want_stats:
            stats = (rows_out.q_entropy.sum(), rows_out.correct.sum())
            ctx.mark_non_differentiable(*stats)
            outputs += list(stats)
        ctx.save_for_backward(hidden, weight, bias, target, rows_out.lse, rows_out.m_ref, rows_out.log_sum_q)
        ctx.grads = (grad_h, grad_w, grad_b) if precompute else None
        ctx.alpha, ctx.inv_tau, ctx.per_row, ctx.chunk = alpha, inv_tau, per_row, chunk
        return tuple(outputs)

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        hidden, weight, bias, target, lse, m_ref, log_sq = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        tail = (None,) * 6
        cdt = lse.dtype
        if ctx.grads is not None:
            # accumulated in forward for a unit incoming gradient; consumed once (a second
            # backward through a retained graph recomputes below)
            grads, ctx.grads = ctx.grads, None
            unit = grad_loss.device.type == "cpu" and grad_loss.item() == 1.0
            out = []
            for g, src, needed in zip(grads, (hidden, weight, bias), (need_h, need_w, need_b)):
                if not needed or g is None:
                    out.append(None)
                    continue
                if not unit:
                    g.mul_(grad_loss.to(cdt))
                out.append(g.to(src.dtype))
            return tuple(out) + tail

        n, d = hidden.shape
        V = weight.shape[0]
        dev = hidden.device
        chunk = ctx.chunk
        rows = min(n, TOKEN_BLOCK) if n > 0 else 1
        scale = grad_loss.reshape(-1).to(cdt).expand(n) if ctx.per_row else grad_loss.to(cdt).expand(n)
        grad_h = torch.zeros(n, d, device=dev, dtype=cdt) if need_h else None
        grad_w = torch.zeros(V, d, device=dev, dtype=cdt) if need_w else None
        grad_b = torch.zeros(V, device=dev, dtype=cdt) if need_b else None
        bw = min(chunk, V)
        work = torch.empty(rows * bw, device=dev, dtype=cdt)
        work2 = torch.empty(rows * bw, device=dev, dtype=cdt)
        gwork = torch.empty(rows * bw, device=dev, dtype=cdt)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            nr = r1 - r0
            hb = hidden[r0:r1]
            for c0 in range(0, V, chunk):
                c1 = min(V, c0 + chunk)
                nc = c1 - c0
                z = F.linear(hb, weight[c0:c1], None if bias is None else bias[c0:c1])
                if z.dtype != cdt:
                    z = z.to(cdt)
                g = grad_block(z, c0, target[r0:r1], lse[r0:r1], m_ref[r0:r1], log_sq[r0:r1],
                               ctx.alpha, ctx.inv_tau, scale[r0:r1], _flat(gwork, nr, nc),
                               _flat(work, nr, nc), _flat(work2, nr, nc))
                _accumulate_grads(g, hb, weight, c0, c1, r0, r1, grad_h, grad_w, grad_b)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
        ) + tail


def _accumulate_grads(g, hb, weight, c0, c1, r0, r1, grad_h, grad_w, grad_b):
    """grad_h[rows] += g @ W[c]; grad_w[c] += g.T @ h[rows]; grad_b[c] += sum_rows g."""
    gm = g if g.dtype == hb.dtype else g.to(hb.dtype)
    same = grad_h is None or grad_h.dtype == hb.dtype
    if grad_h is not None:
        if same:
            grad_h[r0:r1].addmm_(gm, weight[c0:c1])
        else:
            grad_h[r0:r1].add_(gm @ weight[c0:c1])
    if grad_w is not None:
        if grad_w.dtype == hb.dtype:
            grad_w[c0:c1].addmm_(gm.t(), hb)
        else:
            grad_w[c0:c1].add_(gm.t() @ hb)
    if grad_b is not None:
        grad_b[c0:c1].add_(g.sum(0))


def labo_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    tau: float,
    bias: Optional[torch.Tensor] = None,
    ignore_index: Optional[int] = None,
    reduction: str = "sum",
    chunk_size: Optional[int] = None,
    return_stats: bool = False,
):
    """LABO loss of logits = hidden @ weight.T + bias without materialising them."""
    check_linear(hidden, weight, bias)
    alpha, tau = check_scalars(alpha, tau, reduction, chunk_size)
    V, d = weight.shape
    lead = hidden.shape[:-1]
    flat_target, keep = check_target(target, lead, V, ignore_index, "hidden")
    hidden2d = hidden.reshape(-1, d)
    N = hidden2d.shape[0]
    cdt = compute_dtype(hidden.dtype)
    if keep is not None and bool(keep.all()):
        keep = None
    if keep is not None:
        # ignored positions cost nothing: drop them before any matmul
        idx = keep.nonzero().squeeze(1)
        hidden2d, flat_target = hidden2d.index_select(0, idx), flat_target.index_select(0, idx)
    chunk = min(chunk_size if chunk_size is not None else DEFAULT_CHUNK, V)
    out = _FusedLaboFunction.apply(
        hidden2d.contiguous(), weight, bias, flat_target, alpha, 1.0 / tau,
        reduction == "none", chunk, return_stats,
    )
    loss, nll = out[0], out[1]
    n_tokens = torch.tensor(N, device=hidden.device) if keep is None else keep.sum()
    if reduction == "none":
        if keep is not None:
            loss = loss.new_zeros(N).index_copy(0, idx, loss)
            nll = nll.new_zeros(N).index_copy(0, idx, nll)
        loss, nll = loss.view(lead), nll.view(lead)
    elif reduction == "mean":
        denom = n_tokens.clamp(min=1).to(cdt)
        loss, nll = loss / denom, nll / denom
    if return_stats:
        return loss, nll, LaboStats(out[2], out[3], n_tokens)
    return loss, nll
