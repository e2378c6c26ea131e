"""LABO label regularization for fairseq.

`labo_fairseq.functional` holds the loss (plain PyTorch, no fairseq import). When fairseq is
already imported, as it is when `fairseq-train --user-dir labo_fairseq` loads this package,
importing it also registers the criterion `label_smoothed_labo`, the optimizer `ivon` and the
task `translation_ivon`; data preparation and
evaluation commands import this package without paying for fairseq's start-up.
"""
import sys

__version__ = "0.1.0"


def register_with_fairseq() -> None:
    """Registers the criterion, the optimizer and the task with fairseq (importing it). Needed only
    in a Python process that imported this package before fairseq and then builds fairseq objects
    itself: fairseq's `--user-dir` does nothing for a package that is already imported."""
    from labo_fairseq import criterions, optim, tasks  # noqa: F401  (registration happens on import)


if "fairseq" in sys.modules:
    register_with_fairseq()
