"""The Triton launchers' sizes: block width, warps, rows per token chunk."""
import pytest
import torch

pytest.importorskip("triton", reason="the Triton launchers need the triton package")

from labo_fairseq.functional._triton import launch  # noqa: E402


def test_chunk_sizes_above_the_largest_block_are_capped():
    assert launch.block_width(200_000, 65_536) == launch.MAX_BLOCK_V
    assert launch.block_width(200_000, 1 << 30) == launch.MAX_BLOCK_V
    assert launch.block_width(1000, 65_536) == 1024  # the vocabulary's next power of two
    assert launch.num_warps_for(launch.MAX_BLOCK_V) == 32 and launch.num_warps_for(1024) == 4


def test_token_rows_fill_the_workspace_with_a_floor():
    cpu = torch.device("cpu")
    assert launch.token_rows(10_000, 1000, 2, 10 * 1000 * 2, cpu) == launch.MIN_TOKEN_ROWS  # floored
    assert launch.token_rows(10_000, 1000, 2, 500 * 1000 * 2, cpu) == 500
    assert launch.token_rows(30, 1000, 2, None, cpu) == 30
    # default: DEFAULT_MIN_ROWS rows at least, more where DEFAULT_WORKSPACE_BYTES holds more
    assert launch.token_rows(10 ** 6, 32_000, 2, None, cpu) == launch.DEFAULT_WORKSPACE_BYTES // (32_000 * 2)
    assert launch.token_rows(10 ** 6, 250_000, 2, None, cpu) == launch.DEFAULT_MIN_ROWS
    assert launch.logits_rows(4096, 10, None, True, cpu) == 4096  # the logits op: one launch
