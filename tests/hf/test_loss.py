"""labo_loss as Trainer(compute_loss_func=...): the identities with the model's own losses."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers.trainer_pt_utils import LabelSmoother

from labo_fairseq.hf import LaboLoss, alpha_from_label_smoothing_factor, labo_loss
from tests.hf.tiny import VOCAB, tiny_model, toy_batch


@pytest.fixture(scope="module")
def marian_outputs():
    model = tiny_model("marian").eval()
    batch = toy_batch()
    with torch.no_grad():
        outputs = model(**batch)
    return outputs, batch["labels"]


def test_alpha_zero_is_the_models_own_cross_entropy(marian_outputs):
    outputs, labels = marian_outputs
    loss = labo_loss(0.0, 1.25, impl="torch")(outputs, labels)
    torch.testing.assert_close(loss, outputs.loss, rtol=1e-6, atol=1e-6)


def test_tau_inf_is_uniform_smoothing_over_the_non_gold_tokens(marian_outputs):
    outputs, labels = marian_outputs
    alpha = 0.2
    lp = F.log_softmax(outputs.logits.float(), dim=-1)
    keep = labels.ne(-100)
    gold = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    others = (lp.sum(-1) - gold) / (VOCAB - 1)
    expected = ((1 - alpha) * -gold + alpha * -others)[keep].mean()
    loss = labo_loss(alpha, math.inf, impl="torch")(outputs, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_items_in_batch", [None, 40])
def test_label_smoothing_factor_is_tau_inf_with_mapped_alpha(marian_outputs, num_items_in_batch):
    outputs, labels = marian_outputs
    # sharper than a random model's near-uniform logits, where every smoothing looks alike
    outputs = {"logits": outputs.logits * 8}
    epsilon = 0.1
    hf = LabelSmoother(epsilon=epsilon)(outputs, labels, num_items_in_batch=num_items_in_batch)
    alpha = alpha_from_label_smoothing_factor(epsilon, VOCAB)
    assert alpha == pytest.approx(epsilon * (VOCAB - 1) / VOCAB)
    loss = labo_loss(alpha, math.inf, impl="torch")(outputs, labels, num_items_in_batch=num_items_in_batch)
    torch.testing.assert_close(loss, hf, rtol=1e-6, atol=1e-6)
    # alpha = epsilon itself is not the same loss: the mapping matters
    other = labo_loss(epsilon, math.inf, impl="torch")(outputs, labels, num_items_in_batch=num_items_in_batch)
    assert abs(float(other / hf - 1)) > 5e-6  # several times the tolerance of the identity above


def test_labo_differs_from_uniform_smoothing(marian_outputs):
    outputs, labels = marian_outputs
    uniform = labo_loss(0.1, math.inf, impl="torch")(outputs, labels)
    labo = labo_loss(0.1, 1.25, impl="torch")(outputs, labels)
    assert abs(float(labo - uniform)) > 1e-4


def test_gradient_accumulation_with_num_items_in_batch():
    """Micro-batch losses divided by the accumulated token count add up to the full batch's mean
    loss, in value and gradient, though the micro-batches have different token counts."""
    model = tiny_model("marian").eval()
    batch = toy_batch(batch=4)
    loss_fn = labo_loss(0.1, 1.25, impl="torch")
    full = loss_fn(model(**{k: v for k, v in batch.items()}), batch["labels"])
    full.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    full_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    total_items = batch["labels"].ne(-100).sum()
    halves = [{k: v[i:i + 2] for k, v in batch.items()} for i in (0, 2)]
    assert halves[0]["labels"].ne(-100).sum() != halves[1]["labels"].ne(-100).sum()
    accumulated = 0.0
    for half in halves:
        loss = loss_fn(model(**half), half["labels"], num_items_in_batch=total_items)
        loss.backward()
        accumulated = accumulated + loss.detach()
    torch.testing.assert_close(accumulated, full.detach(), rtol=1e-6, atol=1e-6)
    for p, g in zip(params, full_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    # without num_items_in_batch each half is its own mean: not the full batch's loss
    naive = sum(loss_fn(model(**half), half["labels"]).detach() for half in halves) / 2
    assert abs(float(naive - full)) > 1e-4


def test_tsla_stop_sets_alpha_to_zero_after_the_given_updates(marian_outputs):
    outputs, labels = marian_outputs
    loss_fn = labo_loss(0.1, 1.25, impl="torch", tsla_stop=3)
    with pytest.raises(ValueError, match="callbacks=\\[loss.callback\\]"):
        loss_fn(outputs, labels)
    loss_fn.num_updates = 2
    assert loss_fn.current_alpha() == 0.1
    assert float(loss_fn(outputs, labels)) == pytest.approx(float(labo_loss(0.1, 1.25)(outputs, labels)))
    loss_fn.num_updates = 3  # fairseq's --smoothing-stop-update: from the update that starts with 3 done
    assert loss_fn.current_alpha() == 0.0
    torch.testing.assert_close(loss_fn(outputs, labels), outputs.loss, rtol=1e-6, atol=1e-6)


def test_q_entropy_is_recorded_in_training_only(marian_outputs):
    outputs, labels = marian_outputs
    loss_fn = LaboLoss(0.1, 1.25, impl="torch", log_q_entropy=True)
    with torch.no_grad():
        loss_fn(outputs, labels)
    assert loss_fn.pop_q_entropy() is None
    logits = outputs.logits.clone().requires_grad_()
    loss_fn({"logits": logits}, labels)
    value = loss_fn.pop_q_entropy()
    assert 0.0 < value < math.log(VOCAB - 1)
    assert loss_fn.pop_q_entropy() is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=1.0, tau=1.0), "alpha must be in \\[0, 1\\), got 1.0"),
    (dict(alpha=-0.1, tau=1.0), "alpha must be in"),
    (dict(alpha=0.1, tau=0.0), "tau must be >= "),
    (dict(alpha=0.1, tau=float("nan")), "tau must be >= "),
    (dict(alpha=0.1, tau="warm"), "tau must be a number"),
    (dict(alpha=0.1, tau=1.0, impl="cuda"), "impl must be one of"),
    (dict(alpha=0.1, tau=1.0, tsla_stop=0), "tsla_stop must be a positive number"),
])
def test_bad_arguments_are_named(kwargs, message):
    alpha, tau = kwargs.pop("alpha"), kwargs.pop("tau")
    with pytest.raises(ValueError, match=message):
        labo_loss(alpha, tau, **kwargs)


def test_alpha_mapping_refuses_bad_values():
    with pytest.raises(ValueError, match="label_smoothing_factor must be in"):
        alpha_from_label_smoothing_factor(1.0, 100)
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        alpha_from_label_smoothing_factor(0.1, 1)
