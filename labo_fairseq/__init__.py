"""LABO label regularization for fairseq.

`labo_fairseq.functional` holds the loss (plain PyTorch, no fairseq import). When fairseq is
already imported, as it is when `fairseq-train --user-dir labo_fairseq` loads this package,
importing it also registers the criterion `label_smoothed_labo`, the optimizer `ivon` and the
task `translation_ivon`; data preparation and
evaluation commands import this package without paying for fairseq's start-up.

Importing it also silences two UserWarnings that fairseq 0.12.2 on a current torch prints in every
run and that mean nothing for its results (filters scoped to their exact message and module):
  - torch.utils.data: "'pin_memory' argument is set as true but no accelerator is found" (fairseq
    always asks for pinned memory; on a CPU-only machine torch ignores it)
  - torch.nn.functional: "Support for mismatched key_padding_mask and attn_mask is deprecated"
    (fairseq's attention passes a bool padding mask with a float causal mask; torch converts it)

`require_fairseq()` checks that the patched fairseq is installed (see labo_fairseq.install).
"""
import sys
import warnings

__version__ = "0.1.0"



def quiet_known_warnings() -> None:
    """Installs the two warning filters described above (done on import)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.utils\.data\.dataloader",
                            message=r"'pin_memory' argument is set as true but no accelerator is found")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.nn\.functional",
                            message=r"Support for mismatched key_padding_mask and attn_mask is deprecated")


quiet_known_warnings()


def require_fairseq() -> None:
    """Raises labo_fairseq.errors.UserError ("fairseq 0.12.2 (patched) is not installed ...: run
    labo-install-fairseq") unless this interpreter has the patched fairseq. Cheap: imports neither
    fairseq nor torch."""
    from labo_fairseq.install import require_fairseq as check
    check()


def register_with_fairseq() -> None:
    """Registers the criterion, the optimizer and the task with fairseq (importing it). Needed only
    in a Python process that imported this package before fairseq and then builds fairseq objects
    itself: fairseq's `--user-dir` does nothing for a package that is already imported."""
    from labo_fairseq import criterions, optim, tasks  # noqa: F401  (registration happens on import)


if "fairseq" in sys.modules:
    register_with_fairseq()
