"""labo_fairseq.optim.ivon_posterior: weight samples from a checkpoint's IVON posterior."""
import os

import pytest
import torch

from labo_fairseq.errors import UserError
from labo_fairseq.optim.ivon_posterior import posterior_sigma, sample_checkpoints
from tests.evaluation.helpers import dead_pid
from tests.optim.test_train_cli import ivon_train
from tests.toy import USER_DIR
from tests.toy import run_cli

# one xdist worker runs the modules that share the toy checkpoint and evaluation (session
# fixtures), so that they are built once (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("toy-checkpoint")


def test_sigma_is_ivons_formula_over_every_group():
    state = {"param_groups": [
        {"hess": torch.tensor([0.5, 3.0]), "ess": 100.0, "weight_decay": 0.5},
        {"hess": torch.tensor([[1.0]]), "ess": 4.0, "weight_decay": 0.0},
    ]}
    expected = torch.tensor([1 / (100 * 1.0) ** 0.5, 1 / (100 * 3.5) ** 0.5, 1 / 4 ** 0.5], dtype=torch.float64)
    torch.testing.assert_close(posterior_sigma(state, "x.pt"), expected)


@pytest.mark.parametrize("state", [None, {}, {"param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98)}]}])
def test_a_checkpoint_without_ivon_state_is_refused(state):
    with pytest.raises(UserError, match=r"checkpoint x\.pt holds no IVON posterior"):
        posterior_sigma(state, "x.pt")


@pytest.fixture(scope="module")
def ivon_checkpoint(toy_data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("ivon-ckpt")
    ivon_train(toy_data_bin, save_dir, "--criterion", "label_smoothed_cross_entropy", max_update=12)
    return save_dir / "checkpoint_last.pt"


def _weights(path):
    from fairseq import checkpoint_utils
    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_samples_are_mean_plus_sigma_noise_reproducible_and_translate(ivon_checkpoint, toy_data_bin, tmp_path):
    from fairseq import checkpoint_utils

    paths = sample_checkpoints(ivon_checkpoint, toy_data_bin, 3, seed=7, out_dir=tmp_path)
    assert [p.name for p in paths] == ["ivon-sample1.pt", "ivon-sample2.pt", "ivon-sample3.pt"]
    state = checkpoint_utils.load_checkpoint_to_cpu(str(ivon_checkpoint))
    sigma = posterior_sigma(state["last_optimizer_state"], ivon_checkpoint)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(ivon_checkpoint)],
                                                                arg_overrides={"data": str(toy_data_bin)})
    names = [n for n, p in models[0].named_parameters() if p.requires_grad]
    mean = torch.cat([models[0].state_dict()[n].reshape(-1).double() for n in names])
    standardised = []
    for path in paths:
        sample = _weights(path)
        assert "last_optimizer_state" not in sample
        flat = torch.cat([sample["model"][n].reshape(-1).double() for n in names])
        standardised.append((flat - mean) / sigma)
    z = torch.stack(standardised)
    assert z.numel() > 10_000 and abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    assert not torch.equal(z[0], z[1])  # distinct samples
    again = sample_checkpoints(ivon_checkpoint, toy_data_bin, 1, seed=7, out_dir=tmp_path / "again")
    first, repeated = _weights(paths[0])["model"], _weights(again[0])["model"]
    assert all(torch.equal(first[n], repeated[n]) for n in names)  # same seed, same weights
    gen = run_cli(["fairseq-generate", toy_data_bin, "--path", ":".join(map(str, paths)), "--user-dir", USER_DIR,
                   "--cpu", "--beam", "2", "--batch-size", "16"])
    assert sum(line.startswith("H-") for line in gen.stdout.splitlines()) == 40


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_is_refused_unrun_naming_the_global(toy_data_bin, tmp_path):
    # before: UnpicklingError, its message advising weights_only=False
    torch.save({"model": _Payload(tmp_path / "ran")}, tmp_path / "payload.pt")
    with pytest.raises(UserError) as refused:
        sample_checkpoints(tmp_path / "payload.pt", toy_data_bin, 2, seed=1, out_dir=tmp_path / "samples")
    assert str(refused.value) == (f"checkpoint {tmp_path / 'payload.pt'} is refused, nothing of it was run: its "
                                  f"pickle refers to {os.system.__module__}.system, which a checkpoint of tensors "
                                  f"never needs")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "samples").exists()


def test_a_checkpoint_trained_with_adam_is_refused(toy_ls_checkpoint, toy_data_bin, tmp_path):
    with pytest.raises(UserError, match="holds no IVON posterior"):
        sample_checkpoints(toy_ls_checkpoint, toy_data_bin, 2, seed=1, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_labo_evaluate_translates_with_posterior_samples(ivon_checkpoint, toy_data_bin, toy_ls_checkpoint, tmp_path):
    import json

    out = tmp_path / "eval"
    (out / f".ivon-samples-{dead_pid()}-k1").mkdir(parents=True)  # left by a killed evaluation
    run_cli(["labo-evaluate", toy_data_bin, ivon_checkpoint, out, "--cpu", "--beam", "2", "--ivon-samples", "2"])
    scores = json.loads((out / "scores.json").read_text())
    assert scores["ivon_samples"] == 2 and scores["ivon_seed"] == 1 and scores["num_sentences"] == 40
    assert not list(out.glob(".ivon-samples-*"))
    mean = run_cli(["labo-evaluate", toy_data_bin, ivon_checkpoint, tmp_path / "mean", "--cpu", "--beam", "2"])
    assert mean.returncode == 0 and "ivon_samples" not in json.loads((tmp_path / "mean" / "scores.json").read_text())
    refused = run_cli(["labo-evaluate", toy_data_bin, toy_ls_checkpoint, tmp_path / "ls", "--cpu", "--ivon-samples", "2"],
                      check=False)
    errors = [line for line in refused.stderr.splitlines() if "error" in line or "Traceback" in line]
    assert refused.returncode == 2 and len(errors) == 1 and "holds no IVON posterior" in errors[0], refused.stderr
