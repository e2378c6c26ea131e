"""Triton stage 1: per-row statistics of the LABO loss in one streaming pass over a row.

The same online accumulators as the torch path (`_streaming.RowAccumulator`), one program
per row, scalar state carried across vocabulary blocks of width BLOCK_V:

* m_ref: running max of the non-gold logits (reference point of the exps),
* sum_p: sum_{j != y} exp(z_j - m_ref),
* sum_q: sum_{j != y} exp((z_j - m_ref) / tau),
* wsum:  sum_{j != y} exp((z_j - m_ref) / tau) * (m_ref - z_j),

with the gold column masked out (never subtracted), so q stays exact when p_y -> 1.
`row_finish` turns them and the gold logit into loss, nll, logsumexp and the entropy of q.
`row_stats_kernel` can run stage 2 (`triton_row_grad`) for the same row right after.
Everything accumulates in ACC (float32, or float64 for float64 logits).
"""
import triton
import triton.language as tl

from .triton_row_grad import row_gradient, zero_row


@triton.jit
def _log1p(x):
    # log(1 + x) accurate for tiny x (Goldberg's trick); x >= 0 here
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def row_accumulate(z_ptr, y, V, inv_tau, BLOCK_V: tl.constexpr, ACC: tl.constexpr,
                   TAU_INF: tl.constexpr, NEED_Q: tl.constexpr, TRACK_ORDER: tl.constexpr):
    """Streams z_ptr[0:V]; returns (m_ref, sum_p, sum_q, wsum, max_left, max_right).

    max_left / max_right: max of the non-gold logits left / right of the gold column, for
    argmax ties resolved to the lowest index (only when TRACK_ORDER).
    """
    m_ref = tl.full((), float("-inf"), ACC)
    sum_p = tl.zeros((), ACC)
    sum_q = tl.zeros((), ACC)
    wsum = tl.zeros((), ACC)
    max_left = tl.full((), float("-inf"), ACC)
    max_right = tl.full((), float("-inf"), ACC)
    for c0 in range(0, V, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        valid = cols < V
        z = tl.load(z_ptr + cols, mask=valid, other=float("-inf")).to(ACC)
        non_gold = valid & (cols != y)
        z_ng = tl.where(non_gold, z, float("-inf"))
        if TRACK_ORDER:
            max_left = tl.maximum(max_left, tl.max(tl.where(cols < y, z_ng, float("-inf")), 0))
            max_right = tl.maximum(max_right, tl.max(tl.where(cols > y, z_ng, float("-inf")), 0))
        m_new = tl.maximum(m_ref, tl.max(z_ng, 0))
        # finite stand-ins for -inf references; the sums they rescale are still zero then
        old_ref = tl.where(m_ref == float("-inf"), 0.0, m_ref)
        new_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        shift = tl.minimum(old_ref - new_ref, 0.0)
        d = z_ng - new_ref  # -inf at the gold and padding columns
        sum_p = sum_p * tl.exp(shift) + tl.sum(tl.exp(d), 0)
        if NEED_Q:
            scale_q = tl.exp(shift * inv_tau)
            wsum = scale_q * (wsum + (new_ref - old_ref) * sum_q)
            if TAU_INF:
                eq = tl.where(non_gold, 1.0, 0.0).to(ACC)
            else:
                eq = tl.exp(d * inv_tau)
            sum_q = sum_q * scale_q + tl.sum(eq, 0)
            # eq = 0 where d = -inf (a -inf logit): q_j = 0 adds nothing, not 0 * inf = NaN
            wsum = wsum - tl.sum(eq * tl.where(eq > 0.0, d, 0.0), 0)
        m_ref = m_new
    return m_ref, sum_p, sum_q, wsum, max_left, max_right


@triton.jit
def row_finish(z_gold, m_ref, sum_p, sum_q, wsum, max_left, max_right, alpha, inv_tau,
               SMOOTH: tl.constexpr, NEED_Q: tl.constexpr):
    """(loss, nll, lse, log_sum_q, q_entropy, correct) of one row from its accumulators."""
    gold_wins = z_gold >= m_ref
    top = tl.maximum(m_ref, z_gold)
    # log(sum_j exp(z_j - top)) without rounding away a tiny non-gold mass when p_y -> 1
    log_norm = tl.where(gold_wins, _log1p(sum_p * tl.exp(m_ref - z_gold)),
                        tl.log(sum_p + tl.exp(z_gold - m_ref)))
    nll = (top - z_gold) + log_norm
    lse = top + log_norm
    loss = nll * (1.0 - alpha)
    log_sum_q = tl.zeros_like(nll)
    q_entropy = tl.zeros_like(nll)
    if NEED_Q:
        w_over_sq = wsum / sum_q
        log_sum_q = tl.log(sum_q)
        q_entropy = log_sum_q + inv_tau * w_over_sq
        if SMOOTH:
            # E_q[-log p] = (lse - m_ref) + wsum / sum_q, a sum of two non-negative terms
            loss = loss + alpha * ((top - m_ref) + log_norm + w_over_sq)
    correct = (z_gold > max_left) & (z_gold >= max_right)
    return loss, nll, lse, log_sum_q, q_entropy, correct


@triton.jit
def store_row_results(row, loss, nll, lse, m_ref, log_sum_q, q_entropy, correct,
                      loss_ptr, nll_ptr, lse_ptr, m_ref_ptr, log_sum_q_ptr, q_entropy_ptr, correct_ptr):
    tl.store(loss_ptr + row, loss)
    tl.store(nll_ptr + row, nll)
    tl.store(lse_ptr + row, lse)
    tl.store(m_ref_ptr + row, m_ref)
    tl.store(log_sum_q_ptr + row, log_sum_q)
    tl.store(q_entropy_ptr + row, q_entropy)
    tl.store(correct_ptr + row, correct.to(tl.int8))


@triton.jit
def row_stats_kernel(z_ptr, z_stride, g_ptr, g_stride, target_ptr, ignore_index, V, hyper_ptr,
                     loss_ptr, nll_ptr, lse_ptr, m_ref_ptr, log_sum_q_ptr, q_entropy_ptr, correct_ptr,
                     BLOCK_V: tl.constexpr, ACC: tl.constexpr, TAU_INF: tl.constexpr,
                     SMOOTH: tl.constexpr, NEED_Q: tl.constexpr, TRACK_ORDER: tl.constexpr,
                     WITH_GRAD: tl.constexpr):
    """Stage 1 for one row of z [N, V] per program; WITH_GRAD runs stage 2 right after, while
    the row is still in L2, writing the gradient for a unit incoming gradient to g_ptr (which
    may be z_ptr: the logits then hold their gradient). hyper_ptr holds (alpha, 1 / tau) in ACC:
    scalar arguments would reach the kernel as float32 whatever the logits' dtype."""
    row = tl.program_id(0).to(tl.int64)
    alpha = tl.load(hyper_ptr)
    inv_tau = tl.load(hyper_ptr + 1)
    y = tl.load(target_ptr + row)
    zero = tl.zeros((), ACC)
    if y == ignore_index:
        store_row_results(row, zero, zero, zero, zero, zero, zero, zero != zero,
                          loss_ptr, nll_ptr, lse_ptr, m_ref_ptr, log_sum_q_ptr, q_entropy_ptr, correct_ptr)
        if WITH_GRAD:
            zero_row(g_ptr + row * g_stride, V, BLOCK_V)
    else:
        z_row = z_ptr + row * z_stride
        z_gold = tl.load(z_row + y).to(ACC)
        m_ref, sum_p, sum_q, wsum, max_left, max_right = row_accumulate(
            z_row, y, V, inv_tau, BLOCK_V, ACC, TAU_INF, NEED_Q, TRACK_ORDER)
        loss, nll, lse, log_sum_q, q_entropy, correct = row_finish(
            z_gold, m_ref, sum_p, sum_q, wsum, max_left, max_right, alpha, inv_tau, SMOOTH, NEED_Q)
        store_row_results(row, loss, nll, lse, m_ref, log_sum_q, q_entropy, correct,
                          loss_ptr, nll_ptr, lse_ptr, m_ref_ptr, log_sum_q_ptr, q_entropy_ptr, correct_ptr)
        if WITH_GRAD:
            row_gradient(z_row, g_ptr + row * g_stride, y, V, lse, m_ref, log_sum_q, 1.0, alpha, inv_tau,
                         BLOCK_V, ACC, TAU_INF, SMOOTH)
