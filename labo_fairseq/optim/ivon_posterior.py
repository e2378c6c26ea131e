"""Weight samples from the IVON posterior stored in a checkpoint, for prediction by model averaging.

IVON's posterior is N(m, σ²) with σ = 1/sqrt(ess·(h + δ)) (see ivon_optimizer). A checkpoint
trained with `--optimizer ivon` holds the mean m (its model) and h, ess and δ (its optimizer
state). `sample_checkpoints` writes K checkpoints whose weights are m + σ·ε_k. fairseq-generate
given all of them (`--path a.pt:b.pt:...`) averages their token probabilities at every step: the
posterior predictive, where the checkpoint alone predicts with the mean. `labo-evaluate
--ivon-samples K` does both.
"""
import pickle
from pathlib import Path
from typing import List, Sequence

import torch

from labo_fairseq.checkpoints import checkpoint_load_error, save_checkpoint_state
from labo_fairseq.errors import UserError


def posterior_sigma(optimizer_state, checkpoint) -> torch.Tensor:
    """σ of every trained weight, flat, in the optimizer's parameter order."""
    groups = (optimizer_state or {}).get("param_groups") or []
    if not groups or any(not torch.is_tensor(g.get("hess")) for g in groups):
        raise UserError(f"checkpoint {checkpoint} holds no IVON posterior (it was not trained with "
                        f"--optimizer ivon, or was saved without its optimizer state)")
    return torch.cat([(float(g["ess"]) * (g["hess"].double() + float(g["weight_decay"]))).rsqrt().reshape(-1)
                      for g in groups])


def _trained_parameters(model) -> List[torch.nn.Parameter]:
    # fairseq's trainer hands the optimizer these, in this order (the criteria here have none)
    return [p for p in model.parameters() if p.requires_grad]


def sample_checkpoints(checkpoint, data_bin, samples: int, seed: int, out_dir) -> List[Path]:
    """Writes `samples` checkpoints drawn from the posterior into out_dir; returns their paths."""
    from fairseq import checkpoint_utils

    from labo_fairseq import criterions, tasks  # noqa: F401  IVON checkpoints name the task translation_ivon

    if samples < 1:
        raise UserError(f"--ivon-samples must be >= 1, got {samples}")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
        sigma = posterior_sigma(state.get("last_optimizer_state"), checkpoint)
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides={"data": str(data_bin)}, state=state)
    except (pickle.UnpicklingError, RuntimeError) as error:   # a refused pickle; another vocabulary
        message = checkpoint_load_error(checkpoint, data_bin, str(error))
        if message is None:
            raise
        raise UserError(message) from None
    params = _trained_parameters(models[0])
    n_weights = sum(p.numel() for p in params)
    if n_weights != sigma.numel():
        raise UserError(f"checkpoint {checkpoint}: the IVON state covers {sigma.numel()} weights, the model "
                        f"has {n_weights} trained ones")
    means = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(int(seed))
    state.pop("last_optimizer_state", None)  # not needed to translate; K copies would be large
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(samples):
        noise = torch.randn(n_weights, generator=generator, dtype=torch.float64) * sigma
        _set_parameters(params, means, noise)
        state["model"] = models[0].state_dict()
        paths.append(save_checkpoint_state(state, Path(out_dir) / f"ivon-sample{k + 1}.pt"))
    _set_parameters(params, means, torch.zeros(n_weights, dtype=torch.float64))
    return paths


def _set_parameters(params: Sequence[torch.nn.Parameter], means: Sequence[torch.Tensor], offsets) -> None:
    start = 0
    with torch.no_grad():
        for p, m in zip(params, means):
            piece = offsets[start:start + p.numel()].view(p.shape)
            p.copy_((m.double() + piece).to(p.dtype))
            start += p.numel()
