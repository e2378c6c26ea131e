"""fairseq criterion `label_smoothed_labo`: LABO label regularization, with optional TSLA.

A drop-in for fairseq's `label_smoothed_cross_entropy` (same flags, log keys and semantics)
whose smoothing distribution is LABO's instance-specific optimum instead of the uniform one:

    loss = (1 - α) · (-log p_y) + α · Σ_{j≠y} q_j · (-log p_j),   q = softmax_{j≠y}(log p / τ)

`--labo-tau inf` is exactly fairseq's label smoothing; `--label-smoothing 0` is cross-entropy.
The math lives in `labo_fairseq.functional`; this module only adapts it to fairseq's models.
"""
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, FairseqDecoder
from fairseq.models.transformer import TransformerDecoderBase, TransformerModelBase
from omegaconf import II

from labo_fairseq.errors import FlagError, check_at_least, report_flag_errors  # noqa: F401  (criterions/__init__ calls it)
from labo_fairseq.fairseq_utils import trainer_num_updates, unwrap_model
from labo_fairseq.functional import (IMPLS, TAU_MIN, LaboStats, labo_cross_entropy, labo_linear_cross_entropy,
                                     resolve_impl)


UNFUSED_HELP = ("compute full [tokens x vocab] logits instead of fusing the output projection into the loss "
                "(fusing is used whenever the decoder allows it)")


