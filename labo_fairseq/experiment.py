"""Runs an LS-vs-LABO comparison from a recipe: prepare data, train each method x seed,
optionally average the last checkpoints, evaluate each test split, analyse the long tail and
write the comparison report.

A recipe is a small TOML file (see recipes/)::

    name = "multi30k-cpu"
    seeds = [1]

    [data]
    prepare = ["bash", "data-prep/prepare-multi30k.sh", "--raw-dir", "{DATA_DIR}"]  # optional
    data_bin = "data/data-bin/multi30k.de-en"       # skipped preparing when this exists
    train_target = "data/multi30k.de-en/train.en"    # long-tail frequencies (subworded text)
    subsets = ["test"]

    [train]
    args = ["--arch", "transformer", "--max-update", "1000", ...]   # fairseq-train flags
    average_last = 0             # >0: average the last N epoch checkpoints before evaluating

    [evaluate]
    beam = 5, lenpen = 1.0, batch_size = 128, cpu = true, longtail_level = "word"

    [[methods]]
    kind = "ls"                  # fairseq's label_smoothed_cross_entropy
    label_smoothing = 0.1
    [[methods]]
    kind = "labo"                # label_smoothed_labo; a list of tau gives one method per tau
    tau = [1.15, 1.25]
    [[methods]]
    kind = "tsla"                # smoothing only for the first `stop_update` updates
    stop_update = 3000
    tau = 1.25                   # LABO's tau, or "inf" for two-stage *uniform* smoothing

Strings may use {DATA_DIR} (the --data-dir option or $DATA_DIR) and {REPO} (this checkout).
Relative paths are taken from the working directory.

Each run gets OUT/<run-name>/ in the layout of `labo_fairseq.evaluation.runs` (run.json,
train.log, checkpoints/, eval/<subset>/...), plus command.sh with the exact command lines.
A run whose evaluation is complete is skipped on re-run; an interrupted training resumes from
its checkpoint_last.pt (fairseq's own --restore-file); a run whose recorded training command
differs from the recipe's is refused rather than silently mixed. A failed run is reported and
the others still run and are reported.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
PYTHON_BIN = Path(sys.executable).parent
TRAIN_DONE = "train.done"
METHOD_KINDS = ("ls", "labo", "tsla")


class RecipeError(ValueError):
    """A recipe that cannot be run; the message names the file and the offending entry."""


@dataclass
class Method:
    kind: str
    name: str    # file-system safe, e.g. "labo-tau1.25"
    label: str   # shown in tables, e.g. "LABO τ=1.25"
    criterion_args: List[str]
    params: Dict[str, object] = field(default_factory=dict)


@dataclass
class Recipe:
    path: Path
    name: str
    seeds: List[int]
    variables: Dict[str, str]    # {REPO}, {DATA_DIR}
    prepare: Optional[List[str]]  # as written: {DATA_DIR} is only needed when data must be prepared
    data_bin: Path
    train_target: Path
    subsets: List[str]
    train_args: List[str]
    average_last: int
    evaluate: Dict[str, object]
    methods: List[Method]


def _fmt_tau(tau: float) -> str:
    return "inf" if math.isinf(tau) else f"{tau:g}"


def _labo_args(alpha: float, tau: float, extra=()) -> List[str]:
    return ["--user-dir", str(REPO / "labo_fairseq"), "--criterion", "label_smoothed_labo",
            "--label-smoothing", f"{alpha:g}", "--labo-tau", _fmt_tau(tau), *extra]


def expand_methods(entries: Sequence[dict], where: str) -> List[Method]:
    """Recipe [[methods]] entries -> Methods (a list of tau expands into one method per tau)."""
    methods = []
    for i, entry in enumerate(entries):
        kind = entry.get("kind")
        if kind not in METHOD_KINDS:
            raise RecipeError(f"{where}: methods[{i}].kind must be one of {', '.join(METHOD_KINDS)}, got {kind!r}")
        alpha = float(entry.get("label_smoothing", 0.1))
        extra = [str(a) for a in entry.get("args", [])]
        if kind == "ls":
            methods.append(Method("ls", "ls", entry.get("label", "LS"),
                                  ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", f"{alpha:g}",
                                   *extra], {"label_smoothing": alpha}))
            continue
        taus = entry.get("tau", 1.25)
        for tau in taus if isinstance(taus, list) else [taus]:
            tau = float(tau)
            if kind == "labo":
                methods.append(Method("labo", f"labo-tau{_fmt_tau(tau)}", entry.get("label", f"LABO τ={_fmt_tau(tau)}"),
                                      _labo_args(alpha, tau, extra), {"label_smoothing": alpha, "tau": _fmt_tau(tau)}))
            else:
                stop = entry.get("stop_update")
                if not isinstance(stop, int) or stop < 1:
                    raise RecipeError(f"{where}: methods[{i}] (tsla) needs stop_update, a positive integer; got {stop!r}")
                smoothing = "LS" if math.isinf(tau) else f"LABO τ={_fmt_tau(tau)}"
                methods.append(Method(
                    "tsla", f"tsla-tau{_fmt_tau(tau)}-stop{stop}",
                    entry.get("label", f"TSLA ({smoothing}, stop {stop})"),
                    _labo_args(alpha, tau, ["--smoothing-stop-update", str(stop), *extra]),
                    {"label_smoothing": alpha, "tau": _fmt_tau(tau), "stop_update": stop}))
    names = [m.name for m in methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"{where}: methods repeat {', '.join(duplicates)}; give them distinct settings")
    if not methods:
        raise RecipeError(f"{where}: no [[methods]]")
    return methods


def _substitute(value: str, variables: Dict[str, str], where: str) -> str:
    try:
        return value.format(**variables)
    except KeyError as missing:
        raise RecipeError(f"{where}: {value!r} uses {missing}, which is not set "
                          f"(known: {', '.join(sorted(variables))})") from None


def load_recipe(path, data_dir: Optional[str] = None) -> Recipe:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path} is not valid TOML: {e}") from None
    variables = {"REPO": str(REPO)}
    data_dir = data_dir or os.environ.get("DATA_DIR")
    if data_dir:
        variables["DATA_DIR"] = data_dir
    data = raw.get("data", {})
    for key in ("data_bin", "train_target"):
        if key not in data:
            raise RecipeError(f"{path}: [data] needs {key}")
    sub = lambda v: _substitute(str(v), variables, str(path))  # noqa: E731
    seeds = raw.get("seeds", [1])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise RecipeError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    train = raw.get("train", {})
    average_last = int(train.get("average_last", 0))
    if average_last < 0:
        raise RecipeError(f"{path}: [train] average_last must be >= 0, got {average_last}")
    evaluate = {"beam": 5, "lenpen": 1.0, "batch_size": 128, "cpu": False, "longtail_level": "word"}
    evaluate.update(raw.get("evaluate", {}))
    prepare = data.get("prepare")
    return Recipe(path=path, name=raw.get("name", path.stem), seeds=seeds, variables=variables,
                  prepare=None if prepare is None else [str(a) for a in prepare],
                  data_bin=Path(sub(data["data_bin"])), train_target=Path(sub(data["train_target"])),
                  subsets=list(data.get("subsets", ["test"])),
                  train_args=[sub(a) for a in train.get("args", [])], average_last=average_last,
                  evaluate=evaluate, methods=expand_methods(raw.get("methods", []), str(path)))


@dataclass
class RunPlan:
    name: str
    method: Method
    seed: int
    run_dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def plan_runs(recipe: Recipe, out_dir: Path) -> List[RunPlan]:
    return [RunPlan(f"{m.name}-seed{seed}", m, seed, out_dir / f"{m.name}-seed{seed}")
            for m in recipe.methods for seed in recipe.seeds]


def train_command(recipe: Recipe, run: RunPlan) -> List[str]:
    return [str(PYTHON_BIN / "fairseq-train"), str(recipe.data_bin), *recipe.train_args,
            *run.method.criterion_args, "--seed", str(run.seed), "--save-dir", str(run.checkpoints)]


def _say(message: str) -> None:
    print(f"[experiment] {message}", flush=True)


def _tool_env() -> Dict[str, str]:
    """Environment for the commands the pipeline runs: this venv's tools first, unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{PYTHON_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _eval_complete(run: RunPlan, subsets: Sequence[str]) -> bool:
    return all((run.run_dir / "eval" / s / f).exists() for s in subsets for f in ("scores.json", "longtail.json"))


