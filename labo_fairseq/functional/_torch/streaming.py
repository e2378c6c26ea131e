"""The torch backend's arithmetic: online per-row statistics and gradients of vocabulary chunks.

For one block of rows the vocabulary is visited chunk by chunk. Per row we keep

* ``m_ref``: running max of the non-gold logits (the reference point of the exps below),
* ``sum_p``: sum_{j != y} exp(z_j - m_ref),
* ``sum_q``: sum_{j != y} exp((z_j - m_ref) / tau),
* ``wsum``:  sum_{j != y} exp((z_j - m_ref) / tau) * (m_ref - z_j)   (>= 0),

all rescaled when ``m_ref`` grows. The gold column is masked to -inf (never subtracted), so
q stays exact when p_y -> 1. Since q = softmax_{j != y}(z / tau) does not depend on
logsumexp(z), everything follows from these four numbers and the gold logit:

    lse           = logsumexp(z)
    E_q[-lp]      = (lse - m_ref) + wsum / sum_q       (sum of two non-negative terms)
    H(q)          = log(sum_q) + wsum / (tau * sum_q)
    q_j           = exp((z_j - m_ref) / tau - log(sum_q))

Accumulation is in float32 (float64 for float64 inputs).
"""
from typing import Optional

import torch

from ..params import RowResults


NEG_INF = float("-inf")


class RowAccumulator:
    """Online statistics for one block of rows (see module docstring)."""

    def __init__(self, target: torch.Tensor, inv_tau: float, track_order: bool, dtype: torch.dtype,
                 need_q: bool = True):
        n = target.shape[0]
        dev = target.device
        self.target = target
        self.inv_tau = inv_tau
        self.track_order = track_order
        self.need_q = need_q  # q is only needed for alpha > 0 or for the entropy statistic
        self.m_ref = torch.full((n,), NEG_INF, device=dev, dtype=dtype)
        self.sum_p = torch.zeros(n, device=dev, dtype=dtype)
        self.sum_q = torch.zeros(n, device=dev, dtype=dtype)
        self.wsum = torch.zeros(n, device=dev, dtype=dtype)
        if track_order:
            # max of the non-gold logits left / right of the gold column (for argmax ties)
            self.max_left = torch.full((n,), NEG_INF, device=dev, dtype=dtype)
            self.max_right = torch.full((n,), NEG_INF, device=dev, dtype=dtype)

    def update(self, z, col0, work, e_out, eq_out) -> torch.Tensor:
        """Fold the chunk z = logits[:, col0:col0+C] (compute dtype, not modified) in.

        work, eq_out: scratch shaped like z. e_out / eq_out receive exp(z - ref) and
        exp((z - ref) / tau) (gold entries 0) so that the gradient can reuse them.
        Returns ref, the per-row reference of this chunk's exps.
        """
        C = z.shape[1]
        gold_local = self.target - col0
        gold_in = (gold_local >= 0) & (gold_local < C)
        gold_col = gold_local.clamp(0, C - 1).unsqueeze(1)
        gold_in_col = gold_in.unsqueeze(1)

        d = work.copy_(z)
        d.scatter_(1, gold_col, torch.where(gold_in_col, NEG_INF, d.gather(1, gold_col)))
        if self.track_order:
            cols = torch.arange(C, device=z.device).unsqueeze(0)
            gl = gold_local.unsqueeze(1)
            left = torch.where(cols < gl, z, NEG_INF).amax(1)
            right = torch.where(cols > gl, z, NEG_INF).amax(1)
            torch.maximum(self.max_left, left, out=self.max_left)
            torch.maximum(self.max_right, right, out=self.max_right)
            chunk_max = torch.maximum(left, right)
        else:
            chunk_max = d.amax(1)

        m_old = self.m_ref
        m_new = torch.maximum(m_old, chunk_max)
        # finite stand-ins for -inf references; the sums they scale are still zero then
        old_ref = torch.where(m_old == NEG_INF, 0.0, m_old)
        new_ref = torch.where(m_new == NEG_INF, 0.0, m_new)
        shift = (old_ref - new_ref).clamp_(max=0.0)
        inv_tau = self.inv_tau

        d.sub_(new_ref.unsqueeze(1))  # d_j = z_j - ref  (gold: -inf)
        e = torch.exp(d, out=e_out)
        self.sum_p = self.sum_p * shift.exp() + e.sum(1)

        if not self.need_q:
            self.m_ref = m_new
            return new_ref
        scale_q = (shift * inv_tau).exp()
        self.wsum = scale_q * (self.wsum + (new_ref - old_ref) * self.sum_q)
        d.scatter_(1, gold_col, torch.where(gold_in_col, 0.0, d.gather(1, gold_col)))
        if inv_tau == 0.0:
            # tau = inf: q is uniform over the non-gold columns
            self.sum_q = self.sum_q * scale_q + (C - gold_in.to(d.dtype))
            self.wsum = self.wsum - d.sum(1)
        else:
            if inv_tau != 1.0:
                eq = torch.mul(d, inv_tau, out=eq_out).exp_()
                eq.scatter_(1, gold_col, torch.where(gold_in_col, 0.0, eq.gather(1, gold_col)))
            else:
                eq = e
            self.sum_q = self.sum_q * scale_q + eq.sum(1)
            # a -inf logit has q_j = 0 and adds nothing (not 0 * -inf = NaN)
            self.wsum = self.wsum - torch.linalg.vecdot(eq, d.clamp_(min=torch.finfo(d.dtype).min))
        self.m_ref = m_new
        return new_ref


