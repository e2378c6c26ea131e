"""The Triton implementation of both LABO ops (`impl="triton"`).

Logits op: one program per row runs stage 1 (`triton_row_stats`) and, when a gradient is
needed, stage 2 (`triton_row_grad`) right after, while the row is still in L2, writing the
gradient for a unit incoming gradient -- into the logits' own storage when the caller
allows it (`inplace_grad`), else into a new buffer. Backward then only rescales it.

Fused op: token chunks of `hidden`; per chunk the logits come from cuBLAS in the input
dtype, the same kernel turns them into their gradient in place, and three matmuls give
grad_hidden (written once), grad_weight and grad_bias (accumulated over chunks). Only one
chunk of logits exists at a time.

float16 inputs (and the fused op's per-row reduction) do not precompute: the gradient is
recomputed in backward so that the incoming gradient (fairseq's loss scale) is applied
before rounding to float16, where small probabilities would otherwise flush to zero.
On CPU tensors the kernels run only under Triton's interpreter (TRITON_INTERPRET=1).
"""
import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .params import LaboParams, compute_dtype, function_outputs, scale_grad_, spans, take_precomputed_grads
from .triton_row_grad import row_grad_kernel
from .triton_row_stats import row_stats_kernel

MAX_BLOCK_V = 32768  # vocabulary block per loop step on a GPU
GPU_NUM_WARPS = 32
# fused op: logits workspace of at least this many elements (and about N * d), so that the
# chunk matmuls stay large while the workspace stays near the size of `hidden`
MIN_WORKSPACE_ELEMENTS = 1 << 24
MIN_TOKEN_ROWS = 64


def block_width(vocab: int, chunk: int) -> int:
    """Largest power of two <= chunk, capped by the vocabulary's next power of two."""
    width = 1 << (max(1, chunk).bit_length() - 1)
    return max(16, min(width, triton.next_power_of_2(vocab)))


class RowStats:
    """Per-row outputs of stage 1 (ACC dtype; `correct` as int8)."""

    def __init__(self, n: int, device, dtype):
        self.loss = torch.empty(n, device=device, dtype=dtype)
        self.nll = torch.empty_like(self.loss)
        self.lse = torch.empty_like(self.loss)
        self.m_ref = torch.empty_like(self.loss)
        self.log_sum_q = torch.empty_like(self.loss)
        self.q_entropy = torch.empty_like(self.loss)
        self.correct = torch.empty(n, device=device, dtype=torch.int8)

    def pointers(self):
        return (self.loss, self.nll, self.lse, self.m_ref, self.log_sum_q, self.q_entropy, self.correct)


def _flags(params: LaboParams, z: torch.Tensor):
    acc = tl.float64 if compute_dtype(z.dtype) == torch.float64 else tl.float32
    flags = dict(BLOCK_V=block_width(z.shape[1], params.chunk), ACC=acc, TAU_INF=params.inv_tau == 0.0,
                 SMOOTH=params.alpha > 0.0)
    if z.is_cuda:
        flags["num_warps"] = GPU_NUM_WARPS
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


def row_stats(z, target, ignore_index, params: LaboParams, grad_out=None) -> RowStats:
    """Stage 1 over every row of z [N, V] (last dim contiguous); with `grad_out` (a tensor
    shaped like z, possibly z itself) stage 2 as well, for a unit incoming gradient."""
    n, V = z.shape
    stats = RowStats(n, z.device, compute_dtype(z.dtype))
    if n == 0:
        return stats
    out = z if grad_out is None else grad_out  # not written without WITH_GRAD
    row_stats_kernel[(n,)](z, z.stride(0), out, out.stride(0), target, _ignore(ignore_index), V,
                           _hyper_for(params, z), *stats.pointers(), NEED_Q=params.need_q,
                           TRACK_ORDER=params.want_stats, WITH_GRAD=grad_out is not None, **_flags(params, z))
    return stats


def row_grads(z, target, ignore_index, stats: RowStats, scale: torch.Tensor, params: LaboParams, out):
    """Stage 2 over every row: out = d loss_i / d z_i * scale_i (out may be z itself)."""
    n, V = z.shape
    if n == 0:
        return out
    row_grad_kernel[(n,)](z, z.stride(0), out, out.stride(0), target, _ignore(ignore_index), V,
                          stats.lse, stats.m_ref, stats.log_sum_q, scale, _hyper_for(params, z),
                          **_flags(params, z))
    return out


