"""Online Label Smoothing: the math against a plain NumPy re-implementation of the official
algorithm, the top-K variant's error bound, and `--criterion label_smoothed_ols` through fairseq-train
(resume, data parallelism, flags)."""

import numpy as np
import pytest
import torch

from labo_fairseq.online_label_smoothing import OnlineLabelSmoothing, merge_worker_tables, ols_cross_entropy
from tests.toy import USER_DIR, run_cli, train, train_inner, train_two_gloo_workers

PAD = 1


class NumpyOls:
    """The official algorithm, token by token, with this project's two documented choices: S
    starts as fairseq's label smoothing, and a row without correct predictions keeps its value."""

    def __init__(self, V, eps, w):
        self.V, self.w = V, w
        self.S = np.full((V, V), eps / (V - 1))
        np.fill_diagonal(self.S, 1 - eps)
        self.grad = np.zeros((V, V))
        self.count = np.zeros(V)

    def step(self, logits, target):
        """Summed loss and d loss / d logits; adds correct predictions to the accumulator."""
        loss, grads = 0.0, np.zeros_like(logits)
        for i, (z, g) in enumerate(zip(logits, target)):
            if g == PAD:
                continue
            p = np.exp(z - z.max())
            p /= p.sum()
            logp = np.log(p)
            loss += (1 - self.w) * -logp[g] + self.w * -(self.S[g] * logp).sum()
            grads[i] = p - ((1 - self.w) * np.eye(self.V)[g] + self.w * self.S[g])
            if p.argmax() == g:
                self.grad[g] += p
                self.count[g] += 1
        return loss, grads

    def update(self):
        seen = self.count > 0
        rows = self.grad[seen] / self.count[seen, None]
        self.S[seen] = rows / rows.sum(1, keepdims=True)
        self.grad[:] = 0
        self.count[:] = 0


def _batches(V, n_batches, n_tokens, seed, sharp=3.0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        target = torch.randint(2, V, (n_tokens,), generator=gen)
        target[torch.rand(n_tokens, generator=gen) < 0.1] = PAD
        logits = torch.randn(n_tokens, V, generator=gen, dtype=torch.float64)
        # make about half the tokens correct, so the accumulator fills
        boost = torch.rand(n_tokens, generator=gen) < 0.5
        logits[boost, target[boost]] += sharp
        out.append((logits, target))
    return out


def test_dense_matches_numpy_reference_over_epochs():
    V, eps, w = 12, 0.1, 0.5
    ols = OnlineLabelSmoothing(V, eps, w, topk=None, ignore_index=PAD).double()
    ref = NumpyOls(V, eps, w)
    for epoch in (1, 2, 3):
        assert ols.begin_epoch(epoch) == (epoch > 1)
        if epoch > 1:
            ref.update()
        np.testing.assert_allclose(ols.S.numpy(), ref.S, rtol=1e-5, atol=1e-7)
        for logits, target in _batches(V, 3, 40, seed=epoch):
            x = logits.clone().float().requires_grad_(True)
            loss, nll, n_correct, n_tokens, entropy = ols_cross_entropy(ols, target, logits=x, accumulate=True,
                                                                        workspace_bytes=12 * V * 7)  # 7-token chunks
            loss.backward()
            ref_loss, ref_grad = ref.step(logits.numpy(), target.numpy())
            assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
            np.testing.assert_allclose(x.grad.numpy(), ref_grad, atol=1e-5)
            keep = target != PAD
            assert n_tokens.item() == keep.sum().item()
            assert n_correct.item() == ((logits.argmax(-1) == target) & keep).sum().item()
            S = ref.S[target[keep].numpy()]
            ref_entropy = -(np.where(S > 0, S * np.log(np.where(S > 0, S, 1)), 0)).sum()
            assert entropy.item() == pytest.approx(ref_entropy, rel=1e-5)
    # the rows that saw correct predictions moved away from the initial smoothing
    assert not np.allclose(ref.S, NumpyOls(V, eps, w).S)


def test_weight_one_epoch_one_is_fairseqs_label_smoothing():
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
    V = 30
    (logits, target), = _batches(V, 1, 50, seed=5)
    ols = OnlineLabelSmoothing(V, 0.1, 1.0, ignore_index=PAD)
    loss, nll, *_ = ols_cross_entropy(ols, target, logits=logits.float())
    ref_loss, ref_nll = label_smoothed_nll_loss(torch.log_softmax(logits.float(), -1), target, 0.1, ignore_index=PAD)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-5)


