"""The LABO loss as a Hugging Face `Trainer(compute_loss_func=...)` callable.

`LaboLoss(outputs, labels, num_items_in_batch=None)` reads `outputs.logits` [batch, len, V] and
the labels (-100 = ignored), and returns what the model's own loss returns: the sum over the
non-ignored tokens divided by their number in this batch, or by `num_items_in_batch` when the
Trainer gives it (the count over all micro-batches of a gradient-accumulation step, so the
accumulated gradient is that of one large batch).

Two-stage label smoothing (`tsla_stop`): once `tsla_stop` optimizer updates are done, alpha = 0
(fairseq's --smoothing-stop-update: the update that starts with `tsla_stop` updates done is
plain NLL). The callable is not told the update count, so `LaboLoss.callback` (a TrainerCallback)
copies `TrainerState.global_step` into `num_updates` at the start of every update;
`LaboSeq2SeqTrainer` installs it, a plain Trainer needs `callbacks=[loss.callback]`, a hand-written
loop sets `loss.num_updates` itself.
"""
import math
from typing import Optional

import torch
from transformers import TrainerCallback

from labo_fairseq.functional import IMPLS, TAU_MIN, labo_cross_entropy

IGNORE_INDEX = -100  # what Transformers' collators and losses use for padding labels
Q_ENTROPY_KEY = "q_entropy"


def alpha_from_label_smoothing_factor(epsilon: float, vocab_size: int) -> float:
    """The alpha for which LABO with tau = inf is `label_smoothing_factor=epsilon`.

    Transformers' label smoothing spreads epsilon over all V classes (epsilon/V lands on the gold
    token too); LABO's tau = inf spreads alpha over the V-1 others. They agree when
    1 - alpha = 1 - epsilon + epsilon/V, i.e. alpha = epsilon * (V - 1) / V."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label_smoothing_factor must be in [0, 1), got {epsilon}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return epsilon * (vocab_size - 1) / vocab_size


def check_labo_arguments(alpha, tau, impl, tsla_stop) -> float:
    """Refuses bad settings before training starts, naming the argument; returns tau as a float."""
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha < 1.0):
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a number >= {TAU_MIN:g} or inf, got {tau!r}") from None
    if not tau >= TAU_MIN:  # NaN fails this too
        raise ValueError(f"tau must be >= {TAU_MIN:g} or inf, got {tau!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if tsla_stop is not None and (isinstance(tsla_stop, bool) or not isinstance(tsla_stop, int) or tsla_stop < 1):
        raise ValueError(f"tsla_stop must be a positive number of updates or None, got {tsla_stop!r}")
    return tau


class LaboLoss:
    """LABO loss for `Trainer(compute_loss_func=...)`; see the module docstring.

    `log_q_entropy=True` sums the entropy of LABO's smoothing distribution q over the training
    tokens (computed in the same pass); `callback` logs its mean since the previous log as
    `q_entropy` (nats) beside the Trainer's `loss`.
    """

    def __init__(self, alpha: float, tau: float, *, impl: str = "auto", ignore_index: int = IGNORE_INDEX,
                 tsla_stop: Optional[int] = None, log_q_entropy: bool = False):
        self.tau = check_labo_arguments(alpha, tau, impl, tsla_stop)
        self.alpha = float(alpha)
        self.impl = impl
        self.ignore_index = ignore_index
        self.tsla_stop = tsla_stop
        self.log_q_entropy = log_q_entropy
        self.num_updates: Optional[int] = None  # set by `callback` (or by hand)
        self._q_entropy_sum = 0.0
        self._q_entropy_tokens = 0
        self.callback = LaboCallback(self)

    def current_alpha(self) -> float:
        if self.tsla_stop is None:
            return self.alpha
        if self.num_updates is None:
            raise ValueError("LaboLoss(tsla_stop=...) needs the update count: pass callbacks=[loss.callback] to "
                             "the Trainer (LaboSeq2SeqTrainer does it) or set loss.num_updates")
        return 0.0 if self.num_updates >= self.tsla_stop else self.alpha

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        if labels is None:
            raise ValueError("LaboLoss needs the labels; the batch has none")
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return self.reduce(lambda **options: labo_cross_entropy(logits, labels, **options), labels,
                           num_items_in_batch)

    def reduce(self, op, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """Runs `op(**options)` (labo_cross_entropy or labo_linear_cross_entropy with everything
        but the options bound), records q's entropy and divides the summed loss like the model's
        own loss does."""
        alpha = self.current_alpha()
        want_stats = self.log_q_entropy and alpha > 0.0 and torch.is_grad_enabled()  # training only
        out = op(alpha=alpha, tau=self.tau, ignore_index=self.ignore_index, reduction="sum",
                 return_stats=want_stats, impl=self.impl)
        loss = out[0]
        if want_stats and out[2].q_entropy is not None:
            # kept as tensors: no device synchronisation until the value is logged
            self._q_entropy_sum = self._q_entropy_sum + out[2].q_entropy.detach()
            self._q_entropy_tokens = self._q_entropy_tokens + out[2].n_tokens.detach()
        if num_items_in_batch is None:
            denominator = labels.ne(self.ignore_index).sum().clamp(min=1)
        elif torch.is_tensor(num_items_in_batch):
            denominator = num_items_in_batch.to(loss.device)
        else:
            denominator = num_items_in_batch
        return loss / denominator

    def pop_q_entropy(self) -> Optional[float]:
        """Mean q entropy (nats) over the training tokens since the last call; None if none."""
        tokens = int(self._q_entropy_tokens)
        mean = float(self._q_entropy_sum) / tokens if tokens else None
        self._q_entropy_sum, self._q_entropy_tokens = 0.0, 0
        if mean is None:
            return None
        return mean if math.isfinite(mean) else None


class LaboCallback(TrainerCallback):
    """Gives `LaboLoss` the update count (for tsla_stop) and adds `q_entropy` to training logs.

    The Trainer stores a copy of each log in `state.log_history` before the callbacks see it, so
    the value goes into that entry and into the `logs` the callbacks after this one receive
    (LaboSeq2SeqTrainer puts it first, so the printer and reporters show it)."""

    def __init__(self, loss: LaboLoss):
        self.loss = loss

    def on_train_begin(self, args, state, control, **kwargs):
        self.loss.num_updates = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        self.loss.num_updates = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or not self.loss.log_q_entropy:
            return
        q_entropy = self.loss.pop_q_entropy()
        if q_entropy is None:
            return
        logs[Q_ENTROPY_KEY] = q_entropy
        if state.log_history and state.log_history[-1].get("step") == state.global_step \
                and "loss" in state.log_history[-1]:
            state.log_history[-1][Q_ENTROPY_KEY] = q_entropy


def labo_loss(alpha: float, tau: float, *, impl: str = "auto", ignore_index: int = IGNORE_INDEX,
              tsla_stop: Optional[int] = None, log_q_entropy: bool = False) -> LaboLoss:
    """`Seq2SeqTrainer(..., compute_loss_func=labo_loss(0.1, 1.25))`; see `LaboLoss`."""
    return LaboLoss(alpha, tau, impl=impl, ignore_index=ignore_index, tsla_stop=tsla_stop,
                    log_q_entropy=log_q_entropy)