def prepare_run_dir(recipe: Recipe, run: RunPlan) -> List[str]:
    """Creates or checks the run directory; refuses one made with another command."""
    command = train_command(recipe, run)
    run_json = run.run_dir / "run.json"
    if run_json.exists():
        recorded = json.loads(run_json.read_text(encoding="utf-8")).get("train_command")
        if recorded != command:
            raise RecipeError(
                f"{run.run_dir} was trained with a different command than recipe {recipe.path} now gives; "
                f"remove that directory or choose another --out.\n  recorded: {shlex.join(recorded or [])}\n"
                f"  recipe:   {shlex.join(command)}")
    run.run_dir.mkdir(parents=True, exist_ok=True)
    info = {"method": run.method.kind, "label": run.method.label, "seed": run.seed, "recipe": recipe.name,
            "run": run.name, **run.method.params, "train_command": command}
    run_json.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return command


def evaluation_checkpoint(recipe: Recipe, run: RunPlan) -> Path:
    """checkpoint_best.pt, or the average of the last N epoch checkpoints when the recipe asks."""
    if recipe.average_last <= 0:
        return run.checkpoints / "checkpoint_best.pt"
    from labo_fairseq.checkpoints import average_checkpoints, last_epoch_checkpoints

    averaged = run.checkpoints / f"checkpoint.avg{recipe.average_last}.pt"
    if not averaged.exists():
        inputs = last_epoch_checkpoints(run.checkpoints, recipe.average_last)
        _say(f"{run.name}: averaging {', '.join(p.name for p in inputs)}")
        average_checkpoints(inputs, averaged)
    return averaged


