"""The Triton implementation (impl="triton") of both ops against the dense float64 reference.

Without a GPU these run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET);
shapes are small and block widths (chunk_size) smaller than V so that every loop runs
several times with a ragged last block.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from labo_fairseq.functional import api
from labo_fairseq.functional import (labo_cross_entropy, labo_cross_entropy_reference,
                                     labo_linear_cross_entropy, resolve_impl)
from tests.functional.common import DEVICE, F64, PAD, make_inputs

pytest.importorskip("triton", reason="the Triton implementation needs the triton package")

V = 37  # not a multiple of the block width 16


def _weighted(loss, reduction):
    if reduction == "none":  # non-uniform incoming gradients exercise the per-row scaling
        w = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype, device=loss.device).view(loss.shape)
        return (loss * w).sum()
    return loss


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("alpha,tau", [(0.3, 0.7), (0.3, 1.0), (0.2, math.inf), (0.0, 1.25)])
def test_logits_op_matches_reference(alpha, tau, reduction, inplace):
    base, target = make_inputs((3, 4), V, device=DEVICE)
    base.requires_grad_()
    logits = base * 1.0  # a non-leaf, as in a model (mul saves no output that inplace could spoil)
    loss, nll, stats = labo_cross_entropy(logits, target, alpha, tau, ignore_index=PAD, reduction=reduction,
                                          chunk_size=16, return_stats=True, impl="triton", inplace_grad=inplace)
    ref_loss, ref_nll, q = labo_cross_entropy_reference(base.detach(), target, alpha, tau, ignore_index=PAD,
                                                        reduction=reduction)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-12, atol=1e-12)
    keep = target.ne(PAD)
    entropy = -(q * torch.log(torch.where(q > 0, q, 1.0))).sum(-1)
    torch.testing.assert_close(stats.q_entropy, entropy[keep].sum(), rtol=1e-12, atol=1e-12)
    assert stats.n_correct.item() == ((base.argmax(-1) == target) & keep).sum().item()

    (grad,) = torch.autograd.grad(_weighted(loss, reduction), base)
    ref = base.detach().clone().requires_grad_()
    ref_loss, _, _ = labo_cross_entropy_reference(ref, target, alpha, tau, ignore_index=PAD, reduction=reduction)
    (ref_grad,) = torch.autograd.grad(_weighted(ref_loss, reduction), ref)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)
    if inplace:  # the logits' storage now holds the gradient for a unit incoming gradient
        assert not torch.equal(logits.detach(), base.detach())
    else:
        assert torch.equal(logits.detach(), base.detach())


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("alpha,tau,chunk", [(0.2, 0.7, 16), (0.1, math.inf, 16), (0.0, 2.0, 64), (0.5, 1.0, 16)])
def test_fused_op_matches_reference(alpha, tau, chunk, reduction):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, 8, generator=g, dtype=F64).to(DEVICE).requires_grad_()
    weight = torch.randn(19, 8, generator=g, dtype=F64).to(DEVICE).requires_grad_()
    bias = torch.randn(19, generator=g, dtype=F64).to(DEVICE).requires_grad_()
    _, target = make_inputs((4, 6), 19, seed=2, device=DEVICE)
    loss, nll = labo_linear_cross_entropy(hidden, weight, target, alpha, tau, bias=bias, ignore_index=PAD,
                                          reduction=reduction, chunk_size=chunk, impl="triton")
    ref_loss, ref_nll, _ = labo_cross_entropy_reference(F.linear(hidden, weight, bias), target, alpha, tau,
                                                        ignore_index=PAD, reduction=reduction)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, ref_nll.detach(), rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(_weighted(loss, reduction), [hidden, weight, bias])
    ref_grads = torch.autograd.grad(_weighted(ref_loss, reduction), [hidden, weight, bias])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_fused_op_takes_several_token_chunks_and_skips_ignored_rows_in_the_kernel(monkeypatch):
    from labo_fairseq.functional._triton import launch

    monkeypatch.setattr(launch, "MIN_TOKEN_ROWS", 1)
    workspace = 5 * 19 * 8  # five rows of float64 logits per chunk
    assert launch.token_rows(24, 19, 8, workspace, torch.device(DEVICE)) == 5  # so the loop runs in chunks
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(24, 8, generator=g, dtype=F64).to(DEVICE).requires_grad_()
    weight = torch.randn(19, 8, generator=g, dtype=F64).to(DEVICE).requires_grad_()
    target = torch.randint(0, 19, (24,), generator=g)
    target[::3] = PAD
    target = target.to(DEVICE)
    for reduction in ("sum", "none"):  # "none" recomputes the gradient in backward
        loss, _ = labo_linear_cross_entropy(hidden, weight, target, 0.1, 1.5, ignore_index=PAD, impl="triton",
                                            chunk_size=16, reduction=reduction, workspace_bytes=workspace)
        ref, _, _ = labo_cross_entropy_reference(hidden @ weight.T, target, 0.1, 1.5, ignore_index=PAD,
                                                 reduction=reduction)
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        got = torch.autograd.grad(_weighted(loss, reduction), [hidden, weight])
        want = torch.autograd.grad(_weighted(ref, reduction), [hidden, weight])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert torch.all(got[0][::3] == 0)  # ignored rows: no gradient


def test_bfloat16_fused_grad_weight_error_does_not_grow_with_the_number_of_chunks(monkeypatch):
    """grad_W sums g.T @ h over token chunks in float32: with 64 chunks its error is that of one
    chunk (one bfloat16 GEMM: float32 accumulation inside, one rounding), not 64 roundings."""
    from labo_fairseq.functional._triton import launch

    monkeypatch.setattr(launch, "MIN_TOKEN_ROWS", 1)
    n, vocab, d = 128, 64, 32
    g = torch.Generator().manual_seed(11)
    hidden = (torch.randn(n, d, generator=g) * 0.5).to(torch.bfloat16)
    weight = (torch.randn(vocab, d, generator=g) * 0.5).to(torch.bfloat16)
    target = torch.randint(0, vocab, (n,), generator=g)
    w64 = weight.double().requires_grad_()
    ref, _, _ = labo_cross_entropy_reference(hidden.double() @ w64.T, target, 0.1, 1.25)
    (exact,) = torch.autograd.grad(ref, [w64])

    def error(rows_per_chunk):
        w = weight.to(DEVICE).requires_grad_()
        loss, _ = labo_linear_cross_entropy(hidden.to(DEVICE), w, target.to(DEVICE), 0.1, 1.25, impl="triton",
                                            workspace_bytes=rows_per_chunk * vocab * 2)
        (grad_w,) = torch.autograd.grad(loss, [w])
        return ((grad_w.double().cpu() - exact).norm() / exact.norm()).item()

    one_chunk, many_chunks = error(n), error(n // 64)
    assert many_chunks <= 1.5 * one_chunk, (many_chunks, one_chunk)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_finite_tau_whose_reciprocal_underflows_is_uniform_smoothing_not_nan(impl):
    device = DEVICE if impl == "triton" else "cpu"
    base, target = make_inputs((3, 4), V, dtype=torch.float32, device=device)
    for tau in (1e50, 1e300):
        logits = base.clone().requires_grad_()
        loss, nll = labo_cross_entropy(logits, target, 0.2, tau, ignore_index=PAD, impl=impl, chunk_size=16)
        (grad,) = torch.autograd.grad(loss, logits)
        inf_logits = base.clone().requires_grad_()
        inf_loss, _ = labo_cross_entropy(inf_logits, target, 0.2, math.inf, ignore_index=PAD, impl=impl, chunk_size=16)
        (inf_grad,) = torch.autograd.grad(inf_loss, inf_logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        torch.testing.assert_close(loss, inf_loss)
        torch.testing.assert_close(grad, inf_grad)
        hidden = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0)).to(device)
        weight = torch.randn(V, 8, generator=torch.Generator().manual_seed(1)).to(device)
        fused, _ = labo_linear_cross_entropy(hidden, weight, target, 0.2, tau, ignore_index=PAD, impl=impl)
        fused_inf, _ = labo_linear_cross_entropy(hidden, weight, target, 0.2, math.inf, ignore_index=PAD, impl=impl)
        assert torch.isfinite(fused)
        torch.testing.assert_close(fused, fused_inf)


def test_accuracy_is_tracked_only_when_asked():
    logits, target = make_inputs((3, 4), V, device=DEVICE)
    _, _, counted = labo_cross_entropy(logits, target, 0.1, 1.25, ignore_index=PAD, return_stats=True,
                                       impl="triton", chunk_size=16)
    _, _, uncounted = labo_cross_entropy(logits, target, 0.1, 1.25, ignore_index=PAD, return_stats=True,
                                         impl="triton", chunk_size=16, count_correct=False)
    keep = target.ne(PAD)
    assert counted.n_correct.item() == ((logits.argmax(-1) == target) & keep).sum().item()
    assert uncounted.n_correct is None
    torch.testing.assert_close(uncounted.q_entropy, counted.q_entropy)


def test_hot_path_makes_no_host_sync(monkeypatch):
    """What a CUDA call does, checked on the CPU: with host checks off (as for CUDA tensors),
    neither op reads a tensor back to the host; the target range is still asserted, on the device."""
    from labo_fairseq.functional import _validate

    monkeypatch.setattr(_validate, "host_checks", lambda device: False)
    asserted = []
    real_assert = torch._assert_async
    monkeypatch.setattr(torch, "_assert_async", lambda cond, msg: asserted.append(msg) or real_assert(cond, msg))
    logits, target = make_inputs((3, 4), V, dtype=torch.float32, device=DEVICE)
    logits.requires_grad_()
    hidden = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(3)).to(DEVICE).requires_grad_()
    weight = torch.randn(V, 8, generator=torch.Generator().manual_seed(4)).to(DEVICE).requires_grad_()

    def refuse(*args, **kwargs):
        raise AssertionError("host sync in the hot path")

    with monkeypatch.context() as m:
        for name in ("item", "nonzero", "tolist", "__bool__"):  # every way to read a value back
            m.setattr(torch.Tensor, name, refuse)
        loss, _, _ = labo_cross_entropy(logits, target, 0.1, 1.25, ignore_index=PAD, return_stats=True,
                                        impl="triton", chunk_size=16, count_correct=False)
        fused, _, _ = labo_linear_cross_entropy(hidden, weight, target, 0.1, 1.25, ignore_index=PAD,
                                                return_stats=True, impl="triton", count_correct=False)
    assert len(asserted) == 2
    (loss + fused).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3), (torch.float32, 1e-6)])
def test_half_precision_logits_accumulate_in_float32(dtype, atol):
    logits64, target = make_inputs((24,), V, seed=4, device=DEVICE)
    logits = logits64.to(dtype).requires_grad_()
    loss, nll = labo_cross_entropy(logits, target, 0.1, 1.25, ignore_index=PAD, chunk_size=16,
                                   impl="triton", inplace_grad=True)
    assert loss.dtype == torch.float32 and nll.dtype == torch.float32
    ref_in = logits64.to(dtype).double().requires_grad_()  # logits may hold the gradient now
    ref, _, _ = labo_cross_entropy_reference(ref_in, target, 0.1, 1.25, ignore_index=PAD)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    (grad,) = torch.autograd.grad(loss * 128.0, logits)  # a loss scale, as fairseq's --fp16 has
    (ref_grad,) = torch.autograd.grad(ref * 128.0, ref_in)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double() / 128.0, ref_grad / 128.0, rtol=0, atol=atol)
    if dtype == torch.float16:
        # float16 logits are never overwritten: the gradient is recomputed after the loss
        # scale, so a probability of 1e-9 (below float16's range) still reaches the gradient
        torch.testing.assert_close(logits.detach().double(), logits64.to(dtype).double())
        tiny = torch.zeros(1, 3, dtype=dtype, device=DEVICE)
        tiny[0, 0] = 22.0  # p of the other two columns ~ 2.8e-10
        tiny.requires_grad_()
        loss, _ = labo_cross_entropy(tiny, torch.tensor([0], device=DEVICE), 0.0, 1.0, impl="triton")
        (g,) = torch.autograd.grad(loss * 2.0 ** 16, tiny)
        assert g[0, 1].item() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision_close_to_float64(dtype):
    g = torch.Generator().manual_seed(6)
    hidden = (torch.randn(20, 16, generator=g, dtype=F64)).to(DEVICE)
    weight = (torch.randn(V, 16, generator=g, dtype=F64) / 4).to(DEVICE)
    target = torch.randint(0, V, (20,), generator=g).to(DEVICE)
    h, w = hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
    loss, _ = labo_linear_cross_entropy(h, w, target, 0.1, 1.25, chunk_size=16, impl="triton")
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref, _, _ = labo_cross_entropy_reference(h64 @ w64.T, target, 0.1, 1.25)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-2, atol=2e-2)
    gh, gw = torch.autograd.grad(loss, [h, w])
    rh, rw = torch.autograd.grad(ref, [h64, w64])
    assert gh.dtype == gw.dtype == dtype
    for got, want in ((gh, rh), (gw, rw)):
        assert (got.double() - want).abs().max() <= 3e-2 * want.abs().max()


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_all_ignored_rows_give_zero_loss_and_gradients(reduction):
    logits, _ = make_inputs((3, 4), 10, dtype=torch.float32, device=DEVICE)
    logits.requires_grad_()
    target = torch.full((3, 4), PAD, device=DEVICE)
    loss, nll, stats = labo_cross_entropy(logits, target, 0.2, 1.0, ignore_index=PAD, reduction=reduction,
                                          return_stats=True, impl="triton")
    assert torch.all(loss == 0) and torch.all(nll == 0)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.all(grad == 0)
    assert stats.n_tokens == 0 and stats.n_correct == 0 and stats.q_entropy == 0
    hidden = torch.randn(3, 4, 5, device=DEVICE, requires_grad=True)
    weight = torch.randn(10, 5, device=DEVICE, requires_grad=True)
    loss, nll = labo_linear_cross_entropy(hidden, weight, target, 0.2, 1.0, ignore_index=PAD,
                                          reduction=reduction, impl="triton")
    assert torch.all(loss == 0) and torch.all(nll == 0)
    gh, gw = torch.autograd.grad(loss.sum(), [hidden, weight], allow_unused=True)
    assert (gh is None or torch.all(gh == 0)) and (gw is None or torch.all(gw == 0))


def test_extreme_logits_stay_finite_and_exact():
    target = torch.tensor([3, 0, 36, 7], device=DEVICE)
    logits = torch.randn(4, V, device=DEVICE) * 10.0
    logits[torch.arange(4), target] = 1e4  # p_y -> 1
    logits[1, 5] = -1e4
    logits.requires_grad_()
    for tau in (0.01, 1.0, math.inf):
        loss, nll = labo_cross_entropy(logits, target, 0.3, tau, reduction="none", chunk_size=16, impl="triton")
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and torch.all(nll < 1e-3)
        ref, _, _ = labo_cross_entropy_reference(logits.detach().double(), target, 0.3, tau, reduction="none")
        torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-2)
        torch.testing.assert_close(grad.sum(-1), torch.zeros(4, device=DEVICE), atol=1e-4, rtol=0)
    # a -inf non-gold logit has q = 0 and p = 0: the loss stays finite and exact
    masked = torch.randn(2, V, dtype=F64, device=DEVICE)
    masked[:, 4] = -math.inf
    loss, _ = labo_cross_entropy(masked, torch.tensor([0, 1], device=DEVICE), 0.3, 0.5, chunk_size=16,
                                 reduction="none", impl="triton")
    finite = torch.cat([masked[:, :4], masked[:, 5:]], 1)
    ref, _, _ = labo_cross_entropy_reference(finite, torch.tensor([0, 1], device=DEVICE), 0.3, 0.5, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    # float16 near the top of its range
    half = (torch.rand(3, V, device=DEVICE) * 1000 + 6.4e4).half()
    half[0, 2] = -6.5e4
    half.requires_grad_()
    loss, nll = labo_cross_entropy(half, torch.tensor([2, 1, 0], device=DEVICE), 0.2, 0.5, chunk_size=16,
                                   impl="triton")
    (grad,) = torch.autograd.grad(loss, half)
    assert torch.isfinite(loss) and torch.isfinite(nll) and torch.isfinite(grad.float()).all()


def test_argmax_ties_count_like_torch_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [3.0, 3.0, 0.0, 0.0], [0.0, 2.0, 0.0, 2.0]], device=DEVICE)
    target = torch.tensor([1, 1, 1], device=DEVICE)
    _, _, stats = labo_cross_entropy(logits, target, 0.1, 1.0, return_stats=True, impl="triton")
    assert stats.n_correct.item() == (logits.argmax(-1) == target).sum().item() == 2


def test_inplace_gradient_is_refused_where_autograd_needs_the_logits():
    base = torch.randn(4, V, device=DEVICE, requires_grad=True)
    logits = base.exp()  # exp saves its output for backward: overwriting it must not pass silently
    target = torch.randint(0, V, (4,), device=DEVICE)
    loss, _ = labo_cross_entropy(logits, target, 0.1, 1.0, impl="triton", inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # a second backward through a retained graph needs the logits, which now hold the gradient
    logits = base * 1.0
    loss, _ = labo_cross_entropy(logits, target, 0.1, 1.0, impl="triton", inplace_grad=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_grad"):
        loss.backward()


def test_second_backward_without_inplace_matches_the_first():
    logits, target = make_inputs((8,), 30, dtype=torch.float32, device=DEVICE)
    logits.requires_grad_()
    loss, _ = labo_cross_entropy(logits, target, 0.2, 3.0, ignore_index=PAD, chunk_size=16, impl="triton")
    (g1,) = torch.autograd.grad(loss * 2.0, logits, retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 2.0, logits)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_triton_and_torch_implementations_agree():
    logits, target = make_inputs((16,), 50, dtype=torch.float32, device=DEVICE, seed=8)
    outs = {}
    for impl in ("torch", "triton"):
        z = logits.clone().requires_grad_()
        loss, nll, stats = labo_cross_entropy(z, target, 0.1, 1.25, ignore_index=PAD, impl=impl,
                                              return_stats=True)
        outs[impl] = (loss, nll, *stats, torch.autograd.grad(loss, z)[0])
    for a, b in zip(outs["torch"], outs["triton"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_impl_switch():
    cpu = torch.device("cpu")
    assert resolve_impl("auto", cpu) == "torch"
    assert resolve_impl("torch", cpu) == "torch"
    z, y = torch.randn(2, 5), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="impl must be one of"):
        labo_cross_entropy(z, y, 0.1, 1.0, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        labo_linear_cross_entropy(torch.randn(2, 3), torch.randn(5, 3), y, 0.1, 1.0, impl=None)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    # as without TRITON_INTERPRET=1 (triton reads the variable once, so it is not changed here)
    monkeypatch.setattr(api, "_interpreting", lambda: False)
    z, y = torch.randn(2, 5), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"impl='triton' needs CUDA tensors \(got device 'cpu'\)"):
        labo_cross_entropy(z, y, 0.1, 1.0, impl="triton")
    with pytest.raises(ValueError, match="impl='triton'"):
        labo_linear_cross_entropy(torch.randn(2, 3), torch.randn(5, 3), y, 0.1, 1.0, impl="triton")
