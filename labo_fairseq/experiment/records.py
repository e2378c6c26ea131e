"""What a run directory records and what it is checked against: run.json (the training command
and a fingerprint of the training data) and eval.done (what the evaluation depended on); a run
directory that the recipe may not reuse is refused (RunRefused)."""
import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.errors import UserError
from labo_fairseq.evaluation.runs import (EVAL_DONE, FAILED_FILE, LONGTAIL_FILE, RUN_FILE, SCORES_FILE, TRAIN_DONE,
                                          eval_dir)
from labo_fairseq.experiment.commands import compare_commands
from labo_fairseq.experiment.recipe import Recipe, RecipeError, checkpoint_description, split_name
from labo_fairseq.experiment.runs import RunPlan, checkpoint_path, train_command
from labo_fairseq.textfiles import read_json_object, write_json_atomic


JOBS_KEY = "jobs"  # run.json: the submitit jobs that ran the run, oldest first (experiment.launchers)
KEPT_RUN_KEYS = (JOBS_KEY,)  # run.json keys that rewriting it keeps


def recorded_jobs(run: RunPlan) -> List[dict]:
    """The jobs run.json records for the run ([] without a readable run.json)."""
    try:
        jobs = read_json_object(run.run_dir / RUN_FILE, "run record").get(JOBS_KEY, [])
    except UserError:
        return []
    return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []


def record_failure(run: RunPlan, error: BaseException) -> None:
    """Leaves why the run failed in <run>/FAILED (the report and the next attempt read it)."""
    if run.run_dir.is_dir():
        (run.run_dir / FAILED_FILE).write_text(f"{error}\n", encoding="utf-8")


def clear_failure(run: RunPlan) -> None:
    (run.run_dir / FAILED_FILE).unlink(missing_ok=True)


class RunRefused(RecipeError):
    """A run directory that the recipe may not reuse; `reason` is the short form --dry-run shows."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def evaluation_settings(recipe: Recipe, subsets: Sequence[str]) -> dict:
    """The recipe's settings that decide a run's evaluation."""
    return {**recipe.evaluate, "checkpoint": checkpoint_description(recipe), "subsets": list(subsets)}


def data_fingerprint(data_bin: Path, subsets: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """What runs on `data_bin` depend on: its dictionaries ({"entries", "sha256"}) and the sizes of
    its split files ({"bytes"}), of the training and validation splits (all but test*) or, given
    `subsets`, of those splits."""
    out: Dict[str, dict] = {}
    for path in sorted(data_bin.glob("dict.*.txt")):
        data = path.read_bytes()
        out[path.name] = {"entries": data.count(b"\n"), "sha256": hashlib.sha256(data).hexdigest()}
    for path in sorted([*data_bin.glob("*.bin"), *data_bin.glob("*.idx")]):
        split = split_name(path)
        wanted = split in subsets if subsets is not None else not split.startswith("test")
        if wanted:
            out[path.name] = {"bytes": path.stat().st_size}
    return out


def describe_data_change(old, new: Dict[str, dict], most: int = 3) -> str:
    """'dict.en.txt 576 -> 384 entries; train.de-en.en.bin 10240 -> 9216 bytes' for two fingerprints."""
    old = old if isinstance(old, dict) else {}
    changes = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None or after is None:
            changes.append(f"{name} {'added' if before is None else 'removed'}")
            continue
        sizes = [f"{before[k]} -> {after[k]} {k}" for k in ("entries", "bytes")
                 if isinstance(before, dict) and k in before and before.get(k) != after.get(k)]
        changes.append(f"{name} {sizes[0] if sizes else 'changed'}")
    more = f"; {len(changes) - most} more" if len(changes) > most else ""
    return "; ".join(changes[:most]) + more


def _file_identity(path: Path) -> Optional[dict]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return {"file": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def evaluation_record(recipe: Recipe, run: RunPlan, subsets: Sequence[str]) -> dict:
    """What a run's evaluation depends on, as eval.done records it: the evaluation settings, the
    data-bin's dictionaries and test split files, and the evaluated checkpoint file."""
    return {**evaluation_settings(recipe, subsets), "data_fingerprint": data_fingerprint(recipe.data_bin, subsets),
            "checkpoint_file": _file_identity(checkpoint_path(recipe, run))}


