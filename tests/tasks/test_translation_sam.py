"""SAM: the two-pass step against a manual computation, and `--task translation_sam` through
fairseq-train (any criterion, resume, data parallelism, flags)."""

import pytest
import torch

from labo_fairseq.sam import two_pass_step
from tests.toy import TINY_TRANSFORMER_ARGS, USER_DIR, run_cli, train, train_inner, train_two_gloo_workers

SAM = ["--user-dir", USER_DIR, "--task", "translation_sam"]


def _tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(11, 5), torch.randint(0, 3, (11,))
    return model, (lambda m: torch.nn.functional.cross_entropy(m(x), y, reduction="sum"))


def _grads_at(model, loss_fn, weights):
    clone = _tiny_model()[0]
    with torch.no_grad():
        for p, w in zip(clone.parameters(), weights):
            p.copy_(w)
    loss = loss_fn(clone)
    return [g for g in torch.autograd.grad(loss, list(clone.parameters()))], loss.detach()


@pytest.mark.parametrize("adaptive", [False, True])
def test_two_pass_step_matches_manual_sam(adaptive):
    model, loss_fn = _tiny_model()
    params = list(model.parameters())
    earlier = [torch.full_like(p, 0.25) for p in params]  # gradients of an earlier micro-batch
    for p, g in zip(params, earlier):
        p.grad = g.clone()
    weights = [p.detach().clone() for p in params]
    rho = 0.3

    def one_pass():
        loss = loss_fn(model)
        loss.backward()
        return loss.detach()

    first, second = two_pass_step(params, one_pass, one_pass, rho, adaptive)

    # by hand: the ascent from the batch's own gradient, the final gradient at w + e
    g, loss_w = _grads_at(model, loss_fn, weights)
    t = [w.abs() if adaptive else torch.ones_like(w) for w in weights]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    e = [rho * ti * ti * gi / norm for ti, gi in zip(t, g)]
    assert torch.sqrt(sum(((ei / ti) ** 2).sum() for ei, ti in zip(e, t))) == pytest.approx(rho, rel=1e-5)
    g_perturbed, loss_perturbed = _grads_at(model, loss_fn, [w + ei for w, ei in zip(weights, e)])
    assert first.item() == pytest.approx(loss_w.item(), rel=1e-6)
    assert second.item() == pytest.approx(loss_perturbed.item(), rel=1e-6)
    assert second.item() > first.item()  # an ascent step
    for p, w, g0, gp in zip(params, weights, earlier, g_perturbed):
        assert torch.equal(p.detach(), w)  # restored bit for bit
        assert torch.allclose(p.grad, g0 + gp, atol=1e-6)


def test_zero_gradient_means_no_perturbation():
    model, loss_fn = _tiny_model()
    params = list(model.parameters())
    weights = [p.detach().clone() for p in params]
    seen = []

    def zero_pass():
        (0 * loss_fn(model)).backward()

    def record():
        seen.append([p.detach().clone() for p in params])

    two_pass_step(params, zero_pass, record, 0.05, False)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], weights))


# --- through fairseq-train ------------------------------------------------------------------------

def test_sam_with_ols_trains_resumes_and_counts_statistics_once(toy_data_bin, tmp_path):
    """SAM on top of OLS: 10 updates (epochs are 8), resumed to 14. The OLS accumulator holds the
    correct tokens of the first (unperturbed) passes of epoch 2's updates, counted once."""
    args = [*SAM, "--criterion", "label_smoothed_ols", "--sam-rho", "0.05", "--dropout", "0"]
    first = train(toy_data_bin, tmp_path / "ckpt", args, max_update=10)
    rows = train_inner(first.stdout)
    assert sorted(rows) == list(range(1, 11))
    assert all(float(rows[u]["sam_sharpness"]) > 0 for u in rows)  # the ascent raises the loss
    assert float(rows[10]["loss"]) < float(rows[1]["loss"])
    state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["criterion"]
    expected = sum(float(rows[u]["ols_correct"]) * float(rows[u]["wpb"]) for u in (9, 10))
    assert expected > 10 and state["ols.count"].sum().item() == pytest.approx(expected, rel=0.02)
    resumed = train(toy_data_bin, tmp_path / "ckpt", args, max_update=14)
    assert "(epoch 2 @ 10 updates)" in resumed.stdout
    assert sorted(train_inner(resumed.stdout)) == [11, 12, 13, 14]


def test_two_gloo_workers_equal_one_process_with_update_freq_2(toy_data_bin):
    """Each worker's ascent uses its own batch's gradient, as each micro-batch of --update-freq
    does: 2 workers x 1 batch == 1 worker x 2 batches, update by update."""
    common = [str(toy_data_bin), "--cpu", *TINY_TRANSFORMER_ARGS, "--dropout", "0", "--optimizer", "adam",
              "--lr", "1e-3", "--max-tokens", "500", "--max-update", "5", "--seed", "1", "--no-save",
              "--disable-validation", "--log-format", "simple", "--log-interval", "1", "--no-progress-bar",
              *SAM, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--sam-adaptive",
              "--sam-rho", "0.5"]
    distributed = train_inner(train_two_gloo_workers(common)[0])
    single = train_inner(run_cli(["fairseq-train", *common, "--update-freq", "2"]).stdout)
    assert sorted(distributed) == sorted(single) == list(range(1, 6))
    for update in single:
        for key in ("loss", "nll_loss", "sam_sharpness", "gnorm"):
            assert float(distributed[update][key]) == pytest.approx(float(single[update][key]), abs=1.01e-3), (update, key)


@pytest.mark.parametrize("extra,message", [
    (["--sam-rho", "-1"], "--sam-rho must be > 0 and finite, got -1.0"),
    (["--fp16"], "--task translation_sam trains in fp32 only: drop --fp16"),
])
def test_bad_flags_are_one_line(toy_data_bin, tmp_path, extra, message):
    proc = run_cli(["fairseq-train", toy_data_bin, "--cpu", *TINY_TRANSFORMER_ARGS, "--optimizer", "adam",
                    "--lr", "1e-3", "--max-tokens", "500", "--max-update", "1", "--save-dir", tmp_path / "ckpt",
                    *SAM, "--criterion", "cross_entropy", *extra], check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 2 and errors == [f"fairseq-train: error: {message}"], proc.stderr[-2000:]
    assert not (tmp_path / "ckpt").exists()
