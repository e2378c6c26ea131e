"""The experiment pipeline (labo-experiment): a comparison of label-smoothing methods run from a
recipe. What it does and the recipe format are in the docstring of labo_fairseq.experiment.pipeline
(also labo-experiment --help).

The modules, from the bottom: recipe (schema, checks, grids), commands (training command lines
compared), runs (the planned runs and their directories), records (run.json and eval.done and the
checks against them), plan (--dry-run), children and execute (one run and its child processes),
progress, runner (launchers: the local thread pool), lock, pipeline (run_experiment, the command).
"""
from labo_fairseq.experiment.children import ChildProcesses, Interrupted
from labo_fairseq.experiment.commands import SAVE_FLAGS, SCHEDULE_FLAGS, compare_commands, describe_command_change
from labo_fairseq.experiment.execute import evaluate_run, execute_run
from labo_fairseq.experiment.lock import OutputLock
from labo_fairseq.experiment.pipeline import format_summary, main, prepare_data, run_experiment
from labo_fairseq.experiment.plan import describe_plan, run_state
from labo_fairseq.experiment.progress import ProgressReporter, resume_note, training_progress
from labo_fairseq.experiment.recipe import (DEFAULT_SAVE_INTERVAL_UPDATES, Method, Recipe, RecipeError,
                                            checkpoint_description, expand_methods, load_recipe, resolve_subsets,
                                            without_optimizer_flags)
from labo_fairseq.experiment.records import (RunRefused, check_run_dir, data_fingerprint, describe_data_change,
                                             evaluation_change, evaluation_record, prepare_run_dir)
from labo_fairseq.experiment.runner import Launcher, LocalLauncher, gpu_slots, run_all
from labo_fairseq.experiment.runs import RunPlan, checkpoint_path, plan_runs, select_runs, train_command

__all__ = ["check_run_dir", "checkpoint_description", "checkpoint_path", "ChildProcesses", "compare_commands",
           "data_fingerprint", "DEFAULT_SAVE_INTERVAL_UPDATES", "describe_command_change", "describe_data_change",
           "describe_plan", "evaluate_run", "evaluation_change", "evaluation_record", "execute_run",
           "expand_methods", "format_summary", "gpu_slots", "Interrupted", "Launcher", "load_recipe",
           "LocalLauncher", "main", "Method", "OutputLock", "plan_runs", "prepare_data", "prepare_run_dir",
           "ProgressReporter", "Recipe", "RecipeError", "resolve_subsets", "resume_note", "run_all",
           "run_experiment", "run_state", "RunPlan", "RunRefused", "SAVE_FLAGS", "SCHEDULE_FLAGS", "select_runs",
           "train_command", "training_progress", "without_optimizer_flags"]
