"""LABO for Hugging Face Transformers (needs `pip install labo_fairseq[hf]`).

    from labo_fairseq.hf import labo_loss
    trainer = Seq2SeqTrainer(model, args, ..., compute_loss_func=labo_loss(0.1, 1.25))

or, fused with the output projection (the [tokens x vocab] logits are never materialised in
training; Marian, BART, mBART, M2M100/NLLB, T5):

    from labo_fairseq.hf import LaboSeq2SeqTrainer
    trainer = LaboSeq2SeqTrainer(model, args, ..., labo_alpha=0.1, labo_tau=1.25)

The batch must carry decoder_input_ids or labels from which the model makes them
(DataCollatorForSeq2Seq(tokenizer, model=model) does). `label_smoothing_factor` epsilon is LABO
with tau = inf and alpha = alpha_from_label_smoothing_factor(epsilon, V) = epsilon (V-1)/V.
"""
from labo_fairseq.hf.collate import seq2seq_collator
from labo_fairseq.hf.fused import (SUPPORTED_MODEL_TYPES, decoder_features, disable_fused_loss, enable_fused_loss,
                                   fused_loss)
from labo_fairseq.hf.loss import (IGNORE_INDEX, LaboCallback, LaboLoss, alpha_from_label_smoothing_factor,
                                  labo_loss)
from labo_fairseq.hf.trainer import LaboSeq2SeqTrainer

__all__ = [
    "IGNORE_INDEX",
    "SUPPORTED_MODEL_TYPES",
    "LaboCallback",
    "LaboLoss",
    "LaboSeq2SeqTrainer",
    "alpha_from_label_smoothing_factor",
    "decoder_features",
    "disable_fused_loss",
    "enable_fused_loss",
    "fused_loss",
    "labo_loss",
    "seq2seq_collator",
]
