"""Runs a comparison of label-smoothing methods from a recipe: prepare data, train each method x
seed (several at once with --jobs), pick the checkpoint to evaluate, evaluate each test split,
analyse the long tail and write the comparison report.

A recipe is a small TOML file (see recipes/); every key is checked before anything runs
(numbers finite and in range, seeds distinct, tau >= the LABO op's TAU_MIN, the test splits
present in the data-bin once it exists)::

    name = "multi30k-gpu"
    seeds = [1, 2, 3]            # distinct integers in [0, 2^32)

    [data]
    prepare = ["labo-prepare", "multi30k", "--raw-dir", "{DATA_DIR}"]  # optional
    data_bin = "data/data-bin/multi30k.de-en"       # preparing is skipped when this exists
    train_target = "data/multi30k.de-en/train.en"    # long-tail frequencies (subworded text)
    subsets = ["test"]           # or "all": every test split of data_bin (test, test1, ...)
    launcher = "here"            # "job": with --launcher slurm / submitit-local, prepare as a job
                                 # of its own (no GPU), waited for before any run's job

    [train]
    args = ["--arch", "transformer", "--max-update", "1000", ...]   # fairseq-train flags
    save_interval_updates = 250  # also save a checkpoint every N updates (default 250; 0: only at
                                 # epoch ends): adds --save-interval-updates N --keep-interval-updates 1
                                 # unless args set --save-interval-updates themselves. Size N so that
                                 # an interrupt loses at most a minute or two of training. fairseq
                                 # also validates at each of these saves.
    tensorboard = false          # true: each run logs to OUT/<run>/tb/ (fairseq's --tensorboard-logdir);
                                 # view with `tensorboard --logdir OUT` (pip install labo_fairseq[viz])

    [evaluate]
    checkpoint = "average"       # "last" (default), "average" (of the last `average_last` epoch
    average_last = 5             # checkpoints) or "best" (checkpoint_best.pt by nll_loss, which
                                 # LS and LABO measure alike; adds --best-checkpoint-metric nll_loss)
    beam = 5, lenpen = 1.0, batch_size = 128, cpu = false
    longtail_level = "word"      # or "token" (subwords), "auto" (words when either side is subworded)

    [[methods]]
    kind = "ls"                  # fairseq's label_smoothed_cross_entropy
    label_smoothing = 0.1
    [[methods]]
    kind = "labo"                # label_smoothed_labo; lists of tau and label_smoothing give
    tau = [1.15, 1.25]           # one method per (label_smoothing, tau) pair: a grid
    label_smoothing = [0.1, 0.2]
    [[methods]]
    kind = "tsla"                # smoothing only for the first `stop_update` updates
    stop_update = 3000
    tau = 1.25                   # LABO's tau, or "inf" for two-stage *uniform* smoothing
    [[methods]]
    kind = "ivon"                # IVON (variational learning): --task translation_ivon
    criterion = "ce"             # --optimizer ivon, with cross-entropy, "ls" or "labo" on top
    lr = 0.2                     # required: IVON's lr has its own scale; optional: mc_samples,
                                 # ess, hess_init. The [train] optimizer flags (--optimizer,
                                 # --adam-*, --lr) and --fp16/--bf16/--amp are dropped for it.
    [[methods]]
    kind = "ols"                 # Online Label Smoothing (label_smoothed_ols): epoch 1 smooths
    ols_weight = [0.3, 0.5]      # uniformly (label_smoothing), later epochs towards each gold
                                 # type's mean correct prediction; w in [0, 1], a list is a grid;
                                 # ols_topk = K keeps K entries per row of S (0: dense)
    [[methods]]
    kind = "sam"                 # SAM: --task translation_sam, two forward/backward passes per
    sam_rho = [0.05, 0.1]        # update; rho > 0, a list is a grid; sam_adaptive = true: ASAM
    criterion = "ls"             # on top of "ls" (default), "labo" (with tau) or "ols" (with
                                 # ols_weight). fp32 only: --fp16/--bf16/--amp are dropped for it.

Methods may also carry `label` (the name in tables) and `args` (extra fairseq-train flags).
Strings may use {DATA_DIR} (the --data-dir option or $DATA_DIR) and {REPO} (this checkout).
Relative paths are taken from the working directory.

Each run gets OUT/<method>-seed<N>/ in the layout of `labo_fairseq.evaluation.runs` (run.json,
train.log, checkpoints/, eval/<subset>/...), plus command.sh with the exact command line.
run.json records the training command and a fingerprint of the data-bin (its dictionaries'
hashes, the sizes of its training and validation split files); eval.done records what the
evaluation depended on (the [evaluate] settings, the dictionaries and test split files, the
evaluated checkpoint's size and mtime). On re-run a run whose eval.done still matches is skipped;
any other difference, or an unreadable eval.done, evaluates it again. A run whose recorded
training command or training data differs from what the recipe and data-bin give now, or whose
run.json is unreadable, is refused in one line naming the directory and the change: its model
does not belong to them (remove the directory or choose another --out). Flags that only set how
long training lasts or how often it saves (--max-update, --max-epoch, --save-interval-updates,
--keep-interval-updates) are not such a change: raising --max-update or --max-epoch trains a
finished run further from its checkpoint_last.pt, then evaluates it again; lowering them below what
a finished run was trained for is refused. An interrupted training resumes from its
checkpoint_last.pt (fairseq's own --restore-file); the interrupt names, for each run, the update it
resumes from and how many updates will be redone. A failed run is reported and
the others still run and are reported. Ctrl-C or SIGTERM stops every child and leaves resumable
runs; children also die if this process is killed. One pipeline at a time may use an output
directory (OUT/.experiment.lock, removed when it exits).
`--dry-run` prints each run's state and training command without running or writing anything.
While runs train, a status line gives the runs started and finished, each training run's update
out of its --max-update (read from its train.log), the time elapsed and the training time left as
estimated from the update rates so far: on a terminal one line rewritten every second, in a log or
a pipe a plain line every minute (--progress SECONDS; 0: no status). With
--jobs 1 the runs' output streams to the console, less fairseq's configuration and model print
(in each run's train.log; --verbose shows them).

--launcher slurm runs each run as a SLURM job through submitit, as the [slurm] table says (keys:
partition, account, qos, constraint, nodes, gpus_per_run, cpus_per_gpu, mem_gb, time_min,
array_parallelism, distributed_port, setup; the --slurm-* flags override them): the pipeline
submits, prints a line whenever a job's state changes (and the status line), waits and writes
the report; --no-wait submits and exits, and the same command run again attaches to the jobs
recorded in each run's run.json. gpus_per_run is the GPUs on each node of a run's job: more
than one GPU in all trains with fairseq's --distributed-world-size (nodes x gpus_per_run);
nodes > 1 trains over that many nodes with fairseq's SLURM initialisation (--distributed-port;
the first node keeps the records and evaluates). [data] launcher = "job" prepares the data as a job of its own (OUT/prepare/) and
waits for it before submitting any run (with --launcher pool it prepares here). --launcher
submitit-local runs the same jobs on this machine, --jobs at a time (one node each).
--launcher slurm --dry-run prints each job's sbatch script. See the README, "On a SLURM cluster".
"""
import argparse
import json
import math
import shlex
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from labo_fairseq.errors import EXIT_FAILED, run_command
from labo_fairseq.experiment.children import tool_env
from labo_fairseq.experiment.console import say
from labo_fairseq.experiment.launchers import (JobsSubmitted, SubmititLauncher, add_launcher_arguments, describe_jobs,
                                               flag_overrides, make_launcher, refuse_live_prepare_job)
