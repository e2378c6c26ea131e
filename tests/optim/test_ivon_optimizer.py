"""`--optimizer ivon` with `--task translation_ivon` in process, on fairseq's own Trainer."""
import pytest
import torch
from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

from labo_fairseq import register_with_fairseq
from tests.toy import REPO_ROOT, TINY_TRANSFORMER_ARGS

# --user-dir registers nothing when an earlier test module imported labo_fairseq before fairseq
register_with_fairseq()

IVON = ["--user-dir", str(REPO_ROOT / "labo_fairseq"), "--task", "translation_ivon", "--optimizer", "ivon"]


def build_trainer(data_bin, save_dir, *extra):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data_bin), "--cpu", "--save-dir", str(save_dir), *TINY_TRANSFORMER_ARGS, *IVON, "--dropout", "0", "--lr", "0.1",
        "--seed", "1", "--ivon-noise-interval", "0", *extra,
    ])
    cfg = convert_namespace_to_omegaconf(args)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    task.load_dataset(cfg.dataset.train_subset, combine=True)
    model = task.build_model(cfg.model)
    return Trainer(cfg, task, model, task.build_criterion(cfg.criterion))


def batch(trainer, indices):
    dataset = trainer.task.dataset("train")
    return dataset.collater([dataset[i] for i in indices])


def flat(trainer):
    return torch.cat([p.detach().reshape(-1).clone() for p in trainer.optimizer.params])


def test_weights_are_sampled_inside_the_step_and_the_mean_is_updated_and_saved(toy_data_bin, tmp_path):
    trainer = build_trainer(toy_data_bin, tmp_path, "--ivon-mc-samples", "2")
    ivon = trainer.optimizer
    seen = []
    forward = trainer.criterion.forward

    def recording_forward(model, sample, *args, **kwargs):
        seen.append(flat(trainer))
        return forward(model, sample, *args, **kwargs)

    trainer.criterion.forward = recording_forward
    at_update = []
    update = ivon.optimizer._update

    def recording_update():
        at_update.append(flat(trainer))
        update()

    ivon.optimizer._update = recording_update

    trainer.train_step([batch(trainer, range(16))])  # first update: ess set, samples drawn
    mean = flat(trainer)
    sigma = torch.cat([s.reshape(-1) for s in ivon._group_sigmas()])
    seen.clear(), at_update.clear()
    trainer.train_step([batch(trainer, range(16, 32))])

    assert len(seen) == 2 and len(at_update) == 1
    for sample in seen:
        z = (sample - mean) / sigma  # standard normal if the sample is mean + sigma * noise
        assert abs(float(z.mean())) < 0.05 and float(z.std()) == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(seen[0], seen[1])
    # the update starts from the mean, bit for bit, and moves it
    assert torch.equal(at_update[0], mean)
    after = flat(trainer)
    assert not torch.equal(after, mean) and all(not torch.equal(after, s) for s in seen)
    assert float(ivon.param_groups[0]["ess"]) == float(trainer.task.dataset("train").tgt_sizes.sum())

    # the checkpoint holds the mean and IVON's state
    trainer.consolidate_optimizer()  # what checkpoint_utils.save_checkpoint does first
    trainer.save_checkpoint(str(tmp_path / "checkpoint.pt"), {})
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint.pt"))
    saved = torch.cat([state["model"][name].reshape(-1) for name, p in trainer.model.named_parameters()])
    assert torch.equal(saved, after)
    optim_state = state["last_optimizer_state"]
    assert optim_state["state"]["ivon_current_step"] == 2
    assert torch.equal(optim_state["param_groups"][0]["hess"], ivon.param_groups[0]["hess"])
    assert not torch.equal(optim_state["param_groups"][0]["hess"], torch.ones_like(ivon.param_groups[0]["hess"]))


@pytest.mark.parametrize("samples", ["1", "2"])
def test_update_freq_2_is_the_doubled_batch(toy_data_bin, tmp_path, samples):
    """An update's weight samples are shared by its micro-batches: two halves accumulated give
    IVON the gradient and Hessian statistics of the whole batch."""
    split = build_trainer(toy_data_bin, tmp_path, "--ivon-mc-samples", samples)
    whole = build_trainer(toy_data_bin, tmp_path, "--ivon-mc-samples", samples)
    assert torch.equal(flat(split), flat(whole))
    for first in (0, 32):
        halves = [batch(split, range(first, first + 16)), batch(split, range(first + 16, first + 32))]
        split.train_step(halves)
        whole.train_step([batch(whole, range(first, first + 32))])
    torch.testing.assert_close(flat(split), flat(whole), rtol=1e-5, atol=1e-6)
    for key in ("hess", "momentum"):
        a, b = split.optimizer.param_groups[0][key], whole.optimizer.param_groups[0][key]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert not torch.equal(a, torch.full_like(a, float(a[0])))  # the statistics moved
