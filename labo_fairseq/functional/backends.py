"""The backend registry: name -> the per-row stages one implementation supplies.

The two autograd Functions (`ops.LogitsLabo`, `ops.FusedLabo`) own everything else: token
blocking, the output projection, when gradients are computed, in-place and float16 rules.
A backend is one module (or package) under this one defining ``BACKEND``; adding one (e.g. a
torch.compile'd one) is that module plus a line in ``MODULES``.
"""
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .params import LaboParams

MODULES = {"torch": "._torch", "triton": "._triton"}
NAMES = tuple(MODULES)


@dataclass(frozen=True)
class Backend:
    """Stages over a block of rows z [n, V] (last dim contiguous; any floating dtype), their
    targets [n] (int64) and `ignore_index` (None: no row is ignored). Both accumulate in
    float32 (float64 for float64 z) and read the whole vocabulary of each row.

    row_stats(z, target, ignore_index, params, out: RowResults, grad_out=None): writes every
        field of `out` (views of n rows); with `grad_out` (shaped like z, possibly z itself)
        also d loss_i / d z_i for a unit incoming gradient. Ignored rows: loss, nll,
        q_entropy, correct and the gradient row are 0.
    row_grads(z, target, ignore_index, rows: RowResults, scale, params, out): out = d loss_i /
        d z_i * scale_i from the lse, m_ref and log_sum_q of `rows` (out may be z itself);
        ignored rows 0.
    logits_rows(n, V, params, with_grad, device): rows per block of the logits op.
    token_rows(n, V, element_size, workspace_bytes, device): rows per token block of the
        fused op (its logits are one [rows, V] matmul output of `element_size` bytes each).
    default_chunk(device, fused): the vocabulary chunk width when the caller gives none.
    skips_ignored_rows: the stages cost nothing on ignored rows (otherwise the fused op drops
        them before its matmuls, at the cost of one host sync).
    scale_unless_one_(grad, scale): optional in-place device-side multiply, skipped when the
        one-element `scale` is 1 (CUDA tensors only); None: a plain multiply.
    """

    name: str
    row_stats: Callable[..., None]
    row_grads: Callable[..., None]
    logits_rows: Callable[[int, int, LaboParams, bool, torch.device], int]
    token_rows: Callable[[int, int, int, Optional[int], torch.device], int]
    default_chunk: Callable[[torch.device, bool], int]
    skips_ignored_rows: bool
    scale_unless_one_: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None


def get(name: str) -> Backend:
    """The backend registered as `name` (imported on first use: triton may not import)."""
    return importlib.import_module(MODULES[name], __package__).BACKEND

