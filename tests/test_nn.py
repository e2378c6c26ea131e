"""labo_fairseq.nn: the modules are the functional ops with torch.nn.CrossEntropyLoss's defaults."""
import math

import pytest
import torch
import torch.nn.functional as F

from labo_fairseq.functional import labo_cross_entropy_reference
from labo_fairseq.nn import LaboCrossEntropyLoss, LaboLinearCrossEntropyLoss


def test_logits_module_is_the_mean_loss_over_non_ignored_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (4, 5), generator=g)
    target[0, :2] = -100
    loss = LaboCrossEntropyLoss(label_smoothing=0.2, tau=0.8)(logits, target)
    ref, _, _ = labo_cross_entropy_reference(logits, target, 0.2, 0.8, ignore_index=-100, reduction="mean")
    torch.testing.assert_close(loss, ref)
    (grad,) = torch.autograd.grad(loss, logits)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, ref_grad)
    # no smoothing is torch's cross-entropy
    ce = LaboCrossEntropyLoss(label_smoothing=0.0)(logits, target)
    torch.testing.assert_close(ce, F.cross_entropy(logits.view(-1, 11), target.view(-1)))


def test_linear_module_trains_a_small_classifier():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    loss_fn = LaboLinearCrossEntropyLoss(label_smoothing=0.1, tau=1.25)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_fn(x, head.weight, y, head.bias)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    ref, _, _ = labo_cross_entropy_reference(head(x).detach(), y, 0.1, 1.25, reduction="mean")
    torch.testing.assert_close(loss_fn(x, head.weight, y, head.bias).detach(), ref, rtol=1e-5, atol=1e-6)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="alpha must be in"):
        LaboCrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="tau"):
        LaboLinearCrossEntropyLoss(tau=0.0)
    assert "tau=inf" in repr(LaboCrossEntropyLoss(tau=math.inf))
