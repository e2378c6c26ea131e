"""Sharpness-Aware Minimization (SAM; Foret et al., 2021) and its adaptive form (ASAM; Kwon et al.,
2021) as one training step of two forward/backward passes (plain PyTorch, no fairseq).

    g   = grad L(w)                                   first pass
    e   = rho * T^2 g / ||T g||_2,  T = |w| (ASAM) or 1 (SAM)
    g'  = grad L(w + e)                               second pass, at the perturbed weights
    the optimizer then steps from w with g'

The weights are copied before the perturbation and copied back after the second pass, so they
come back bit for bit (w + e - e would not). Gradients accumulated before the step (earlier
micro-batches of the same update) are set aside during the first pass and are what the second
pass adds to, so accumulation sums the micro-batches' SAM gradients. The perturbation is a
direction scaled to rho, so it does not depend on how the loss is normalised.
"""
from contextlib import nullcontext
from typing import Callable, List, Optional, Sequence, Tuple

import torch

GRAD_NORM_FLOOR = 1e-12  # a zero gradient gives a zero perturbation


@torch.no_grad()
def ascent_perturbation(params: Sequence[torch.Tensor], rho: float, adaptive: bool) -> List[Optional[torch.Tensor]]:
    """e for each parameter from its current .grad (None where a parameter has no gradient)."""
    scaled = [(p.abs() * p.grad if adaptive else p.grad) for p in params if p.grad is not None]
    if not scaled:
        return [None for _ in params]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled]))
    scale = rho / (norm + GRAD_NORM_FLOOR)
    return [None if p.grad is None else (p.grad * (p * p if adaptive else 1.0) * scale).to(p.dtype) for p in params]


def two_pass_step(params: Sequence[torch.Tensor], first_pass: Callable[[], object], second_pass: Callable[[], object],
                  rho: float, adaptive: bool, first_pass_context=nullcontext) -> Tuple[object, object]:
    """Runs SAM's two passes over `params`; each pass callable does a forward and a backward
    (into .grad) and returns what the caller wants back. `first_pass_context()` wraps the first
    pass (e.g. DDP's no_sync, so that the ascent uses this worker's gradient only).
    Returns (first pass result, second pass result); afterwards .grad = earlier + grad L(w + e)."""
    earlier = [p.grad for p in params]
    for p in params:
        p.grad = None
    with first_pass_context():
        first = first_pass()
    perturbation = ascent_perturbation(params, rho, adaptive)
    weights = [p.detach().clone() for p in params]
    for p, e, g in zip(params, perturbation, earlier):
        if e is not None:
            p.data.add_(e)
        p.grad = g
    try:
        second = second_pass()
    finally:
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
    return first, second
