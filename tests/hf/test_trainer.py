"""Seq2SeqTrainer with labo_loss and LaboSeq2SeqTrainer on a tiny Marian model (CPU, offline)."""
import math

import pytest
import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from labo_fairseq.hf import LaboSeq2SeqTrainer, labo_loss, seq2seq_collator
from tests.hf.tiny import PAD, tiny_model, toy_pairs


def _args(out, **overrides):
    settings = dict(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-3, max_steps=10,
                    logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True,
                    dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
                    lr_scheduler_type="constant")
    settings.update(overrides)
    return Seq2SeqTrainingArguments(**settings)


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _labo_trainer(out, data, model=None, **kwargs):
    model = model or tiny_model("marian", d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)
    labo = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("labo_")}
    labo.setdefault("labo_impl", "torch")
    return LaboSeq2SeqTrainer(model=model, args=_args(out, **kwargs), train_dataset=data,
                              data_collator=seq2seq_collator(model, PAD), **labo)


def test_compute_loss_func_and_fused_trainer_train_alike(tmp_path):
    data = toy_pairs(64)
    model = tiny_model("marian", d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)
    plain = Seq2SeqTrainer(model=model, args=_args(tmp_path / "plain"), train_dataset=data,
                           data_collator=seq2seq_collator(model, PAD), compute_loss_func=labo_loss(0.1, 1.25, impl="torch"))
    plain.train()
    fused = _labo_trainer(tmp_path / "fused", data)
    calls = []
    fused.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    fused.train()
    assert calls == []  # no logits in fused training
    assert len(_losses(plain)) == 10
    torch.testing.assert_close(torch.tensor(_losses(fused)), torch.tensor(_losses(plain)), rtol=1e-4, atol=1e-4)


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    """Batch 8 in one step == 2 x 4 accumulated (different token counts): num_items_in_batch."""
    data = toy_pairs(8, seed=3)
    one = _labo_trainer(tmp_path / "one", data, per_device_train_batch_size=8, max_steps=1,
                        optim="sgd", learning_rate=1.0)
    one.train()
    two = _labo_trainer(tmp_path / "two", data, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                        max_steps=1, optim="sgd", learning_rate=1.0)
    two.train()
    start = tiny_model("marian", d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64).state_dict()
    moved = 0
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(a, start[name])
    assert moved > 10  # the step changed the weights
    assert _losses(one)[0] == pytest.approx(_losses(two)[0], rel=1e-5)


def test_tiny_marian_learns_in_60_steps_with_q_entropy_logged(tmp_path):
    trainer = _labo_trainer(tmp_path, toy_pairs(256), max_steps=60, logging_steps=5, labo_log_q_entropy=True)
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    entropies = [e["q_entropy"] for e in trainer.state.log_history if "loss" in e]
    assert len(entropies) == 12 and all(0 < h < math.log(trainer.model.config.vocab_size) for h in entropies)


def test_tsla_stop_ends_smoothing_after_that_many_updates(tmp_path):
    trainer = _labo_trainer(tmp_path, toy_pairs(64), max_steps=5, labo_tsla_stop=3, labo_log_q_entropy=True)
    trainer.train()
    logged = {e["step"]: "q_entropy" in e for e in trainer.state.log_history if "loss" in e}
    # updates 1-3 start with 0, 1, 2 updates done (smoothing); 4 and 5 with 3 and 4 done (NLL)
    assert logged == {1: True, 2: True, 3: True, 4: False, 5: False}


def test_save_and_resume_continues_the_same_run(tmp_path):
    data = toy_pairs(96, seed=5)
    whole = _labo_trainer(tmp_path / "whole", data, max_steps=12)
    whole.train()
    first = _labo_trainer(tmp_path / "parts", data, max_steps=12, save_strategy="steps", save_steps=6)
    first.train()
    assert (tmp_path / "parts" / "checkpoint-6").is_dir()
    resumed = _labo_trainer(tmp_path / "parts", data, max_steps=12, labo_tsla_stop=9)
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-6"))
    assert resumed.labo_loss.num_updates == 11  # the update count came back with the checkpoint
    resumed_losses = {e["step"]: e["loss"] for e in resumed.state.log_history if "loss" in e}
    whole_losses = {e["step"]: e["loss"] for e in whole.state.log_history if "loss" in e}
    for step in (7, 8, 9):  # before tsla_stop: the same run as without the interruption
        assert resumed_losses[step] == pytest.approx(whole_losses[step], rel=1e-4)
    smoothed = {e["step"]: "q_entropy" in e for e in resumed.state.log_history if "loss" in e and e["step"] > 6}
    assert smoothed == {7: True, 8: True, 9: True, 10: False, 11: False, 12: False}  # alpha = 0 from update 10


def test_trainer_refuses_conflicting_settings(tmp_path):
    model = tiny_model("marian")
    with pytest.raises(ValueError, match="label_smoothing_factor=0.1"):
        LaboSeq2SeqTrainer(model=model, args=_args(tmp_path, label_smoothing_factor=0.1))
    with pytest.raises(ValueError, match="sets compute_loss_func itself"):
        LaboSeq2SeqTrainer(model=model, args=_args(tmp_path), compute_loss_func=labo_loss(0.1, 1.0))
    with pytest.raises(ValueError, match="alpha must be in"):
        LaboSeq2SeqTrainer(model=model, args=_args(tmp_path), labo_alpha=1.5)
