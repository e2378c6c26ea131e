"""The torch implementation of the fused op (`impl="torch"`): logits = hidden @ weight.T
(+ bias) are never materialised as [N, V].

Work is done per token block (rows) x vocabulary chunk, with the same online statistics as
the logits op. Token blocks are the outer loop so that a block's statistics are final after
one sweep over the vocabulary; the gradients are then accumulated in a second sweep over
that block, reusing the exps kept from the first sweep, so the three matmuls of the unfused
path (logits, grad_hidden, grad_weight) are all that is done. Backward only rescales the
accumulated gradients. Per-row reduction, float16 inputs and a second backward through a
retained graph instead recompute the logits block by block in backward (one more matmul).
Gradients accumulate in float32 (float64 for float64 inputs).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._streaming import RowAccumulator, RowResults, finalize, grad_block, grad_from_exps
from .params import LaboParams, compute_dtype, function_outputs, spans, take_precomputed_grads


@dataclass(frozen=True)
class FusedSizes:
    chunk: int  # default vocabulary chunk width
    token_block: int  # most rows per token block (matmuls compute bound)
    store_elements: int  # [rows, V] exp store per token block


CPU_SIZES = FusedSizes(chunk=4096, token_block=256, store_elements=1 << 22)
# not tuned on a GPU: fewer, larger blocks keep the number of kernel launches low
CUDA_SIZES = FusedSizes(chunk=32768, token_block=2048, store_elements=1 << 25)


def sizes_for(device: torch.device) -> FusedSizes:
    return CUDA_SIZES if device.type == "cuda" else CPU_SIZES


def _token_rows(n: int, vocab: int, sizes: FusedSizes, workspace_bytes=None) -> int:
    """Rows per token block: the [rows, V] exp store (float32) fills sizes.store_elements, or
    `workspace_bytes` when given (then not capped by sizes.token_block)."""
    if workspace_bytes is not None:
        return max(1, min(n, max(32, workspace_bytes // (4 * vocab))))
    return max(1, min(n, sizes.token_block, max(32, sizes.store_elements // vocab)))


def _flat(buf, rows, cols, offset=0):
    return buf[offset: offset + rows * cols].view(rows, cols)


def _linear(hb, weight, bias, c0, c1, cdt):
    return F.linear(hb, weight[c0:c1], None if bias is None else bias[c0:c1]).to(cdt)


class TorchFusedLabo(torch.autograd.Function):
    """labo_linear_cross_entropy on hidden [N, d] (ignored rows already dropped)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, params: LaboParams):
        n, d = hidden.shape
        V = weight.shape[0]
        cdt = compute_dtype(hidden.dtype)
        dev = hidden.device
        sizes = sizes_for(dev)
        alpha, inv_tau = params.alpha, params.inv_tau
        chunk = min(params.chunk, V)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        precompute = (need_h or need_w or need_b) and hidden.dtype != torch.float16 and not params.per_row
        rows = _token_rows(n, V, sizes, params.workspace_bytes)
        keep_eq = precompute and alpha > 0.0 and inv_tau not in (0.0, 1.0)

        work = torch.empty(rows * chunk, device=dev, dtype=cdt)
        e_store = torch.empty(rows * (V if precompute else chunk), device=dev, dtype=cdt)
        eq_store = torch.empty(rows * (V if keep_eq else chunk), device=dev, dtype=cdt) if params.need_q else None
        gwork = torch.empty(rows * chunk, device=dev, dtype=cdt) if precompute else None
        grad_h = torch.zeros(n, d, device=dev, dtype=cdt) if precompute and need_h else None
        grad_w = torch.zeros(V, d, device=dev, dtype=cdt) if precompute and need_w else None
        grad_b = torch.zeros(V, device=dev, dtype=cdt) if precompute and need_b else None

        rows_out = RowResults(n, dev, cdt, params.want_stats, params.track_order)
        ones = torch.ones(rows, device=dev, dtype=cdt)

        for r0, r1 in spans(n, rows):
            nr = r1 - r0
            hb = hidden[r0:r1]
            yb = target[r0:r1]
            acc = RowAccumulator(yb, inv_tau, params.track_order, cdt, params.need_q)
            z_gold = torch.zeros(nr, device=dev, dtype=cdt)
            refs = []
            for c0, c1 in spans(V, chunk):
                nc = c1 - c0
                z = _linear(hb, weight, bias, c0, c1, cdt)
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
            for ref, (c0, c1) in zip(refs, spans(V, chunk)):
                nc = c1 - c0
                e = _flat(e_store, nr, nc, nr * c0)
                eq = _flat(eq_store, nr, nc, nr * c0) if keep_eq else e
                g = grad_from_exps(e, eq, ref, z_gold, c0, yb, res, alpha, inv_tau, ones[:nr], _flat(gwork, nr, nc))
                _accumulate_grads(g, hb, weight, c0, c1, r0, r1, grad_h, grad_w, grad_b)

        outputs = function_outputs(ctx, rows_out.loss, rows_out.nll, rows_out.q_entropy, rows_out.correct,
                                   None, params)
        ctx.save_for_backward(hidden, weight, bias, target, rows_out.lse, rows_out.m_ref, rows_out.log_sum_q)
        ctx.grads = (grad_h, grad_w, grad_b) if precompute else None
        ctx.params = params
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        hidden, weight, bias, target, lse, m_ref, log_sq = ctx.saved_tensors
        params = ctx.params
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grads = take_precomputed_grads(ctx, grad_loss, (hidden, weight, bias))
        if grads is not None:
            return (*grads, None, None)

        n, d = hidden.shape
        V = weight.shape[0]
        dev = hidden.device
        cdt = lse.dtype
        chunk = min(params.chunk, V)
        rows = max(1, min(n, sizes_for(dev).token_block))
        scale = grad_loss.reshape(-1).to(cdt) if params.per_row else grad_loss.to(cdt).expand(n)
        grad_h = torch.zeros(n, d, device=dev, dtype=cdt) if need_h else None
        grad_w = torch.zeros(V, d, device=dev, dtype=cdt) if need_w else None
        grad_b = torch.zeros(V, device=dev, dtype=cdt) if need_b else None
        work = torch.empty(rows * chunk, device=dev, dtype=cdt)
        work2 = torch.empty(rows * chunk, device=dev, dtype=cdt)
        gwork = torch.empty(rows * chunk, device=dev, dtype=cdt)
        for r0, r1 in spans(n, rows):
            nr = r1 - r0
            hb = hidden[r0:r1]
            for c0, c1 in spans(V, chunk):
                nc = c1 - c0
                z = _linear(hb, weight, bias, c0, c1, cdt)
                g = grad_block(z, c0, target[r0:r1], lse[r0:r1], m_ref[r0:r1], log_sq[r0:r1],
                               params.alpha, params.inv_tau, scale[r0:r1], _flat(gwork, nr, nc),
                               _flat(work, nr, nc), _flat(work2, nr, nc))
                _accumulate_grads(g, hb, weight, c0, c1, r0, r1, grad_h, grad_w, grad_b)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None, None,
        )


def _accumulate_grads(g, hb, weight, c0, c1, r0, r1, grad_h, grad_w, grad_b):
    """grad_h[rows] += g @ W[c]; grad_w[c] += g.T @ h[rows]; grad_b[c] += sum_rows g."""
    gm = g if g.dtype == hb.dtype else g.to(hb.dtype)
    if grad_h is not None:
        if grad_h.dtype == hb.dtype:
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
