"""The Triton backend's stages (kernels `row_stats`, `row_grad`) against dense float64 closed
forms (checks in tests/functional/stages.py); on the CPU under Triton's interpreter."""
import pytest

from tests.functional import stages
from tests.functional.common import DEVICE

pytest.importorskip("triton", reason="the Triton stages need the triton package")

from labo_fairseq.functional._triton import BACKEND  # noqa: E402


@pytest.mark.parametrize("alpha,tau", stages.CASES)
def test_row_stats(alpha, tau):
    stages.row_stats_match_dense(BACKEND, DEVICE, alpha, tau)


def test_row_stats_ignored_rows():
    out = stages.row_stats_zero_ignored_rows(BACKEND, DEVICE)
    assert out.lse[1].item() == 0.0  # the kernel writes zeros for every field of an ignored row


def test_row_stats_half_precision_gradient_in_place():
    stages.row_stats_writes_half_precision_grad_in_place(BACKEND, DEVICE)


@pytest.mark.parametrize("alpha,tau", [(0.1, 1.25), (0.2, float("inf")), (0.0, 1.0)])
@pytest.mark.parametrize("inplace", [False, True])
def test_row_grads(alpha, tau, inplace):
    stages.row_grads_match_dense(BACKEND, DEVICE, alpha, tau, inplace)
