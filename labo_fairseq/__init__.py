"""LABO label regularization for fairseq.

`labo_fairseq.functional` holds the loss (plain PyTorch, no fairseq import). When fairseq is
already imported, as it is when `fairseq-train --user-dir labo_fairseq` loads this package,
importing it also registers the criterion `label_smoothed_labo`, the optimizer `ivon` and the
task `translation_ivon`; data preparation and
evaluation commands import this package without paying for fairseq's start-up.
"""
import sys

__version__ = "0.1.0"

if "fairseq" in sys.modules:
    from labo_fairseq import criterions  # noqa: F401  (registers the criterion)
    from labo_fairseq import optim, tasks  # noqa: F401  (register the IVON optimizer and task)
