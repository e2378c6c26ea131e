"""The fairseq criterion `label_smoothed_labo`, in process on a real fairseq transformer."""
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq import metrics, options, tasks
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from labo_fairseq.criterions.label_smoothed_labo import LabelSmoothedLaboCriterion, loss_path
from labo_fairseq.functional import api
from tests.toy import TINY_TRANSFORMER_ARGS


def build(data_bin, *criterion_args, arch_args=TINY_TRANSFORMER_ARGS):
    """(task, model, criterion) as fairseq-train would build them from these flags."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data_bin), *arch_args, "--dropout", "0", "--max-tokens", "500", *criterion_args]
    )
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).double()
    return task, model, task.build_criterion(cfg.criterion)


def batches(task, subset="valid", n=3):
    task.load_dataset(subset)
    itr = task.get_batch_iterator(task.dataset(subset), max_tokens=120, seed=1).next_epoch_itr(shuffle=False)
    return [next(itr) for _ in range(n)]


@pytest.fixture(scope="module")
def labo(toy_data_bin):
    return build(toy_data_bin, "--criterion", "label_smoothed_labo", "--labo-tau", "1.25")


def grads_of(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_registered_with_fairseq_flags_and_defaults(labo):
    _, _, criterion = labo
    assert isinstance(criterion, LabelSmoothedLaboCriterion)
    assert (criterion.eps, criterion.tau, criterion.fused, criterion.smoothing_stop_update) == (0.1, 1.25, True, 0)
    assert criterion.logging_outputs_can_be_summed()


@pytest.mark.parametrize("flag, value", [
    ("--label-smoothing", "1.0"), ("--label-smoothing", "-0.1"), ("--labo-tau", "0"),
    ("--labo-tau", "nan"), ("--labo-chunk-size", "0"), ("--smoothing-stop-update", "-1"),
    ("--labo-workspace-mb", "0"),
])
def test_invalid_flag_fails_at_start_up_naming_the_flag(toy_data_bin, flag, value):
    with pytest.raises(ValueError, match=flag):
        build(toy_data_bin, "--criterion", "label_smoothed_labo", flag, value)


def test_labo_impl_is_validated_at_start_up(toy_data_bin, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        build(toy_data_bin, "--criterion", "label_smoothed_labo", "--labo-impl", "cuda")
    assert "--labo-impl: invalid choice: 'cuda'" in capsys.readouterr().err
    # as without TRITON_INTERPRET=1 (triton reads the variable once, so it is not changed here)
    monkeypatch.setattr(api, "_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--labo-impl triton: impl='triton' needs CUDA tensors"):
        build(toy_data_bin, "--criterion", "label_smoothed_labo", "--labo-impl", "triton")


def test_transformer_takes_the_fused_path(labo):
    _, model, _ = labo
    assert loss_path(model) == "fused"


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_fused_and_logits_paths_agree_in_loss_and_gradients(labo, toy_data_bin, impl):
    # the logits path lets the op overwrite the logits with their gradient (inplace_grad);
    # "triton" runs the kernels (under Triton's interpreter without a GPU)
    if impl == "triton" and torch.cuda.is_available():
        pytest.skip("the toy model runs on the CPU, where Triton needs its interpreter (off when CUDA is present)")
    task, model, fused = labo
    _, _, unfused = build(toy_data_bin, "--criterion", "label_smoothed_labo", "--no-labo-fused",
                          "--labo-impl", impl)
    assert unfused.impl == impl
    for sample in batches(task):
        loss_f, _, log_f = fused(model, sample)
        grads_f = grads_of(model, loss_f)
        loss_u, _, log_u = unfused(model, sample)
        grads_u = grads_of(model, loss_u)
        torch.testing.assert_close(loss_f, loss_u, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(log_f["nll_loss"], log_u["nll_loss"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(log_f["q_entropy"], log_u["q_entropy"], rtol=1e-10, atol=1e-10)
        assert grads_f.keys() == grads_u.keys() and "decoder.embed_tokens.weight" in grads_f
        for name in grads_f:
            torch.testing.assert_close(grads_f[name], grads_u[name], rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("fused", [True, False])
def test_tau_inf_is_fairseq_label_smoothing(toy_data_bin, fused):
    task, model, labo_inf = build(toy_data_bin, "--criterion", "label_smoothed_labo", "--labo-tau", "inf",
                                  *([] if fused else ["--no-labo-fused"]))
    ls = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    for sample in batches(task):
        loss_labo, size_labo, log_labo = labo_inf(model, sample)
        grads_labo = grads_of(model, loss_labo)
        loss_ls, size_ls, log_ls = ls(model, sample)
        grads_ls = grads_of(model, loss_ls)
        assert size_labo == size_ls
        # fairseq's criterion normalises in float32 (utils.log_softmax casts), ours in the
        # model's float64: they agree to float32 precision (the op's tests compare in float64).
        torch.testing.assert_close(loss_labo.float(), loss_ls, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(log_labo["nll_loss"].float(), log_ls["nll_loss"], rtol=1e-5, atol=1e-5)
        for name in grads_ls:
            torch.testing.assert_close(grads_labo[name], grads_ls[name], rtol=1e-4, atol=1e-6, msg=name)


def test_alpha_zero_is_cross_entropy(toy_data_bin):
    task, model, criterion = build(toy_data_bin, "--criterion", "label_smoothed_labo", "--label-smoothing", "0")
    sample = batches(task, n=1)[0]
    loss, _, log = criterion(model, sample)
    logits = model(**sample["net_input"])[0]
    expected = F.cross_entropy(logits.view(-1, logits.size(-1)), sample["target"].view(-1),
                               ignore_index=task.target_dictionary.pad(), reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log["nll_loss"], expected, rtol=1e-10, atol=1e-10)


def test_reduce_false_sums_to_reduce_true(labo):
    task, model, criterion = labo
    sample = batches(task, n=1)[0]
    net_output = model(**sample["net_input"])
    total, nll_total = criterion.compute_loss(model, net_output, sample, reduce=True)
    per_token, nll_per_token = criterion.compute_loss(model, net_output, sample, reduce=False)
    assert per_token.shape == sample["target"].shape
    pad = sample["target"].eq(task.target_dictionary.pad())
    assert pad.any() and per_token[pad].eq(0).all()
    torch.testing.assert_close(per_token.sum(), total, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nll_per_token.sum(), nll_total, rtol=1e-10, atol=1e-10)


def test_padded_batch_loss_is_sum_of_single_sentence_losses(labo):
    task, model, criterion = labo
    task.load_dataset("valid")  # not left to an earlier test: another xdist worker may have run it
    dataset = task.dataset("valid")
    ids = [0, 1, 2, 3]
    batch = dataset.collater([dataset[i] for i in ids])
    assert batch["target"].eq(task.target_dictionary.pad()).any(), "the batch should need padding"
    batch_loss, _, _ = criterion(model, batch)
    single = sum(criterion(model, dataset.collater([dataset[i]]))[0] for i in ids)
    torch.testing.assert_close(batch_loss, single, rtol=1e-9, atol=1e-9)


def test_ignore_prefix_size_drops_the_first_target_tokens(toy_data_bin):
    task, model, criterion = build(toy_data_bin, "--criterion", "label_smoothed_labo", "--ignore-prefix-size", "2")
    _, _, full = build(toy_data_bin, "--criterion", "label_smoothed_labo")
    sample = batches(task, n=1)[0]
    net_output = model(**sample["net_input"])
    per_token_full, _ = full.compute_loss(model, net_output, sample, reduce=False)
    loss, _ = criterion.compute_loss(model, net_output, sample, reduce=True)
    torch.testing.assert_close(loss, per_token_full[:, 2:].sum(), rtol=1e-10, atol=1e-10)


def test_report_accuracy_and_q_entropy_logging(toy_data_bin):
    task, model, criterion = build(toy_data_bin, "--criterion", "label_smoothed_labo", "--report-accuracy")
    sample = batches(task, n=1)[0]
    _, _, log = criterion(model, sample)
    logits = model(**sample["net_input"])[0]
    target = sample["target"]
    mask = target.ne(task.target_dictionary.pad())
    assert log["total"] == mask.sum().item() == log["q_entropy_tokens"]
    assert log["n_correct"] == (logits.argmax(-1).eq(target) & mask).sum().item()
    vocab = logits.size(-1)
    mean_entropy_nats = log["q_entropy"].item() / log["total"]
    assert 0 < mean_entropy_nats < math.log(vocab - 1)

    with metrics.aggregate() as agg:
        LabelSmoothedLaboCriterion.reduce_metrics([log, log])
    values = agg.get_smoothed_values()
    assert values["q_entropy"] == pytest.approx(mean_entropy_nats / math.log(2), abs=1e-3)
    assert values["accuracy"] == pytest.approx(100.0 * log["n_correct"] / log["total"], abs=1e-3)
    assert values["nll_loss"] == pytest.approx(log["nll_loss"].item() / log["ntokens"] / math.log(2), abs=1e-3)
    assert values["ppl"] == pytest.approx(2 ** values["nll_loss"], rel=1e-2)


def test_smoothing_stops_after_the_given_update(toy_data_bin):
    task, model, criterion = build(toy_data_bin, "--criterion", "label_smoothed_labo", "--smoothing-stop-update", "5")
    sample = batches(task, n=1)[0]
    losses = {}
    for num_updates in (4, 5):
        # what fairseq's trainer does in set_num_updates
        metrics.log_scalar("num_updates", num_updates, weight=0, priority=200)
        loss, _, log = criterion(model, sample)
        losses[num_updates] = (loss.item(), log["nll_loss"].item())
    metrics.log_scalar("num_updates", 0, weight=0, priority=200)
    assert losses[4][0] != pytest.approx(losses[4][1])
    assert losses[5][0] == pytest.approx(losses[5][1], rel=1e-12)


def test_bf16_model_trains_through_the_fused_path(toy_data_bin):
    task, model, criterion = build(toy_data_bin, "--criterion", "label_smoothed_labo")
    model = model.to(torch.bfloat16)
    sample = batches(task, n=1)[0]
    loss, _, log = criterion(model, sample)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grad = model.decoder.embed_tokens.weight.grad
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()
    model64 = build(toy_data_bin, "--criterion", "label_smoothed_labo")[1]
    loss64, _, _ = criterion(model64, sample)
    assert loss.item() == pytest.approx(loss64.item(), rel=3e-2)


def test_decoder_with_its_own_normalisation_takes_the_lprobs_path(toy_data_bin):
    task, model, criterion = build(toy_data_bin, "--criterion", "label_smoothed_labo")
    sample = batches(task, n=1)[0]
    fused_loss, _, _ = criterion(model, sample)

    class OwnNormalisation(type(model.decoder)):
        def get_normalized_probs(self, net_output, log_probs, sample=None):
            return super().get_normalized_probs(net_output, log_probs, sample)

    model.decoder.__class__ = OwnNormalisation
    assert loss_path(model) == "lprobs"
    loss, _, _ = criterion(model, sample)
    # fairseq's get_normalized_probs returns float32 log-probabilities even for a float64 model
    torch.testing.assert_close(loss, fused_loss, rtol=1e-5, atol=1e-5, check_dtype=False)


def test_adaptive_softmax_is_refused_with_a_clear_error(toy_data_bin):
    arch = [a for a in TINY_TRANSFORMER_ARGS if a != "--share-decoder-input-output-embed"]
    task, model, criterion = build(toy_data_bin, "--criterion", "label_smoothed_labo",
                                   "--adaptive-softmax-cutoff", "20,40", arch_args=arch)
    with pytest.raises(ValueError, match="does not support adaptive softmax"):
        criterion(model, batches(task, n=1)[0])


def test_compute_loss_has_fairseqs_signature_for_subclasses(labo):
    """Code written against label_smoothed_cross_entropy (e.g. fairseq's *_with_alignment
    criterion) calls compute_loss(model, net_output, sample, reduce) and compute_accuracy on the
    model's own output, and reads the logits afterwards: both work and agree with forward."""
    task, model, criterion = labo

    class WithExtraTerm(type(criterion)):
        def forward(self, model, sample, reduce=True):
            net_output = model(**sample["net_input"])
            loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            return loss, nll_loss, n_correct, total, net_output[0]

    sub = WithExtraTerm(task, sentence_avg=False, label_smoothing=0.1, labo_tau=1.25)
    sample = batches(task, n=1)[0]
    loss, nll_loss, n_correct, total, logits = sub(model, sample)
    fused_loss, _, log = criterion(model, sample)
    torch.testing.assert_close(loss, fused_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nll_loss, log["nll_loss"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits, model(**sample["net_input"])[0])  # not overwritten
    pad = sample["target"].eq(task.target_dictionary.pad())
    assert total.item() == (~pad).sum().item()
    assert n_correct.item() == (logits.argmax(-1).eq(sample["target"]) & ~pad).sum().item()
    features = model(**sample["net_input"], features_only=True)
    features[1]["labo_features_only"] = True
    assert [t.item() for t in criterion.compute_accuracy(model, features, sample)] == [n_correct.item(), total.item()]


@pytest.mark.parametrize("smoothing, accuracy", [("0.1", False), ("0.1", True), ("0", False), ("0", True)])
def test_statistics_cost_only_what_is_logged(toy_data_bin, monkeypatch, smoothing, accuracy):
    """q's entropy is computed while smoothing, the argmax only with --report-accuracy; the
    workspace flag reaches the fused op."""
    seen = []
    real = api.labo_linear_cross_entropy

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    import labo_fairseq.criterions.label_smoothed_labo as criterion_module
    monkeypatch.setattr(criterion_module, "labo_linear_cross_entropy", spy)
    flags = ["--criterion", "label_smoothed_labo", "--label-smoothing", smoothing, "--labo-workspace-mb", "3"]
    task, model, criterion = build(toy_data_bin, *flags, *(["--report-accuracy"] if accuracy else []))
    _, _, log = criterion(model, batches(task, n=1)[0])
    assert seen[0]["return_stats"] == (smoothing != "0" or accuracy)
    assert seen[0]["count_correct"] == accuracy and seen[0]["workspace_bytes"] == 3 << 20
    assert ("q_entropy" in log) == (smoothing != "0")
    assert ("n_correct" in log) == accuracy
    if accuracy:
        n_correct, total = criterion.compute_accuracy(model, model(**batches(task, n=1)[0]["net_input"]),
                                                      batches(task, n=1)[0])
        assert (log["n_correct"], log["total"]) == (n_correct.item(), total.item())
