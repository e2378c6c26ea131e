"""The two public LABO ops: argument checks, the implementation switch, reductions.

The implementation is resolved once to a backend (`backends.get`), which both autograd
Functions (`ops.LogitsLabo`, `ops.FusedLabo`) are handed; they return per-row losses or their
sum; "mean" is that sum divided here, so autograd applies the 1/n.
"""
import os
from typing import Optional

import torch

from . import backends
from ._validate import check_impl, check_linear, check_logits, check_scalars, check_target, check_workspace
from .ops import FusedLabo, LogitsLabo
from .params import LaboParams, LaboStats

IMPLS = ("auto", *backends.NAMES)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, device: torch.device) -> str:
    """"torch" or "triton" for tensors on `device` (see the package docstring)."""
    check_impl(impl, IMPLS)
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise ValueError("impl='triton' needs the triton package, which does not import here")
        if device.type != "cuda" and not _interpreting():
            raise ValueError(f"impl='triton' needs CUDA tensors (got device {device.type!r}); on the CPU "
                             "it runs only under Triton's interpreter (TRITON_INTERPRET=1)")
    return impl


def _finish(out, reduction, lead, n_tokens, return_stats, keep_rows=None, n_rows=None):
    loss, nll, q_entropy, n_correct = out
    if reduction == "mean":
        denom = n_tokens.clamp(min=1).to(loss.dtype)
        loss, nll = loss / denom, nll / denom
    elif reduction == "none":
        if keep_rows is not None:  # scatter the kept rows back between zeros
            loss = loss.new_zeros(n_rows).index_copy(0, keep_rows, loss)
            nll = nll.new_zeros(n_rows).index_copy(0, keep_rows, nll)
        loss, nll = loss.view(lead), nll.view(lead)
    if return_stats:
        return loss, nll, LaboStats(q_entropy, n_correct, n_tokens)
    return loss, nll


def labo_cross_entropy(logits: torch.Tensor, target: torch.Tensor, alpha: float, tau: float,
                       ignore_index: Optional[int] = None, reduction: str = "sum", chunk_size: Optional[int] = None,
                       return_stats: bool = False, impl: str = "auto", inplace_grad: bool = False,
                       count_correct: bool = True):
    """LABO loss of `logits` [..., V] against `target` [...]; see the package docstring."""
    check_logits(logits)
    alpha, tau = check_scalars(alpha, tau, reduction, chunk_size)
    backend = backends.get(resolve_impl(impl, logits.device))
    V = logits.shape[-1]
    lead = logits.shape[:-1]
    flat_target, keep = check_target(target, lead, V, ignore_index, "logits")
    logits2d = logits.reshape(-1, V)
    if logits2d.stride(-1) != 1:
        logits2d = logits2d.contiguous()
    params = LaboParams(alpha=alpha, inv_tau=LaboParams.inv_tau_for(tau, logits.dtype),
                        chunk=chunk_size if chunk_size is not None else backend.default_chunk(logits.device, False),
                        per_row=reduction == "none", want_stats=return_stats, count_correct=count_correct)
    n_tokens = torch.tensor(flat_target.numel(), device=logits.device) if keep is None else keep.sum()
    out = LogitsLabo.apply(logits2d, flat_target, ignore_index, params, bool(inplace_grad), backend)
    return _finish(out, reduction, lead, n_tokens, return_stats)


def labo_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, alpha: float,
                              tau: float, bias: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None,
                              reduction: str = "sum", chunk_size: Optional[int] = None, return_stats: bool = False,
                              impl: str = "auto", count_correct: bool = True,
                              workspace_bytes: Optional[int] = None):
    """LABO loss of logits = hidden @ weight.T + bias without materialising them."""
    check_linear(hidden, weight, bias)
    alpha, tau = check_scalars(alpha, tau, reduction, chunk_size)
    check_workspace(workspace_bytes)
    backend = backends.get(resolve_impl(impl, hidden.device))
    V, d = weight.shape
    lead = hidden.shape[:-1]
    flat_target, keep = check_target(target, lead, V, ignore_index, "hidden")
    hidden2d = hidden.reshape(-1, d)
    n_rows = hidden2d.shape[0]
    n_tokens = torch.tensor(n_rows, device=hidden.device) if keep is None else keep.sum()
    params = LaboParams(alpha=alpha, inv_tau=LaboParams.inv_tau_for(tau, hidden.dtype),
                        chunk=chunk_size if chunk_size is not None else backend.default_chunk(hidden.device, True),
                        per_row=reduction == "none", want_stats=return_stats, count_correct=count_correct,
                        workspace_bytes=workspace_bytes)
    keep_rows = None
    if not backend.skips_ignored_rows and keep is not None and not bool(keep.all()):
        # ignored positions would cost as much as the others: drop them before any matmul
        # (one host sync, which costs nothing on the CPU, where the torch backend is the default)
        keep_rows = keep.nonzero().squeeze(1)
        hidden2d, flat_target = hidden2d.index_select(0, keep_rows), flat_target.index_select(0, keep_rows)
    out = FusedLabo.apply(hidden2d.contiguous(), weight, bias, flat_target, ignore_index, params, backend)
    return _finish(out, reduction, lead, n_tokens, return_stats, keep_rows, n_rows)
