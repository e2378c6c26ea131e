"""Online Label Smoothing (OLS; Zhang et al., 2021, "Delving Deep into Label Smoothing") for
sequence outputs, vectorised, with a bounded-memory top-K variant (plain PyTorch, no fairseq).

Per target token with gold g, logits z over V types and p = softmax(z):

    loss = (1 - w) * (-log p_g) + w * sum_j S[g, j] * (-log p_j)
    d loss / d z = p - t,   t = (1 - w) onehot(g) + w S[g]              (S held constant)

S is a V x V row-stochastic matrix rebuilt once per epoch from the model's own predictions: every
training token the model predicts correctly (argmax p = g) adds p to row g of an accumulator and
counts one for g; when the next epoch begins, S[g] = accumulator[g] / (its row sum) for every g
counted at least once, and the accumulator is reset.

Choices where the official (image classification) code is silent or does not fit:
- S starts as fairseq's label smoothing with epsilon = `--label-smoothing` (gold 1 - eps, every other
  type eps / (V - 1)), so the first epoch is (1 - w) CE + w LS. A row whose type was never
  predicted correctly in an epoch keeps its previous value (the official code zeroes it, which
  would switch the soft term off for exactly the rare types).
- Padding (`ignore_index`) contributes nothing.

Dense mode keeps S and the accumulator as V x V float32 (8 V^2 bytes: 0.8 GB at V = 10k).

Top-K mode (`topk=K`) bounds both:
- S keeps, per row, K (index, value) slots; the rest of the row's mass, r = 1 - sum(values), is
  spread uniformly over all V types: S~[g, j] = value_j (if j is a slot) + r / V.
- The accumulator keeps M = 2K slots per row plus an unattributed mass per row. A correct token
  adds its M largest probabilities to its row's slots (its remaining mass goes to the
  unattributed mass); when a row has more than M distinct types, its smallest entries are
  evicted into the unattributed mass. At the epoch's end each row keeps its K largest slots.
- Error bound: every slot value is mass that truly belongs to its type (evictions only move mass
  from slots to the unattributed part), so with a = the slot values and s the exact dense row,
  0 <= a <= s element-wise and sum(s - a) = r. Hence, per row,
      || S~[g] - S[g] ||_1  <=  ||s - a||_1 + r ||uniform||_1  =  2 r,   r = 1 - sum(kept values),
  which is known per row without the dense matrix; the loss term's error is at most
  2 r * max_j(-log p_j). The bound is exact (S~ = S) when every row's mass fits its slots.
  Memory: 12 V (K + 2K) bytes, 37 MB at V = 32k and K = 64.

Data parallelism: workers accumulate locally; `finish_epoch` takes the summed accumulator
(dense: an all-reduce; top-K: `merge_tables` over the gathered tables), so that W workers equal
one worker seeing all their batches (exactly up to float rounding for dense; within the bound
above for top-K, whose evictions depend on the order of the contributions).
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

DENSE_MAX_VOCAB = 16384  # larger vocabularies default to top-K
DEFAULT_TOPK = 64


def uniform_smoothing_row_value(vocab: int, epsilon: float) -> Tuple[float, float]:
    """(gold value, mass r spread over all V) that give fairseq's label smoothing in top-K form:
    gold 1 - eps, every other type eps / (V - 1)."""
    other = epsilon / (vocab - 1)
    return 1.0 - epsilon - other, other * vocab


class OnlineLabelSmoothing(nn.Module):
    """The OLS state (S, its accumulator, per-type counts) as buffers, and the loss over it.

    `topk=None` is dense mode. The buffers stay float32 whatever dtype the module is cast to
    (an fp16 accumulator would lose the small probabilities it sums)."""

    def __init__(self, vocab_size: int, epsilon: float, weight: float, topk: Optional[int] = None,
                 ignore_index: Optional[int] = None):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        if topk is not None and not 1 <= topk:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.vocab = vocab_size
        self.epsilon = epsilon
        self.weight = weight
        self.topk = None if topk is None else min(topk, vocab_size)
        self.ignore_index = ignore_index
        V = vocab_size
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))  # last epoch begun; 0: none
        self.register_buffer("count", torch.zeros(V, dtype=torch.float64))
        if self.topk is None:
            other = epsilon / (V - 1)
            S = torch.full((V, V), other, dtype=torch.float32)
            S.fill_diagonal_(1.0 - epsilon)
            self.register_buffer("S", S)
            self.register_buffer("acc", torch.zeros(V, V, dtype=torch.float32))
        else:
            K, M = self.topk, min(2 * self.topk, V)
            gold, _ = uniform_smoothing_row_value(V, epsilon)
            s_idx = torch.zeros(V, K, dtype=torch.int64)
            s_idx[:, 0] = torch.arange(V)
            s_val = torch.zeros(V, K, dtype=torch.float32)
            s_val[:, 0] = gold
            self.register_buffer("s_idx", s_idx)
            self.register_buffer("s_val", s_val)
            self.register_buffer("acc_idx", torch.zeros(V, M, dtype=torch.int64))
            self.register_buffer("acc_val", torch.zeros(V, M, dtype=torch.float32))
            self.register_buffer("acc_rest", torch.zeros(V, dtype=torch.float32))
        self.register_buffer("row_entropy", torch.zeros(V, dtype=torch.float32))
        self._update_row_entropy()

    # -- dtype: keep the state float32 ------------------------------------------------------
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point():
                want = torch.float64 if name == "count" else torch.float32
                if buf.dtype != want:
                    self._buffers[name] = buf.to(want)
        return self

    # -- S -----------------------------------------------------------------------------------
    @property
    def dense(self) -> bool:
        return self.topk is None

    def smoothing_rows(self, gold: torch.Tensor) -> torch.Tensor:
        """S[gold] as dense rows [n, V] (float32); for tests and the dense loss."""
        if self.dense:
            return self.S[gold]
        idx, val = self.s_idx[gold], self.s_val[gold]
        rest = (1.0 - val.sum(-1)).clamp_min(0.0)
        rows = (rest / self.vocab).unsqueeze(-1).expand(-1, self.vocab).clone()
        return rows.scatter_add_(1, idx, val)

    def dense_matrix(self) -> torch.Tensor:
        return self.smoothing_rows(torch.arange(self.vocab, device=self.count.device))

    def residual_mass(self) -> torch.Tensor:
        """Top-K: r per row (the mass spread uniformly); the L1 error of S~ is at most 2 r."""
        if self.dense:
            return torch.zeros(self.vocab, device=self.count.device)
        return (1.0 - self.s_val.sum(-1)).clamp_min(0.0)

    def _update_row_entropy(self, chunk_rows: int = 1024) -> None:
        """Entropy (nats) of each row of S, once per epoch (rows in chunks: no second V x V)."""
        V = self.vocab
        if self.dense:
            for r0 in range(0, V, chunk_rows):
                rows = self.S[r0:r0 + chunk_rows]
                self.row_entropy[r0:r0 + chunk_rows] = -torch.where(rows > 0, rows * rows.log(), 0.0).sum(-1)
            return
        # slots with value > 0 are distinct types; they carry value + r/V, the other types r/V
        val = self.s_val.clamp_min(0.0)
        rest = (1.0 - val.sum(-1)).clamp_min(0.0)
        share = rest / V
        slot = val + share.unsqueeze(-1)
        used = val > 0
        slot_h = torch.where(used, -slot * slot.clamp_min(1e-30).log(), 0.0).sum(-1)
        others = V - used.sum(-1)
        other_h = torch.where(share > 0, -share * share.clamp_min(1e-30).log(), 0.0) * others
        self.row_entropy.copy_(slot_h + other_h)

    # -- accumulation --------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, gold: torch.Tensor, probs: torch.Tensor) -> None:
        """Adds the distributions `probs` [n, V] of tokens predicted correctly, gold [n]."""
        if gold.numel() == 0:
            return
        self.count.index_add_(0, gold, torch.ones_like(gold, dtype=torch.float64))
        if self.dense:
            self.acc.index_add_(0, gold, probs.float())
            return
        M = self.acc_idx.size(1)
        top_val, top_idx = probs.float().topk(M, dim=-1)
        self.acc_rest.index_add_(0, gold, (1.0 - top_val.sum(-1)).clamp_min(0.0))
        merge_tables(self.acc_idx, self.acc_val, self.acc_rest, gold.repeat_interleave(M),
                     top_idx.reshape(-1), top_val.reshape(-1), self.vocab)

    def local_accumulator(self) -> dict:
        """The accumulator tensors, for summing across data-parallel workers."""
        if self.dense:
            return {"count": self.count, "acc": self.acc}
        return {"count": self.count, "acc_idx": self.acc_idx, "acc_val": self.acc_val, "acc_rest": self.acc_rest}

    @torch.no_grad()
    def begin_epoch(self, epoch: int, sum_workers: Optional[Callable[[dict], dict]] = None) -> bool:
        """Called as each training epoch begins (also the epoch a resumed run continues). Finishes
        the previous epoch when `epoch` is a new one: S from the accumulator, then a reset.
        `sum_workers(local_accumulator()) -> summed accumulator` joins data-parallel workers.
        Returns whether S was rebuilt."""
        previous = int(self.epoch)
        if epoch <= previous:
            return False  # a resumed run re-entering the epoch it was saved in
        self.epoch.fill_(epoch)
        if previous == 0:
            return False  # the first epoch trains on the initial S
        totals = self.local_accumulator()
        if sum_workers is not None:
            totals = sum_workers(totals)
        self._finish(totals)
        return True

    def _finish(self, totals: dict) -> None:
        seen = totals["count"] > 0
        rows = seen.nonzero().squeeze(-1)
        if self.dense:
            acc = totals["acc"][rows]
            self.S[rows] = acc / acc.sum(-1, keepdim=True).clamp_min(1e-30)
        else:
            count = totals["count"][rows].float().unsqueeze(-1)
            val, pos = (totals["acc_val"][rows] / count).topk(self.topk, dim=-1)
            self.s_idx[rows] = totals["acc_idx"][rows].gather(1, pos)
            self.s_val[rows] = val
        self.clear_accumulator()
        self._update_row_entropy()

    def clear_accumulator(self) -> None:
        for tensor in self.local_accumulator().values():
            tensor.zero_()

    # -- loss ------------------------------------------------------------------------------------
    def target_rows(self, gold: torch.Tensor) -> torch.Tensor:
        """t = (1 - w) onehot(gold) + w S[gold], [n, V] float32."""
        t = self.smoothing_rows(gold) * self.weight
        t[torch.arange(gold.numel(), device=gold.device), gold] += 1.0 - self.weight
        return t


def merge_tables(acc_idx, acc_val, acc_rest, rows, cols, vals, vocab: int) -> None:
    """Adds contributions (rows[i], cols[i], vals[i]) into per-row slot tables [V, M] in place,
    keeping each touched row's M largest entries; the rest of the mass goes to acc_rest[row].
    Vectorised: one sort over the touched rows' old slots and the new contributions."""
    M = acc_idx.size(1)
    touched = torch.unique(rows)
    local = torch.searchsorted(touched, rows)
    old_rows = torch.arange(touched.numel(), device=rows.device).repeat_interleave(M)
    keys = torch.cat([old_rows * vocab + acc_idx[touched].reshape(-1), local * vocab + cols])
    values = torch.cat([acc_val[touched].reshape(-1), vals.float()])
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    summed = torch.zeros(unique_keys.numel(), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    # order by row, then by value (largest first)
    order = torch.argsort(summed, descending=True, stable=True)
    order = order[torch.argsort(unique_keys[order] // vocab, stable=True)]
    key_rows = unique_keys[order] // vocab
    key_cols = unique_keys[order] % vocab
    summed = summed[order]
    rank = torch.arange(key_rows.numel(), device=rows.device) - torch.searchsorted(key_rows, key_rows)
    keep = rank < M
    acc_rest.index_add_(0, touched[key_rows[~keep]], summed[~keep])
    new_idx = torch.zeros(touched.numel(), M, dtype=acc_idx.dtype, device=acc_idx.device)
    new_val = torch.zeros(touched.numel(), M, dtype=acc_val.dtype, device=acc_val.device)
    new_idx[key_rows[keep], rank[keep]] = key_cols[keep]
    new_val[key_rows[keep], rank[keep]] = summed[keep]
    acc_idx[touched] = new_idx
    acc_val[touched] = new_val


def merge_worker_tables(tables: List[dict], vocab: int) -> dict:
    """The sum of data-parallel workers' top-K accumulators (each a `local_accumulator()`)."""
    first = tables[0]
    M = first["acc_idx"].size(1)
    out = {
        "count": sum(t["count"] for t in tables),
        "acc_rest": sum(t["acc_rest"] for t in tables),
        "acc_idx": torch.zeros_like(first["acc_idx"]),
        "acc_val": torch.zeros_like(first["acc_val"]),
    }
    rows = torch.arange(vocab, device=first["acc_idx"].device).repeat_interleave(M).repeat(len(tables))
    cols = torch.cat([t["acc_idx"].reshape(-1) for t in tables])
    vals = torch.cat([t["acc_val"].reshape(-1) for t in tables])
    merge_tables(out["acc_idx"], out["acc_val"], out["acc_rest"], rows, cols, vals, vocab)
    return out


class _OlsLoss(torch.autograd.Function):
    """Loss and gradients chunk by chunk over tokens; only one chunk of [tokens x V] logits
    (plus its target rows) exists at a time when `weight` (the output projection) is given.

    Inputs: x = logits [N, V], or hidden [N, d] with weight [V, d] and bias [V] (fused)."""

    @staticmethod
    def forward(ctx, x, weight, bias, gold, keep, ols, rows_per_chunk, accumulate, per_token):
        fused = weight is not None
        N = x.size(0)
        losses = torch.zeros(N, dtype=torch.float32, device=x.device)
        nll = torch.zeros(N, dtype=torch.float32, device=x.device)
        correct = torch.zeros(N, dtype=torch.bool, device=x.device)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if fused and need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if fused and bias is not None and need_b else None
        for r0 in range(0, N, rows_per_chunk):
            r1 = min(N, r0 + rows_per_chunk)
            g, m = gold[r0:r1], keep[r0:r1]
            if fused:
                h = x[r0:r1].float()
                z = h @ weight.float().t()
                if bias is not None:
                    z += bias.float()
            else:
                z = x[r0:r1].float()
            lse = torch.logsumexp(z, dim=-1)
            p = (z - lse.unsqueeze(-1)).exp_()
            g_safe = torch.where(m, g, 0)
            t = ols.target_rows(g_safe)
            losses[r0:r1] = torch.where(m, lse - (t * z).sum(-1), 0.0)
            nll[r0:r1] = torch.where(m, lse - z.gather(1, g_safe.unsqueeze(-1)).squeeze(-1), 0.0)
            hit = (z.argmax(-1) == g) & m
            correct[r0:r1] = hit
            if accumulate:
                ols.accumulate(g[hit], p[hit])
            grad_z = p.sub_(t).mul_(m.unsqueeze(-1))
            if fused:
                if grad_x is not None:
                    grad_x[r0:r1] = (grad_z @ weight.float()).to(x.dtype)
                if grad_w is not None:
                    grad_w.addmm_(grad_z.t(), h)
                if grad_b is not None:
                    grad_b += grad_z.sum(0)
            elif grad_x is not None:
                grad_x[r0:r1] = grad_z.to(x.dtype)
        ctx.per_token = per_token
        ctx.param_dtype = weight.dtype if fused else None
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.mark_non_differentiable(nll, correct)
        return losses, nll, correct

    @staticmethod
    def backward(ctx, grad_losses, _grad_nll, _grad_correct):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        if ctx.per_token:  # logits only (see ols_cross_entropy)
            return grad_x * grad_losses.unsqueeze(-1).to(grad_x.dtype), None, None, None, None, None, None, None, None
        scale = grad_losses[0]  # the sum's gradient reaches every token alike
        out_x = grad_x * scale.to(grad_x.dtype) if grad_x is not None else None
        out_w = (grad_w * scale).to(ctx.param_dtype) if grad_w is not None else None
        out_b = (grad_b * scale).to(ctx.param_dtype) if grad_b is not None else None
        return out_x, out_w, out_b, None, None, None, None, None, None


def _rows_per_chunk(n_tokens: int, vocab: int, workspace_bytes: int) -> int:
    # a chunk holds its float32 logits, probabilities and target rows: 3 x [rows x V] x 4 bytes
    return max(1, min(n_tokens, workspace_bytes // (12 * vocab)))


def ols_cross_entropy(ols: OnlineLabelSmoothing, target: torch.Tensor, logits: Optional[torch.Tensor] = None,
                      hidden: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                      bias: Optional[torch.Tensor] = None, reduction: str = "sum",
                      workspace_bytes: int = 256 << 20, accumulate: bool = False):
    """OLS loss for logits [..., V] (or hidden [..., d] with the projection weight [V, d], bias [V]).

    Returns (loss, nll_loss, n_correct, n_tokens, row_entropy_sum): loss/nll summed ("sum") or per
    position ("none", logits only; zeros at ignored positions); n_correct counts positions whose
    argmax is the gold type; row_entropy_sum adds the entropy (nats) of S[gold] over positions.
    `accumulate=True` adds the correctly predicted positions' distributions to the accumulator."""
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction}")
    fused = hidden is not None
    if fused == (logits is not None) or (fused and weight is None):
        raise ValueError("pass either logits, or hidden with weight")
    if fused and reduction == "none":
        raise ValueError("reduction='none' needs logits (the fused gradient is summed over tokens)")
    x = hidden if fused else logits
    lead = target.shape
    x = x.reshape(-1, x.size(-1))
    gold = target.reshape(-1)
    keep = gold.ne(ols.ignore_index) if ols.ignore_index is not None else torch.ones_like(gold, dtype=torch.bool)
    rows = _rows_per_chunk(x.size(0), ols.vocab, workspace_bytes)
    losses, nll, correct = _OlsLoss.apply(x, weight, bias, gold, keep, ols, rows, accumulate, reduction == "none")
    gold_safe = torch.where(keep, gold, 0)
    entropy = torch.where(keep, ols.row_entropy[gold_safe], 0.0).sum()
    n_tokens = keep.sum()
    if reduction == "none":
        return losses.view(lead), nll.view(lead), correct.sum(), n_tokens, entropy
    return losses.sum(), nll.sum(), correct.sum(), n_tokens, entropy

