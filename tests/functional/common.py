"""Inputs shared by the functional tests."""
import torch

PAD = 1
F64 = torch.float64
# the Triton tests run on CUDA where there is one, else under Triton's interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(shape, V, dtype=F64, scale=2.0, pad_frac=0.2, seed=0, device="cpu"):
    """Logits [*shape, V] ~ N(0, scale^2) and targets with about pad_frac positions = PAD."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, V, generator=g, dtype=F64) * scale).to(dtype)
    target = torch.randint(0, V, shape, generator=g)
    target[torch.rand(shape, generator=g) < pad_frac] = PAD
    return logits.to(device), target.to(device)
