"""fairseq criterion `label_smoothed_ols`: Online Label Smoothing (Zhang et al., 2021).

    loss = (1 - w) * (-log p_gold) + w * sum_j S[gold, j] * (-log p_j)

S holds, per gold type, the mean distribution the model predicted for that type's correctly
predicted training tokens in the previous epoch; it starts as fairseq's label smoothing with
epsilon = --label-smoothing. The math, the top-K variant and its error bound are in
`labo_fairseq.online_label_smoothing`; this module adapts them to fairseq:

- Epochs: fairseq tells tasks, not criteria, when an epoch begins; the criterion follows its
  task's `begin_epoch` (whatever the task) and rebuilds S there, after summing the data-parallel
  workers' accumulators.
- Checkpoints: fairseq's trainer saves and restores a criterion's state_dict only when the
  criterion has parameters; the OLS state is kept in buffers beside an empty, non-trainable
  parameter, so checkpoints carry S, its accumulator and the epoch counter, and a run resumed
  mid-epoch continues with the same S and accumulator.
- Data parallelism: workers accumulate locally and sum when the next epoch begins. Only rank 0
  writes checkpoints, so a data-parallel run resumed mid-epoch (or from the checkpoint written at
  an epoch's end) continues that epoch with rank 0's share of its statistics (the other ranks'
  share is lost; nothing is counted twice). Single-process runs resume exactly.
- torch's DistributedDataParallel refuses to wrap a module without trainable
  parameters, which fairseq does with a criterion that has parameters; with more than one
  worker this criterion therefore needs `--ddp-backend legacy_ddp` (checked at start-up).
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.distributed import utils as distributed_utils
from omegaconf import II

from labo_fairseq.criterions.label_smoothed_labo import (FEATURES_KEY, UNFUSED_HELP, LaboFlagError, base_logging_output,
                                                          loss_path)
from labo_fairseq.errors import check_at_least
from labo_fairseq.fairseq_utils import unwrap_model
from labo_fairseq.online_label_smoothing import (DENSE_MAX_VOCAB, DEFAULT_TOPK, OnlineLabelSmoothing,
                                                 merge_worker_tables, ols_cross_entropy)


class OlsFlagError(LaboFlagError):
    """An invalid OLS flag; fairseq-train prints it as one line."""


@dataclass
class LabelSmoothedOlsConfig(FairseqDataclass):
    label_smoothing: float = field(
        default=0.1,
        metadata={"help": "epsilon of the initial S (fairseq's label smoothing), used in the first epoch and "
                          "for types never predicted correctly, in [0, 1)"},
    )
    ols_weight: float = field(
        default=0.5,
        metadata={"help": "w: weight of the soft term CE(S[gold], p) against the one-hot term, in [0, 1]"},
    )
    ols_topk: Optional[int] = field(
        default=None,
        metadata={"help": f"keep K entries per row of S (and 2K per accumulator row), spreading the rest "
                          f"uniformly; 0 = dense V x V; default: dense up to {DENSE_MAX_VOCAB} types, "
                          f"else K = {DEFAULT_TOPK}"},
    )
    ols_workspace_mb: int = field(
        default=256,
        metadata={"help": "memory (MiB) for one token chunk of logits, probabilities and soft targets "
                          "(tokens per chunk = this / (12 x vocabulary))"},
    )
    no_ols_fused: bool = field(default=False, metadata={"help": UNFUSED_HELP})
    report_accuracy: bool = field(default=False, metadata={"help": "report accuracy metric"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "Ignore first N tokens"})
    sentence_avg: bool = II("optimization.sentence_avg")
    ddp_backend: str = II("distributed_training.ddp_backend")
    distributed_world_size: int = II("distributed_training.distributed_world_size")


def _check_flags(label_smoothing, ols_weight, ols_topk, ols_workspace_mb, ignore_prefix_size,
                 ddp_backend="legacy_ddp", distributed_world_size=1):
    if not 0.0 <= label_smoothing < 1.0:
        raise OlsFlagError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
    if not 0.0 <= ols_weight <= 1.0:  # NaN fails this too
        raise OlsFlagError(f"--ols-weight must be in [0, 1], got {ols_weight}")
    if ols_topk is not None:
        check_at_least("--ols-topk", ols_topk, 0, OlsFlagError, note=" (0 = dense)")
    check_at_least("--ols-workspace-mb", ols_workspace_mb, 1, OlsFlagError)
    check_at_least("--ignore-prefix-size", ignore_prefix_size, 0, OlsFlagError)
    if (distributed_world_size or 1) > 1 and str(ddp_backend) not in ("legacy_ddp", "no_c10d"):
        raise OlsFlagError(f"--criterion label_smoothed_ols with {distributed_world_size} data-parallel workers "
                           f"needs --ddp-backend legacy_ddp, got --ddp-backend {ddp_backend}")


def resolve_topk(ols_topk: Optional[int], vocab: int) -> Optional[int]:
    """None (dense) or K, from the flag and the vocabulary size."""
    if ols_topk is None:
        return None if vocab <= DENSE_MAX_VOCAB else DEFAULT_TOPK
    return None if ols_topk == 0 else ols_topk


@register_criterion("label_smoothed_ols", dataclass=LabelSmoothedOlsConfig)
class LabelSmoothedOlsCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg, label_smoothing=0.1, ols_weight=0.5, ols_topk=None,
                 ols_workspace_mb=256, no_ols_fused=False, report_accuracy=False, ignore_prefix_size=0,
                 ddp_backend="legacy_ddp", distributed_world_size=1):
        super().__init__(task)
        _check_flags(label_smoothing, ols_weight, ols_topk, ols_workspace_mb, ignore_prefix_size,
                     ddp_backend, distributed_world_size)
        self.sentence_avg = sentence_avg
        self.workspace_bytes = ols_workspace_mb << 20
        self.fused = not no_ols_fused
        self.report_accuracy = report_accuracy
        self.ignore_prefix_size = ignore_prefix_size
        vocab = len(task.target_dictionary)
        self.ols = OnlineLabelSmoothing(vocab, label_smoothing, ols_weight, resolve_topk(ols_topk, vocab),
                                        ignore_index=self.padding_idx)
        # fairseq saves a criterion's state_dict only when it has a parameter (see the module doc)
        self.checkpointed = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
        self._follow_epochs(task)

    def _follow_epochs(self, task) -> None:
        task_begin_epoch = task.begin_epoch

        def begin_epoch(epoch, model):
            task_begin_epoch(epoch, model)
            self.begin_epoch(epoch)

        task.begin_epoch = begin_epoch

    def begin_epoch(self, epoch: int) -> bool:
        """Rebuilds S when `epoch` is a new one (after summing the workers' statistics)."""
        return self.ols.begin_epoch(epoch, sum_workers=self._sum_workers)

    def _sum_workers(self, local: dict) -> dict:
        group = _data_parallel()
        if group is None:
            return local
        if self.ols.dense:
            for tensor in local.values():
                distributed_utils.all_reduce(tensor, group=group)
            return local
        world = distributed_utils.get_world_size(group)
        gathered = []
        for rank_tables in zip(*(_all_gather(t, group, world) for t in local.values())):
            gathered.append(dict(zip(local.keys(), rank_tables)))
        return merge_worker_tables(gathered, self.ols.vocab)

    def load_state_dict(self, state_dict, strict=True):
        if state_dict is None:  # a checkpoint of another criterion (e.g. --restore-file for fine-tuning)
            return
        super().load_state_dict(state_dict, strict=strict)
        if _data_parallel() is not None and distributed_utils.get_data_parallel_rank() > 0:
            # the checkpoint holds rank 0's share of the epoch's statistics: counted once
            self.ols.clear_accumulator()

    def check_model(self, model) -> None:
        """Refuses adaptive softmax before any data is read (called by the patched fairseq-train)."""
        if getattr(getattr(unwrap_model(model), "decoder", None), "adaptive_softmax", None) is not None:
            raise OlsFlagError("label_smoothed_ols does not support adaptive softmax (--adaptive-softmax-cutoff): "
                               "S needs probabilities over the whole vocabulary")

    def _path(self, model) -> str:
        self.check_model(model)
        path = loss_path(model)
        return "logits" if path == "fused" and not self.fused else path

    def forward(self, model, sample, reduce=True):
        path = self._path(model)
        if path == "fused" and reduce:
            net_output = model(**sample["net_input"], features_only=True)
            net_output[1][FEATURES_KEY] = True
        else:
            net_output = model(**sample["net_input"])
        loss, nll_loss, n_correct, n_tokens, entropy = self._loss(model, net_output, sample, reduce)
        sample_size, logging_output = base_logging_output(sample, loss, nll_loss, self.sentence_avg)
        logging_output.update(ols_row_entropy=entropy.data, ols_correct=n_correct.data, ols_tokens=n_tokens.data)
        if self.report_accuracy:
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(n_tokens.data)
        return loss, sample_size, logging_output

    def _loss(self, model, net_output, sample, reduce=True):
        target = model.get_targets(sample, net_output)
        features = isinstance(net_output[1], dict) and net_output[1].get(FEATURES_KEY)
        if features:
            inputs = net_output[0]
        elif loss_path(model) == "lprobs":  # log_softmax is idempotent: log-probabilities are logits
            inputs = model.get_normalized_probs(net_output, log_probs=True)
        else:
            inputs = net_output[0]
        if self.ignore_prefix_size > 0:
            inputs = inputs[:, self.ignore_prefix_size:, :]
            target = target[:, self.ignore_prefix_size:]
        # the statistics come from training forwards only (not validation, not a no-grad pass)
        accumulate = self.training and torch.is_grad_enabled() and not getattr(self, "_frozen", False)
        options = dict(reduction="sum" if reduce else "none", workspace_bytes=self.workspace_bytes,
                       accumulate=accumulate)
        if features:
            projection = unwrap_model(model).decoder.output_projection
            return ols_cross_entropy(self.ols, target, hidden=inputs, weight=projection.weight,
                                     bias=projection.bias, **options)
        return ols_cross_entropy(self.ols, target, logits=inputs, **options)

    def compute_loss(self, model, net_output, sample, reduce=True):
        """(loss, nll_loss), as fairseq's label_smoothed_cross_entropy."""
        loss, nll_loss, *_ = self._loss(model, net_output, sample, reduce)
        return loss, nll_loss

    @contextmanager
    def frozen_statistics(self):
        """Forwards inside do not add to S's accumulator (e.g. SAM's second, perturbed pass)."""
        self._frozen = True
        try:
            yield
        finally:
            self._frozen = False

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        loss_sum, nll_loss_sum = total("loss"), total("nll_loss")
        ntokens, sample_size = total("ntokens"), total("sample_size")
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", nll_loss_sum / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        # mean entropy (bits) of the rows S[gold] the tokens were trained against, and the
        # fraction of tokens predicted correctly (those feed the next epoch's S)
        tokens = total("ols_tokens")
        if tokens > 0:
            metrics.log_scalar("ols_row_entropy", total("ols_row_entropy") / tokens / math.log(2), tokens, round=3)
            metrics.log_scalar("ols_correct", total("ols_correct") / tokens, tokens, round=4)
        n = total("total")
        if n > 0:
            metrics.log_scalar("total", n)
            metrics.log_scalar("n_correct", total("n_correct"))
            metrics.log_derived(
                "accuracy",
                lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3)
                if meters["total"].sum > 0 else float("nan"),
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _data_parallel():
    """fairseq's data-parallel process group when there is more than one worker, else None."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    group = distributed_utils.get_data_parallel_group()
    return group if distributed_utils.get_world_size(group) > 1 else None


def _all_gather(tensor, group, world):
    out = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(out, tensor.contiguous(), group=group)
    return out
