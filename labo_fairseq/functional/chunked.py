"""The torch implementation of the logits op (`impl="torch"`), streamed over vocabulary chunks.

Forward makes one pass over the logits per block of rows, keeping only per-row statistics.
When the logits need a gradient (and are not float16) the gradient of the block is written
right after its statistics are final, while the block is still in cache (or, with
`inplace_grad`, into the logits themselves); backward then only rescales it. float16 logits
instead recompute the gradient in backward so that the loss scale is applied before
rounding to float16 (small probabilities would otherwise underflow).

Block sizes depend on the device: CPU sizes keep a block in cache (measured, see
benchmarks/RESULTS.md); CUDA sizes keep the number of kernel launches low.
"""
from dataclasses import dataclass

import torch

from ._streaming import RowAccumulator, RowResults, finalize, grad_block, grad_from_exps
from .params import LaboParams, compute_dtype, function_outputs, scale_grad_, spans


@dataclass(frozen=True)
class ChunkedSizes:
    chunk: int  # default vocabulary chunk width
    block_elements: int  # elements per (rows x chunk) block without a gradient store
    store_elements: int  # elements per [rows, V] exp store kept for the gradient sweep


CPU_SIZES = ChunkedSizes(chunk=8192, block_elements=1 << 18, store_elements=1 << 20)
# not tuned on a GPU: a launch-bound loop needs few, large blocks (about 64 MiB fp32 each)
CUDA_SIZES = ChunkedSizes(chunk=32768, block_elements=1 << 24, store_elements=1 << 24)


def sizes_for(device: torch.device) -> ChunkedSizes:
    return CUDA_SIZES if device.type == "cuda" else CPU_SIZES


def _scratch(rows: int, cols: int, like: torch.Tensor, dtype: torch.dtype):
    return torch.empty(rows * cols, device=like.device, dtype=dtype)


def _view(buf: torch.Tensor, rows: int, cols: int, offset: int = 0) -> torch.Tensor:
    return buf[offset: offset + rows * cols].view(rows, cols)


class TorchLogitsLabo(torch.autograd.Function):
    """labo_cross_entropy on logits [N, V] (last dim contiguous); y has ignored rows set to 0."""

    @staticmethod
    def forward(ctx, logits, y, keep, params: LaboParams, inplace_grad: bool):
        N, V = logits.shape
        cdt = compute_dtype(logits.dtype)
        dev = logits.device
        sizes = sizes_for(dev)
        chunk = min(params.chunk, V)
        alpha, inv_tau = params.alpha, params.inv_tau
        # d(sum of kept rows)/d(loss_i) for a unit incoming gradient
        row_scale = torch.ones(N, device=dev, dtype=cdt) if keep is None else keep.to(cdt)

        precompute = ctx.needs_input_grad[0] and logits.dtype != torch.float16
        grad = None
        if precompute:
            grad = logits.detach() if inplace_grad else torch.empty_like(logits, memory_format=torch.contiguous_format)
        z_gold = logits.gather(1, y.unsqueeze(1)).squeeze(1).to(cdt)
        rows_out = RowResults(N, dev, cdt, params.want_stats, params.track_order)

        if precompute:
            # keep the row block's exps (one or two [rows, V] stores) for the gradient sweep
            rows_per_block = max(1, min(N, sizes.store_elements // V))
        else:
            rows_per_block = max(1, min(N, sizes.block_elements // chunk))
        keep_eq = precompute and alpha > 0.0 and inv_tau not in (0.0, 1.0)
        work = _scratch(rows_per_block, chunk, logits, cdt)
        if precompute:
            e_store = _scratch(rows_per_block, V, logits, cdt)
            eq_store = _scratch(rows_per_block, V, logits, cdt) if keep_eq else None
            gwork = _scratch(rows_per_block, chunk, logits, cdt) if grad.dtype != cdt else None
        else:
            e_store = _scratch(rows_per_block, chunk, logits, cdt)
            eq_store = None
        eq_work = None
        if not keep_eq and params.need_q and inv_tau not in (0.0, 1.0):
            eq_work = _scratch(rows_per_block, chunk, logits, cdt)
        for r0, r1 in spans(N, rows_per_block):
            nr = r1 - r0
            yb = y[r0:r1]
            acc = RowAccumulator(yb, inv_tau, params.track_order, cdt, params.need_q)
            refs = []
            for c0, c1 in spans(V, chunk):
                z = logits[r0:r1, c0:c1].to(cdt)
                off = nr * c0 if precompute else 0
                e_out = _view(e_store, nr, c1 - c0, off)
                if keep_eq:
                    eq_out = _view(eq_store, nr, c1 - c0, off)
                else:
                    eq_out = None if eq_work is None else _view(eq_work, nr, c1 - c0)
                refs.append(acc.update(z, c0, _view(work, nr, c1 - c0), e_out, eq_out))
            res = finalize(acc, z_gold[r0:r1], alpha)
            rows_out.store(r0, r1, res)
            if not precompute:
                continue
            for ref, (c0, c1) in zip(refs, spans(V, chunk)):
                e = _view(e_store, nr, c1 - c0, nr * c0)
                eq = _view(eq_store, nr, c1 - c0, nr * c0) if keep_eq else e
                dst = grad[r0:r1, c0:c1]
                out = dst if gwork is None else _view(gwork, nr, c1 - c0)
                grad_from_exps(e, eq, ref, z_gold[r0:r1], c0, yb, res, alpha, inv_tau, row_scale[r0:r1], out)
                if gwork is not None:
                    dst.copy_(out)
        if precompute and inplace_grad:
            # the logits now hold their gradient: autograd must refuse any op that saved them
            torch.autograd.graph.increment_version(logits)

        outputs = function_outputs(ctx, rows_out.loss, rows_out.nll, rows_out.q_entropy, rows_out.correct,
                                   keep, params)
        # no second backward once the logits hold their gradient
        ctx.save_for_backward(None if precompute and inplace_grad else logits, y, rows_out.lse, rows_out.m_ref,
                              rows_out.log_sum_q, row_scale)
        ctx.grad, ctx.params = grad, params
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        logits, y, lse, m_ref, log_sq, row_scale = ctx.saved_tensors
        params = ctx.params
        if ctx.grad is not None:
            grad, ctx.grad = ctx.grad, None  # precomputed for a unit incoming gradient; consumed once
            return scale_grad_(grad, grad_loss, params.per_row), None, None, None, None
        if logits is None:
            raise RuntimeError("labo_cross_entropy: a second backward through the graph needs the "
                               "logits, which inplace_grad=True overwrote with their gradient")
        N, V = logits.shape
        cdt = lse.dtype
        incoming = grad_loss.reshape(-1).to(cdt) if params.per_row else grad_loss.to(cdt)
        scale = row_scale * incoming
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        chunk = min(params.chunk, V)
        rows_per_block = max(1, min(N, sizes_for(logits.device).block_elements // chunk))
        work = _scratch(rows_per_block, chunk, logits, cdt)
        work2 = _scratch(rows_per_block, chunk, logits, cdt)
        for r0, r1 in spans(N, rows_per_block):
            for c0, c1 in spans(V, chunk):
                shape = (r1 - r0, c1 - c0)
                grad_block(logits[r0:r1, c0:c1].to(cdt), c0, y[r0:r1], lse[r0:r1], m_ref[r0:r1],
                           log_sq[r0:r1], params.alpha, params.inv_tau, scale[r0:r1], grad[r0:r1, c0:c1],
                           _view(work, *shape), _view(work2, *shape))
        return grad, None, None, None, None