class TritonLogitsLabo(torch.autograd.Function):
    """labo_cross_entropy on logits [N, V] (last dim contiguous)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, logits, target, ignore_index, params: LaboParams, inplace_grad: bool):
        precompute = ctx.needs_input_grad[0] and logits.dtype != torch.float16
        grad = None
        if precompute:
            grad = logits.detach() if inplace_grad else torch.empty_like(logits, memory_format=torch.contiguous_format)
        stats = row_stats(logits.detach(), target, ignore_index, params, grad_out=grad)
        if precompute and inplace_grad:
            # the logits now hold their gradient: autograd must refuse any op that saved them
            torch.autograd.graph.increment_version(logits)
        ctx.params, ctx.ignore_index, ctx.grad = params, ignore_index, grad
        # no second backward once the logits hold their gradient
        ctx.save_for_backward(None if precompute and inplace_grad else logits, target, stats.lse, stats.m_ref, stats.log_sum_q)
        return function_outputs(ctx, stats.loss, stats.nll, stats.q_entropy, stats.correct, None, params)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, *unused):
        logits, target, lse, m_ref, log_sum_q = ctx.saved_tensors
        params = ctx.params
        if ctx.grad is not None:
            grad, ctx.grad = ctx.grad, None  # consumed once
            return scale_grad_(grad, grad_loss, params.per_row), None, None, None, None
        if logits is None:
            raise RuntimeError("labo_cross_entropy: a second backward through the graph needs the "
                               "logits, which inplace_grad=True overwrote with their gradient")
        n = logits.shape[0]
        cdt = lse.dtype
        scale = grad_loss.reshape(-1).to(cdt) if params.per_row else grad_loss.to(cdt).expand(n).contiguous()
        stats = RowStats.__new__(RowStats)
        stats.lse, stats.m_ref, stats.log_sum_q = lse, m_ref, log_sum_q
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        row_grads(logits, target, ctx.ignore_index, stats, scale, params, grad)
        return grad, None, None, None, None


def token_rows(n: int, vocab: int, dim: int) -> int:
    """Rows per token chunk of the fused op: logits workspace rows x V of about
    max(n * d, MIN_WORKSPACE_ELEMENTS) elements, at least MIN_TOKEN_ROWS rows."""
    budget = max(n * dim, MIN_WORKSPACE_ELEMENTS)
    return max(1, min(n, max(MIN_TOKEN_ROWS, budget // max(vocab, 1))))


def _matmul_dtype(hidden):
    if hidden.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return hidden.dtype


class TritonFusedLabo(torch.autograd.Function):
    """labo_linear_cross_entropy on hidden [N, d] (ignored rows already dropped)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, bias, target, params: LaboParams):
        n, d = hidden.shape
        V = weight.shape[0]
        mdt = _matmul_dtype(hidden)  # the dtype autocast would compute the projection in
        h, w = hidden.to(mdt), weight.to(mdt)
        b = None if bias is None else bias.to(mdt)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        precompute = (need_h or need_w or need_b) and mdt != torch.float16 and not params.per_row
        rows = token_rows(n, V, d)
        cdt = compute_dtype(mdt)
        grad_h = torch.empty(n, d, device=h.device, dtype=mdt) if precompute and need_h else None
        grad_w = torch.zeros(V, d, device=h.device, dtype=mdt) if precompute and need_w else None
        grad_b = torch.zeros(V, device=h.device, dtype=cdt) if precompute and need_b else None
        results = [RowStats(0, h.device, cdt)]
        for r0, r1 in spans(n, rows):
            hb = h[r0:r1]
            z = F.linear(hb, w, b)
            stats = row_stats(z, target[r0:r1], None, params, grad_out=z if precompute else None)
            results.append(stats)
            if precompute:
                _accumulate(z, hb, w, grad_h, grad_w, grad_b, r0, r1)
        stats = _concat(results)
        ctx.params = params
        ctx.grads = (grad_h, grad_w, grad_b) if precompute else None
        ctx.save_for_backward(hidden, weight, bias, target, stats.lse, stats.m_ref, stats.log_sum_q)
        return function_outputs(ctx, stats.loss, stats.nll, stats.q_entropy, stats.correct, None, params)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, *unused):
        hidden, weight, bias, target, lse, m_ref, log_sum_q = ctx.saved_tensors
        params = ctx.params
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grads = take_precomputed_grads(ctx, grad_loss, (hidden, weight, bias))
        if grads is not None:
            return (*grads, None, None)
        n, d = hidden.shape
        V = weight.shape[0]
        mdt = _matmul_dtype(hidden)
        h, w = hidden.to(mdt), weight.to(mdt)
        b = None if bias is None else bias.to(mdt)
        cdt = lse.dtype
        scale = grad_loss.reshape(-1).to(cdt) if params.per_row else grad_loss.to(cdt).expand(n).contiguous()
        grad_h = torch.empty(n, d, device=h.device, dtype=mdt) if need_h else None
        grad_w = torch.zeros(V, d, device=h.device, dtype=mdt) if need_w else None
        grad_b = torch.zeros(V, device=h.device, dtype=cdt) if need_b else None
        stats = RowStats.__new__(RowStats)
        for r0, r1 in spans(n, token_rows(n, V, d)):
            hb = h[r0:r1]
            z = F.linear(hb, w, b)
            stats.lse, stats.m_ref, stats.log_sum_q = lse[r0:r1], m_ref[r0:r1], log_sum_q[r0:r1]
            row_grads(z, target[r0:r1], None, stats, scale[r0:r1], params, z)
            _accumulate(z, hb, w, grad_h, grad_w, grad_b, r0, r1)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None, None,
        )


def _accumulate(g, hb, w, grad_h, grad_w, grad_b, r0, r1):
    """grad_h[rows] = g @ W; grad_w += g.T @ h[rows] (in the matmul dtype); grad_b += sum g."""
    if grad_h is not None:
        torch.mm(g, w, out=grad_h[r0:r1])
    if grad_w is not None:
        grad_w.addmm_(g.t(), hb)
    if grad_b is not None:
        grad_b.add_(g.sum(0, dtype=grad_b.dtype))


def _concat(parts) -> RowStats:
    out = RowStats.__new__(RowStats)
    for name in ("loss", "nll", "lse", "m_ref", "log_sum_q", "q_entropy", "correct"):
        setattr(out, name, torch.cat([getattr(p, name) for p in parts]))
    return out
