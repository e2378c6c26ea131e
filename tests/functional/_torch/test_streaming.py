"""The torch implementation's building blocks on their own: the online row accumulator
against torch.logsumexp and dense formulas, and the gradient of one chunk against autograd."""
import math

import pytest
import torch

from labo_fairseq.functional._torch.streaming import RowAccumulator, finalize, grad_block
from labo_fairseq.functional.params import spans
from tests.functional.common import F64


def test_spans_cover_the_range_in_order():
    assert list(spans(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(spans(3, 5)) == [(0, 3)]
    assert list(spans(0, 5)) == []


def _accumulate(z, y, tau, chunk):
    acc = RowAccumulator(y, 1.0 / tau, True, F64)
    for c0, c1 in spans(z.shape[1], chunk):
        w = z[:, c0:c1].clone()
        acc.update(z[:, c0:c1], c0, torch.empty_like(w), torch.empty_like(w), torch.empty_like(w))
    return acc


@pytest.mark.parametrize("tau", [0.5, 1.0, math.inf])
@pytest.mark.parametrize("chunk", [1, 6, 64])
def test_row_accumulator_statistics(tau, chunk):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 23, generator=g, dtype=F64) * 4
    y = torch.tensor([0, 22, 5, 11, 3])
    acc = _accumulate(z, y, tau, chunk)
    gold = torch.zeros_like(z, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    non_gold = z.masked_fill(gold, -math.inf)
    m = non_gold.amax(1)
    torch.testing.assert_close(acc.m_ref, m)
    torch.testing.assert_close(acc.sum_p, torch.exp(non_gold - m.unsqueeze(1)).sum(1))
    res = finalize(acc, z.gather(1, y.unsqueeze(1)).squeeze(1), 0.2)
    torch.testing.assert_close(res.lse, torch.logsumexp(z, 1), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(res.nll, torch.logsumexp(z, 1) - z.gather(1, y.unsqueeze(1)).squeeze(1))
    if not math.isinf(tau):
        torch.testing.assert_close(res.log_sum_q, torch.logsumexp((non_gold - m.unsqueeze(1)) / tau, 1))


def test_grad_block_is_the_envelope_gradient_of_one_chunk():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 12, generator=g, dtype=F64, requires_grad=True)
    y = torch.tensor([1, 6, 11, 0])
    alpha, tau = 0.3, 0.8
    acc = _accumulate(z.detach(), y, tau, 5)
    res = finalize(acc, z.detach().gather(1, y.unsqueeze(1)).squeeze(1), alpha)
    # autograd with q held constant, restricted to the chunk of columns 5..9
    lp = torch.log_softmax(z, 1)
    gold = torch.zeros_like(z, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    q = torch.softmax((lp.detach() / tau).masked_fill(gold, -math.inf), 1)
    loss = ((1 - alpha) * -lp.gather(1, y.unsqueeze(1)).squeeze(1) - alpha * (q * lp.masked_fill(gold, 0)).sum(1))
    scale = torch.tensor([1.0, 2.0, 0.5, 0.0], dtype=F64)
    (want,) = torch.autograd.grad((loss * scale).sum(), z)
    out = torch.empty(4, 5, dtype=F64)
    grad_block(z.detach()[:, 5:10], 5, y, res.lse, res.m_ref, res.log_sum_q, alpha, 1.0 / tau, scale, out,
               torch.empty(4, 5, dtype=F64), torch.empty(4, 5, dtype=F64))
    torch.testing.assert_close(out, want[:, 5:10], rtol=1e-12, atol=1e-14)
