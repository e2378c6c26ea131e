"""The rules the two autograd Functions own for every backend: when the gradient is computed
in forward, the matmul dtype under autocast, consume-once, the rescale of a precomputed
gradient; and the backend registry they are handed a backend from."""
import math

import pytest
import torch

from labo_fairseq.functional import (IMPLS, labo_cross_entropy, labo_cross_entropy_reference,
                                     labo_linear_cross_entropy)
from labo_fairseq.functional import backends
from labo_fairseq.functional.ops import grads_in_forward, matmul_dtype, scale_grad_
from tests.functional.common import DEVICE, F64, PAD, make_inputs


def _impls():
    out = [pytest.param("torch", "cpu", id="torch")]
    try:
        import triton  # noqa: F401
    except ImportError:
        return out
    return out + [pytest.param("triton", DEVICE, id="triton")]


def test_registry_names_are_the_implementations():
    assert IMPLS == ("auto", *backends.NAMES) == ("auto", "torch", "triton")
    for name, device in (p.values for p in _impls()):
        backend = backends.get(name)
        assert backend.name == name and callable(backend.row_stats) and callable(backend.row_grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gradient_in_forward_unless_float16_or_not_rescalable(dtype):
    assert grads_in_forward(True, dtype, rows_rescalable=True)
    assert not grads_in_forward(False, dtype, rows_rescalable=True)
    assert not grads_in_forward(True, dtype, rows_rescalable=False)
    assert not grads_in_forward(True, torch.float16, rows_rescalable=True)


def test_matmul_dtype_is_autocasts_on_the_tensors_device():
    hidden = torch.zeros(2, 3)
    assert matmul_dtype(hidden) == torch.float32
    with torch.autocast("cpu", dtype=torch.float16):
        assert matmul_dtype(hidden) == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul_dtype(hidden) == torch.bfloat16


@pytest.mark.parametrize("impl,device", _impls())
def test_fused_under_float16_autocast_recomputes_after_the_loss_scale(impl, device):
    """float32 inputs, float16 logits (autocast): the rule looks at the matmul dtype, so the
    gradient is not rounded to float16 before the loss scale: a probability of 2.8e-10 (below
    float16's range) still reaches grad_weight."""
    hidden = torch.zeros(1, 4, device=device)
    hidden[0, 0] = 1.0
    weight = torch.zeros(3, 4, device=device)
    weight[0, 0] = 22.0  # logits [22, 0, 0]: p of the other two columns ~ 2.8e-10
    weight.requires_grad_()
    with torch.autocast(device, dtype=torch.float16):
        loss, _ = labo_linear_cross_entropy(hidden, weight, torch.tensor([0], device=device), 0.0, 1.0, impl=impl)
    (grad_w,) = torch.autograd.grad(loss * 2.0 ** 16, weight)
    assert grad_w.dtype == torch.float32
    p = math.exp(-22.0) / (1 + 2 * math.exp(-22.0))
    torch.testing.assert_close(grad_w[1:, 0].cpu(), torch.full((2,), p * 2.0 ** 16), rtol=2e-3, atol=0)


@pytest.mark.parametrize("impl,device", _impls())
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_fused_second_backward_through_a_retained_graph_matches_the_first(impl, device, reduction):
    """The gradients computed in forward serve one backward; a second one recomputes them."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(9, 6, generator=g, dtype=F64).to(device).requires_grad_()
    weight = torch.randn(21, 6, generator=g, dtype=F64).to(device).requires_grad_()
    _, target = make_inputs((9,), 21, seed=3, device=device)
    loss, _ = labo_linear_cross_entropy(hidden, weight, target, 0.2, 0.8, ignore_index=PAD, reduction=reduction,
                                        chunk_size=16, impl=impl)
    first = torch.autograd.grad(loss.sum() * 3.0, [hidden, weight], retain_graph=True)
    second = torch.autograd.grad(loss.sum() * 3.0, [hidden, weight])
    ref, _, _ = labo_cross_entropy_reference(hidden @ weight.T, target, 0.2, 0.8, ignore_index=PAD,
                                             reduction=reduction)
    want = torch.autograd.grad(ref.sum() * 3.0, [hidden, weight])
    for a, b, c in zip(first, second, want):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-12)


def test_rescale_skips_a_unit_incoming_gradient_and_scales_rows():
    backend = backends.get("torch")
    grad = torch.arange(6.0).view(2, 3)
    assert scale_grad_(grad, torch.tensor(1.0), False, backend) is grad
    assert torch.equal(grad, torch.arange(6.0).view(2, 3))
    scale_grad_(grad, torch.tensor(2.0), False, backend)
    assert torch.equal(grad, 2 * torch.arange(6.0).view(2, 3))
    scale_grad_(grad, torch.tensor([1.0, -0.5]), True, backend)
    assert torch.equal(grad, torch.tensor([[0.0, 2.0, 4.0], [-3.0, -4.0, -5.0]]))


@pytest.mark.parametrize("impl,device", _impls())
def test_per_row_losses_summed_without_weights_recompute_right(impl, device):
    """The incoming gradient of a plain loss.sum() is an expanded scalar (stride 0): backward's
    recompute (float16 logits) must still give every row its own scale."""
    base, target = make_inputs((6,), 40, dtype=torch.float16, seed=5, device=device)
    logits = base.clone().requires_grad_()
    loss, _ = labo_cross_entropy(logits, target, 0.1, 1.25, ignore_index=PAD, reduction="none", chunk_size=16,
                                 impl=impl)
    (grad,) = torch.autograd.grad(loss.sum() * 4.0, logits)
    ref_in = base.double().requires_grad_()
    ref, _, _ = labo_cross_entropy_reference(ref_in, target, 0.1, 1.25, ignore_index=PAD, reduction="none")
    (want,) = torch.autograd.grad(ref.sum() * 4.0, ref_in)
    torch.testing.assert_close(grad.double(), want, rtol=0, atol=4e-3)