def _run_step(command: Sequence[str], log_path: Path, what: str, append: bool = False) -> None:
    """Runs `command`, streaming its output to the console and into `log_path`; raises if it fails."""
    with open(log_path, "a" if append else "w", encoding="utf-8") as log:
        proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_tool_env())
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write("    " + line)
            sys.stdout.flush()
    if proc.wait() != 0:
        raise RuntimeError(f"{what} failed; see {log_path}")


def evaluate_run(recipe: Recipe, run: RunPlan, checkpoint: Path) -> None:
    ev = recipe.evaluate
    for subset in recipe.subsets:
        out = run.run_dir / "eval" / subset
        command = ["bash", str(REPO / "scripts" / "evaluate.sh"), str(recipe.data_bin), str(checkpoint), str(out),
                   "--subset", subset, "--beam", str(ev["beam"]), "--lenpen", str(ev["lenpen"]),
                   "--batch-size", str(ev["batch_size"]), *(["--cpu"] if ev["cpu"] else [])]
        _say(f"{run.name}: evaluating on {subset}")
        out.mkdir(parents=True, exist_ok=True)
        _run_step(command, run.run_dir / f"evaluate.{subset}.log", f"evaluation of {run.name} on {subset}")
        longtail = [str(PYTHON_BIN / "python"), str(REPO / "scripts" / "longtail.py"),
                    "--train-ref", str(recipe.train_target), "--hyp", str(out / "hyp.txt"), "--ref", str(out / "ref.txt"),
                    "--level", str(ev["longtail_level"]), "--json", str(out / "longtail.json")]
        _run_step(longtail, run.run_dir / f"longtail.{subset}.log", f"long-tail analysis of {run.name} on {subset}")


