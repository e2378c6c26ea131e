"""Checks of a backend's per-row stages against closed forms computed densely in float64,
shared by every backend's stage tests (tests/functional/_torch, tests/functional/_triton)."""
import math

import torch

from labo_fairseq.functional.params import LaboParams, RowResults

F64 = torch.float64
V = 45  # the block width 16 does not divide it: every loop ends on a ragged block
CASES = [(0.1, 1.25), (0.4, 0.3), (0.2, math.inf), (0.0, 2.0), (0.3, 1.0)]


def dense(z, y, alpha, tau):
    """Closed forms of the per-row quantities, densely, in float64."""
    gold = torch.zeros_like(z, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    non_gold = z.masked_fill(gold, -math.inf)
    lse = torch.logsumexp(z, 1)
    lp = z - lse.unsqueeze(1)
    m_ref = non_gold.amax(1)
    if math.isinf(tau):
        q = (~gold).to(z.dtype) / (z.shape[1] - 1)
        log_sum_q = torch.full_like(lse, math.log(z.shape[1] - 1))
    else:
        log_sum_q = torch.logsumexp((non_gold - m_ref.unsqueeze(1)) / tau, 1)
        q = torch.softmax(non_gold / tau, 1)
    nll = -lp.gather(1, y.unsqueeze(1)).squeeze(1)
    loss = (1 - alpha) * nll - alpha * (q * lp.masked_fill(gold, 0)).sum(1)
    entropy = -(q * torch.log(torch.where(q > 0, q, 1.0))).sum(1)
    grad = lp.exp() - alpha * q - (1 - alpha) * gold.to(z.dtype)
    return dict(lse=lse, m_ref=m_ref, log_sum_q=log_sum_q, nll=nll, loss=loss, q_entropy=entropy, grad=grad)


def params(alpha, tau, chunk=16):
    return LaboParams(alpha=alpha, inv_tau=1.0 / tau, chunk=chunk, per_row=True, want_stats=True)


def row_stats_match_dense(backend, device, alpha, tau, chunk=16):
    """Stage 1: every field of RowResults, and with grad_out the unit-scale gradient."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(7, V, generator=g, dtype=F64) * 3).to(device)
    y = torch.randint(0, V, (7,), generator=g).to(device)
    y[0], y[1] = 0, V - 1  # gold in the first and in the ragged last block
    want = dense(z, y, alpha, tau)
    for with_grad in (False, True):
        out = RowResults.empty(7, device, F64)
        grad = torch.full_like(z, math.nan) if with_grad else None
        backend.row_stats(z, y, None, params(alpha, tau, chunk), out, grad)
        for name in ("lse", "m_ref", "log_sum_q", "nll", "loss", "q_entropy"):
            torch.testing.assert_close(getattr(out, name), want[name], rtol=1e-12, atol=1e-12, msg=name)
        assert torch.equal(out.correct.bool(), z.argmax(1) == y)
        if with_grad:
            torch.testing.assert_close(grad, want["grad"], rtol=1e-12, atol=1e-14)


def row_stats_zero_ignored_rows(backend, device):
    """Stage 1 on a block with an ignored row: its loss, nll, q_entropy, correct and gradient are 0."""
    z = torch.randn(3, V, dtype=F64, device=device)
    y = torch.tensor([2, -100, 4], device=device)
    out = RowResults.empty(3, device, F64)
    grad = torch.full_like(z, math.nan)
    backend.row_stats(z, y, -100, params(0.1, 1.0), out, grad)
    for name in ("loss", "nll", "q_entropy"):
        assert getattr(out, name)[1].item() == 0.0
    assert out.loss[0].item() > 0 and out.correct[1].item() == 0
    assert torch.all(grad[1] == 0) and torch.isfinite(grad).all()
    return out


def row_stats_writes_half_precision_grad_in_place(backend, device):
    """Stage 1 with grad_out = z itself (bfloat16): the statistics are those of the logits as
    they were, and z then holds the gradient rounded once."""
    g = torch.Generator().manual_seed(4)
    z = (torch.randn(5, V, generator=g) * 3).to(torch.bfloat16).to(device)
    y = torch.randint(0, V, (5,), generator=g).to(device)
    want = dense(z.double(), y, 0.1, 1.25)
    out = RowResults.empty(5, device, torch.float32)
    backend.row_stats(z, y, None, params(0.1, 1.25), out, z)
    torch.testing.assert_close(out.loss.double(), want["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.double(), want["grad"], rtol=1e-2, atol=1e-3)


def row_grads_match_dense(backend, device, alpha, tau, inplace):
    """Stage 2: out = gradient * per-row scale from lse, m_ref, log_sum_q; ignored rows 0."""
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(5, V, generator=g, dtype=F64) * 3).to(device)
    y = torch.tensor([0, 7, V - 1, 3, -100], device=device)
    keep = y.ne(-100)
    want = dense(z[keep], y[keep], alpha, tau)
    rows = RowResults.for_backward(*(torch.zeros(5, dtype=F64, device=device) for _ in range(3)))
    for name in ("lse", "m_ref", "log_sum_q"):
        getattr(rows, name)[keep] = want[name]
    scale = torch.tensor([1.0, 0.5, 2.0, -1.0, 3.0], dtype=F64, device=device)
    out = z.clone() if inplace else torch.full_like(z, math.nan)
    backend.row_grads(z.clone() if not inplace else out, y, -100, rows, scale, params(alpha, tau), out)
    torch.testing.assert_close(out[keep], want["grad"] * scale[keep].unsqueeze(1), rtol=1e-12, atol=1e-14)
    assert torch.all(out[~keep] == 0)
