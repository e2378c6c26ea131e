"""Tiny randomly initialised encoder-decoders and toy batches for the Transformers tests."""
import random

import torch
from transformers import (BartConfig, BartForConditionalGeneration, M2M100Config, M2M100ForConditionalGeneration,
                          MarianConfig, MarianMTModel, MBartConfig, MBartForConditionalGeneration, T5Config,
                          T5ForConditionalGeneration)

VOCAB = 61
PAD, EOS = 1, 2
_BART_LIKE = dict(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                  pad_token_id=PAD, eos_token_id=EOS, bos_token_id=0, decoder_start_token_id=EOS, dropout=0.0,
                  attention_dropout=0.0, activation_dropout=0.0)


def tiny_model(kind: str, seed: int = 0, **overrides):
    """A 1-layer model of `kind` (marian, bart, mbart, m2m_100, t5), dropout off; biases that
    are zero at initialisation (final_logits_bias) are made random so that they count."""
    torch.manual_seed(seed)
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                    num_heads=2, pad_token_id=PAD, eos_token_id=EOS,
                                                    decoder_start_token_id=PAD, dropout_rate=0.0, **overrides))
    else:
        config_class, model_class = {"marian": (MarianConfig, MarianMTModel),
                                     "bart": (BartConfig, BartForConditionalGeneration),
                                     "mbart": (MBartConfig, MBartForConditionalGeneration),
                                     "m2m_100": (M2M100Config, M2M100ForConditionalGeneration)}[kind]
        settings = {**_BART_LIKE, **({"decoder_start_token_id": PAD} if kind == "marian" else {}), **overrides}
        model = model_class(config_class(**settings))
    if hasattr(model, "final_logits_bias"):
        with torch.no_grad():
            model.final_logits_bias.normal_(0, 0.5)
    return model


def toy_batch(seed: int = 0, batch: int = 4, src_len: int = 7, tgt_len: int = 6):
    """input_ids/attention_mask and labels with -100 padding of different lengths per row."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, src_len), generator=g)
    labels = torch.randint(3, VOCAB, (batch, tgt_len), generator=g)
    for row in range(1, batch):
        labels[row, tgt_len - row:] = -100
        input_ids[row, src_len - row:] = PAD
    return {"input_ids": input_ids, "attention_mask": input_ids.ne(PAD).long(), "labels": labels}


def toy_pairs(n: int, seed: int = 0, max_len: int = 8):
    """A toy task a tiny model learns in a few dozen steps: each target token is a function of
    the source token at the same position, into 5 of the VOCAB tokens."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [rng.randrange(3, VOCAB - 1) for _ in range(rng.randrange(2, max_len))]
        pairs.append({"input_ids": src + [EOS], "labels": [3 + t % 5 for t in src] + [EOS]})
    return pairs


