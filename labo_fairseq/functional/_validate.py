"""Argument checks of both LABO ops.

Every failure is a ValueError whose message names the offending argument and its value.
"""
from typing import Optional, Tuple

import torch

from labo_fairseq.labo_scalars import TAU_MIN

REDUCTIONS = ("sum", "mean", "none")


def check_scalars(alpha, tau, reduction, chunk_size) -> Tuple[float, float]:
    """Validate the scalar hyper-parameters; return (alpha, tau) as Python floats."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.item()
    if isinstance(tau, torch.Tensor):
        tau = tau.item()
    try:
        alpha_f = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [0, 1), got {alpha!r}") from None
    if not (0.0 <= alpha_f < 1.0):  # NaN fails this too
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
    try:
        tau_f = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a number >= {TAU_MIN:g} (inf allowed), got {tau!r}") from None
    if not (tau_f >= TAU_MIN):  # rejects NaN, 0, negatives and tiny values
        raise ValueError(f"tau must be >= {TAU_MIN:g} (inf allowed), got {tau!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return alpha_f, tau_f


def check_impl(impl, choices) -> None:
    if impl not in choices:
        raise ValueError(f"impl must be one of {choices}, got {impl!r}")


def host_checks(device: torch.device) -> bool:
    """Whether checks may read tensors back to the host: free on the CPU; on a GPU a read
    waits for every queued kernel, so the checks stay on the device there."""
    return device.type == "cpu"


def check_target(
    target: torch.Tensor, lead_shape: torch.Size, vocab: int, ignore_index: Optional[int], what: str
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Validate `target` against the leading shape of `what` (e.g. "logits").

    Returns the flattened target and the flattened keep-mask (None when no ignore_index).
    The range is checked on the host for CPU tensors; on a GPU by a device-side assertion
    (no host sync: a bad target stops the next CUDA call with this message, as torch's own
    cross-entropy does).
    """
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(lead_shape):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match {what} leading shape {tuple(lead_shape)}"
        )
    if vocab < 2:
        raise ValueError(f"{what} vocabulary size (last dim) must be >= 2, got {vocab}")
    flat = target.reshape(-1).long()
    keep = None if ignore_index is None else flat.ne(ignore_index)
    if flat.numel() > 0:
        bad = (flat < 0) | (flat >= vocab)
        if keep is not None:
            bad &= keep
        if not host_checks(flat.device):
            torch._assert_async(~bad.any(), f"target contains a value outside [0, {vocab}) at a non-ignored "
                                            f"position (ignore_index={ignore_index!r})")
        elif bool(bad.any()):
            value = flat[bad][0].item()
            raise ValueError(
                f"target contains {value} outside [0, {vocab}) at a non-ignored position "
                f"(ignore_index={ignore_index!r})"
            )
    return flat, keep


def check_workspace(workspace_bytes) -> None:
    if workspace_bytes is not None and (isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int)
                                        or workspace_bytes < 1):
        raise ValueError(f"workspace_bytes must be a positive int or None, got {workspace_bytes!r}")


def _check_float_tensor(name, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_logits(logits) -> None:
    _check_float_tensor("logits", logits)
    if logits.dim() < 1:
        raise ValueError(f"logits must have at least 1 dimension (the vocabulary), got shape {tuple(logits.shape)}")


def check_linear(hidden, weight, bias) -> None:
    _check_float_tensor("hidden", hidden)
    _check_float_tensor("weight", weight)
    if hidden.dim() < 1:
        raise ValueError(f"hidden must have shape [..., d], got {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, d], got {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match hidden size d={hidden.shape[-1]} "
            f"(hidden shape {tuple(hidden.shape)})"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} does not match hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight device {weight.device} does not match hidden device {hidden.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise ValueError(f"bias must be a tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias shape {tuple(bias.shape)} does not match weight rows V={weight.shape[0]}")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"bias dtype {bias.dtype} does not match hidden dtype {hidden.dtype}")
