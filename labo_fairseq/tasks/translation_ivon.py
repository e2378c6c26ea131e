"""fairseq task `translation_ivon`: translation whose training steps sample the weights for IVON.

fairseq's trainer calls `task.train_step` once per batch (per `--update-freq` micro-batch); this
task runs the forward and backward pass of each of the `--ivon-mc-samples` weight samples inside
`optimizer.sampled_params`, and averages the samples' logs. Everything else (data, flags,
validation, generation) is fairseq's `translation`, which sees the mean weights.
"""
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from fairseq import metrics, utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from labo_fairseq.fairseq_utils import ReducedPrecisionFlags, unwrap_model
from labo_fairseq.optim.ivon_optimizer import FairseqIVON, IvonFlagError, refuse_reduced_precision

logger = logging.getLogger(__name__)


@dataclass
class TranslationIvonConfig(TranslationConfig, ReducedPrecisionFlags):  # refused in load_dataset
    ivon_noise_interval: int = field(
        default=100,
        metadata={"help": "every N updates, log ivon_label_noise: on the update's first batch with dropout off, "
                          "the mean |p(gold) at a weight sample - p(gold) at the mean| over target tokens; "
                          "0 = never"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


def _ivon(optimizer) -> FairseqIVON:
    if not isinstance(optimizer, FairseqIVON):
        raise IvonFlagError(f"--task translation_ivon samples weights for --optimizer ivon, not {type(optimizer).__name__}")
    return optimizer


def _average_logs(logs):
    """One logging output for K samples of one batch: counts kept, losses and stats averaged."""
    if len(logs) == 1:
        return logs[0]
    out = {}
    for key, first in logs[0].items():
        values = [log[key] for log in logs]
        numeric = all(torch.is_tensor(v) or isinstance(v, (int, float)) for v in values)
        same = all(torch.equal(torch.as_tensor(v), torch.as_tensor(first)) for v in values[1:]) if numeric else True
        out[key] = first if same else sum(values) / len(values)
    return out


@register_task("translation_ivon", dataclass=TranslationIvonConfig)
class TranslationIvonTask(TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        if cfg.ivon_noise_interval < 0:
            raise IvonFlagError(f"--ivon-noise-interval must be >= 0, got {cfg.ivon_noise_interval}")
        super().__init__(cfg, src_dict, tgt_dict)
        self._ess_set = False
        self._last_noise = None

    def check_training_config(self, cfg):
        """The patched fairseq-train calls this before it builds the model or reads any data:
        another optimizer would fail at the first update (see `_ivon`), and so would reduced
        precision."""
        name = getattr(cfg.optimizer, "_name", None) if cfg.optimizer is not None else None
        if name != "ivon":
            raise IvonFlagError(f"--task translation_ivon samples weights for --optimizer ivon, not --optimizer {name}")
        refuse_reduced_precision(self.cfg, "--task translation_ivon")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if split == self.cfg.train_subset and combine:
            # the trainer loads its training data this way (generation with --fp16 stays allowed),
            # and before it builds the optimizer, which --fp16 on a CPU would not reach
            refuse_reduced_precision(self.cfg, "--task translation_ivon")
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def training_ess(self) -> float:
        """The default effective sample size: what fairseq's loss averages over, counted on the
        whole training set (target tokens, or sentences with --sentence-avg)."""
        dataset = self.datasets.get(self.cfg.train_subset)
        if dataset is None or getattr(dataset, "tgt_sizes", None) is None:
            raise IvonFlagError(f"--ivon-ess: no target side loaded for '{self.cfg.train_subset}'; pass --ivon-ess")
        return float(len(dataset)) if self.cfg.sentence_avg else float(dataset.tgt_sizes.sum())

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        ivon = _ivon(optimizer)
        if not ivon.ess_given and not self._ess_set:
            ivon.set_ess(self.training_ess())
            logger.info("IVON effective sample size: %d %s of '%s'", ivon.param_groups[0]["ess"],
                        "sentences" if self.cfg.sentence_avg else "target tokens", self.cfg.train_subset)
            self._ess_set = True
        model.train()
        model.set_num_updates(update_num)
        samples = ivon.mc_samples

        extra = {"ivon_sigma": ivon.mean_sigma(), "ivon_n": 1}
        interval = self.cfg.ivon_noise_interval
        # due every `interval` updates, and at once after a resume
        due = interval > 0 and (update_num % interval == 0 or self._last_noise is None)
        if due and not ivon.sampling_started:
            self._last_noise = self._label_noise(model, sample, ivon, update_num)
        if self._last_noise is not None:
            # every update carries the latest measurement: a meter that got no value in a log
            # interval would print as None
            extra.update(ivon_label_noise=self._last_noise, ivon_noise_n=1)

        # With K > 1 each sample's gradient contribution is read locally; the optimizer reduces
        # gradients across workers itself (all_reduce_grads) instead of DDP.
        no_sync = model.no_sync if samples > 1 and hasattr(model, "no_sync") else nullcontext
        losses, logs = [], []
        for k in range(samples):
            with no_sync(), ivon.sampled_params(update_num, k, train=True):
                with torch.autograd.profiler.record_function("forward"):
                    loss, sample_size, logging_output = criterion(model, sample)
                if ignore_grad:
                    loss *= 0
                with torch.autograd.profiler.record_function("backward"):
                    optimizer.backward(loss / samples if samples > 1 else loss)
            losses.append(loss.detach())
            logs.append(logging_output)
        logging_output = _average_logs(logs)
        logging_output.update(extra)
        return sum(losses) / samples, sample_size, logging_output

    @torch.no_grad()
    def _label_noise(self, model, sample, ivon, update_num):
        """Mean over target tokens and the update's weight samples of |p_k(y) - p(y)|, y the gold token."""
        module = unwrap_model(model)
        was_training = module.training
        module.eval()  # dropout off: only the weight noise moves the probabilities
        try:
            target = module.get_targets(sample, None)
            mask = target.ne(self.tgt_dict.pad())

            def gold_probs():
                net_output = module(**sample["net_input"])
                lprobs = module.get_normalized_probs(net_output, log_probs=True).float()
                return lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).exp()[mask]

            mean = gold_probs()
            noise = torch.zeros_like(mean)
            for k in range(ivon.mc_samples):
                with ivon.sampled_params(update_num, k, train=False):
                    noise += (gold_probs() - mean).abs()
        finally:
            module.train(was_training)
        return float(noise.sum()) / ivon.mc_samples / max(int(mask.sum()), 1)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        n = total("ivon_n")
        if n > 0:
            metrics.log_scalar("ivon_sigma", total("ivon_sigma") / n, round=6)
        n = total("ivon_noise_n")
        if n > 0:
            metrics.log_scalar("ivon_label_noise", total("ivon_label_noise") / n, round=5)
