"""The Triton backend (`impl="triton"`): the per-row stages as Triton kernels, one program
per row (`row_stats`: stage 1, optionally with stage 2; `row_grad`: stage 2; `scale`: the
device-side rescale of a precomputed gradient); launchers in `launch`, the configurations
`labo-bench kernels` compiles in `configs`. CUDA tensors, or CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1)."""
from ..backends import Backend
from .launch import default_chunk, logits_rows, row_grads, row_stats, token_rows
from .scale import scale_unless_one_

BACKEND = Backend(name="triton", row_stats=row_stats, row_grads=row_grads, logits_rows=logits_rows,
                  token_rows=token_rows, default_chunk=default_chunk, skips_ignored_rows=True,
                  scale_unless_one_=scale_unless_one_)
