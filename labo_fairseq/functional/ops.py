"""The two autograd Functions behind the public ops, the same for every backend.

`LogitsLabo` (labo_cross_entropy) and `FusedLabo` (labo_linear_cross_entropy) own the token
blocking, the output projection (fused), the gradient accumulators and the rules below; a
backend (`backends.Backend`) only supplies the per-row stages: statistics (optionally with
the gradient) and the gradient alone.

* Gradient in forward: when an input needs a gradient, forward computes it for a unit
  incoming gradient while each block is in cache; backward only rescales it (on CUDA, on the
  device and only when the incoming gradient is not 1). Not when the gradient would be
  rounded to float16 first (`grads_in_forward`): there backward recomputes it after the
  incoming gradient (fairseq's loss scale) is applied, so small probabilities do not flush
  to zero. The dtype that decides is the logits' for the logits op and the matmul's (the
  autocast dtype when autocast is on) for the fused op, whose logits are computed in it.
* Per-row reduction: the logits op rescales each row of its precomputed gradient; the fused
  op's weight gradient sums over rows, so it recomputes in backward instead.
* Consume once: a precomputed gradient serves the first backward; a second one through a
  retained graph recomputes (it is kept on ctx, not saved, so that it can be dropped).
* In place (logits op, `inplace_grad`): the gradient is written into the logits' storage;
  their version counter is bumped so that autograd refuses any op that saved them, and a
  second backward is refused with a message naming inplace_grad.
* Fused op: token blocks of `hidden` (rows from the backend's `token_rows`); per block the
  logits come from one matmul in the matmul dtype, the backend turns them into their
  gradient in place, and three matmuls give grad_hidden (written once), grad_weight and
  grad_bias (summed over blocks in float32, `FusedGrads`). Only one block of logits exists.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import _validate
from .backends import Backend
from .params import LaboParams, RowResults, compute_dtype, spans


def grads_in_forward(needs_grad: bool, grad_dtype: torch.dtype, rows_rescalable: bool) -> bool:
    """Whether forward computes the gradient, given the dtype it would be rounded to and
    whether backward could still apply a per-row incoming gradient to it."""
    return needs_grad and grad_dtype != torch.float16 and rows_rescalable


def matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the fused op's projection runs in: autocast's on hidden's device when on."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return hidden.dtype


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, per_row: bool, backend: Backend) -> torch.Tensor:
    """Multiplies a gradient computed for a unit incoming gradient by the real one, in place.

    Skipped when the incoming gradient is a scalar 1.0 (fairseq without loss scaling): on the
    CPU by looking at it, on CUDA by the backend's device-side multiply where it has one.
    """
    if per_row:
        return grad.mul_(grad_output.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype))
    if _validate.host_checks(grad_output.device):
        return grad if grad_output.item() == 1.0 else grad.mul_(grad_output.to(grad.dtype))
    rows_contiguous = grad.is_contiguous() or (grad.dim() == 2 and grad.stride(-1) == 1)
    if backend.scale_unless_one_ is not None and grad.is_cuda and rows_contiguous:
        return backend.scale_unless_one_(grad, grad_output)
    return grad.mul_(grad_output.to(grad.dtype))


def _row_scale(grad_output: torch.Tensor, n: int, dtype: torch.dtype, per_row: bool) -> torch.Tensor:
    """The incoming gradient of each row's loss, contiguous (the kernels index it by row; an
    incoming gradient of per-row losses may be an expanded scalar), in the accumulation dtype."""
    per_row_output = grad_output.reshape(-1) if per_row else grad_output.expand(n)
    return per_row_output.to(dtype).contiguous()


def _outputs(ctx, rows: RowResults, params: LaboParams):
    """(loss, nll, q_entropy sum, n_correct); loss and nll per row when params.per_row, else
    summed; only `loss` differentiable."""
    loss, nll = rows.loss, rows.nll
    if not params.per_row:
        loss, nll = loss.sum(), nll.sum()
    n_correct = None
    if params.want_stats:
        q_entropy = rows.q_entropy.sum()
        if params.count_correct:
            n_correct = rows.correct.ne(0).sum(dtype=torch.long)
    else:
        q_entropy = loss.new_zeros(())
    ctx.mark_non_differentiable(*(t for t in (nll, q_entropy, n_correct) if t is not None))
    return loss, nll, q_entropy, n_correct


def _keep(ctx, grads: Optional[Sequence[Optional[torch.Tensor]]], params, ignore_index, backend) -> None:
    ctx.grads, ctx.params, ctx.ignore_index, ctx.backend = grads, params, ignore_index, backend


def _take_grads(ctx, grad_output: torch.Tensor, dtypes: Sequence[Optional[torch.dtype]]) -> Optional[tuple]:
    """The gradients computed in forward, scaled by the incoming gradient and cast to
    `dtypes` (None: kept); None when there are none. Consumed once."""
    if ctx.grads is None:
        return None
    grads, ctx.grads = ctx.grads, None
    scaled = (None if g is None or not ctx.needs_input_grad[i] else scale_grad_(g, grad_output, ctx.params.per_row,
                                                                                 ctx.backend)
              for i, g in enumerate(grads))
    return tuple(g if g is None or dtype is None else g.to(dtype) for g, dtype in zip(scaled, dtypes))


class LogitsLabo(torch.autograd.Function):
    """labo_cross_entropy on logits [N, V] (last dim contiguous) and target [N]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, logits, target, ignore_index: Optional[int], params: LaboParams, inplace_grad: bool,
                backend: Backend):
        n, V = logits.shape
        precompute = grads_in_forward(ctx.needs_input_grad[0], logits.dtype, rows_rescalable=True)
        grad = None
        if precompute:
            grad = logits.detach() if inplace_grad else torch.empty_like(logits, memory_format=torch.contiguous_format)
        z = logits.detach()
        rows = RowResults.empty(n, logits.device, compute_dtype(logits.dtype))
        for r0, r1 in spans(n, backend.logits_rows(n, V, params, precompute, logits.device)):
            backend.row_stats(z[r0:r1], target[r0:r1], ignore_index, params, rows.rows(r0, r1),
                              None if grad is None else grad[r0:r1])
        overwritten = precompute and inplace_grad
        if overwritten:  # the logits now hold their gradient: autograd must refuse any op that saved them
            torch.autograd.graph.increment_version(logits)
        _keep(ctx, None if grad is None else (grad,), params, ignore_index, backend)
        ctx.save_for_backward(None if overwritten else logits, target, *rows.saved())
        return _outputs(ctx, rows, params)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, *unused):
        logits, target, lse, m_ref, log_sum_q = ctx.saved_tensors
        rest = (None,) * 5
        grads = _take_grads(ctx, grad_loss, (None,))
        if grads is not None:
            return (*grads, *rest)
        if logits is None:
            raise RuntimeError("labo_cross_entropy: a second backward through the graph needs the "
                               "logits, which inplace_grad=True overwrote with their gradient")
        params, backend = ctx.params, ctx.backend
        n, V = logits.shape
        scale = _row_scale(grad_loss, n, lse.dtype, params.per_row)
        rows = RowResults.for_backward(lse, m_ref, log_sum_q)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        for r0, r1 in spans(n, backend.logits_rows(n, V, params, False, logits.device)):
            backend.row_grads(logits[r0:r1], target[r0:r1], ctx.ignore_index, rows.rows(r0, r1), scale[r0:r1],
                              params, grad[r0:r1])
        return (grad, *rest)


