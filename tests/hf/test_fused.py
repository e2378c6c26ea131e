"""The fused loss (decoder hidden states x output projection, no logits) against LABO on the
model's logits: same loss and gradients for every supported model.

Tolerances: float32, rtol = atol = 1e-5 for loss and gradients. bfloat16 (model weights in
bf16): the unfused path rounds the logits to bf16 before the loss, the fused one keeps them in
float32, so they differ by bf16 rounding: loss within 2e-2 relative, each gradient within 5e-2 of
its largest entry (max |fused - unfused| / max |unfused|).
"""
import math

import pytest
import torch
from transformers import PegasusConfig, PegasusForConditionalGeneration

from labo_fairseq.hf import SUPPORTED_MODEL_TYPES, disable_fused_loss, enable_fused_loss, fused_loss, labo_loss
from tests.hf.tiny import VOCAB, tiny_model, toy_batch

KINDS = ("marian", "bart", "mbart", "m2m_100", "t5")


def _loss_and_grads(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _both(model, batch, alpha=0.1, tau=1.25):
    loss_fn = labo_loss(alpha, tau, impl="torch")
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels) \
        if hasattr(model, "prepare_decoder_input_ids_from_labels") else None
    unfused = _loss_and_grads(model, lambda: loss_fn(model(**{**inputs, "labels": labels}), labels))
    fused = _loss_and_grads(model, lambda: fused_loss(model, loss_fn, labels, **inputs))
    return unfused, fused


def test_every_supported_model_type_is_tested():
    assert set(KINDS) == set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [1.25, math.inf])
def test_fused_matches_unfused_float32(kind, tau):
    model = tiny_model(kind).eval()  # eval: no dropout, the two passes see the same network
    (loss_u, grads_u), (loss_f, grads_f) = _both(model, toy_batch(), tau=tau)
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-5, atol=1e-5)
    assert grads_u.keys() == grads_f.keys()
    assert "lm_head.weight" in grads_f or "shared.weight" in grads_f or "model.shared.weight" in grads_f
    for name in grads_u:
        torch.testing.assert_close(grads_f[name], grads_u[name], rtol=1e-5, atol=1e-5, msg=name)


def test_t5_without_output_scaling():
    """T5 v1.1 (tie_word_embeddings=False in its config) does not scale the decoder output."""
    model = tiny_model("t5", tie_word_embeddings=False).eval()
    assert not model.config.scale_decoder_outputs
    (loss_u, _), (loss_f, _) = _both(model, toy_batch())
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-5, atol=1e-5)
    scaled = tiny_model("t5").eval()
    scaled.load_state_dict(model.state_dict())
    (loss_s, _), _ = _both(scaled, toy_batch())
    assert abs(float(loss_s - loss_u)) > 1e-3  # the scaling is not a no-op on these weights


@pytest.mark.parametrize("kind", ["marian", "t5"])
def test_fused_matches_unfused_bfloat16(kind):
    model = tiny_model(kind).eval().to(torch.bfloat16)
    (loss_u, grads_u), (loss_f, grads_f) = _both(model, toy_batch())
    assert loss_f.dtype == torch.float32
    torch.testing.assert_close(loss_f, loss_u, rtol=2e-2, atol=0)
    for name in grads_u:
        assert grads_f[name].dtype == torch.bfloat16
        scale = grads_u[name].float().abs().max()
        error = (grads_f[name].float() - grads_u[name].float()).abs().max()
        assert error <= 5e-2 * scale + 1e-6, name


def test_patched_forward_never_computes_logits_in_training():
    model = tiny_model("marian")
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    batch = toy_batch()
    loss_fn = labo_loss(0.1, 1.25, impl="torch")
    enable_fused_loss(model, loss_fn)
    model.train()
    out = model(**batch)
    assert out.logits is None and out.loss.requires_grad
    out.loss.backward()
    assert calls == []
    # evaluation: logits for metrics, and the same LABO loss on them
    model.eval()
    with torch.no_grad():
        evaluated = model(**batch)
        reference = loss_fn(evaluated, batch["labels"])
    assert calls == [1] and evaluated.logits.shape[-1] == VOCAB
    torch.testing.assert_close(evaluated.loss, reference)
    # without labels: the model's own forward (generation)
    assert model.generate(input_ids=batch["input_ids"][:1], max_new_tokens=3).shape[0] == 1
    disable_fused_loss(model)
    assert model(**batch).logits is not None and "accepts_loss_kwargs" not in vars(model)


def test_patched_forward_in_training_equals_unfused_with_num_items():
    model = tiny_model("bart")
    batch = toy_batch()
    loss_fn = labo_loss(0.1, 1.25, impl="torch")
    model.eval()
    reference = loss_fn(model(**batch), batch["labels"], num_items_in_batch=50)
    enable_fused_loss(model, loss_fn)
    model.train()
    for module in model.modules():  # training mode without dropout's randomness
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.testing.assert_close(model(**batch, num_items_in_batch=50).loss, reference, rtol=1e-5, atol=1e-6)


def test_unsupported_model_is_refused_by_name():
    model = PegasusForConditionalGeneration(PegasusConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1,
                                                          decoder_layers=1, encoder_attention_heads=2,
                                                          decoder_attention_heads=2, encoder_ffn_dim=16,
                                                          decoder_ffn_dim=16))
    with pytest.raises(ValueError, match="PegasusForConditionalGeneration \\(model_type 'pegasus'\\).*unfused"):
        enable_fused_loss(model, labo_loss(0.1, 1.25))
