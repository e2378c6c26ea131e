"""One run from start to end: train (or resume, or train further), then evaluate each test set
and analyse its long tail; what a launcher runs for each planned run, in any process."""
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from labo_fairseq.evaluation.runs import (COMMAND_FILE, EVAL_DONE, HYP_FILE, LAST_CHECKPOINT, LONGTAIL_FILE, REF_FILE,
                                          TRAIN_DONE, TRAIN_LOG, eval_dir, tool_log)
from labo_fairseq.experiment.children import ChildProcesses, Interrupted
from labo_fairseq.experiment.console import say
from labo_fairseq.experiment.recipe import Recipe
from labo_fairseq.experiment.records import data_fingerprint, evaluation_change, evaluation_record, prepare_run_dir
from labo_fairseq.experiment.runs import RunPlan, checkpoint_path, evaluation_checkpoint, train_command
from labo_fairseq.textfiles import write_json_atomic, write_text_atomic


def evaluate_run(recipe: Recipe, run: RunPlan, checkpoint: Path, subsets: Sequence[str], children: ChildProcesses,
                 stream: bool, env: Optional[Dict[str, str]]) -> None:
    ev = recipe.evaluate
    (run.run_dir / EVAL_DONE).unlink(missing_ok=True)
    record = evaluation_record(recipe, run, subsets)
    for subset in subsets:
        out = eval_dir(run.run_dir, subset)
        command = [sys.executable, "-m", "labo_fairseq.cli", "evaluate", str(recipe.data_bin), str(checkpoint), str(out),
                   "--subset", subset, "--beam", str(ev["beam"]), "--lenpen", str(ev["lenpen"]),
                   "--batch-size", str(ev["batch_size"]), *(["--cpu"] if ev["cpu"] else [])]
        if stream:
            say(f"{run.name}: evaluating on {subset}")
        out.mkdir(parents=True, exist_ok=True)
        children.run(command, tool_log(run.run_dir, "evaluate", subset), f"evaluation of {run.name} on {subset}",
                     stream, env=env)
        longtail = [sys.executable, "-m", "labo_fairseq.cli", "longtail",
                    "--train-ref", str(recipe.train_target), "--hyp", str(out / HYP_FILE), "--ref", str(out / REF_FILE),
                    "--level", str(ev["longtail_level"]), "--json", str(out / LONGTAIL_FILE)]
        children.run(longtail, tool_log(run.run_dir, "longtail", subset), f"long-tail analysis of {run.name} on {subset}",
                     stream, env=env)
    write_json_atomic(run.run_dir / EVAL_DONE, record)


def remove_torn_saves(run: RunPlan) -> None:
    """Removes the CHECKPOINT.pt.tmp files of the run's earlier training, saves a kill cut short:
    fairseq writes each checkpoint aside and renames it, so they are never a checkpoint."""
    for torn in run.checkpoints.glob("*.pt.tmp"):
        torn.unlink(missing_ok=True)


def execute_run(recipe: Recipe, run: RunPlan, subsets: Sequence[str], children: ChildProcesses,
                stream: bool = True, env: Optional[Dict[str, str]] = None) -> str:
    """Trains (or resumes) and evaluates one run; returns "done" or "skipped"."""
    if children.stopping.is_set():  # interrupted: nothing more starts
        raise Interrupted()
    command, extended = prepare_run_dir(recipe, run, subsets, data_fingerprint(recipe.data_bin))
    trained = (run.run_dir / TRAIN_DONE).exists()
    change = evaluation_change(recipe, run, subsets) if trained else None
    if trained and change is None:
        if stream:
            say(f"{run.name}: already finished, skipping")
        return "skipped"
    write_text_atomic(run.run_dir / COMMAND_FILE, shlex.join(command) + "\n")
    if not trained:
        resuming = (run.checkpoints / LAST_CHECKPOINT).exists()
        remove_torn_saves(run)
        if stream:
            doing = f"training further ({extended})" if extended else "resuming" if resuming else "training"
            say(f"{run.name}: {doing} ({run.method.label}, seed {run.seed}); log: {run.run_dir / TRAIN_LOG}")
        with children.training(run):
            children.run(command, run.run_dir / TRAIN_LOG, f"training {run.name}", stream, append=resuming, env=env)
        write_text_atomic(run.run_dir / TRAIN_DONE, time.strftime("%Y-%m-%d %H:%M:%S\n"))
        if recipe.checkpoint == "average":  # an average of earlier epochs is out of date now
            checkpoint_path(recipe, run).unlink(missing_ok=True)
    elif stream:
        say(f"{run.name}: evaluating again ({change})")
    evaluate_run(recipe, run, evaluation_checkpoint(recipe, run), subsets, children, stream, env)
    return "done"


def node_train_log(run: RunPlan, node: int) -> Path:
    """The training log of node `node` > 0 of a multi-node run (the first node's is train.log)."""
    return run.run_dir / f"train.node{node}.log"


def train_on_other_node(recipe: Recipe, run: RunPlan, node: int, children: ChildProcesses) -> str:
    """Node `node` > 0 of a multi-node run: the first node's training command, into
    node_train_log; fairseq's SLURM initialisation makes its workers ranks of the same training.
    The first node alone writes the run's records (run.json, command.sh, train.done, FAILED) and
    evaluates. Both decide from train.done whether there is training to do, which the submitter
    settled before the job started (prepare_run_dir). Returns what it did."""
    if children.stopping.is_set():
        raise Interrupted()
    if (run.run_dir / TRAIN_DONE).exists():
        return f"nothing to train on node {node} (training had finished)"
    resuming = (run.checkpoints / LAST_CHECKPOINT).exists()
    children.run(train_command(recipe, run), node_train_log(run, node), f"training {run.name} on node {node}",
                 stream=False, append=resuming)
    return f"trained on node {node}"
