"""The Triton implementation of both LABO ops (`impl="triton"`).

Logits op: one program per row runs stage 1 (`triton_row_stats`) and, when a gradient is
needed, stage 2 (`triton_row_grad`) right after, while the row is still in L2, writing the
gradient for a unit incoming gradient -- into the logits' own storage when the caller
allows it (`inplace_grad`), else into a new buffer. Backward then only rescales it, on the
device and only when the incoming gradient is not 1 (`triton_scale`).

Fused op: token chunks of `hidden` sized by a memory budget (`token_rows`); per chunk the
logits come from cuBLAS in the input dtype, the same kernel turns them into their gradient in
place (ignored rows: zeros), and three matmuls give grad_hidden (written once), grad_weight
and grad_bias (accumulated over chunks in float32, `FusedGrads`). Only one chunk of logits
exists at a time. Nothing reads a value back to the host.

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
                           TRACK_ORDER=params.track_order, WITH_GRAD=grad_out is not None, **_flags(params, z))
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


def token_rows(n: int, vocab: int, element_size: int, workspace_bytes, device: torch.device) -> int:
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


def _matmul_dtype(hidden):
    if hidden.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return hidden.dtype


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
    """The fused op's gradient accumulators. grad_weight and grad_bias sum over token chunks in
    the accumulation dtype (float32, float64 for float64): on CUDA each chunk's g.T @ h is
    added by cuBLAS straight into the float32 buffer; elsewhere it is one GEMM (float32
    accumulation inside, rounded once to the matmul dtype) added in float32. Either way the
    error stays that of a single GEMM however many chunks there are. grad_hidden is written
    once per row, in the matmul dtype."""

    def __init__(self, n, vocab, dim, device, mdt, need_h, need_w, need_b):
        cdt = compute_dtype(mdt)
        self.hidden = torch.empty(n, dim, device=device, dtype=mdt) if need_h else None
        self.weight = torch.zeros(vocab, dim, device=device, dtype=cdt) if need_w else None
        self.bias = torch.zeros(vocab, device=device, dtype=cdt) if need_b else None

    def add_chunk(self, g, hb, w, r0, r1):
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


class TritonFusedLabo(torch.autograd.Function):
    """labo_linear_cross_entropy on hidden [N, d]; rows whose target is `ignore_index` give
    zero loss and zero gradient (handled by the kernel, so no host sync picks them out)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, bias, target, ignore_index, params: LaboParams):
        n, d = hidden.shape
        V = weight.shape[0]
        mdt = _matmul_dtype(hidden)  # the dtype autocast would compute the projection in
        h, w = hidden.to(mdt), weight.to(mdt)
        b = None if bias is None else bias.to(mdt)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        precompute = (need_h or need_w or need_b) and mdt != torch.float16 and not params.per_row
        cdt = compute_dtype(mdt)
        grads = FusedGrads(n, V, d, h.device, mdt, need_h, need_w, need_b) if precompute else None
        results = [RowStats(0, h.device, cdt)]
        for r0, r1 in spans(n, token_rows(n, V, h.element_size(), params.workspace_bytes, h.device)):
            hb = h[r0:r1]
            z = F.linear(hb, w, b)
            results.append(row_stats(z, target[r0:r1], ignore_index, params, grad_out=z if precompute else None))
            if precompute:
                grads.add_chunk(z, hb, w, r0, r1)
        stats = _concat(results)
        ctx.params, ctx.ignore_index = params, ignore_index
        ctx.grads = grads.as_tuple() if precompute else None
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
            return (*grads, None, None, None)
        n, d = hidden.shape
        V = weight.shape[0]
        mdt = _matmul_dtype(hidden)
        h, w = hidden.to(mdt), weight.to(mdt)
        b = None if bias is None else bias.to(mdt)
        cdt = lse.dtype
        scale = grad_loss.reshape(-1).to(cdt) if params.per_row else grad_loss.to(cdt).expand(n).contiguous()
        acc = FusedGrads(n, V, d, h.device, mdt, need_h, need_w, need_b)
        stats = RowStats.__new__(RowStats)
        for r0, r1 in spans(n, token_rows(n, V, h.element_size(), params.workspace_bytes, h.device)):
            hb = h[r0:r1]
            z = F.linear(hb, w, b)
            stats.lse, stats.m_ref, stats.log_sum_q = lse[r0:r1], m_ref[r0:r1], log_sum_q[r0:r1]
            row_grads(z, target[r0:r1], ctx.ignore_index, stats, scale[r0:r1], params, z)
            acc.add_chunk(z, hb, w, r0, r1)
        grad_h, grad_w, grad_b = acc.as_tuple()
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None, None, None,
        )


def _concat(parts) -> RowStats:
    out = RowStats.__new__(RowStats)
    for name in ("loss", "nll", "lse", "m_ref", "log_sum_q", "q_entropy", "correct"):
        setattr(out, name, torch.cat([getattr(p, name) for p in parts]))
    return out


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
    """Every kernel configuration the launchers above use at vocabulary size `vocab`, as
    `benchmarks.kernels.KernelSpec`s for an offline compile (no GPU needed)."""
    from labo_fairseq.benchmarks.kernels import KernelSpec

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
