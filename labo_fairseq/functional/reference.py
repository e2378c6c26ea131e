"""Dense reference of the LABO loss (the test oracle; O(N * V) memory, not for training)."""
import math
from typing import Optional

import torch


def labo_cross_entropy_reference(logits: torch.Tensor, target: torch.Tensor, alpha: float, tau: float,
                                 ignore_index: Optional[int] = None, reduction: str = "sum"):
    """Same contract as `labo_cross_entropy`, by autograd through log_softmax with q detached.

    Returns (loss, nll_loss, q) where q is the dense [..., V] distribution (for tests).
    """
    lp = torch.log_softmax(logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), -1)
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target.ne(ignore_index)
    y = torch.where(keep, target, 0).unsqueeze(-1)
    gold = torch.zeros_like(lp, dtype=torch.bool).scatter_(-1, y, True)
    with torch.no_grad():
        if math.isinf(tau):
            q = (~gold).to(lp.dtype) / (lp.shape[-1] - 1)
        else:
            q = torch.softmax((lp / tau).masked_fill(gold, float("-inf")), -1)
    nll = -lp.gather(-1, y).squeeze(-1)
    smooth = -(q * lp.masked_fill(gold, 0.0)).sum(-1)
    loss = (1 - alpha) * nll + alpha * smooth
    loss = torch.where(keep, loss, 0.0)
    nll = torch.where(keep, nll, 0.0)
    if reduction == "sum":
        loss, nll = loss.sum(), nll.sum()
    elif reduction == "mean":
        n = keep.sum().clamp(min=1)
        loss, nll = loss.sum() / n, nll.sum() / n
    return loss, nll, q
