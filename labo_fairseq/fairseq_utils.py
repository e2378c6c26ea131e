"""Small helpers for the fairseq plugins (criterion, optimizer, task): the model inside fairseq's
wrappers and the trainer's update count. Imports fairseq."""
from fairseq import metrics
from fairseq.models import BaseFairseqModel


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
