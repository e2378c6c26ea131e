"""The fused path: LABO on the decoder's last hidden states and the output projection, so the
[tokens x vocab] logits are never materialised (`labo_linear_cross_entropy` computes them block
by block).

`enable_fused_loss(model, loss)` replaces the model instance's `forward` (as Liger-Kernel's
`apply_liger_kernel_to_*` do), so whatever wraps the model (accelerate, DistributedDataParallel)
still calls it: with `labels` and in training mode it runs the encoder-decoder without the
output projection and returns only `loss`; with `labels` in evaluation mode it returns the usual
logits and the same LABO loss computed on them (metrics and generation need logits); without
`labels` it is the model's own forward. Training-mode outputs have `logits=None`.

What each supported model does after its decoder, reproduced here (transformers 5.x):
  marian, bart, mbart   logits = lm_head(h) + final_logits_bias
  m2m_100 (NLLB)        logits = lm_head(h)
  t5                    logits = lm_head(h * d_model**-0.5) when config.scale_decoder_outputs
                        (set from tie_word_embeddings; T5 v1.1 checkpoints do not scale)
Other models are refused with a one-line error (their head may do something else).
"""
import functools
import types
from typing import Optional, Tuple

import torch
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.models.bart.modeling_bart import shift_tokens_right

from labo_fairseq.functional import labo_linear_cross_entropy
from labo_fairseq.hf.loss import LaboLoss

BART_LIKE = ("marian", "bart", "mbart", "m2m_100")
T5_LIKE = ("t5",)
SUPPORTED_MODEL_TYPES = BART_LIKE + T5_LIKE
_ORIGINAL_FORWARD = "_labo_original_forward"


def model_type(model) -> str:
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES or not model.config.is_encoder_decoder:
        raise ValueError(f"the fused LABO loss supports model types {', '.join(SUPPORTED_MODEL_TYPES)}; "
                         f"got {type(model).__name__} (model_type {kind!r}): use the unfused loss "
                         f"(labo_fused=False / compute_loss_func=labo_loss(...))")
    return kind


def decoder_features(model, inputs: dict) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(hidden [batch, len, d], weight [V, d], bias [V] or None) such that the model's logits are
    hidden @ weight.T + bias. `inputs` are the forward's keyword arguments without labels, with
    decoder_input_ids (or decoder_inputs_embeds)."""
    kind = model_type(model)
    inputs = {**inputs, "use_cache": False}
    weight = model.get_output_embeddings().weight
    if kind in BART_LIKE:
        hidden = model.model(**inputs).last_hidden_state
        bias = getattr(model, "final_logits_bias", None)
        bias = None if bias is None else bias.view(-1)
    else:
        encoder_outputs = inputs.pop("encoder_outputs", None)
        attention_mask = inputs.pop("attention_mask", None)
        if encoder_outputs is None:
            encoder_outputs = model.encoder(input_ids=inputs.pop("input_ids", None), attention_mask=attention_mask,
                                            inputs_embeds=inputs.pop("inputs_embeds", None))
        hidden = model.decoder(input_ids=inputs.pop("decoder_input_ids", None),
                               attention_mask=inputs.pop("decoder_attention_mask", None),
                               inputs_embeds=inputs.pop("decoder_inputs_embeds", None),
                               encoder_hidden_states=encoder_outputs[0], encoder_attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
        if model.config.scale_decoder_outputs:
            hidden = hidden * (model.model_dim ** -0.5)
        bias = None
    # under autocast the projection would run in the autocast dtype: do the same
    weight = weight.to(hidden.dtype)
    bias = None if bias is None else bias.to(hidden.dtype)
    return hidden, weight, bias


def fused_loss(model, loss: LaboLoss, labels: torch.Tensor, num_items_in_batch=None, **inputs) -> torch.Tensor:
    """The LABO loss of `model` on a batch, never materialising the logits; `inputs` are the
    forward's keyword arguments (decoder_input_ids are made from labels when absent)."""
    inputs = _with_decoder_inputs(model, inputs, labels)
    hidden, weight, bias = decoder_features(model, inputs)
    return loss.reduce(
        lambda **options: labo_linear_cross_entropy(hidden, weight, labels.to(hidden.device), bias=bias, **options),
        labels, num_items_in_batch)


def _with_decoder_inputs(model, inputs: dict, labels: torch.Tensor) -> dict:
    if inputs.get("decoder_input_ids") is None and inputs.get("decoder_inputs_embeds") is None:
        if hasattr(model, "prepare_decoder_input_ids_from_labels"):
            decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
        else:  # M2M100 shifts inside its forward with the function BART's module defines
            decoder_input_ids = shift_tokens_right(labels, model.config.pad_token_id,
                                                   model.config.decoder_start_token_id)
        inputs = {**inputs, "decoder_input_ids": decoder_input_ids}
    return inputs


def enable_fused_loss(model, loss: LaboLoss):
    """Makes `model`'s forward compute `loss` fused with the output projection (see the module
    docstring); calling it again replaces the loss. Returns the model."""
    model_type(model)
    original = getattr(model, _ORIGINAL_FORWARD, None) or model.forward
    setattr(model, _ORIGINAL_FORWARD, original)

    # keeps the original signature for inspect (the Trainer reads it to pick dataset columns)
    @functools.wraps(original.__func__)
    def forward(self, *args, labels=None, num_items_in_batch=None, **inputs):
        if labels is None:
            return original(*args, **inputs)
        if args:
            raise TypeError("the fused LABO forward takes keyword arguments only (input_ids=..., labels=...)")
        if self.training:
            return Seq2SeqLMOutput(loss=fused_loss(self, loss, labels, num_items_in_batch, **inputs))
        outputs = original(**_with_decoder_inputs(self, inputs, labels))
        outputs.loss = loss(outputs, labels, num_items_in_batch)
        return outputs

    model.forward = types.MethodType(forward, model)
    # the Trainer then passes num_items_in_batch and takes the loss as normalised by it
    model.accepts_loss_kwargs = True
    model.labo_loss = loss
    return model


def disable_fused_loss(model):
    """Restores the forward `enable_fused_loss` replaced."""
    original = getattr(model, _ORIGINAL_FORWARD, None)
    if original is not None:
        model.forward = original
        for name in (_ORIGINAL_FORWARD, "labo_loss", "accepts_loss_kwargs"):
            if name in vars(model):
                delattr(model, name)
    return model