from labo_fairseq.experiment.lock import OutputLock
from labo_fairseq.experiment.plan import describe_plan
from labo_fairseq.experiment.recipe import Recipe, RecipeError, checkpoint_description, load_recipe, resolve_subsets, \
    substitute
from labo_fairseq.experiment.runner import Launcher, LocalLauncher
from labo_fairseq.experiment.runs import plan_runs, select_runs
from labo_fairseq.procs import child_command
from labo_fairseq.textfiles import write_text_atomic


def prepare_data_as_job(recipe: Recipe, launcher: Optional[Launcher], out_dir) -> None:
    """[data] launcher = "job" with a submitit launcher: prepares the data-bin, unless it holds
    data already, as a job of its own and waits for it, before anything else is submitted (then
    prepare_data finds it). First, a preparation job recorded under `out_dir` without an end (it
    may be writing the data-bin) is attached to, or refused when this launcher cannot follow it.
    With another launcher, "job" only earns a note when preparing is needed: prepare_data runs here."""
    as_job = recipe.data_launcher == "job" and isinstance(launcher, SubmititLauncher)
    if as_job:
        launcher.follow_prepare_job(out_dir)
    else:
        refuse_live_prepare_job(out_dir)
    if any(recipe.data_bin.glob("dict.*.txt")) or recipe.prepare is None:
        return
    if not as_job:
        if recipe.data_launcher == "job":
            say('data: [data] launcher = "job" applies to --launcher slurm and submitit-local; preparing here')
        return
    command = [substitute(a, recipe.variables, str(recipe.path)) for a in recipe.prepare]
    launcher.submit_prepare_job(recipe, command, out_dir)
    if not any(recipe.data_bin.glob("dict.*.txt")):
        raise RecipeError(f"data preparation ended but {recipe.data_bin} holds no fairseq data (dict.*.txt): "
                          f"check [data] data_bin against what `{shlex.join(command)}` writes")


