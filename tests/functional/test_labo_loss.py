"""Tests for labo_fairseq.functional against the dense reference and fairseq."""
import math

import pytest
import torch
import torch.nn.functional as F

from labo_fairseq.functional import (LaboStats, labo_cross_entropy, labo_cross_entropy_reference,
                                     labo_linear_cross_entropy)

from tests.functional.common import DEVICE, F64, PAD
from tests.functional.common import make_inputs as _inputs


def _grad(loss, inputs, reduction):
    if reduction == "none":  # non-uniform weights exercise the per-row scaling
        w = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).view(loss.shape)
        loss = (loss * w).sum()
    return torch.autograd.grad(loss, inputs)


# ---------------------------------------------------------------------------- values, grads
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("tau", [0.5, 1.0, math.inf])
@pytest.mark.parametrize("chunk", [1, 7, None, 100])
def test_chunked_matches_reference(chunk, tau, reduction):
    logits, target = _inputs((3, 5), 23)  # 3-D input; 7 does not divide 23; 100 >= V
    logits.requires_grad_()
    alpha = 0.3
    loss, nll = labo_cross_entropy(logits, target, alpha, tau, ignore_index=PAD,
                                   reduction=reduction, chunk_size=chunk)
    ref_loss, ref_nll, _ = labo_cross_entropy_reference(logits, target, alpha, tau,
                                                        ignore_index=PAD, reduction=reduction)
    assert loss.dtype == F64 and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-10, atol=1e-10)
    (g,), (g_ref,) = _grad(loss, [logits], reduction), _grad(ref_loss, [logits], reduction)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("chunk,tau,alpha", [(1, 0.7, 0.2), (5, math.inf, 0.1), (None, 2.0, 0.0), (64, 1.0, 0.5)])
