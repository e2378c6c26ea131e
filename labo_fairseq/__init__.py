"""LABO label regularization for fairseq.

`labo_fairseq.functional` holds the loss (plain PyTorch, no fairseq import). Importing this
package also registers the fairseq criterion `label_smoothed_labo` when fairseq is installed,
which is what `fairseq-train --user-dir labo_fairseq` relies on.
"""
import importlib.util

__version__ = "0.1.0"

if importlib.util.find_spec("fairseq") is not None:
    from labo_fairseq import criterions  # noqa: F401  (registers the criterion)
