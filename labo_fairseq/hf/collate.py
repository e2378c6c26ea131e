"""A padding collator for pre-tokenised pairs, for when no Transformers tokenizer exists (a
sentencepiece model trained locally, toy data): what DataCollatorForSeq2Seq does with one."""
import torch

from labo_fairseq.hf.loss import IGNORE_INDEX


def seq2seq_collator(model, pad_id: int):
    """collate([{"input_ids": [...], "labels": [...]}, ...]) -> padded tensors, the attention mask
    and the decoder_input_ids `model` makes from the labels (the Trainer hands the model no labels
    when a compute_loss_func is set, so the decoder inputs must come with the batch)."""
    def pad(rows, value):
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows])

    def collate(features):
        input_ids = pad([f["input_ids"] for f in features], pad_id)
        labels = pad([f["labels"] for f in features], IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": input_ids.ne(pad_id).long(), "labels": labels,
                "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels)}
    return collate
