"""What every LABO implementation is told about one call, and the helpers they share."""
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Tuple

import torch


@dataclass(frozen=True)
class LaboParams:
    """Hyper-parameters and options of one call, validated (see `_validate.check_scalars`).

    alpha: weight of the smoothing distribution, in [0, 1).
    inv_tau: 1 / tau; 0.0 for tau = inf (uniform smoothing).
    chunk: vocabulary chunk width (torch) or upper bound of the block width (Triton).
    per_row: reduction "none": per-row losses; otherwise the Function returns their sum
        ("mean" divides that sum outside the Function, so autograd applies the 1/n).
    want_stats: also return the summed q entropy and the number of correct argmax rows.
    """

    alpha: float
    inv_tau: float
    chunk: int
    per_row: bool
    want_stats: bool

    @property
    def need_q(self) -> bool:
        """q is needed for the smoothing term or for its entropy statistic."""
        return self.alpha > 0.0 or self.want_stats


class LaboStats(NamedTuple):
    """Cheap per-call diagnostics, summed over the non-ignored positions (no gradient).

    q_entropy: sum of the entropy of q (nats); divide by n_tokens for the mean.
    n_correct: number of positions where argmax(z) == target (ties resolve to the lowest
        index, as torch.argmax does).
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
    if params.want_stats:
        if keep is not None:
            q_entropy, correct = torch.where(keep, q_entropy, 0.0), correct.bool() & keep
        q_entropy, n_correct = q_entropy.sum(), correct.sum(dtype=torch.long)
    else:
        q_entropy, n_correct = loss.new_zeros(()), torch.zeros((), dtype=torch.long, device=loss.device)
    ctx.mark_non_differentiable(nll, q_entropy, n_correct)
    return loss, nll, q_entropy, n_correct


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Multiplies a gradient computed for a unit incoming gradient by the real one, in place.

    Skipped for a CPU scalar 1.0 ("sum" reduction on CPU), where checking costs no sync.
    """
    if per_row:
        return grad.mul_(grad_output.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype))
    if grad_output.device.type == "cpu" and grad_output.item() == 1.0:
        return grad
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
