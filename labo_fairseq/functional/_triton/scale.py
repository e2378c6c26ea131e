"""Triton: multiply a precomputed gradient by the incoming gradient, in place, unless it is 1.

The ops compute their gradients in forward for a unit incoming gradient; backward multiplies
by the real one. Under fairseq that is almost always exactly 1 (no loss scaling in fp32/bf16),
and checking it on the host would stall the GPU queue. Each program reads the scalar on the
device and returns at once when it is 1, so the common case costs one tiny launch instead of a
read and write of the whole [N, V] gradient.
"""
import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def scale_unless_one_kernel(x_ptr, row_stride, n_cols, scale_ptr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    scale = tl.load(scale_ptr)
    if scale != 1.0:
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ptrs = x_ptr + row * row_stride + cols
        x = tl.load(ptrs, mask=cols < n_cols)
        tl.store(ptrs, (x.to(scale.dtype) * scale).to(x_ptr.dtype.element_ty), mask=cols < n_cols)


def scale_unless_one_(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x *= scale (a one-element tensor on x's device), skipped on the device when scale == 1.
    x: a 2-D tensor with a contiguous last dimension, or any contiguous tensor."""
    if x.numel() == 0:
        return x
    view = x if x.dim() == 2 and x.stride(-1) == 1 else x.view(1, -1)
    rows, cols = view.shape
    # multiplied in float32, or in float64 for a float64 gradient (float32 would cost it 8 digits)
    scale = scale.reshape(1).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    scale_unless_one_kernel[(rows, triton.cdiv(cols, BLOCK))](view, view.stride(0), cols, scale, BLOCK=BLOCK)
    return x
