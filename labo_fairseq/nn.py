"""`nn.Module` wrappers of the LABO ops, for PyTorch training loops outside fairseq.

Defaults follow `torch.nn.CrossEntropyLoss` (ignore_index=-100, reduction="mean"); the
smoothing weight is `label_smoothing` as there, and `tau` is LABO's temperature (inf gives
torch's label smoothing over the non-target classes, 0 smoothing gives cross-entropy)::

    loss_fn = LaboCrossEntropyLoss(label_smoothing=0.1, tau=1.25)
    loss = loss_fn(logits, target)                     # logits [..., V], target [...]

    loss_fn = LaboLinearCrossEntropyLoss(label_smoothing=0.1, tau=1.25)
    loss = loss_fn(hidden, head.weight, target, head.bias)   # never builds [tokens, V] logits
"""
from typing import Optional

import torch
from torch import nn

from labo_fairseq.functional import check_scalars, labo_cross_entropy, labo_linear_cross_entropy


class _LaboLossBase(nn.Module):
    def __init__(self, label_smoothing: float = 0.1, tau: float = 1.25, ignore_index: Optional[int] = -100,
                 reduction: str = "mean", chunk_size: Optional[int] = None, impl: str = "auto"):
        super().__init__()
        self.label_smoothing, self.tau = check_scalars(label_smoothing, tau, reduction, chunk_size)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.impl = impl

    def _options(self) -> dict:
        return dict(ignore_index=self.ignore_index, reduction=self.reduction, chunk_size=self.chunk_size,
                    impl=self.impl)

    def extra_repr(self) -> str:
        return (f"label_smoothing={self.label_smoothing:g}, tau={self.tau:g}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, impl={self.impl!r}")


class LaboCrossEntropyLoss(_LaboLossBase):
    """LABO loss on logits. `inplace_grad=True` lets it overwrite the logits with their
    gradient (see `labo_cross_entropy`): use it when nothing reads them after the loss."""

    def __init__(self, *args, inplace_grad: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.inplace_grad = inplace_grad

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss, _ = labo_cross_entropy(logits, target, self.label_smoothing, self.tau,
                                     inplace_grad=self.inplace_grad, **self._options())
        return loss


class LaboLinearCrossEntropyLoss(_LaboLossBase):
    """LABO loss of `hidden @ weight.T + bias`, fused with the projection."""

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        loss, _ = labo_linear_cross_entropy(hidden, weight, target, self.label_smoothing, self.tau, bias=bias,
                                            **self._options())
        return loss
