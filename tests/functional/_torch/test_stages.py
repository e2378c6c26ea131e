"""The torch backend's stages against dense float64 closed forms (checks in tests/functional/stages.py)."""
import pytest
import torch

from labo_fairseq.functional._torch import BACKEND, CPU_SIZES, logits_rows, token_rows
from labo_fairseq.functional.params import LaboParams
from tests.functional import stages


@pytest.mark.parametrize("chunk", [1, 16, 64])
@pytest.mark.parametrize("alpha,tau", stages.CASES)
def test_row_stats(alpha, tau, chunk):
    stages.row_stats_match_dense(BACKEND, "cpu", alpha, tau, chunk)


def test_row_stats_ignored_rows():
    stages.row_stats_zero_ignored_rows(BACKEND, "cpu")


def test_row_stats_half_precision_gradient_in_place():
    stages.row_stats_writes_half_precision_grad_in_place(BACKEND, "cpu")


@pytest.mark.parametrize("alpha,tau", stages.CASES)
@pytest.mark.parametrize("inplace", [False, True])
def test_row_grads(alpha, tau, inplace):
    stages.row_grads_match_dense(BACKEND, "cpu", alpha, tau, inplace)


def test_block_sizes_follow_the_cpu_sizes():
    cpu = torch.device("cpu")
    p = LaboParams(alpha=0.1, inv_tau=0.8, chunk=8192, per_row=False, want_stats=False)
    assert logits_rows(4096, 10_000, p, True, cpu) == CPU_SIZES.store_elements // 10_000
    assert logits_rows(4096, 10_000, p, False, cpu) == CPU_SIZES.block_elements // 8192
    assert logits_rows(3, 10_000, p, True, cpu) == 3
    assert token_rows(4096, 10_000, 4, None, cpu) == CPU_SIZES.token_block
    assert token_rows(4096, 250_000, 4, None, cpu) == 32  # the store bound, floored at 32 rows
    assert token_rows(4096, 1000, 4, 100 * 4 * 1000, cpu) == 100  # a workspace: uncapped
