"""Checkpoint averaging (what fairseq's scripts/average_checkpoints.py does; that script is not
part of the installed fairseq package)."""
import re
from pathlib import Path
from typing import List, Sequence

import torch


def last_epoch_checkpoints(save_dir, n: int) -> List[Path]:
    """The `n` checkpointN.pt files of the highest epochs, oldest first."""
    found = sorted((int(m.group(1)), p) for p in Path(save_dir).glob("checkpoint*.pt")
                   if (m := re.fullmatch(r"checkpoint(\d+)\.pt", p.name)))
    if len(found) < n:
        raise ValueError(f"average_last={n} needs {n} epoch checkpoints in {save_dir}, found {len(found)} "
                         f"(is --no-epoch-checkpoints set, or --keep-last-epochs smaller?)")
    return [p for _, p in found[-n:]]


def average_checkpoints(paths: Sequence, out_path) -> Path:
    """Writes a checkpoint whose model parameters are the mean of those in `paths`; everything
    else (cfg, dictionaries' settings) comes from the last one. Loads through fairseq's loader, so
    the same weights-only rules apply."""
    from fairseq import checkpoint_utils

    if not paths:
        raise ValueError("no checkpoints to average")
    total = None
    for path in paths:
        problem = checkpoint_utils.checkpoint_problem(str(path))
        if problem is not None:
            raise ValueError(f"cannot average {path}: {problem}")
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
        model = state["model"]
        if total is None:
            total = {k: v.double() if v.is_floating_point() else v.clone() for k, v in model.items()}
        elif model.keys() != total.keys():
            raise ValueError(f"{path} has other parameters than {paths[0]}; cannot average them")
        else:
            for k, v in model.items():
                if v.is_floating_point():
                    total[k] += v.double()
    state["model"] = {k: (v / len(paths)).to(state["model"][k].dtype) if v.is_floating_point() else v
                      for k, v in total.items()}
    state.pop("last_optimizer_state", None)  # not needed to translate
    return save_checkpoint_state(state, out_path)


def save_checkpoint_state(state: dict, out_path) -> Path:
    """Saves a state from fairseq's `load_checkpoint_to_cpu` as a checkpoint fairseq loads again,
    with fairseq's own checkpoint writer: written aside, flushed to disk and renamed, so no
    half-written checkpoint is left where evaluation would pick it up (on failure the error names
    `out_path`, and a file already there is left as it was)."""
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    # fairseq's loader hands back cfg as an OmegaConf object; store it as fairseq's trainer does
    # (a plain container), which its weights-only loader accepts
    if OmegaConf.is_config(state.get("cfg")):
        state = {**state, "cfg": OmegaConf.to_container(state["cfg"], resolve=True, enum_to_str=True)}
    out_path = Path(out_path)
    checkpoint_utils.torch_persistent_save(state, str(out_path))
    return out_path
