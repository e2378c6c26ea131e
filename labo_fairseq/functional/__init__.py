"""LABO loss as streamed, fused PyTorch ops (no fairseq import here).

Per position with logits z in R^V, gold y, alpha in [0, 1) and tau > 0 (tau = beta / alpha,
inf allowed):

    lp   = log_softmax(z)
    q_j  = softmax_{j != y}(lp_j / tau),  q_y = 0       (tau = inf: uniform over j != y)
    loss = (1 - alpha) * (-lp_y) + alpha * sum_{j != y} q_j * (-lp_j),    nll = -lp_y
    d loss / d z = softmax(z) - (1 - alpha) onehot(y) - alpha q           (q held constant)

tau = inf is fairseq's label smoothing with epsilon = alpha; alpha = 0 is cross-entropy.

Public API::

    loss, nll = labo_cross_entropy(logits, target, alpha, tau, ignore_index=None,
                                   reduction="sum", chunk_size=None, return_stats=False,
                                   impl="auto", inplace_grad=False)
    loss, nll = labo_linear_cross_entropy(hidden, weight, target, alpha, tau, bias=None,
                                          ignore_index=None, reduction="sum",
                                          chunk_size=None, return_stats=False, impl="auto")

* ``labo_cross_entropy`` streams over vocabulary chunks of ``logits`` [..., V]; its only
  [N, V] allocation is the gradient w.r.t. the logits, and ``inplace_grad=True`` lets it
  write that gradient into the logits' own storage instead (extra memory O(N); the logits
  must not be used afterwards: autograd refuses any op that saved them). float16 logits
  are never overwritten: their gradient is recomputed in backward, after the loss scale.
* ``labo_linear_cross_entropy`` takes ``hidden`` [..., d] and the output projection
  ``weight`` [V, d] (+ optional ``bias`` [V]) and never materialises the [N, V] logits: it
  computes them block by block (token chunk x vocabulary chunk) and returns gradients for
  hidden, weight and bias.
* ``reduction``: "sum", "mean" (over non-ignored positions) or "none" (per position, zeros
  at ignored ones). Both values come back in float32 (float64 for float64 inputs); only
  ``loss`` is differentiable. ``chunk_size`` is the vocabulary chunk width (None: automatic);
  results do not depend on it beyond rounding.
* ``return_stats=True`` appends a :class:`LaboStats` computed in the same streaming pass:
  ``q_entropy`` (entropy of q in nats, summed over non-ignored positions), ``n_correct``
  (positions where argmax(z) == target, ties to the lowest index like torch.argmax) and
  ``n_tokens`` (non-ignored positions). They are 0-dim tensors whatever the reduction, e.g.
  ``loss, nll, stats = labo_cross_entropy(..., return_stats=True)``;
  mean q entropy = ``stats.q_entropy / stats.n_tokens``.
* ``impl``: "torch" (streamed PyTorch ops, any device), "triton" (Triton kernels; CUDA
  tensors, or CPU tensors under Triton's interpreter, TRITON_INTERPRET=1) or "auto"
  (Triton for CUDA tensors when triton imports, torch otherwise). Both follow the same
  contract, accumulate in float32 (float64 for float64 inputs) and return gradients in
  the inputs' dtypes.
* ``tau`` must be >= TAU_MIN (1e-4) or inf: below it q is a one-hot within float32
  precision anyway, and 1/tau would overflow.
* Bad arguments raise ValueError naming the argument; ``check_scalars(alpha, tau, reduction,
  chunk_size)`` runs the same checks on their own (e.g. in a module's constructor) and
  returns ``(alpha, tau)`` as floats.

``labo_cross_entropy_reference`` (dense, autograd through log_softmax) is the test oracle.

Layout: ``api`` (the public ops: checks, implementation switch, reductions), ``ops`` (the two
autograd Functions, ``LogitsLabo`` and ``FusedLabo``, shared by every implementation: token
blocking, the projection, when gradients are computed), ``params`` (``LaboParams``, the
per-row ``RowResults``), ``backends`` (registry: implementation name -> per-row stages),
``_torch`` and ``_triton`` (the stages), ``reference``.
"""
from ._validate import TAU_MIN, check_scalars
from .api import IMPLS, labo_cross_entropy, labo_linear_cross_entropy, resolve_impl
from .params import LaboStats
from .reference import labo_cross_entropy_reference

__all__ = [
    "IMPLS",
    "TAU_MIN",
    "LaboStats",
    "resolve_impl",
    "check_scalars",
    "labo_cross_entropy",
    "labo_linear_cross_entropy",
    "labo_cross_entropy_reference",
]
