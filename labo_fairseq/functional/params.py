"""What every LABO backend is told about one call (`LaboParams`), what its stages return per
row (`RowResults`), and what the public ops return besides the loss (`LaboStats`)."""
from dataclasses import dataclass, fields
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import torch


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


@dataclass
class RowResults:
    """Per-row results of stage 1 (accumulation dtype), filled block by block.

    loss, nll: per-row loss and negative log-likelihood; lse: logsumexp(z); m_ref: max of the
    non-gold logits; log_sum_q: log sum_{j != y} exp((z_j - m_ref) / tau) (stage 2 needs
    these three); q_entropy: entropy of q; correct: argmax(z) == y, as int8. Rows whose
    target is ignore_index have loss, nll, q_entropy and correct 0.
    """

    loss: Optional[torch.Tensor] = None
    nll: Optional[torch.Tensor] = None
    lse: Optional[torch.Tensor] = None
    m_ref: Optional[torch.Tensor] = None
    log_sum_q: Optional[torch.Tensor] = None
    q_entropy: Optional[torch.Tensor] = None
    correct: Optional[torch.Tensor] = None

    @classmethod
    def empty(cls, n: int, device, dtype: torch.dtype) -> "RowResults":
        values = {f.name: torch.empty(n, device=device, dtype=dtype) for f in fields(cls)}
        values["correct"] = torch.zeros(n, device=device, dtype=torch.int8)
        return cls(**values)

    @classmethod
    def for_backward(cls, lse: torch.Tensor, m_ref: torch.Tensor, log_sum_q: torch.Tensor) -> "RowResults":
        """What stage 2 reads, as saved by forward."""
        return cls(lse=lse, m_ref=m_ref, log_sum_q=log_sum_q)

    def saved(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.lse, self.m_ref, self.log_sum_q

    def rows(self, start: int, stop: int) -> "RowResults":
        """Views of rows start:stop (a stage writes into them)."""
        return RowResults(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[start:stop]
                             for f in fields(self)})

    def copy_(self, other: "RowResults") -> None:
        """Copies every field `other` has (the correct flags as int8)."""
        for f in fields(self):
            src = getattr(other, f.name)
            if src is not None:
                getattr(self, f.name).copy_(src)

    def pointers(self) -> Sequence[torch.Tensor]:
        """The fields in the order the Triton stage-1 kernel takes them."""
        return tuple(getattr(self, f.name) for f in fields(self))
