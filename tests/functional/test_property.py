"""Property test: any shape, chunk width and hyper-parameters agree with the dense reference."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labo_fairseq.functional import labo_cross_entropy, labo_cross_entropy_reference, labo_linear_cross_entropy


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    V=st.integers(2, 40),
    chunk=st.integers(1, 45),
    alpha=st.floats(0.0, 0.95),
    tau=st.one_of(st.floats(0.05, 20.0), st.just(math.inf)),
    scale=st.floats(0.1, 30.0),
    seed=st.integers(0, 2**16),
    fused=st.booleans(),
)
def test_matches_reference(n, V, chunk, alpha, tau, scale, seed, fused):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, V, (n,), generator=g)
    if fused:
        hidden = torch.randn(n, 3, generator=g, dtype=torch.float64, requires_grad=True)
        weight = (torch.randn(V, 3, generator=g, dtype=torch.float64) * scale).requires_grad_()
        loss, nll = labo_linear_cross_entropy(hidden, weight, target, alpha, tau, chunk_size=chunk)
        ref, ref_nll, _ = labo_cross_entropy_reference(hidden @ weight.T, target, alpha, tau)
        inputs = [hidden, weight]
    else:
        logits = (torch.randn(n, V, generator=g, dtype=torch.float64) * scale).requires_grad_()
        loss, nll = labo_cross_entropy(logits, target, alpha, tau, chunk_size=chunk)
        ref, ref_nll, _ = labo_cross_entropy_reference(logits, target, alpha, tau)
        inputs = [logits]
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-9, atol=1e-9)
    for a, b in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