def finalize(acc: RowAccumulator, z_gold: torch.Tensor, alpha: float) -> RowResults:
    """Per-row results from the accumulators and the gold logits (ignored rows not zeroed)."""
    m, s, sq, w = acc.m_ref, acc.sum_p, acc.sum_q, acc.wsum
    gold_wins = z_gold >= m
    top = torch.maximum(m, z_gold)
    # log(sum_j exp(z_j - top)) without rounding away a tiny non-gold mass when p_y -> 1
    log_norm = torch.where(
        gold_wins, torch.log1p(s * torch.exp(m - z_gold)), torch.log(s + torch.exp(z_gold - m))
    )
    nll = (top - z_gold) + log_norm
    lse = top + log_norm
    w_over_sq = w / sq
    loss = nll * (1.0 - alpha)
    if alpha > 0.0:
        loss = loss + alpha * ((top - m) + log_norm + w_over_sq)
    log_sq = torch.log(sq)
    q_entropy = log_sq + acc.inv_tau * w_over_sq
    correct = None
    if acc.track_order:
        correct = (z_gold > acc.max_left) & (z_gold >= acc.max_right)
    return RowResults(loss=loss, nll=nll, lse=lse, m_ref=m, log_sum_q=log_sq, q_entropy=q_entropy, correct=correct)


def grad_block(
    z: torch.Tensor,
    col0: int,
    target: torch.Tensor,
    lse: torch.Tensor,
    m_ref: torch.Tensor,
    log_sum_q: torch.Tensor,
    alpha: float,
    inv_tau: float,
    row_scale: torch.Tensor,
    out: torch.Tensor,
    work: torch.Tensor,
    work2: torch.Tensor,
) -> torch.Tensor:
    """d loss_i / d z_ij * row_scale_i for the chunk z = logits[:, col0:col0+C] into `out`.

    grad = softmax(z) - (1 - alpha) onehot(y) - alpha q. `out` may be a strided view of a
    buffer of another dtype; `work`, `work2` are compute-dtype scratch shaped like z.
    """
    C = z.shape[1]
    gold_local = target - col0
    gold_in = (gold_local >= 0) & (gold_local < C)
    gold_col = gold_local.clamp(0, C - 1).unsqueeze(1)
    scale = row_scale.unsqueeze(1)

    p = torch.sub(z, lse.unsqueeze(1), out=work).exp_()
    if alpha > 0.0:
        if inv_tau == 0.0:
            p.sub_((alpha * torch.exp(-log_sum_q)).unsqueeze(1))
        else:
            q = torch.sub(z, m_ref.unsqueeze(1), out=work2)
            q = torch.add(-log_sum_q.unsqueeze(1), q, alpha=inv_tau, out=q).exp_()
            p.sub_(q, alpha=alpha)
    # gold entry: p_y - (1 - alpha)   (q_y = 0)
    p_gold = torch.exp(z.gather(1, gold_col).squeeze(1) - lse) - (1.0 - alpha)
    p.scatter_(1, gold_col, torch.where(gold_in, p_gold, p.gather(1, gold_col).squeeze(1)).unsqueeze(1))
    torch.mul(p, scale, out=out) if out.dtype == p.dtype else out.copy_(p.mul_(scale))
    return out


def grad_from_exps(
    e: torch.Tensor,
    eq: Optional[torch.Tensor],
    ref: torch.Tensor,
    z_gold: torch.Tensor,
    col0: int,
    target: torch.Tensor,
    res: RowResults,
    alpha: float,
    inv_tau: float,
    row_scale: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """Like grad_block, from the exps kept by RowAccumulator.update (no exp recomputed).

    p_j = e_j exp(ref - lse),  q_j = eq_j exp((ref - m_ref) / tau - log sum_q).
    `out` must have e's dtype (it may be a strided view).
    """
    C = e.shape[1]
    gold_local = target - col0
    gold_in = (gold_local >= 0) & (gold_local < C)
    gold_col = gold_local.clamp(0, C - 1).unsqueeze(1)

    torch.mul(e, (torch.exp(ref - res.lse) * row_scale).unsqueeze(1), out=out)
    if alpha > 0.0:
        if inv_tau == 0.0:
            out.sub_((alpha * torch.exp(-res.log_sum_q) * row_scale).unsqueeze(1))
        else:
            coef = alpha * torch.exp((ref - res.m_ref) * inv_tau - res.log_sum_q) * row_scale
            out.addcmul_(eq, coef.unsqueeze(1), value=-1.0)
    g_gold = (torch.exp(z_gold - res.lse) - (1.0 - alpha)) * row_scale
    out.scatter_(1, gold_col, torch.where(gold_in, g_gold, out.gather(1, gold_col).squeeze(1)).unsqueeze(1))
    return out