def test_fused_projection_equals_logits_path():
    torch.manual_seed(0)
    V, d, N = 50, 8, 37
    hidden = torch.randn(N, d, requires_grad=True)
    weight = torch.randn(V, d, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    target = torch.randint(2, V, (N,))
    target[::5] = PAD
    results = []
    for fused in (True, False):
        ols = OnlineLabelSmoothing(V, 0.1, 0.5, ignore_index=PAD)
        ols.begin_epoch(1)
        ols.acc[3, 7] = 1.0  # some non-uniform S
        ols.count[3] = 1
        ols.begin_epoch(2)
        for t in (hidden, weight, bias):
            t.grad = None
        if fused:
            out = ols_cross_entropy(ols, target, hidden=hidden, weight=weight, bias=bias, accumulate=True,
                                    workspace_bytes=12 * V * 4)
        else:
            out = ols_cross_entropy(ols, target, logits=hidden @ weight.t() + bias, accumulate=True)
        (2.5 * out[0]).backward()
        results.append((out, [t.grad.clone() for t in (hidden, weight, bias)], ols.acc.clone(), ols.count.clone()))
    (fo, fg, facc, fcount), (uo, ug, uacc, ucount) = results
    for a, b in zip(fo, uo):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-5)
    for a, b in zip(fg, ug):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.allclose(facc, uacc, atol=1e-6) and torch.equal(fcount, ucount) and fcount.sum() > 0


def _train_epochs(ols, epochs, seed=0, V=None):
    for epoch in range(1, epochs + 1):
        ols.begin_epoch(epoch)
        for logits, target in _batches(V or ols.vocab, 4, 60, seed=seed + epoch, sharp=4.0):
            ols_cross_entropy(ols, target, logits=logits.float(), accumulate=True)
    ols.begin_epoch(epochs + 1)


@pytest.mark.parametrize("K", [2, 4])
def test_topk_error_within_bound_and_exact_when_rows_fit(K):
    V = 40
    dense = OnlineLabelSmoothing(V, 0.1, 0.5, ignore_index=PAD)
    topk = OnlineLabelSmoothing(V, 0.1, 0.5, topk=K, ignore_index=PAD)
    _train_epochs(dense, 2)
    _train_epochs(topk, 2)
    exact, approx = dense.dense_matrix(), topk.dense_matrix()
    assert torch.allclose(approx.sum(-1), torch.ones(V), atol=1e-5)
    error = (approx - exact).abs().sum(-1)
    bound = 2 * topk.residual_mass()
    assert (error <= bound + 1e-5).all(), (error - bound).max()
    assert (bound > 0.01).any()  # the test exercises rows that did not fit
    # the logged entropy of each row is the entropy of S~
    h = -(approx * approx.log()).sum(-1)
    assert torch.allclose(topk.row_entropy, h, atol=1e-4)
    # with K = V every row fits: top-K is dense OLS
    full = OnlineLabelSmoothing(V, 0.1, 0.5, topk=V, ignore_index=PAD)
    _train_epochs(full, 2)
    assert torch.allclose(full.dense_matrix(), exact, atol=1e-5)


def test_worker_sums_equal_one_process():
    """Two workers' accumulators, summed at the epoch's end, give one process's S."""
    V = 30
    batches = _batches(V, 4, 50, seed=9, sharp=4.0)
    for topk in (None, 3):
        single = OnlineLabelSmoothing(V, 0.1, 0.5, topk=topk, ignore_index=PAD)
        workers = [OnlineLabelSmoothing(V, 0.1, 0.5, topk=topk, ignore_index=PAD) for _ in range(2)]
        for m in (single, *workers):
            m.begin_epoch(1)
        for i, (logits, target) in enumerate(batches):
            ols_cross_entropy(single, target, logits=logits.float(), accumulate=True)
            ols_cross_entropy(workers[i % 2], target, logits=logits.float(), accumulate=True)
        single.begin_epoch(2)
        if topk is None:
            def sum_workers(local):
                return {k: workers[0].local_accumulator()[k] + workers[1].local_accumulator()[k] for k in local}
        else:
            def sum_workers(local):
                return merge_worker_tables([w.local_accumulator() for w in workers], V)
        workers[0].begin_epoch(2, sum_workers=sum_workers)
        error = (workers[0].dense_matrix() - single.dense_matrix()).abs().sum(-1)
        if topk is None:
            assert error.max() < 1e-5
        else:  # both are within the bound of the exact matrix, so within the sum of bounds of each other
            bound = 2 * (workers[0].residual_mass() + single.residual_mass())
            assert (error <= bound + 1e-5).all()


def test_state_stays_float32_under_half():
    ols = OnlineLabelSmoothing(10, 0.1, 0.5).half()
    assert ols.S.dtype == torch.float32 and ols.acc.dtype == torch.float32 and ols.count.dtype == torch.float64