@dataclass
class LabelSmoothedLaboConfig(FairseqDataclass):
    label_smoothing: float = field(
        default=0.1,
        metadata={"help": "alpha: weight of the smoothing distribution, in [0, 1); 0 means plain cross-entropy"},
    )
    labo_tau: float = field(
        default=1.25,
        metadata={"help": "tau = beta / alpha: temperature of LABO's smoothing distribution over the "
                          f"non-target tokens, >= {TAU_MIN:g}; 'inf' makes it uniform (fairseq's label smoothing)"},
    )
    labo_chunk_size: Optional[int] = field(
        default=None,
        metadata={"help": "vocabulary chunk width of the streaming loss (default: automatic; the Triton "
                          "kernels cap it at their largest block, 32768)"},
    )
    labo_workspace_mb: int = field(
        default=256,
        metadata={"help": "memory (MiB) for one token chunk of logits in the fused loss (tokens per chunk = "
                          "this / (vocabulary x bytes per element)); on a GPU at most half the free memory"},
    )
    labo_impl: ChoiceEnum(IMPLS) = field(
        default="auto",
        metadata={"help": "implementation of the loss: 'triton' kernels (CUDA), 'torch' (streamed PyTorch "
                          "ops, any device) or 'auto' (Triton on CUDA when triton imports, else torch)"},
    )
    no_labo_fused: bool = field(default=False, metadata={"help": UNFUSED_HELP})
    smoothing_stop_update: int = field(
        default=0,
        metadata={"help": "TSLA (two-stage label smoothing): once this many updates are done, alpha = 0 "
                          "(plain NLL); 0 = smooth throughout"},
    )
    report_accuracy: bool = field(
        default=False,
        metadata={"help": "report accuracy metric"},
    )
    ignore_prefix_size: int = field(
        default=0,
        metadata={"help": "Ignore first N tokens"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


class LaboFlagError(FlagError):
    """An invalid criterion flag; fairseq-train reports it as one line (labo_fairseq.errors.report_flag_errors)."""


def _check_flags(label_smoothing, labo_tau, labo_chunk_size, smoothing_stop_update, ignore_prefix_size,
                 labo_impl="auto", labo_workspace_mb=256):
    """Fails at start-up, naming the flag, rather than at the first batch."""
    if str(labo_impl) not in IMPLS:
        raise LaboFlagError(f"--labo-impl must be one of {', '.join(IMPLS)}, got {labo_impl}")
    if str(labo_impl) == "triton":
        # the device the model will use is not known here: CUDA must at least exist
        try:
            resolve_impl("triton", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        except ValueError as exc:
            raise LaboFlagError(f"--labo-impl triton: {exc}") from None
    if not 0.0 <= label_smoothing < 1.0:
        raise LaboFlagError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
    if not labo_tau >= TAU_MIN:  # NaN fails this too
        raise LaboFlagError(f"--labo-tau must be >= {TAU_MIN:g} (or inf), got {labo_tau}")
    if labo_chunk_size is not None:
        check_at_least("--labo-chunk-size", labo_chunk_size, 1, LaboFlagError)
    check_at_least("--labo-workspace-mb", labo_workspace_mb, 1, LaboFlagError)
    check_at_least("--smoothing-stop-update", smoothing_stop_update, 0, LaboFlagError)
    check_at_least("--ignore-prefix-size", ignore_prefix_size, 0, LaboFlagError)


def base_logging_output(sample, loss, nll_loss, sentence_avg: bool):
    """(sample_size, fairseq's logging keys) of a label-smoothed criterion's forward."""
    sample_size = sample["target"].size(0) if sentence_avg else sample["ntokens"]
    return sample_size, {"loss": loss.data, "nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
                         "nsentences": sample["target"].size(0), "sample_size": sample_size}


# set in the decoder's `extra` dict when the criterion asked the model for features
FEATURES_KEY = "labo_features_only"


# Model-level get_normalized_probs that only hand over to the decoder's plain log_softmax
# (TransformerModelBase re-declares it for TorchScript).
_PLAIN_MODEL_NORMALISATION = (
    BaseFairseqModel.get_normalized_probs,
    TransformerModelBase.get_normalized_probs,
)


def _overrides(obj, base, name):
    return getattr(type(obj), name) is not getattr(base, name)


def loss_path(model) -> str:
    """How the criterion reaches the loss for this model: "fused", "logits" or "lprobs".

    - fused: a fairseq TransformerDecoder with a plain linear output projection; the decoder
      returns features and `labo_linear_cross_entropy` never materialises [tokens x V] logits.
    - logits: decoders whose normalisation is fairseq's plain log_softmax of `net_output[0]`.
    - lprobs: anything else that defines its own `get_normalized_probs`; log_softmax is
      idempotent on log-probabilities, so the loss over them is still exact.
    """
    model = unwrap_model(model)
    decoder = getattr(model, "decoder", None)
    if getattr(decoder, "adaptive_softmax", None) is not None:
        raise LaboFlagError(
            "label_smoothed_labo does not support adaptive softmax (--adaptive-softmax-cutoff): "
            "LABO's smoothing needs log-probabilities over the whole vocabulary"
        )
    plain_normalisation = (
        isinstance(decoder, FairseqDecoder)
        and type(model).get_normalized_probs in _PLAIN_MODEL_NORMALISATION
        and not _overrides(model, BaseFairseqModel, "get_normalized_probs_scriptable")
        and not _overrides(decoder, FairseqDecoder, "get_normalized_probs")
        and not _overrides(decoder, FairseqDecoder, "get_normalized_probs_scriptable")
    )
    if not plain_normalisation:
        return "lprobs"
    if (
        isinstance(decoder, TransformerDecoderBase)
        and not _overrides(decoder, TransformerDecoderBase, "output_layer")
        and type(decoder.output_projection) is torch.nn.Linear
    ):
        return "fused"
    return "logits"


@register_criterion("label_smoothed_labo", dataclass=LabelSmoothedLaboConfig)
class LabelSmoothedLaboCriterion(FairseqCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing=0.1,
        labo_tau=1.25,
        labo_chunk_size=None,
        labo_workspace_mb=256,
        labo_impl="auto",
        no_labo_fused=False,
        smoothing_stop_update=0,
        ignore_prefix_size=0,
        report_accuracy=False,
    ):
        super().__init__(task)
        labo_tau = float(labo_tau)
        _check_flags(label_smoothing, labo_tau, labo_chunk_size, smoothing_stop_update, ignore_prefix_size,
                     labo_impl, labo_workspace_mb)
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.tau = labo_tau
        self.chunk_size = labo_chunk_size
        self.workspace_bytes = labo_workspace_mb << 20
        self.impl = str(labo_impl)
        self.fused = not no_labo_fused
        self.smoothing_stop_update = smoothing_stop_update
        self.ignore_prefix_size = ignore_prefix_size
        self.report_accuracy = report_accuracy

    def check_model(self, model) -> None:
        """Refuses a model this criterion cannot train (adaptive softmax). The patched fairseq-train
        calls it right after building the model and the criterion, before reading any data;
        elsewhere the first forward makes the same check."""
        loss_path(model)

    def current_alpha(self) -> float:
        if self.smoothing_stop_update > 0 and trainer_num_updates() >= self.smoothing_stop_update:
            return 0.0
        return self.eps

    def forward(self, model, sample, reduce=True):
        """Compute the loss for the given sample.

        Returns a tuple with three elements:
        1) the loss
        2) the sample size, which is used as the denominator for the gradient
        3) logging outputs to display while training
        """
        path = self._path(model)
        if path == "fused":
            net_output = model(**sample["net_input"], features_only=True)
            net_output[1][FEATURES_KEY] = True  # compute_loss gets features, not logits
        else:
            net_output = model(**sample["net_input"])
        # nothing reads the logits after the loss here, so their storage may take their gradient
        loss, nll_loss, stats = self.compute_loss_and_stats(model, net_output, sample, reduce,
                                                            inplace_grad=path == "logits")
        sample_size, logging_output = base_logging_output(sample, loss, nll_loss, self.sentence_avg)
        if stats.q_entropy is not None:  # logged while smoothing (alpha > 0)
            logging_output["q_entropy"] = stats.q_entropy.data
            logging_output["q_entropy_tokens"] = stats.n_tokens.data
        if self.report_accuracy:
            logging_output["n_correct"] = utils.item(stats.n_correct.data)
            logging_output["total"] = utils.item(stats.n_tokens.data)
        return loss, sample_size, logging_output

    def _path(self, model) -> str:
        path = loss_path(model)
        return "logits" if path == "fused" and not self.fused else path

    def _inputs_and_target(self, model, net_output, sample):
        """What the op takes: (features | logits | log-probabilities, target, path)."""
        if isinstance(net_output[1], dict) and net_output[1].get(FEATURES_KEY):
            path, inputs = "fused", net_output[0]  # features: [batch, tgt_len, embed_dim]
        elif loss_path(model) == "lprobs":
            path, inputs = "lprobs", model.get_normalized_probs(net_output, log_probs=True)
        else:
            path, inputs = "logits", net_output[0]
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            inputs = inputs[:, self.ignore_prefix_size :, :]
            target = target[:, self.ignore_prefix_size :]
        return inputs, target, path

    def compute_loss_and_stats(self, model, net_output, sample, reduce=True, inplace_grad=False):
        """(loss, nll_loss, LaboStats); `reduce=False` gives per-token losses (0 at padding).

        The statistics cost only what is logged: q's entropy while smoothing (alpha > 0), the
        argmax only with --report-accuracy; what is not computed is None (LaboStats' q_entropy
        and n_correct). `inplace_grad` lets the op overwrite logits with their gradient (only
        when nothing reads them afterwards; never log-probabilities, which log_softmax's
        backward needs)."""
        inputs, target, path = self._inputs_and_target(model, net_output, sample)
        alpha = self.current_alpha()
        want_stats = alpha > 0.0 or self.report_accuracy
        options = dict(
            ignore_index=self.padding_idx,
            reduction="sum" if reduce else "none",
            chunk_size=self.chunk_size,
            return_stats=want_stats,
            count_correct=self.report_accuracy,
            impl=self.impl,
        )
        if path == "fused":
            projection = unwrap_model(model).decoder.output_projection
            out = labo_linear_cross_entropy(inputs, projection.weight, target, alpha, self.tau, bias=projection.bias,
                                            workspace_bytes=self.workspace_bytes, **options)
        else:
            out = labo_cross_entropy(inputs, target, alpha, self.tau,
                                     inplace_grad=inplace_grad and path == "logits", **options)
        if not want_stats:
            loss, nll_loss = out
            return loss, nll_loss, LaboStats(None, None, None)
        loss, nll_loss, stats = out
        return loss, nll_loss, stats._replace(q_entropy=stats.q_entropy if alpha > 0.0 else None)

    def compute_loss(self, model, net_output, sample, reduce=True):
        """(loss, nll_loss) for net_output = model(**sample["net_input"]), as in fairseq's
        label_smoothed_cross_entropy, so that code written against it can use this criterion."""
        loss, nll_loss, _ = self.compute_loss_and_stats(model, net_output, sample, reduce)
        return loss, nll_loss

    def compute_accuracy(self, model, net_output, sample):
        """(n_correct, total) over non-padding target tokens, as in fairseq's criterion."""
        inputs, target, path = self._inputs_and_target(model, net_output, sample)
        if path == "fused":
            inputs = unwrap_model(model).decoder.output_layer(inputs)
        mask = target.ne(self.padding_idx)
        n_correct = inputs.argmax(-1).eq(target).masked_select(mask).sum()
        return n_correct, mask.sum()

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs from data parallel training: fairseq's label smoothing's
        (loss and nll_loss in bits, ppl, accuracy with --report-accuracy), plus q_entropy."""
        LabelSmoothedCrossEntropyCriterion.reduce_metrics(logging_outputs)
        # LABO diagnostic: mean entropy (bits) of the smoothing distribution q per target token.
        # log2(V - 1) means uniform smoothing; lower means q concentrates on a few plausible tokens.
        q_tokens = utils.item(sum(log.get("q_entropy_tokens", 0) for log in logging_outputs))
        if q_tokens > 0:
            q_entropy_sum = utils.item(sum(log.get("q_entropy", 0) for log in logging_outputs))
            metrics.log_scalar("q_entropy", q_entropy_sum / q_tokens / math.log(2), q_tokens, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        """Every logging output is a sum, so workers' outputs can be summed before reduce_metrics."""
        return True
