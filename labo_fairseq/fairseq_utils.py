"""Small helpers for the fairseq plugins (criterion, optimizer, task): the model inside fairseq's
wrappers, the trainer's update count, and fairseq's reduced-precision flags for a plugin's config.
Imports fairseq."""
from dataclasses import dataclass

from fairseq import metrics
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel
from omegaconf import II


@dataclass
class ReducedPrecisionFlags(FairseqDataclass):
    """fairseq's reduced-precision flags (--fp16, --bf16, --amp, ...) in a plugin's config, so that
    the plugin can refuse them (labo_fairseq.optim.ivon_optimizer.refuse_reduced_precision)."""
    fp16: bool = II("common.fp16")
    memory_efficient_fp16: bool = II("common.memory_efficient_fp16")
    bf16: bool = II("common.bf16")
    memory_efficient_bf16: bool = II("common.memory_efficient_bf16")
    amp: bool = II("common.amp")


def unwrap_model(model):
    """The FairseqModel inside fairseq's data-parallel wrappers (which forward attributes)."""
    while not isinstance(model, BaseFairseqModel) and hasattr(model, "module"):
        model = model.module
    return model


def trainer_num_updates() -> int:
    """Updates done so far. Criteria are not told the update number, but fairseq's trainer logs
    it into the always-present "default" metrics aggregator (also after --restore-file)."""
    meter = metrics.get_meter("default", "num_updates")
    return int(meter.val) if meter is not None and meter.val is not None else 0