# --- through fairseq-train ------------------------------------------------------------------------

OLS = ["--user-dir", USER_DIR, "--criterion", "label_smoothed_ols"]


def _ols_state(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["criterion"]
    return {k: v for k, v in state.items() if k.startswith("ols.")}


def test_resume_mid_epoch_equals_uninterrupted_and_logs(toy_data_bin, tmp_path):
    """Epochs of 8 updates at --max-tokens 500. Interrupted at update 13 (mid epoch 2) and at 24
    (the end of epoch 3, before S is rebuilt) and resumed, a run ends with the checkpoint of an
    uninterrupted one, S and accumulator alike."""
    common = [*OLS, "--dropout", "0", "--report-accuracy", "--ols-weight", "0.5"]
    full = train(toy_data_bin, tmp_path / "full", common, max_update=30)
    rows = train_inner(full.stdout)
    for key in ("ols_row_entropy", "ols_correct", "accuracy", "loss", "nll_loss"):
        assert key in rows[1], key
    # S changed once the first epoch ended: the rows' entropy moves
    assert float(rows[1]["ols_row_entropy"]) != float(rows[30]["ols_row_entropy"])
    part = tmp_path / "part"
    train(toy_data_bin, part, common, max_update=13, extra=["--save-interval-updates", "13"])
    assert "(epoch 2 @ 13 updates)" in train(toy_data_bin, part, common, max_update=24).stdout
    resumed = train(toy_data_bin, part, common, max_update=30)
    assert "(epoch 4 @ 24 updates)" in resumed.stdout
    a, b = _ols_state(tmp_path / "full" / "checkpoint_last.pt"), _ols_state(part / "checkpoint_last.pt")
    assert int(a["ols.epoch"]) >= 3
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), atol=1e-6), key
    assert a["ols.count"].sum() > 0
    # a checkpoint evaluates without the criterion
    gen = run_cli(["fairseq-generate", toy_data_bin, "--path", part / "checkpoint_last.pt", "--cpu",
                   "--beam", "1", "--batch-size", "64", "--max-len-b", "20"])
    assert "BLEU4 = " in gen.stdout


def test_two_gloo_workers_equal_one_process_with_update_freq_2(toy_data_bin, tmp_path):
    common = [str(toy_data_bin), "--cpu", "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
              "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
              "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
              "--share-decoder-input-output-embed", "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3",
              "--max-tokens", "250", "--max-epoch", "2", "--seed", "1", "--disable-validation",
              "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1", "--no-progress-bar",
              "--ddp-backend", "legacy_ddp", *OLS]
    outputs = train_two_gloo_workers([*common, "--save-dir", str(tmp_path / "ddp")])
    single = run_cli(["fairseq-train", *common, "--update-freq", "2", "--save-dir", str(tmp_path / "one")])
    d, s = train_inner(outputs[0]), train_inner(single.stdout)
    assert sorted(d) == sorted(s) == list(range(1, 17))  # 8 updates per epoch
    for update in s:
        # the first epoch is the same up to float rounding; afterwards a token whose argmax is a
        # near-tie may count as correct in one run only, which moves a rare type's row slightly
        tolerance = 1.01e-3 if update <= 8 else 5e-3
        for key in ("loss", "nll_loss", "ols_row_entropy", "ols_correct"):
            assert float(d[update][key]) == pytest.approx(float(s[update][key]), abs=tolerance), (update, key)
    assert float(s[9]["ols_row_entropy"]) > float(s[8]["ols_row_entropy"]) + 1  # S was rebuilt
    a, b = _ols_state(tmp_path / "ddp" / "checkpoint_last.pt"), _ols_state(tmp_path / "one" / "checkpoint_last.pt")
    # rank 0's own statistics alone would leave the types only rank 1 predicted correctly at
    # their initial rows (a difference of about 0.9)
    assert (a["ols.S"] - b["ols.S"]).abs().max() < 0.02


@pytest.mark.parametrize("extra,message", [
    (["--ols-weight", "2"], "--ols-weight must be in [0, 1], got 2.0"),
    (["--ols-topk", "-3"], "--ols-topk must be >= 0 (0 = dense), got -3"),
])
def test_bad_flags_are_one_line(toy_data_bin, tmp_path, extra, message):
    proc = run_cli(["fairseq-train", toy_data_bin, "--cpu", "--arch", "transformer", "--optimizer", "adam",
                    "--lr", "1e-3", "--max-tokens", "500", "--max-update", "1", "--save-dir", tmp_path / "ckpt",
                    *OLS, *extra], check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 2 and errors == [f"fairseq-train: error: {message}"], proc.stderr[-2000:]
    assert not (tmp_path / "ckpt").exists()
