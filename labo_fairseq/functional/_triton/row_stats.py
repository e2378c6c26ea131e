"""Triton stage 1: per-row statistics of the LABO loss in one streaming pass over a row.

The same online accumulators as the torch path (`_torch.streaming.RowAccumulator`), one program
per row, scalar state carried across vocabulary blocks of width BLOCK_V:

* m_ref: running max of the non-gold logits (reference point of the exps),
* sum_p: sum_{j != y} exp(z_j - m_ref),
* sum_q: sum_{j != y} exp((z_j - m_ref) / tau),
* wsum:  sum_{j != y} exp((z_j - m_ref) / tau) * (m_ref - z_j), kept in base-2 units
  (times log2 e) inside the loop, where every exp is an exp2 of a pre-scaled difference,

with the gold column masked out (never subtracted), so q stays exact when p_y -> 1.
`row_finish` turns them and the gold logit into loss, nll, logsumexp and the entropy of q.
`row_stats_kernel` can run stage 2 (`row_grad`) for the same row right after.
Everything accumulates in ACC (float32, or float64 for float64 logits). Column indices are
int32 and relative to the block, so the loop does no 64-bit integer work per element.
"""
import triton
import triton.language as tl

from .row_grad import LOG2E, row_gradient, zero_row

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _log1p(x):
    # log(1 + x) accurate for tiny x (Goldberg's trick); x >= 0 here
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def row_accumulate(z_ptr, y, V, inv_tau, BLOCK_V: tl.constexpr, ACC: tl.constexpr,
                   TAU_INF: tl.constexpr, NEED_Q: tl.constexpr, TRACK_ORDER: tl.constexpr):
    """Streams z_ptr[0:V]; returns (m_ref, sum_p, sum_q, wsum, max_left), wsum in natural units.

    max_left: max of the non-gold logits left of the gold column (only when TRACK_ORDER), so
    that argmax ties resolve to the lowest index: gold is the argmax iff z_y >= m_ref and
    z_y > max_left.
    """
    offs = tl.arange(0, BLOCK_V)
    m_ref = tl.full((), float("-inf"), ACC)
    sum_p = tl.zeros((), ACC)
    sum_q = tl.zeros((), ACC)
    wsum = tl.zeros((), ACC)  # base 2 in the loop
    max_left = tl.full((), float("-inf"), ACC)
    for c0 in range(0, V, BLOCK_V):
        y_local = y - c0
        n_valid = V - c0
        z = tl.load(z_ptr + c0 + offs, mask=offs < n_valid, other=float("-inf")).to(ACC)
        z_ng = tl.where(offs == y_local, float("-inf"), z)  # padding columns are -inf already
        if TRACK_ORDER:
            max_left = tl.maximum(max_left, tl.max(tl.where(offs < y_local, z_ng, float("-inf")), 0))
        m_new = tl.maximum(m_ref, tl.max(z_ng, 0))
        # finite stand-ins for -inf references; the sums they rescale are still zero then
        old_ref = tl.where(m_ref == float("-inf"), 0.0, m_ref)
        new_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        shift2 = tl.minimum(old_ref - new_ref, 0.0) * LOG2E
        # (z - ref) log2 e, subtracted first: z log2 e alone overflows near the float32 limit
        d2 = (z_ng - new_ref) * LOG2E  # -inf at the gold and padding columns
        sum_p = sum_p * tl.exp2(shift2) + tl.sum(tl.exp2(d2), 0)
        if NEED_Q:
            if TAU_INF:
                # q uniform over the non-gold columns: count them, sum their distances directly
                in_block = tl.minimum(n_valid, BLOCK_V)
                n_ng = in_block - ((y_local >= 0) & (y_local < in_block)).to(tl.int32)
                keep = (offs < n_valid) & (offs != y_local)
                wsum = wsum + (new_ref - old_ref) * sum_q * LOG2E - tl.sum(tl.where(keep, d2, 0.0), 0)
                sum_q = sum_q + n_ng.to(ACC)
            else:
                scale_q = tl.exp2(shift2 * inv_tau)
                wsum = scale_q * (wsum + (new_ref - old_ref) * sum_q * LOG2E)
                eq = tl.exp2(d2 * inv_tau)
                sum_q = sum_q * scale_q + tl.sum(eq, 0)
                # eq = 0 where d2 = -inf (gold, padding, a -inf logit): q_j = 0 adds nothing,
                # not 0 * inf = NaN
                wsum = wsum - tl.sum(eq * tl.where(eq > 0.0, d2, 0.0), 0)
        m_ref = m_new
    return m_ref, sum_p, sum_q, wsum * LN2, max_left


@triton.jit
def row_finish(z_gold, m_ref, sum_p, sum_q, wsum, max_left, alpha, inv_tau,
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
    correct = gold_wins & (z_gold > max_left)
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
    target = tl.load(target_ptr + row)
    zero = tl.zeros((), ACC)
    if target == ignore_index:
        store_row_results(row, zero, zero, zero, zero, zero, zero, zero != zero,
                          loss_ptr, nll_ptr, lse_ptr, m_ref_ptr, log_sum_q_ptr, q_entropy_ptr, correct_ptr)
        if WITH_GRAD:
            zero_row(g_ptr + row * g_stride, V, BLOCK_V)
    else:
        y = target.to(tl.int32)  # validated to lie in [0, V)
        z_row = z_ptr + row * z_stride
        z_gold = tl.load(z_row + y).to(ACC)
        m_ref, sum_p, sum_q, wsum, max_left = row_accumulate(
            z_row, y, V, inv_tau, BLOCK_V, ACC, TAU_INF, NEED_Q, TRACK_ORDER)
        loss, nll, lse, log_sum_q, q_entropy, correct = row_finish(
            z_gold, m_ref, sum_p, sum_q, wsum, max_left, alpha, inv_tau, SMOOTH, NEED_Q)
        store_row_results(row, loss, nll, lse, m_ref, log_sum_q, q_entropy, correct,
                          loss_ptr, nll_ptr, lse_ptr, m_ref_ptr, log_sum_q_ptr, q_entropy_ptr, correct_ptr)
        if WITH_GRAD:
            row_gradient(z_row, g_ptr + row * g_stride, y, V, lse, m_ref, log_sum_q, 1.0, alpha, inv_tau,
                         BLOCK_V, ACC, TAU_INF, SMOOTH, True)