_ADDMM_OUT_DTYPE = {"refused": False}  # set once torch has refused it (then never tried again)


def _addmm_into_float32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    """acc += a @ b in one cuBLAS call that reads and writes the float32 accumulator directly
    (addmm's out_dtype, CUDA only); False where torch cannot, and the caller adds a product."""
    if not acc.is_cuda or _ADDMM_OUT_DTYPE["refused"]:
        return False
    try:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    except (RuntimeError, TypeError):
        _ADDMM_OUT_DTYPE["refused"] = True
        return False
    return True


class FusedGrads:
    """The fused op's gradient accumulators. grad_weight and grad_bias sum over token blocks in
    the accumulation dtype (float32, float64 for float64): on CUDA each block's g.T @ h is
    added by cuBLAS straight into the float32 buffer; elsewhere it is one GEMM (float32
    accumulation inside, rounded once to the matmul dtype) added in float32. Either way the
    error stays that of a single GEMM however many blocks there are. grad_hidden is written
    once per row, in the matmul dtype."""

    def __init__(self, n, vocab, dim, device, mdt, need_h, need_w, need_b):
        cdt = compute_dtype(mdt)
        self.hidden = torch.empty(n, dim, device=device, dtype=mdt) if need_h else None
        self.weight = torch.zeros(vocab, dim, device=device, dtype=cdt) if need_w else None
        self.bias = torch.zeros(vocab, device=device, dtype=cdt) if need_b else None

    def add_block(self, g, hb, w, r0, r1):
        """g: d loss / d logits of rows r0:r1 (matmul dtype); hb: those rows of hidden."""
        if self.hidden is not None:
            torch.mm(g, w, out=self.hidden[r0:r1])
        if self.weight is not None:
            if self.weight.dtype == g.dtype:
                self.weight.addmm_(g.t(), hb)
            elif not _addmm_into_float32(self.weight, g.t(), hb):
                self.weight.add_(torch.mm(g.t(), hb))
        if self.bias is not None:
            self.bias.add_(g.sum(0, dtype=self.bias.dtype))

    def as_tuple(self):
        return self.hidden, self.weight, self.bias