def prepare_data(recipe: Recipe) -> None:
    """Runs the recipe's prepare command unless its data-bin already holds dictionaries."""
    if any(recipe.data_bin.glob("dict.*.txt")):
        say(f"data: using {recipe.data_bin}")
        return
    if recipe.prepare is None:
        raise RecipeError(f"{recipe.path}: data_bin {recipe.data_bin} holds no fairseq data and the recipe "
                          f"has no [data] prepare command")
    command = [substitute(a, recipe.variables, str(recipe.path)) for a in recipe.prepare]
    say(f"data: preparing with {shlex.join(command)}")
    if subprocess.run(child_command(command), env=tool_env()).returncode != 0:
        raise RecipeError(f"data preparation failed: {shlex.join(command)}")


def run_experiment(recipe: Recipe, out_dir, only: Optional[Sequence[str]] = None, jobs: int = 1,
                   progress_interval: float = 0.0, launcher: Optional[Launcher] = None) -> dict:
    """Runs everything; returns {"runs": {name: "done"|"skipped"|"failed: ..."}, "timing": ..., "report": headline|None}.
    The runs go through `launcher` (default: LocalLauncher(jobs, progress_interval))."""
    from labo_fairseq.evaluation.errors import EvaluationError
    from labo_fairseq.evaluation.report import build_report

    out_dir = Path(out_dir)
    runs = select_runs(plan_runs(recipe, out_dir), only, str(recipe.path))
    launcher = launcher or LocalLauncher(jobs, progress_interval)
    lock = OutputLock(out_dir)
    try:
        prepare_data_as_job(recipe, launcher, out_dir)
        prepare_data(recipe)
        subsets = resolve_subsets(recipe)
        say(f"{len(runs)} run(s), {launcher.describe(len(runs))}; test sets: {', '.join(subsets)}; "
            f"evaluating {checkpoint_description(recipe)}")
        results = launcher(recipe, runs, subsets)
        status = {r.name: results[r.name]["status"] for r in runs}
        finished = [r.run_dir for r in runs if not status[r.name].startswith("failed")]
        failed = {name: state[len("failed: "):] for name, state in status.items() if state.startswith("failed")}
        headline = None
        if finished:
            say(f"report: {len(finished)} run(s) -> {out_dir / 'report'}")
            try:
                headline = build_report(finished, out_dir / "report", subsets=subsets, failed=failed)
            except EvaluationError as error:
                say(f"report: FAILED: {error}")
        if headline is None and (out_dir / "report").exists():
            say(f"report: none built this time; {out_dir / 'report'} is from an earlier run of the pipeline")
        summary = {"recipe": str(recipe.path), "runs": status,
                   "timing": {r.name: {k: results[r.name][k] for k in ("started", "finished")} for r in runs},
                   "report": headline}
        write_text_atomic(out_dir / "experiment.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary
    finally:
        lock.release()


def format_summary(summary: dict) -> str:
    """What the command prints at the end: run status, then the report's headline tables
    (one per test set, with the difference to LS and its significance) and verdicts."""
    from labo_fairseq.evaluation.report import format_headline

    lines = ["", "runs:"] + [f"  {name:<32} {state}" for name, state in summary["runs"].items()]
    headline = summary["report"]
    if headline:
        lines += ["", "headline:", format_headline(headline)]
        lines += ["", f"report: {headline['files']['markdown']}", f"        {headline['files']['html']}"]
    return "\n".join(lines)


def main(argv=None, prog: str = "labo-experiment") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe file (TOML) or a packaged recipe's name, e.g. multi30k-cpu; "
                                       "the format is above (and in the README, 'Recipe format')")
    parser.add_argument("--out", help="experiment directory (default: runs/<recipe name>)")
    parser.add_argument("--data-dir", help="value of {DATA_DIR} in the recipe (default: $DATA_DIR)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these methods or runs (e.g. ls-a0.1 labo-a0.1-tau1.25-seed2)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run (each run's state and training command) and exit")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train and evaluate up to N runs at once (default 1: one at a time, with their "
                             "output on the console); several visible GPUs are shared round-robin")
    parser.add_argument("--progress", type=float, default=60.0, metavar="SECONDS",
                        help="how often a plain status line is printed while runs train when the output is not "
                             "a terminal (on a terminal the line is rewritten every second): runs started and "
                             "finished, each training run's update out of --max-update, elapsed time, training "
                             "time left (default 60; 0: no status)")
    parser.add_argument("--verbose", action="store_true",
                        help="show all of the output of training on the console (by default fairseq's "
                             "configuration and model print go to the run's train.log only)")
    add_launcher_arguments(parser)
    args = parser.parse_args(argv)
    overrides = flag_overrides(args, parser.error)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if not (args.progress >= 0 and math.isfinite(args.progress)):
        parser.error(f"--progress must be a number of seconds >= 0, got {args.progress:g}")

    def body() -> int:
        recipe = load_recipe(args.recipe, args.data_dir)
        out_dir = Path(args.out or Path("runs") / recipe.name)
        recipe, launcher = make_launcher(args, recipe, overrides)
        if args.dry_run:
            runs = select_runs(plan_runs(recipe, out_dir), args.only, str(recipe.path))
            if isinstance(launcher, SubmititLauncher):
                runs = launcher.runs_as_jobs(recipe, runs)
            print(describe_plan(recipe, runs, out_dir))
            if args.launcher == "slurm":
                print("\n" + describe_jobs(recipe, runs, launcher.settings, out_dir))
            return 0
        try:
            summary = run_experiment(recipe, out_dir, args.only, args.jobs, args.progress, launcher)
        except JobsSubmitted as submitted:
            say(f"--no-wait: {submitted}")
            return 0
        print(format_summary(summary))
        failed = [name for name, state in summary["runs"].items() if state.startswith("failed")]
        return EXIT_FAILED if failed or summary["report"] is None else 0

    return run_command(prog, body, interrupted="every child process was stopped. Run the same command "
                                                "again to resume." if args.launcher == "pool" else
                       "run the same command again to attach to the jobs left running or resume the others.")
