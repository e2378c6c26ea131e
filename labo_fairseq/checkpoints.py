"""Checkpoint averaging (what fairseq's scripts/average_checkpoints.py does; that script is not
part of the installed fairseq package), saving, and the one-line account of a checkpoint that
does not load. Imports fairseq only when a checkpoint is read or written."""
import re
from pathlib import Path
from typing import List, Optional, Sequence


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


def checkpoint_load_error(checkpoint, data_bin, text: str) -> Optional[str]:
    """One line for the two ways a checkpoint fails to load, read from the error's text (an
    exception's message, or fairseq-generate's log); None when `text` shows neither:

    - torch's weights-only loader refused the pickle (it refers to a function or class a
      checkpoint of tensors never needs, e.g. posix.system): nothing of it was run;
    - the weights do not fit the model built for the data-bin (another vocabulary: the
      embedding sizes differ; another architecture: parameters missing or unexpected)."""
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+) (?:whose module|was not)", text)
        if found:
            why = f"its pickle refers to {found.group(1)}, which a checkpoint of tensors never needs"
        else:   # the unpickler's own words, without torch's advice to load it unsafely
            lines = (line.replace("Weights only load failed.", "").strip() for line in text.splitlines())
            why = next((line for line in lines if line and "weights_only" not in line and
                        not line.startswith(("Check the documentation", "Please file an issue"))), "unknown")
        return f"checkpoint {checkpoint} is refused, nothing of it was run: {why[:300]}"
    if "Error(s) in loading state_dict" not in text:
        return None
    sizes = re.findall(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                       r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)", text)
    if sizes:
        name, saved, built = sizes[0]
        more = f" (and {len(sizes) - 1} more parameters)" if len(sizes) > 1 else ""
        if "embed_tokens" in name or "output_projection" in name:
            side = "source" if name.startswith("encoder.") else "target"
            return (f"checkpoint {checkpoint} was trained with another vocabulary than data-bin {data_bin}: "
                    f"embedding size {built.split(',')[0]} in the data-bin's {side} dictionary, "
                    f"{saved.split(',')[0]} in the checkpoint ({name}: [{saved}] in the checkpoint, "
                    f"[{built}] for the data-bin){more}")
        return (f"checkpoint {checkpoint} does not fit the model built for data-bin {data_bin}: {name} is "
                f"[{saved}] in the checkpoint, [{built}] in the model{more}")
    detail = re.search(r"((?:Missing|Unexpected) key\(s\) in state_dict: .*)", text)
    return (f"checkpoint {checkpoint} does not fit the model built for data-bin {data_bin}: "
            f"{detail.group(1)[:300] if detail else 'its parameters differ'}")