def test_fused_matches_reference(chunk, tau, alpha, reduction):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, 8, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(19, 8, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(19, generator=g, dtype=F64, requires_grad=True)
    _, target = _inputs((4, 6), 19, seed=2)
    loss, nll = labo_linear_cross_entropy(hidden, weight, target, alpha, tau, bias=bias,
                                          ignore_index=PAD, reduction=reduction, chunk_size=chunk)
    ref_loss, ref_nll, _ = labo_cross_entropy_reference(F.linear(hidden, weight, bias), target, alpha,
                                                        tau, ignore_index=PAD, reduction=reduction)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-10, atol=1e-10)
    for a, b in zip(_grad(loss, [hidden, weight, bias], reduction),
                    _grad(ref_loss, [hidden, weight, bias], reduction)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def _bilevel_value(loss, logits, target, alpha, tau, reduction):
    """loss - alpha * tau * H(q): the bi-level objective alpha*E_q[-lp] + beta*KL(q||U) up to a
    constant. Its derivative w.r.t. z (q moving with z) equals the op's gradient (q held
    constant) by the envelope theorem, so gradcheck applies to it; for tau = inf the extra
    term vanishes and q does not depend on z."""
    if math.isinf(tau):
        return loss
    with torch.no_grad():
        _, _, q = labo_cross_entropy_reference(logits, target, alpha, tau, ignore_index=PAD)
        ent = -(q * torch.log(torch.where(q > 0, q, 1.0))).sum(-1)
        ent = torch.where(target.ne(PAD), ent, 0.0)
    if reduction == "sum":
        ent = ent.sum()
    elif reduction == "mean":
        ent = ent.sum() / target.ne(PAD).sum().clamp(min=1)
    return loss - alpha * tau * ent


def test_gradient_is_not_the_derivative_of_the_loss_value_alone():
    # guards the premise of the gradchecks below: with q moving, d loss/dz != op gradient
    logits, target = _inputs((4,), 6, seed=3)
    logits.requires_grad_()
    fn = lambda z: labo_cross_entropy(z, target, 0.4, 0.8, ignore_index=PAD)[0]  # noqa: E731
    assert not torch.autograd.gradcheck(fn, (logits,), raise_exception=False, nondet_tol=1e-12)


def test_gradcheck_chunked():
    logits, target = _inputs((6,), 9, pad_frac=0.3, seed=3)
    logits.requires_grad_()
    alpha = 0.4
    for reduction, chunk, tau in [("sum", 4, 0.8), ("none", 1, math.inf), ("none", 2, 1.7), ("mean", None, 1.0)]:
        def fn(z):
            loss = labo_cross_entropy(z, target, alpha, tau, ignore_index=PAD, reduction=reduction,
                                      chunk_size=chunk)[0]
            return _bilevel_value(loss, z, target, alpha, tau, reduction)
        # the first backward uses the gradient kept from forward, later ones recompute it:
        # equal up to rounding, not bitwise
        assert torch.autograd.gradcheck(fn, (logits,), nondet_tol=1e-12)


def test_gradcheck_fused():
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(5, 3, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(7, 3, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(7, generator=g, dtype=F64, requires_grad=True)
    target = torch.tensor([0, PAD, 6, 3, 2])
    alpha = 0.3
    for reduction, chunk, tau in [("sum", 3, 1.5), ("none", 2, 0.9), ("mean", None, math.inf)]:
        def fn(h, w, b):
            loss = labo_linear_cross_entropy(h, w, target, alpha, tau, bias=b, ignore_index=PAD,
                                             reduction=reduction, chunk_size=chunk)[0]
            return _bilevel_value(loss, F.linear(h, w, b), target, alpha, tau, reduction)
        assert torch.autograd.gradcheck(fn, (hidden, weight, bias), nondet_tol=1e-12)


def test_retained_graph_second_backward_matches_first():
    logits, target = _inputs((8,), 30, dtype=torch.float32)
    logits.requires_grad_()
    loss, _ = labo_cross_entropy(logits, target, 0.2, 3.0, ignore_index=PAD, chunk_size=8)
    (g1,) = torch.autograd.grad(loss * 2.0, logits, retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 2.0, logits)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ special cases
def _fairseq_ls():
    try:
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
    except Exception as exc:  # pragma: no cover - environment dependent
        pytest.skip(f"fairseq not importable: {exc}")
    return label_smoothed_nll_loss


@pytest.mark.parametrize("chunk", [3, None])
def test_tau_inf_is_label_smoothing_independent_formula(chunk):
    logits, target = _inputs((4, 5), 17)
    alpha = 0.1
    loss, nll = labo_cross_entropy(logits, target, alpha, math.inf, ignore_index=PAD, chunk_size=chunk)
    lp = torch.log_softmax(logits, -1)
    keep = target.ne(PAD)
    nll_rows = -lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    others = -(lp.sum(-1)) - nll_rows
    expected = ((1 - alpha) * nll_rows + alpha / (17 - 1) * others)[keep].sum()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, nll_rows[keep].sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [3, None])
def test_tau_inf_equals_fairseq_label_smoothed_nll_loss(chunk):
    label_smoothed_nll_loss = _fairseq_ls()
    logits, target = _inputs((4, 5), 17)
    logits.requires_grad_()
    loss, nll = labo_cross_entropy(logits, target, 0.1, math.inf, ignore_index=PAD, chunk_size=chunk)
    fs_loss, fs_nll = label_smoothed_nll_loss(torch.log_softmax(logits, -1), target, 0.1, ignore_index=PAD)
    torch.testing.assert_close(loss, fs_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, fs_nll, rtol=1e-12, atol=1e-12)
    (g,), (g_fs,) = torch.autograd.grad(loss, logits), torch.autograd.grad(fs_loss, logits)
    torch.testing.assert_close(g, g_fs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_alpha_zero_is_cross_entropy(reduction):
    logits, target = _inputs((2, 7), 11)
    logits.requires_grad_()
    loss, nll = labo_cross_entropy(logits, target, 0.0, 0.5, ignore_index=PAD, reduction=reduction, chunk_size=4)
    ce = F.cross_entropy(logits.reshape(-1, 11), target.reshape(-1), ignore_index=PAD, reduction=reduction)
    if reduction == "none":
        ce = ce.view(2, 7)
    torch.testing.assert_close(loss, ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, ce, rtol=1e-12, atol=1e-12)
    (g,), (g_ce,) = _grad(loss, [logits], reduction), _grad(ce, [logits], reduction)
    torch.testing.assert_close(g, g_ce, rtol=1e-12, atol=1e-12)


def test_fused_equals_unfused_float32():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = (torch.randn(301, 16, generator=g) * 0.3).requires_grad_()
    _, target = _inputs((37,), 301, seed=6)
    fused, fnll = labo_linear_cross_entropy(hidden, weight, target, 0.2, 2.0, ignore_index=PAD, chunk_size=64)
    unfused, unll = labo_cross_entropy(F.linear(hidden, weight), target, 0.2, 2.0, ignore_index=PAD)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fnll, unll, rtol=1e-5, atol=1e-4)
    ga = torch.autograd.grad(fused, [hidden, weight])
    gb = torch.autograd.grad(unfused, [hidden, weight])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,grad_atol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_matches_float32(dtype, grad_atol):
    logits, target = _inputs((64,), 1000, dtype=dtype, scale=4.0)
    logits.requires_grad_()
    up = logits.detach().float().requires_grad_()
    loss, nll = labo_cross_entropy(logits, target, 0.1, 2.0, ignore_index=PAD, reduction="mean", chunk_size=300)
    ref, ref_nll = labo_cross_entropy(up, target, 0.1, 2.0, ignore_index=PAD, reduction="mean", chunk_size=300)
    assert loss.dtype == torch.float32 and nll.dtype == torch.float32
    # same (rounded) logits, fp32 accumulation either way: only summation order differs
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(loss * 1024.0, logits)  # loss-scale as in mixed-precision training
    (g_ref,) = torch.autograd.grad(ref * 1024.0, up)
    assert g.dtype == dtype
    torch.testing.assert_close(g.float(), g_ref, rtol=2e-2, atol=grad_atol * 1024 / 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_precision_close_to_float32(dtype):
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(24, 32, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(200, 32, generator=g) * 0.2).to(dtype).requires_grad_()
    _, target = _inputs((24,), 200, seed=8)
    loss, _ = labo_linear_cross_entropy(hidden, weight, target, 0.1, 2.0, ignore_index=PAD, chunk_size=64)
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    ref, _ = labo_linear_cross_entropy(h32, w32, target, 0.1, 2.0, ignore_index=PAD, chunk_size=64)
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=1e-2)
    gh, gw = torch.autograd.grad(loss, [hidden, weight])
    rh, rw = torch.autograd.grad(ref, [h32, w32])
    assert gh.dtype == dtype and gw.dtype == dtype
    torch.testing.assert_close(gh.float(), rh, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(gw.float(), rw, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_all_ignored_gives_zero_loss_and_grads(reduction):
    logits, _ = _inputs((3, 4), 10, dtype=torch.float32)
    logits.requires_grad_()
    target = torch.full((3, 4), PAD)
    loss, nll, stats = labo_cross_entropy(logits, target, 0.2, 1.0, ignore_index=PAD,
                                          reduction=reduction, return_stats=True)
    assert torch.all(loss == 0) and torch.all(nll == 0)
    (g,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.all(g == 0)
    assert stats.n_tokens == 0 and stats.n_correct == 0 and stats.q_entropy == 0
    hidden = torch.randn(3, 4, 5, requires_grad=True)
    weight = torch.randn(10, 5, requires_grad=True)
    loss, nll = labo_linear_cross_entropy(hidden, weight, target, 0.2, 1.0, ignore_index=PAD, reduction=reduction)
    assert torch.all(loss == 0) and torch.all(nll == 0) and not torch.isnan(loss).any()
    gh, gw = torch.autograd.grad(loss.sum(), [hidden, weight], allow_unused=True)
    assert (gh is None or torch.all(gh == 0)) and (gw is None or torch.all(gw == 0))


def test_extreme_logits_stay_finite():
    V = 50
    target = torch.tensor([3, 0, 49, 7])
    # fp32 logits of magnitude 1e4 with the gold far ahead: p_y -> 1
    logits = torch.randn(4, V) * 10.0
    logits[torch.arange(4), target] = 1e4
    logits[1, 5] = -1e4
    logits.requires_grad_()
    for tau in (0.01, 1.0, math.inf):
        loss, nll, stats = labo_cross_entropy(logits, target, 0.3, tau, reduction="none", chunk_size=16,
                                              return_stats=True)
        (g,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all() and torch.isfinite(stats.q_entropy)
        # nll ~ 0, and the q term is still finite (~ the 1e4 gap), never NaN
        assert torch.all(nll < 1e-3)
        # gradient = p - (1-a) onehot - a q: rows sum to zero, q part is a distribution
        torch.testing.assert_close(g.sum(-1), torch.zeros(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(g[torch.arange(4), target], torch.full((4,), 0.3), atol=1e-4, rtol=0)
    # all logits equal to 1e4 (no cancellation trouble), and fp16 near the top of its range
    flat = torch.full((2, V), 1e4, requires_grad=True)
    loss, _ = labo_cross_entropy(flat, torch.tensor([0, 1]), 0.3, 0.5, reduction="none")
    torch.testing.assert_close(loss, torch.full((2,), math.log(V)), rtol=1e-5, atol=1e-5)
    half = (torch.rand(3, V) * 1000 + 6.4e4).half()
    half[0, 2] = -6.5e4
    half.requires_grad_()
    loss, nll = labo_cross_entropy(half, torch.tensor([2, 1, 0]), 0.2, 0.5, chunk_size=7)
    (g,) = torch.autograd.grad(loss, half)
    assert torch.isfinite(loss) and torch.isfinite(nll) and torch.isfinite(g.float()).all()


def test_gold_dominant_q_matches_reference_exactly():
    # p_y ~ 1: subtracting the gold term from a total would lose q entirely
    logits = torch.tensor([[60.0, 0.0, -1.0, 2.0], [0.5, 80.0, 0.0, 1.0]], dtype=torch.float32)
    target = torch.tensor([0, 1])
    loss, _ = labo_cross_entropy(logits, target, 0.5, 1.0, reduction="none", chunk_size=2)
    ref, _, _ = labo_cross_entropy_reference(logits.double(), target, 0.5, 1.0, reduction="none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-5)
    assert torch.all(loss > 25)  # the alpha * E_q[-lp] term survives


# ------------------------------------------------------------------------------ stats
@pytest.mark.parametrize("tau", [0.3, math.inf])
def test_stats_entropy_and_accuracy(tau):
    logits, target = _inputs((5, 9), 31, seed=9)
    target[0, :4] = logits[0, :4].argmax(-1)  # make some predictions correct
    for fn in ("chunked", "fused"):
        if fn == "chunked":
            _, _, stats = labo_cross_entropy(logits, target, 0.2, tau, ignore_index=PAD, chunk_size=6,
                                             return_stats=True)
        else:
            eye = torch.eye(31, dtype=F64)  # logits = hidden @ I
            _, _, stats = labo_linear_cross_entropy(logits, eye, target, 0.2, tau, ignore_index=PAD,
                                                    chunk_size=6, return_stats=True)
        _, _, q = labo_cross_entropy_reference(logits, target, 0.2, tau, ignore_index=PAD)
        keep = target.ne(PAD)
        ent = -(q * torch.log(torch.where(q > 0, q, 1.0))).sum(-1)
        assert isinstance(stats, LaboStats)
        torch.testing.assert_close(stats.q_entropy, ent[keep].sum(), rtol=1e-10, atol=1e-10)
        assert stats.n_correct.item() == ((logits.argmax(-1) == target) & keep).sum().item() >= 4
        assert stats.n_tokens.item() == keep.sum().item()


def test_n_correct_resolves_ties_like_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [3.0, 3.0, 0.0, 0.0], [0.0, 2.0, 0.0, 2.0]])
    target = torch.tensor([1, 1, 1])  # correct, incorrect (argmax 0), correct (first of tie)
    for chunk in (1, 2, 4):
        _, _, stats = labo_cross_entropy(logits, target, 0.1, 1.0, chunk_size=chunk, return_stats=True)
        assert stats.n_correct.item() == (logits.argmax(-1) == target).sum().item() == 2


# --------------------------------------------------------------------------- bad input
def _bad_calls():
    z = torch.randn(4, 6)
    y = torch.randint(0, 6, (4,))
    h, w = torch.randn(4, 3), torch.randn(6, 3)
    ce, lin = labo_cross_entropy, labo_linear_cross_entropy
    return [
        ("alpha", lambda: ce(z, y, 1.0, 1.0)),
        ("alpha", lambda: ce(z, y, -0.1, 1.0)),
        ("alpha", lambda: ce(z, y, float("nan"), 1.0)),
        ("tau", lambda: ce(z, y, 0.1, 0.0)),
        ("tau", lambda: ce(z, y, 0.1, -2.0)),
        ("tau", lambda: ce(z, y, 0.1, float("nan"))),
        ("tau must be >= 0.0001", lambda: ce(z, y, 0.1, 1e-40)),  # 1/tau would overflow float32
        ("chunk_size", lambda: ce(z, y, 0.1, 1.0, chunk_size=0)),
        ("vocabulary", lambda: ce(torch.randn(4, 1), torch.zeros(4, dtype=torch.long), 0.1, 1.0)),
        ("target shape", lambda: ce(z, y[:3], 0.1, 1.0)),
        ("target", lambda: ce(z, torch.tensor([0, 1, 6, 2]), 0.1, 1.0)),
        ("target", lambda: ce(z, torch.tensor([0, -100, 2, 3]), 0.1, 1.0, ignore_index=PAD)),
        ("logits", lambda: ce(z.long(), y, 0.1, 1.0)),
        ("reduction", lambda: ce(z, y, 0.1, 1.0, reduction="avg")),
        ("weight", lambda: lin(h, torch.randn(6, 4), y, 0.1, 1.0)),
        ("bias", lambda: lin(h, w, y, 0.1, 1.0, bias=torch.randn(5))),
        ("hidden", lambda: lin(h.long(), w, y, 0.1, 1.0)),
        ("target shape", lambda: lin(h, w, y[:2], 0.1, 1.0)),
        ("alpha", lambda: lin(h, w, y, 1.5, 1.0)),
        ("reduction", lambda: lin(h, w, y, 0.1, 1.0, reduction=None)),
    ]


@pytest.mark.parametrize("name,call", _bad_calls(), ids=[f"{i}-{n}" for i, (n, _) in enumerate(_bad_calls())])
def test_bad_input_raises_value_error_naming_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()


def test_out_of_range_target_at_ignored_position_is_fine():
    z = torch.randn(3, 6)
    loss, _ = labo_cross_entropy(z, torch.tensor([0, -100, 5]), 0.1, 1.0, ignore_index=-100)
    ref, _, _ = labo_cross_entropy_reference(z, torch.tensor([0, -100, 5]), 0.1, 1.0, ignore_index=-100)
    torch.testing.assert_close(loss, ref)


# ------------------------------------------------------------------------ inplace, -inf
@pytest.mark.parametrize("dtype", [F64, torch.bfloat16])
def test_inplace_grad_writes_the_gradient_into_the_logits(dtype):
    base, target = _inputs((6,), 20, dtype=dtype, seed=11)
    base.requires_grad_()
    logits = base * 1.0
    loss, _ = labo_cross_entropy(logits, target, 0.2, 0.9, ignore_index=PAD, chunk_size=7, inplace_grad=True)
    ref_in = base.detach().clone().requires_grad_()
    ref, _ = labo_cross_entropy(ref_in, target, 0.2, 0.9, ignore_index=PAD, chunk_size=7)
    torch.testing.assert_close(loss, ref)
    (grad,) = torch.autograd.grad(loss * 3.0, base)
    (ref_grad,) = torch.autograd.grad(ref * 3.0, ref_in)
    torch.testing.assert_close(grad, ref_grad)
    torch.testing.assert_close(logits.detach(), ref_grad)  # the storage holds the gradient
    # and autograd refuses a graph that saved the overwritten logits
    logits = base.exp()
    loss, _ = labo_cross_entropy(logits, target, 0.2, 0.9, ignore_index=PAD, inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_minus_inf_non_gold_logit_gives_the_finite_loss():
    logits = torch.randn(3, 9, dtype=F64)
    logits[:, 4] = -math.inf  # e.g. a masked token: q = p = 0 there
    target = torch.tensor([0, 1, 8])
    finite = torch.cat([logits[:, :4], logits[:, 5:]], 1)
    ref, _, _ = labo_cross_entropy_reference(finite, torch.tensor([0, 1, 7]), 0.3, 0.5, reduction="none")
    for chunk in (2, None):
        loss, _ = labo_cross_entropy(logits, target, 0.3, 0.5, reduction="none", chunk_size=chunk)
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    eye = torch.eye(9, dtype=F64)
    loss, _ = labo_linear_cross_entropy(logits.clamp(min=-1e300), eye, target, 0.3, 0.5, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_logits_at_the_edge_of_float32_never_give_nan(impl):
    if impl == "triton":
        pytest.importorskip("triton")
    device = DEVICE if impl == "triton" else "cpu"
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)) * 1e38
    logits[0, 1], logits[0, 2], logits[1, 0] = 3e38, -3e38, 3.3e38
    logits = logits.to(device).requires_grad_()
    target = torch.tensor([1, 2, 3], device=device)
    for tau in (0.5, 1.0, math.inf):
        loss, _ = labo_cross_entropy(logits, target, 0.1, tau, reduction="none", impl=impl)
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        ref, _ = labo_cross_entropy(logits.detach().double(), target, 0.1, tau, reduction="none", impl="torch")
        assert not torch.isnan(loss).any() and torch.isfinite(grad).all()
        # a finite result is the true one; beyond float32's range (or where an intermediate sum
        # overflows) the result is +inf, never NaN
        finite = torch.isfinite(loss)
        torch.testing.assert_close(loss.double()[finite], ref[finite], rtol=1e-5, atol=0)
        assert torch.all(loss[~finite] == math.inf)
        assert torch.all(torch.isinf(loss[ref > torch.finfo(torch.float32).max]))