def evaluation_change(recipe: Recipe, run: RunPlan, subsets: Sequence[str]) -> Optional[str]:
    """Why the run must be evaluated (again), or None when its evaluation is complete and eval.done
    matches what evaluating it now would depend on. An unreadable eval.done is a reason too."""
    done = run.run_dir / EVAL_DONE
    if not done.exists():
        return "no finished evaluation"
    try:
        recorded = read_json_object(done, "evaluation record")
    except UserError as error:
        return str(error)
    changes = []
    for key, value in evaluation_record(recipe, run, subsets).items():
        before = recorded.get(key)
        if before == value:
            continue
        if key not in recorded:
            changes.append(f"{done} records no {key}")
        elif key == "data_fingerprint":
            changes.append(f"test data in {recipe.data_bin} changed ({describe_data_change(before, value)})")
        elif key == "checkpoint_file":
            changes.append(f"{checkpoint_path(recipe, run).name} " + (
                "is missing" if value is None else "changed since it was evaluated"))
        else:
            changes.append(f"{key} {json.dumps(before)} -> {json.dumps(value)}")
    if changes:
        return "; ".join(changes)
    missing = [eval_dir(run.run_dir, s) / f for s in subsets for f in (SCORES_FILE, LONGTAIL_FILE)
               if not (eval_dir(run.run_dir, s) / f).exists()]
    return f"{missing[0]} is missing" if missing else None


def check_run_dir(recipe: Recipe, run: RunPlan, data: Optional[Dict[str, dict]]) -> Optional[str]:
    """Refuses (RunRefused) a run directory whose run.json is unreadable, records another training
    command, or records other training data than `data` (the data-bin's fingerprint now; None:
    not checked). A run.json without a fingerprint (older runs) is taken as trained on `data`.
    Schedule and save flags are not compared (compare_commands), except that a finished run is
    refused a shorter schedule. Returns how the schedule was extended (None: it was not)."""
    run_json = run.run_dir / RUN_FILE
    if not run_json.exists():
        return None
    remedy = "remove that directory to run it again, or choose another --out"
    try:
        info = read_json_object(run_json, "run record")
    except UserError as error:
        raise RunRefused(f"{error}; {remedy}", str(error)) from None
    recorded = info.get("train_command")
    if not isinstance(recorded, list) or not all(isinstance(a, str) for a in recorded):
        reason = f"{run_json} has no train_command list"
        raise RunRefused(f"{reason}; {remedy}", reason)
    command = train_command(recipe, run)
    change, extended, shortened = compare_commands(recorded, command) if recorded else ("train_command is empty",
                                                                                         None, None)
    if change is not None:
        raise RunRefused(f"{run.run_dir} was trained with a different command than recipe {recipe.path} now gives "
                         f"({change}); {remedy}", f"trained with another command ({change})")
    if shortened is not None and (run.run_dir / TRAIN_DONE).exists():
        raise RunRefused(f"{run.run_dir} was trained for longer than recipe {recipe.path} now asks ({shortened}); "
                         f"{remedy}", f"trained for longer ({shortened})")
    if data is not None and "data_fingerprint" in info and info["data_fingerprint"] != data:
        change = describe_data_change(info["data_fingerprint"], data)
        raise RunRefused(f"{run.run_dir} was trained on other data than {recipe.data_bin} now holds ({change}): "
                         f"its model does not belong to that data; {remedy}", f"trained on other data ({change})")
    return extended


def prepare_run_dir(recipe: Recipe, run: RunPlan, subsets: Sequence[str], data: Dict[str, dict]):
    """Creates or checks the run directory (see check_run_dir); returns (the training command, how a
    finished run's schedule was extended or None). A finished run whose schedule was extended
    loses its train.done before run.json records the new command, so that it trains further
    even if this attempt is interrupted."""
    extended = check_run_dir(recipe, run, data)
    if extended is not None and (run.run_dir / TRAIN_DONE).exists():
        (run.run_dir / TRAIN_DONE).unlink()
    else:
        extended = None
    command = train_command(recipe, run)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run_json = run.run_dir / RUN_FILE
    kept = read_json_object(run_json, "run record") if run_json.exists() else {}  # readable: checked above
    info = {"method": run.method.kind, "label": run.method.label, "config": run.method.name, "seed": run.seed,
            "recipe": recipe.name, "run": run.name, **run.method.params,
            "checkpoint": checkpoint_description(recipe), "subsets": list(subsets), "train_command": command,
            "data_fingerprint": data, **{key: kept[key] for key in KEPT_RUN_KEYS if key in kept}}
    write_json_atomic(run.run_dir / RUN_FILE, info)
    return command, extended
