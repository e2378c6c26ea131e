"""What every LABO implementation is told about one call, and the helpers they share."""
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Tuple

import torch

from . import _validate


@dataclass(frozen=True)
class LaboParams:
    """Hyper-parameters and options of one call, validated (see `_validate.check_scalars`).

    alpha: weight of the smoothing distribution, in [0, 1).
    inv_tau: 1 / tau; 0.0 for tau = inf (uniform smoothing).
    chunk: vocabulary chunk width (torch) or upper bound of the block width (Triton).
    per_row: reduction "none": per-row losses; otherwise the Function returns their sum
        ("mean" divides that sum outside the Function, so autograd applies the 1/n).
    want_stats: also return the summed q entropy (and, with count_correct, the number of
        rows whose argmax is the target).
    count_correct: track the argmax (costs a masked max per element on the GPU).
    workspace_bytes: fused op only: memory for one token chunk of logits (None: default).
    """

    alpha: float
    inv_tau: float
    chunk: int
    per_row: bool
    want_stats: bool
    count_correct: bool = True
    workspace_bytes: Optional[int] = None

    @staticmethod
    def inv_tau_for(tau: float, dtype: torch.dtype) -> float:
        """1 / tau, or 0.0 (the tau = inf branch) when 1 / tau is not a normal number of the
        accumulation dtype: the kernels would otherwise see a zero or subnormal 1/tau on the
        finite-tau branch (-inf * 0 = NaN at the gold column)."""
        inv_tau = 1.0 / tau
        return inv_tau if inv_tau >= torch.finfo(compute_dtype(dtype)).tiny else 0.0

    @property
    def need_q(self) -> bool:
        """q is needed for the smoothing term or for its entropy statistic."""
        return self.alpha > 0.0 or self.want_stats

    @property
    def track_order(self) -> bool:
        """The argmax is tracked (for n_correct)."""
        return self.want_stats and self.count_correct


class LaboStats(NamedTuple):
    """Cheap per-call diagnostics, summed over the non-ignored positions (no gradient).

    q_entropy: sum of the entropy of q (nats); divide by n_tokens for the mean.
    n_correct: number of positions where argmax(z) == target (ties resolve to the lowest
        index, as torch.argmax does); None when not counted (count_correct=False).
    n_tokens: number of non-ignored positions.
    """

    q_entropy: torch.Tensor
    n_correct: torch.Tensor
    n_tokens: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def spans(total: int, width: int) -> Iterator[Tuple[int, int]]:
    """(start, stop) of consecutive slices of `width` covering range(total)."""
    for start in range(0, total, width):
        yield start, min(total, start + width)


def function_outputs(ctx, loss, nll, q_entropy, correct, keep: Optional[torch.Tensor], params: LaboParams):
    """What every LABO autograd Function returns from per-row results:
    (loss, nll, q_entropy sum, n_correct), ignored rows zeroed, only `loss` differentiable.
    loss and nll are per row when params.per_row, else summed."""
    if keep is not None:
        loss, nll = torch.where(keep, loss, 0.0), torch.where(keep, nll, 0.0)
    if not params.per_row:
        loss, nll = loss.sum(), nll.sum()
    n_correct = None
    if params.want_stats:
        if keep is not None:
            q_entropy = torch.where(keep, q_entropy, 0.0)
        q_entropy = q_entropy.sum()
        if params.count_correct:
            n_correct = (correct.bool() if keep is None else correct.bool() & keep).sum(dtype=torch.long)
    else:
        q_entropy = loss.new_zeros(())
    ctx.mark_non_differentiable(*(t for t in (nll, q_entropy, n_correct) if t is not None))
    return loss, nll, q_entropy, n_correct


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Multiplies a gradient computed for a unit incoming gradient by the real one, in place.

    Skipped when the incoming gradient is a scalar 1.0 (fairseq without loss scaling): on the
    CPU by looking at it, on CUDA by a Triton kernel that looks at it on the device (no sync).
    """
    if per_row:
        return grad.mul_(grad_output.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype))
    if _validate.host_checks(grad_output.device):
        return grad if grad_output.item() == 1.0 else grad.mul_(grad_output.to(grad.dtype))
    if grad.is_cuda and (grad.is_contiguous() or (grad.dim() == 2 and grad.stride(-1) == 1)):
        try:
            from .triton_scale import scale_unless_one_
        except ImportError:  # no triton: the plain multiply
            return grad.mul_(grad_output.to(grad.dtype))
        return scale_unless_one_(grad, grad_output)
    return grad.mul_(grad_output.to(grad.dtype))


def take_precomputed_grads(ctx, grad_output: torch.Tensor, inputs) -> Optional[tuple]:
    """The fused ops' (grad_hidden, grad_weight, grad_bias), accumulated in forward for a unit
    incoming gradient, scaled by the real one and cast to the inputs' dtypes; None when there
    are none. Consumed once: a second backward through a retained graph recomputes them."""
    if ctx.grads is None:
        return None
    grads, ctx.grads = ctx.grads, None
    return tuple(None if g is None or not ctx.needs_input_grad[i] else scale_grad_(g, grad_output, False).to(src.dtype)
                 for i, (g, src) in enumerate(zip(grads, inputs)))