class FusedLabo(torch.autograd.Function):
    """labo_linear_cross_entropy on hidden [N, d], weight [V, d], bias [V] or None, target [N]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, bias, target, ignore_index: Optional[int], params: LaboParams, backend: Backend):
        n, d = hidden.shape
        V = weight.shape[0]
        mdt = matmul_dtype(hidden)
        h, w = hidden.to(mdt), weight.to(mdt)
        b = None if bias is None else bias.to(mdt)
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        precompute = grads_in_forward(any(need), mdt, rows_rescalable=not params.per_row)
        grads = FusedGrads(n, V, d, h.device, mdt, *need) if precompute else None
        rows = RowResults.empty(n, h.device, compute_dtype(mdt))
        for r0, r1 in spans(n, backend.token_rows(n, V, h.element_size(), params.workspace_bytes, h.device)):
            hb = h[r0:r1]
            z = F.linear(hb, w, b)
            backend.row_stats(z, target[r0:r1], ignore_index, params, rows.rows(r0, r1), z if precompute else None)
            if precompute:
                grads.add_block(z, hb, w, r0, r1)
        _keep(ctx, grads.as_tuple() if precompute else None, params, ignore_index, backend)
        ctx.mdt = mdt  # backward recomputes in the same dtype, autocast or not
        ctx.save_for_backward(hidden, weight, bias, target, *rows.saved())
        return _outputs(ctx, rows, params)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, *unused):
        hidden, weight, bias, target, lse, m_ref, log_sum_q = ctx.saved_tensors
        dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        rest = (None,) * 4
        grads = _take_grads(ctx, grad_loss, dtypes)
        if grads is not None:
            return (*grads, *rest)
        params, backend, mdt = ctx.params, ctx.backend, ctx.mdt
        n, d = hidden.shape
        V = weight.shape[0]
        h, w = hidden.to(mdt), weight.to(mdt)
        b = None if bias is None else bias.to(mdt)
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        acc = FusedGrads(n, V, d, h.device, mdt, *need)
        scale = _row_scale(grad_loss, n, lse.dtype, params.per_row)
        rows = RowResults.for_backward(lse, m_ref, log_sum_q)
        for r0, r1 in spans(n, backend.token_rows(n, V, h.element_size(), params.workspace_bytes, h.device)):
            hb = h[r0:r1]
            z = F.linear(hb, w, b)
            backend.row_grads(z, target[r0:r1], ctx.ignore_index, rows.rows(r0, r1), scale[r0:r1], params, z)
            acc.add_block(z, hb, w, r0, r1)
        return (*(None if g is None else g.to(dtype) for g, dtype in zip(acc.as_tuple(), dtypes)), *rest)
