"""Each Triton stage on its own: stage 1 (per-row statistics) and stage 2 (row gradient)
against closed forms computed densely in float64."""
import math

import pytest
import torch

from tests.functional.common import DEVICE, F64

pytest.importorskip("triton", reason="the Triton stages need the triton package")

from labo_fairseq.functional.params import LaboParams  # noqa: E402
from labo_fairseq.functional.triton_ops import RowStats, row_grads, row_stats  # noqa: E402

V = 45


def _dense(z, y, alpha, tau):
    """Closed forms of the per-row quantities, densely, in float64."""
    gold = torch.zeros_like(z, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    non_gold = z.masked_fill(gold, -math.inf)
    lse = torch.logsumexp(z, 1)
    lp = z - lse.unsqueeze(1)
    m_ref = non_gold.amax(1)
    if math.isinf(tau):
        q = (~gold).to(z.dtype) / (V - 1)
        log_sum_q = torch.full_like(lse, math.log(V - 1))
    else:
        log_sum_q = torch.logsumexp((non_gold - m_ref.unsqueeze(1)) / tau, 1)
        q = torch.softmax(non_gold / tau, 1)
    nll = -lp.gather(1, y.unsqueeze(1)).squeeze(1)
    loss = (1 - alpha) * nll - alpha * (q * lp.masked_fill(gold, 0)).sum(1)
    entropy = -(q * torch.log(torch.where(q > 0, q, 1.0))).sum(1)
    grad = lp.exp() - alpha * q - (1 - alpha) * gold.to(z.dtype)
    return dict(lse=lse, m_ref=m_ref, log_sum_q=log_sum_q, nll=nll, loss=loss, q_entropy=entropy, grad=grad)


def _params(alpha, tau, block=16):
    return LaboParams(alpha=alpha, inv_tau=1.0 / tau, chunk=block, per_row=True, want_stats=True)


@pytest.mark.parametrize("alpha,tau", [(0.1, 1.25), (0.4, 0.3), (0.2, math.inf), (0.0, 2.0)])
def test_stage1_row_statistics(alpha, tau):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(7, V, generator=g, dtype=F64) * 3).to(DEVICE)
    y = torch.randint(0, V, (7,), generator=g).to(DEVICE)
    y[0], y[1] = 0, V - 1  # gold in the first and in the ragged last block
    stats = row_stats(z, y, None, _params(alpha, tau))
    want = _dense(z, y, alpha, tau)
    for name in ("lse", "m_ref", "log_sum_q", "nll", "loss", "q_entropy"):
        torch.testing.assert_close(getattr(stats, name), want[name], rtol=1e-12, atol=1e-12, msg=name)
    assert torch.equal(stats.correct.bool(), z.argmax(1) == y)


def test_stage1_ignored_rows_are_zero():
    z = torch.randn(3, V, dtype=F64, device=DEVICE)
    y = torch.tensor([2, -100, 4], device=DEVICE)
    stats = row_stats(z, y, -100, _params(0.1, 1.0))
    for name in ("loss", "nll", "lse", "q_entropy"):
        assert getattr(stats, name)[1].item() == 0.0
    assert stats.loss[0].item() > 0 and stats.correct[1].item() == 0


@pytest.mark.parametrize("alpha,tau", [(0.1, 1.25), (0.2, math.inf), (0.0, 1.0)])
@pytest.mark.parametrize("inplace", [False, True])
def test_stage2_row_gradient(alpha, tau, inplace):
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(5, V, generator=g, dtype=F64) * 3).to(DEVICE)
    y = torch.tensor([0, 7, V - 1, 3, -100], device=DEVICE)
    keep = y.ne(-100)
    want = _dense(z[keep], y[keep], alpha, tau)
    stats = RowStats(5, DEVICE, F64)
    for name in ("lse", "m_ref", "log_sum_q"):
        getattr(stats, name).zero_()[keep] = want[name]
    scale = torch.tensor([1.0, 0.5, 2.0, -1.0, 3.0], dtype=F64, device=DEVICE)
    out = z.clone() if inplace else torch.full_like(z, math.nan)
    row_grads(z.clone() if not inplace else out, y, -100, stats, scale, _params(alpha, tau), out)
    torch.testing.assert_close(out[keep], want["grad"] * scale[keep].unsqueeze(1), rtol=1e-12, atol=1e-14)
    assert torch.all(out[~keep] == 0)
