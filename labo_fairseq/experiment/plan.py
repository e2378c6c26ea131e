"""The dry run: what running the recipe would do for each run now, without running or writing."""
import shlex
from pathlib import Path
from typing import Optional, Sequence

from labo_fairseq.evaluation.runs import COMMAND_FILE, LAST_CHECKPOINT, TRAIN_DONE
from labo_fairseq.experiment.recipe import Recipe, checkpoint_description, resolve_subsets, substitute
from labo_fairseq.experiment.records import RunRefused, check_run_dir, data_fingerprint, evaluation_change
from labo_fairseq.experiment.runs import RunPlan, train_command


def run_state(recipe: Recipe, run: RunPlan, subsets: Optional[Sequence[str]]) -> str:
    """What running the recipe would do for this run now (what --dry-run prints); `subsets` is
    None while the data-bin is still to be prepared."""
    try:
        extended = check_run_dir(recipe, run, None if subsets is None else data_fingerprint(recipe.data_bin))
    except RunRefused as refused:
        return f"refused: {refused.reason}"
    if extended is not None and (run.run_dir / TRAIN_DONE).exists():
        return f"train further from {LAST_CHECKPOINT} ({extended}), then evaluate"
    if not (run.run_dir / TRAIN_DONE).exists():
        last = run.checkpoints / LAST_CHECKPOINT
        return f"resume training from {LAST_CHECKPOINT}, then evaluate" if last.exists() else "train, then evaluate"
    if subsets is None:
        return "decided once the data-bin is prepared"
    change = evaluation_change(recipe, run, subsets)
    return "finished (skipped)" if change is None else f"evaluate again ({change})"


def describe_plan(recipe: Recipe, runs: Sequence[RunPlan], out_dir: Path) -> str:
    """--dry-run: the data step, each run's state, and the training commands as a shell script."""
    from tabulate import tabulate

    if any(recipe.data_bin.glob("dict.*.txt")):
        data, subsets = f"use {recipe.data_bin}", resolve_subsets(recipe)
    else:
        prepare = "no [data] prepare command: would fail" if recipe.prepare is None else \
            shlex.join(substitute(a, recipe.variables, str(recipe.path)) for a in recipe.prepare)
        data, subsets = f"prepare {recipe.data_bin}: {prepare}", None
    rows = [(r.name, r.method.label, r.seed, run_state(recipe, r, subsets)) for r in runs]
    shown = subsets or (None if recipe.subsets == ["all"] else recipe.subsets)
    lines = [f"recipe {recipe.path} -> {out_dir}", f"data: {data}",
             f"test sets: {', '.join(shown) if shown else 'every test split of the prepared data-bin'}; "
             f"evaluating {checkpoint_description(recipe)}", "",
             tabulate(rows, headers=["run", "method", "seed", "to do"], tablefmt="simple", disable_numparse=True),
             "", f"# training commands (each run also writes its own to <run>/{COMMAND_FILE})"]
    for run in runs:
        lines += [f"# {run.name}", shlex.join(train_command(recipe, run))]
    return "\n".join(lines)
