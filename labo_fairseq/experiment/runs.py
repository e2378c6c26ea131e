"""The runs of a recipe (method x seed), each a run directory in the layout of
labo_fairseq.evaluation.runs, and the training command and evaluated checkpoint of each."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from labo_fairseq.evaluation.runs import (BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, TENSORBOARD_DIR,
                                          averaged_checkpoint)
from labo_fairseq.experiment.recipe import (PRECISION_FLAGS, PYTHON_BIN, Method, Recipe, RecipeError,
                                            without_optimizer_flags)


@dataclass
class RunPlan:
    name: str
    method: Method
    seed: int
    run_dir: Path
    # flags of the job that trains the run, not of its model (commands.JOB_FLAGS): appended to
    # its training command and free to differ between the jobs of one run
    job_args: Tuple[str, ...] = ()

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR


def plan_runs(recipe: Recipe, out_dir: Path) -> List[RunPlan]:
    return [RunPlan(f"{m.name}-seed{seed}", m, seed, out_dir / f"{m.name}-seed{seed}")
            for m in recipe.methods for seed in recipe.seeds]


def select_runs(runs: Sequence[RunPlan], only: Optional[Sequence[str]], where: str) -> List[RunPlan]:
    """The runs named by --only (run or method names); an unknown name is an error."""
    if not only:
        return list(runs)
    known = {r.name for r in runs} | {r.method.name for r in runs}
    unknown = [n for n in only if n not in known]
    if unknown:
        methods = sorted({r.method.name for r in runs})
        raise RecipeError(f"--only {' '.join(unknown)}: no such method or run in {where} "
                          f"(methods: {', '.join(methods)}; runs are <method>-seed<N>)")
    return [r for r in runs if r.name in only or r.method.name in only]


def train_command(recipe: Recipe, run: RunPlan) -> List[str]:
    common = without_optimizer_flags(recipe.train_args) if run.method.own_optimizer else recipe.train_args
    if run.method.fp32_only:
        common = without_optimizer_flags(common, PRECISION_FLAGS)
    logging = ["--tensorboard-logdir", str(run.run_dir / TENSORBOARD_DIR)] if recipe.tensorboard else []
    return [str(PYTHON_BIN / "fairseq-train"), str(recipe.data_bin), *common,
            *run.method.criterion_args, "--seed", str(run.seed), "--save-dir", str(run.checkpoints), *logging,
            *run.job_args]


def checkpoint_path(recipe: Recipe, run: RunPlan) -> Path:
    """The checkpoint file the recipe's policy evaluates."""
    name = {"last": LAST_CHECKPOINT, "best": BEST_CHECKPOINT,
            "average": averaged_checkpoint(recipe.average_last)}[recipe.checkpoint]
    return run.checkpoints / name


def evaluation_checkpoint(recipe: Recipe, run: RunPlan) -> Path:
    """The checkpoint the recipe's policy evaluates (averaging the last epochs when asked)."""
    path = checkpoint_path(recipe, run)
    if recipe.checkpoint == "average" and not path.exists():
        from labo_fairseq.checkpoints import average_checkpoints, last_epoch_checkpoints

        average_checkpoints(last_epoch_checkpoints(run.checkpoints, recipe.average_last), path)
    return path
