"""fairseq task `translation_sam`: translation trained with Sharpness-Aware Minimization.

fairseq's trainer calls `task.train_step` once per batch (per `--update-freq` micro-batch); this
task runs SAM's two forward/backward passes there (`labo_fairseq.sam.two_pass_step`), so any
optimizer and any criterion work unchanged: the optimizer steps from the original weights with
the gradient taken at the perturbed ones. Each update costs two forward and backward passes.

- The ascent uses each batch's own gradient: with `--update-freq N` every micro-batch, and with
  data parallelism every worker, perturbs from its local gradient (SAM's "m-sharpness" with m =
  the batch; the first pass runs under DDP's no_sync). The second pass's gradients are
  accumulated and all-reduced as usual, so W workers equal one worker with --update-freq W.
- The logged loss is the loss at the weights themselves (first pass); `sam_sharpness` is the
  mean increase of the loss at the perturbed weights (bits per token, like the loss).
- A criterion with statistics gathered from its forwards (label_smoothed_ols) gathers them in the
  first pass only.
- Reduced precision (--fp16, --amp, --bf16...) is refused: the loss scale would have to be taken
  out of the ascent gradient and its overflow skipped; training runs in fp32.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass, field

from fairseq import metrics, utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from labo_fairseq.errors import FlagError
from labo_fairseq.fairseq_utils import ReducedPrecisionFlags
from labo_fairseq.optim.ivon_optimizer import refuse_reduced_precision
from labo_fairseq.sam import two_pass_step


class SamFlagError(FlagError):
    """An invalid SAM flag; fairseq-train prints it as one line."""


@dataclass
class TranslationSamConfig(TranslationConfig, ReducedPrecisionFlags):
    sam_rho: float = field(
        default=0.05,
        metadata={"help": "radius of the ascent step, > 0 (with --sam-adaptive the radius in the |w|-scaled "
                          "space; ASAM's paper uses larger values, e.g. 0.5-2)"},
    )
    sam_adaptive: bool = field(
        default=False,
        metadata={"help": "ASAM: scale the ascent step element-wise by |w| (scale-invariant sharpness)"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


@register_task("translation_sam", dataclass=TranslationSamConfig)
class TranslationSamTask(TranslationTask):
    def __init__(self, cfg, src_dict, tgt_dict):
        if not cfg.sam_rho > 0 or math.isinf(cfg.sam_rho):
            raise SamFlagError(f"--sam-rho must be > 0 and finite, got {cfg.sam_rho}")
        super().__init__(cfg, src_dict, tgt_dict)

    def check_training_config(self, cfg):
        """Called by the patched fairseq-train before the model is built or data read."""
        refuse_reduced_precision(self.cfg, "--task translation_sam")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if split == self.cfg.train_subset and combine:  # how the trainer loads training data
            refuse_reduced_precision(self.cfg, "--task translation_sam")
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if ignore_grad:  # a dummy batch (a worker out of data): no gradient, nothing to perturb
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad=True)
        model.train()
        model.set_num_updates(update_num)

        def one_pass():
            loss, sample_size, logging_output = criterion(model, sample)
            optimizer.backward(loss)
            return loss.detach(), sample_size, logging_output

        # (fairseq's wrapper of a data-parallel criterion forwards the attribute)
        frozen = getattr(criterion, "frozen_statistics", None) or nullcontext

        def second_pass():
            with frozen():
                return one_pass()

        (loss, sample_size, logging_output), (perturbed_loss, _, _) = two_pass_step(
            list(optimizer.params), one_pass, second_pass, self.cfg.sam_rho, self.cfg.sam_adaptive,
            first_pass_context=getattr(model, "no_sync", nullcontext))
        logging_output = dict(logging_output)
        logging_output["sam_loss_increase"] = (perturbed_loss - loss).item()
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        increase = utils.item(sum(log.get("sam_loss_increase", 0) for log in logging_outputs))
        sample_size = utils.item(sum(log.get("sample_size", 0) for log in logging_outputs))
        if any("sam_loss_increase" in log for log in logging_outputs) and sample_size > 0:
            metrics.log_scalar("sam_sharpness", increase / sample_size / math.log(2), sample_size, round=4)
