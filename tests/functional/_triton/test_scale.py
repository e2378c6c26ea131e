"""The Triton rescale of precomputed gradients: skipped on the device when the scale is 1."""
import pytest
import torch

from tests.functional.common import DEVICE

pytest.importorskip("triton", reason="the Triton rescale needs the triton package")

from labo_fairseq.functional._triton.scale import BLOCK, scale_unless_one_  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_scales_rows_of_a_strided_matrix_and_flat_tensors_unless_one(dtype):
    g = torch.Generator().manual_seed(0)
    storage = torch.randn(3, BLOCK + 40, generator=g).to(dtype).to(DEVICE)
    rows = storage[:, :BLOCK + 7]  # rows longer than a block, row stride != width
    before = storage.clone()
    scale_unless_one_(rows, torch.tensor(1.0, device=DEVICE))
    assert torch.equal(storage, before)
    scale_unless_one_(rows, torch.tensor(-2.5, device=DEVICE))
    torch.testing.assert_close(rows, (before[:, :BLOCK + 7].float() * -2.5).to(dtype))
    assert torch.equal(storage[:, BLOCK + 7:], before[:, BLOCK + 7:])  # nothing outside the view
    flat = torch.randn(2, 5, 7, generator=g).to(dtype).to(DEVICE)
    want = (flat.float() * 3.0).to(dtype)
    scale_unless_one_(flat, torch.tensor([3.0], device=DEVICE))
    torch.testing.assert_close(flat, want)


def test_a_float64_gradient_is_scaled_in_float64():
    # a scale with no exact float32 value (a mean's 1/3): float32 arithmetic would be off by ~1e-8
    x = torch.randn(4, BLOCK + 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE)
    want = x * (1 / 3)
    scale_unless_one_(x, torch.tensor(1 / 3, dtype=torch.float64, device=DEVICE))
    torch.testing.assert_close(x, want, rtol=1e-15, atol=0)