def execute_run(recipe: Recipe, run: RunPlan) -> str:
    """Trains (or resumes) and evaluates one run; returns "done" or "skipped"."""
    command = prepare_run_dir(recipe, run)
    if _eval_complete(run, recipe.subsets) and (run.run_dir / TRAIN_DONE).exists():
        _say(f"{run.name}: already finished, skipping")
        return "skipped"
    (run.run_dir / "command.sh").write_text(shlex.join(command) + "\n", encoding="utf-8")
    if not (run.run_dir / TRAIN_DONE).exists():
        resuming = (run.checkpoints / "checkpoint_last.pt").exists()
        _say(f"{run.name}: {'resuming' if resuming else 'training'} ({run.method.label}, seed {run.seed}); "
             f"log: {run.run_dir / 'train.log'}")
        _run_step(command, run.run_dir / "train.log", f"training {run.name}", append=resuming)
        (run.run_dir / TRAIN_DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"), encoding="utf-8")
    evaluate_run(recipe, run, evaluation_checkpoint(recipe, run))
    return "done"


def prepare_data(recipe: Recipe) -> None:
    """Runs the recipe's prepare command unless its data-bin already holds dictionaries."""
    if any(recipe.data_bin.glob("dict.*.txt")):
        _say(f"data: using {recipe.data_bin}")
        return
    if recipe.prepare is None:
        raise RecipeError(f"{recipe.path}: data_bin {recipe.data_bin} holds no fairseq data and the recipe "
                          f"has no [data] prepare command")
    command = [_substitute(a, recipe.variables, str(recipe.path)) for a in recipe.prepare]
    _say(f"data: preparing with {shlex.join(command)}")
    if subprocess.run(command, env=_tool_env()).returncode != 0:
        raise RecipeError(f"data preparation failed: {shlex.join(command)}")


def run_experiment(recipe: Recipe, out_dir, only: Optional[Sequence[str]] = None) -> dict:
    """Runs everything; returns {"runs": {name: "done"|"skipped"|"failed: ..."}, "report": headline|None}."""
    from labo_fairseq.evaluation.errors import EvaluationError
    from labo_fairseq.evaluation.report import build_report

    out_dir = Path(out_dir)
    prepare_data(recipe)
    runs = [r for r in plan_runs(recipe, out_dir) if not only or r.name in only or r.method.name in only]
    status = {}
    for i, run in enumerate(runs, 1):
        _say(f"run {i}/{len(runs)}: {run.name}")
        try:
            status[run.name] = execute_run(recipe, run)
        except (RuntimeError, ValueError, OSError) as error:  # ValueError: also RecipeError
            status[run.name] = f"failed: {error}"
            (run.run_dir / "FAILED").write_text(f"{error}\n", encoding="utf-8")
            _say(f"{run.name}: FAILED: {error}")
        else:
            (run.run_dir / "FAILED").unlink(missing_ok=True)
    finished = [r.run_dir for r in runs if not status[r.name].startswith("failed")]
    headline = None
    if finished:
        _say(f"report: {len(finished)} run(s) -> {out_dir / 'report'}")
        try:
            headline = build_report(finished, out_dir / "report", subset=recipe.subsets[0])
        except EvaluationError as error:
            _say(f"report: FAILED: {error}")
    summary = {"recipe": str(recipe.path), "runs": status, "report": headline}
    (out_dir / "experiment.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: dict) -> str:
    """What the command prints at the end: run status, the headline table, LABO - LS differences."""
    from labo_fairseq.evaluation.report import format_headline

    lines = ["", "runs:"] + [f"  {name:<32} {state}" for name, state in summary["runs"].items()]
    headline = summary["report"]
    if headline:
        lines += ["", f"headline ({headline['subset']} set):", format_headline(headline)]
        base = next((m for m in headline["methods"] if m["label"] == headline["baseline"]), None)
        for m in headline["methods"]:
            if base is not None and m is not base:
                diff = m["bleu"]["mean"] - base["bleu"]["mean"]
                lines.append(f"  {m['label']} - {base['label']}: {diff:+.2f} BLEU (tokenized)")
        lines += ["", f"report: {headline['files']['markdown']}", f"        {headline['files']['html']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run_experiment.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe file (TOML), e.g. recipes/multi30k-cpu.toml")
    parser.add_argument("--out", help="experiment directory (default: runs/<recipe name>)")
    parser.add_argument("--data-dir", help="value of {DATA_DIR} in the recipe (default: $DATA_DIR)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these methods or runs (e.g. ls labo-tau1.25)")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.data_dir)
        summary = run_experiment(recipe, Path(args.out or Path("runs") / recipe.name), args.only)
    except RecipeError as error:
        print(f"run_experiment.py: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    failed = [name for name, state in summary["runs"].items() if state.startswith("failed")]
    return 1 if failed or summary["report"] is None else 0


if __name__ == "__main__":
    sys.exit(main())
