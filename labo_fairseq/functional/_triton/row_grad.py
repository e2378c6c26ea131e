"""Triton stage 2: the gradient of the LABO loss with respect to one row of logits.

    d loss / d z_j = p_j - alpha q_j - (1 - alpha) [j = y]
    p_j = exp(z_j - lse),   q_j = exp((z_j - m_ref) / tau - log sum_q)  (j != y),   q_y = 0

from the per-row statistics of stage 1, times a per-row scale, streamed over vocabulary
blocks. Each exponential is an exp2 of a pre-scaled difference (differences first: z log2 e
alone overflows near the float32 limit). The output may be the logits' own storage: each
block is read before it is written.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def row_gradient(z_ptr, g_ptr, y, V, lse, m_ref, log_sum_q, scale, alpha, inv_tau,
                 BLOCK_V: tl.constexpr, ACC: tl.constexpr, TAU_INF: tl.constexpr,
                 SMOOTH: tl.constexpr, UNIT_SCALE: tl.constexpr):
    """UNIT_SCALE: the scale is exactly 1 (forward precompute), so no multiply is emitted."""
    offs = tl.arange(0, BLOCK_V)
    q_slope = inv_tau * LOG2E  # q_j = exp2((z_j - m_ref) q_slope - log sum_q log2e)
    q_offset = -log_sum_q * LOG2E
    q_uniform = alpha * tl.exp(-log_sum_q)  # tau = inf: every non-gold q_j is 1 / (V - 1)
    gold_term = 1.0 - alpha
    for c0 in range(0, V, BLOCK_V):
        y_local = y - c0
        valid = offs < V - c0
        z = tl.load(z_ptr + c0 + offs, mask=valid, other=float("-inf")).to(ACC)
        g = tl.exp2((z - lse) * LOG2E)
        if SMOOTH:
            if TAU_INF:
                smooth = q_uniform
            else:
                smooth = alpha * tl.exp2((z - m_ref) * q_slope + q_offset)
            g = g - tl.where(offs == y_local, gold_term, smooth)
        else:
            g = tl.where(offs == y_local, g - gold_term, g)
        if not UNIT_SCALE:  # any sign: the incoming gradient is not folded into the exponents
            g = g * scale
        tl.store(g_ptr + c0 + offs, g.to(g_ptr.dtype.element_ty), mask=valid)


@triton.jit
def zero_row(g_ptr, V, BLOCK_V: tl.constexpr):
    for c0 in range(0, V, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        tl.store(g_ptr + cols, tl.zeros((BLOCK_V,), g_ptr.dtype.element_ty), mask=cols < V)


@triton.jit
def row_grad_kernel(z_ptr, z_stride, g_ptr, g_stride, target_ptr, ignore_index, V,
                    lse_ptr, m_ref_ptr, log_sum_q_ptr, scale_ptr, hyper_ptr,
                    BLOCK_V: tl.constexpr, ACC: tl.constexpr, TAU_INF: tl.constexpr,
                    SMOOTH: tl.constexpr):
    """Stage 2 alone (backward recompute): one program per row; ignored rows and rows whose
    scale is 0 get zeros. hyper_ptr holds (alpha, 1 / tau) in ACC (see row_stats_kernel)."""
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(target_ptr + row)
    g_row = g_ptr + row * g_stride
    scale = tl.load(scale_ptr + row)
    if (y == ignore_index) | (scale == 0.0):
        zero_row(g_row, V, BLOCK_V)
    else:
        row_gradient(z_ptr + row * z_stride, g_row, y.to(tl.int32), V,
                     tl.load(lse_ptr + row), tl.load(m_ref_ptr + row), tl.load(log_sum_q_ptr + row),
                     scale, tl.load(hyper_ptr), tl.load(hyper_ptr + 1), BLOCK_V, ACC, TAU_INF, SMOOTH, False)
