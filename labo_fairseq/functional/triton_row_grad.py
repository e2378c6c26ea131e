"""Triton stage 2: the gradient of the LABO loss with respect to one row of logits.

    d loss / d z_j = p_j - alpha q_j - (1 - alpha) [j = y]
    p_j = exp(z_j - lse),   q_j = exp((z_j - m_ref) / tau - log sum_q)  (j != y),   q_y = 0

from the per-row statistics of stage 1, times a per-row scale, streamed over vocabulary
blocks. The output may be the logits' own storage: each block is read before it is written.
"""
import triton
import triton.language as tl


@triton.jit
def row_gradient(z_ptr, g_ptr, y, V, lse, m_ref, log_sum_q, scale, alpha, inv_tau,
                 BLOCK_V: tl.constexpr, ACC: tl.constexpr, TAU_INF: tl.constexpr,
                 SMOOTH: tl.constexpr):
    for c0 in range(0, V, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        valid = cols < V
        z = tl.load(z_ptr + cols, mask=valid, other=float("-inf")).to(ACC)
        g = tl.exp(z - lse)
        if SMOOTH:
            if TAU_INF:
                q = tl.exp(tl.zeros_like(z) - log_sum_q)
            else:
                q = tl.exp((z - m_ref) * inv_tau - log_sum_q)
            g = g - alpha * tl.where(cols == y, 0.0, q)
        g = tl.where(cols == y, g - (1.0 - alpha), g) * scale
        tl.store(g_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=valid)


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
    """Stage 2 alone (backward recompute): one program per row; ignored rows get zeros.
    hyper_ptr holds (alpha, 1 / tau) in ACC (see row_stats_kernel)."""
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(target_ptr + row)
    g_row = g_ptr + row * g_stride
    if y == ignore_index:
        zero_row(g_row, V, BLOCK_V)
    else:
        row_gradient(z_ptr + row * z_stride, g_row, y, V,
                     tl.load(lse_ptr + row), tl.load(m_ref_ptr + row), tl.load(log_sum_q_ptr + row),
                     tl.load(scale_ptr + row), tl.load(hyper_ptr), tl.load(hyper_ptr + 1), BLOCK_V, ACC,
                     TAU_INF, SMOOTH)
