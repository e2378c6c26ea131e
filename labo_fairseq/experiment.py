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

    [train]
    args = ["--arch", "transformer", "--max-update", "1000", ...]   # fairseq-train flags
    save_interval_updates = 250  # also save a checkpoint every N updates (default 250; 0: only at
                                 # epoch ends): adds --save-interval-updates N --keep-interval-updates 1
                                 # unless args set --save-interval-updates themselves. Size N so that
                                 # an interrupt loses at most a minute or two of training. fairseq
                                 # also validates at each of these saves.

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
While runs train, a status line every minute (--progress SECONDS; 0: none) gives the runs started
and finished, each training run's update out of its --max-update (read from its train.log), the
time elapsed and the training time left as estimated from the update rates so far.
"""

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.cli.errors import EXIT_FAILED, UserError, run_command
from labo_fairseq.procs import child_command
from labo_fairseq.textfiles import read_json_object, write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent  # fairseq's --user-dir, in a checkout or installed
PYTHON_BIN = Path(sys.executable).parent
TRAIN_DONE = "train.done"
METHOD_KINDS = ("ls", "labo", "tsla", "ivon")
IVON_CRITERIA = ("ce", "ls", "labo")
CHECKPOINT_POLICIES = ("last", "average", "best")
BEST_BY_NLL = ["--best-checkpoint-metric", "nll_loss"]

RECIPE_KEYS = {"name", "seeds", "data", "train", "evaluate", "methods"}
DATA_KEYS = {"prepare", "data_bin", "train_target", "subsets"}
TRAIN_KEYS = {"args", "average_last", "save_interval_updates"}
DEFAULT_SAVE_INTERVAL_UPDATES = 250
# flags that set how long training lasts: raising them trains a finished run further
SCHEDULE_FLAGS = ("--max-update", "--max-epoch")
# flags that set how often training saves: they do not change the model
SAVE_FLAGS = ("--save-interval-updates", "--keep-interval-updates")
EVALUATE_KEYS = {"beam", "lenpen", "batch_size", "cpu", "longtail_level", "checkpoint", "average_last"}
METHOD_KEYS = {"kind", "label", "label_smoothing", "tau", "stop_update", "args", "criterion", "lr", "mc_samples",
               "ess", "hess_init"}


class RecipeError(UserError):
    """A recipe that cannot be run; the message names the file and the offending entry."""


class RunRefused(RecipeError):
    """A run directory that the recipe may not reuse; `reason` is the short form --dry-run shows."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: children are stopped, runs stay resumable."""


@dataclass
class Method:
    kind: str
    name: str    # file-system safe, e.g. "labo-a0.1-tau1.25"
    label: str   # shown in tables, e.g. "LABO α=0.1 τ=1.25"
    criterion_args: List[str]
    params: Dict[str, object] = field(default_factory=dict)
    own_optimizer: bool = False  # IVON: the recipe's optimizer and precision flags do not apply


@dataclass
class Recipe:
    path: Path
    name: str
    seeds: List[int]
    variables: Dict[str, str]    # {REPO}, {DATA_DIR}
    prepare: Optional[List[str]]  # as written: {DATA_DIR} is only needed when data must be prepared
    data_bin: Path
    train_target: Path
    subsets: List[str]           # ["all"] until resolved against the data-bin
    train_args: List[str]
    checkpoint: str              # one of CHECKPOINT_POLICIES
    average_last: int
    evaluate: Dict[str, object]
    methods: List[Method]


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def _labo_args(alpha: float, tau: float, extra=()) -> List[str]:
    return ["--user-dir", str(PACKAGE_DIR), "--criterion", "label_smoothed_labo",
            "--label-smoothing", _fmt(alpha), "--labo-tau", _fmt(tau), *extra]


def _number_list(entry: dict, key: str, default, where: str, check, rule: str, allow_inf: bool = False) -> List[float]:
    """entry[key] as a list of floats (a single value or a list), each finite (or inf, when
    allowed) and passing `check`."""
    raw = entry.get(key, default)
    values = raw if isinstance(raw, list) else [raw]
    out = []
    for value in values:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{where}.{key} must be {rule}, got {value!r}") from None
        if not check(number) or (math.isinf(number) and not allow_inf):  # NaN fails every check
            raise RecipeError(f"{where}.{key} must be {rule}, got {value!r}")
        out.append(number)
    if not out:
        raise RecipeError(f"{where}.{key} is an empty list")
    return out


def _taus(entry: dict, where: str) -> List[float]:
    """entry["tau"]: >= the LABO op's TAU_MIN, or inf (the criterion's own rule)."""
    from labo_fairseq.functional import TAU_MIN  # imports torch: only for recipes with a LABO method

    return _number_list(entry, "tau", 1.25, where, lambda t: t >= TAU_MIN, f'a number >= {TAU_MIN:g} or "inf"',
                        allow_inf=True)


def _string_list(value, where: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                               for a in value):
        raise RecipeError(f"{where} must be a list of strings (one command-line word each), got {value!r}")
    return [str(a) for a in value]


def _check_keys(table, allowed, where: str) -> None:
    if not isinstance(table, dict):
        raise RecipeError(f"{where} must be a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RecipeError(f"{where} has unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")


def expand_methods(entries: Sequence[dict], where: str) -> List[Method]:
    """Recipe [[methods]] entries -> Methods; lists of label_smoothing and tau expand to a grid."""
    if not isinstance(entries, list):
        raise RecipeError(f"{where}: methods must be [[methods]] tables")
    methods = []
    for i, entry in enumerate(entries):
        here = f"{where}: methods[{i}]"
        _check_keys(entry, METHOD_KEYS, here)
        kind = entry.get("kind")
        if kind not in METHOD_KINDS:
            raise RecipeError(f"{here}.kind must be one of {', '.join(METHOD_KINDS)}, got {kind!r}")
        alphas = _number_list(entry, "label_smoothing", 0.1, here, lambda a: 0.0 <= a < 1.0, "a number in [0, 1)")
        extra = _string_list(entry.get("args", []), f"{here}.args")
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise RecipeError(f"{here}.label must be a string, got {label!r}")
        if kind == "ivon":
            methods += _ivon_methods(entry, here, alphas, extra, label)
            continue
        if kind == "ls":
            for alpha in alphas:
                methods.append(Method("ls", f"ls-a{_fmt(alpha)}", label or f"LS α={_fmt(alpha)}",
                                      ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", _fmt(alpha),
                                       *extra], {"label_smoothing": alpha}))
            continue
        taus = _taus(entry, here)
        stop = entry.get("stop_update")
        if kind == "tsla" and (not isinstance(stop, int) or isinstance(stop, bool) or stop < 1):
            raise RecipeError(f"{here} (tsla) needs stop_update, a positive integer; got {stop!r}")
        for alpha in alphas:
            for tau in taus:
                params = {"label_smoothing": alpha, "tau": _fmt(tau)}
                if kind == "labo":
                    methods.append(Method("labo", f"labo-a{_fmt(alpha)}-tau{_fmt(tau)}",
                                          label or f"LABO α={_fmt(alpha)} τ={_fmt(tau)}",
                                          _labo_args(alpha, tau, extra), params))
                    continue
                smoothing = f"LS α={_fmt(alpha)}" if math.isinf(tau) else f"LABO α={_fmt(alpha)} τ={_fmt(tau)}"
                methods.append(Method("tsla", f"tsla-a{_fmt(alpha)}-tau{_fmt(tau)}-stop{stop}",
                                      label or f"TSLA ({smoothing}, stop {stop})",
                                      _labo_args(alpha, tau, ["--smoothing-stop-update", str(stop), *extra]),
                                      {**params, "stop_update": stop}))
    names = [m.name for m in methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"{where}: methods repeat {', '.join(duplicates)}; give them distinct settings")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise RecipeError(f"{where}: methods share a label ({', '.join(sorted({x for x in labels if labels.count(x) > 1}))});"
                          f" a label names one configuration")
    if not methods:
        raise RecipeError(f"{where}: no [[methods]]")
    return methods


def _ivon_methods(entry: dict, here: str, alphas: List[float], extra: List[str], label: Optional[str]) -> List[Method]:
    """kind = "ivon": fairseq-train with --task translation_ivon --optimizer ivon, and
    cross-entropy, label smoothing or LABO as the criterion; a list of lr gives one method each."""
    criterion = entry.get("criterion", "ce")
    if criterion not in IVON_CRITERIA:
        raise RecipeError(f"{here}.criterion must be one of {', '.join(IVON_CRITERIA)}, got {criterion!r}")
    if "lr" not in entry:
        raise RecipeError(f"{here} (ivon) needs lr: IVON's learning rate has another scale than Adam's")
    # the ranges of the optimizer's own start-up checks (ivon_optimizer._check_flags), finite here
    lrs = _number_list(entry, "lr", None, here, lambda v: v > 0.0, "a finite number > 0")
    mc = entry.get("mc_samples", 1)
    if not isinstance(mc, int) or isinstance(mc, bool) or mc < 1:
        raise RecipeError(f"{here}.mc_samples must be an integer >= 1, got {mc!r}")
    ivon_flags = ["--ivon-mc-samples", str(mc)]
    params: Dict[str, object] = {"criterion": criterion, "mc_samples": mc}
    for key, flag in (("ess", "--ivon-ess"), ("hess_init", "--ivon-hess-init")):
        if key in entry:
            (value,) = _number_list(entry, key, None, here, lambda v: v > 0.0, "a finite number > 0")
            ivon_flags += [flag, _fmt(value)]
            params[key] = value
    if criterion == "ce":
        settings = [("ivon-ce", "CE", ["--criterion", "cross_entropy"], {})]
    elif criterion == "ls":
        settings = [(f"ivon-ls-a{_fmt(a)}", f"LS α={_fmt(a)}",
                     ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", _fmt(a)], {"label_smoothing": a})
                    for a in alphas]
    else:
        taus = _taus(entry, here)
        settings = [(f"ivon-labo-a{_fmt(a)}-tau{_fmt(t)}", f"LABO α={_fmt(a)} τ={_fmt(t)}",
                     _labo_args(a, t)[2:],  # --user-dir comes with the task below
                     {"label_smoothing": a, "tau": _fmt(t)}) for a in alphas for t in taus]
    samples = f", {mc} samples" if mc > 1 else ""
    return [Method("ivon", f"{name}-lr{_fmt(lr)}" + (f"-mc{mc}" if mc > 1 else ""),
                   label or f"IVON + {smoothing} (lr {_fmt(lr)}{samples})",
                   ["--user-dir", str(PACKAGE_DIR), "--task", "translation_ivon", "--optimizer", "ivon",
                    "--lr", _fmt(lr), *ivon_flags, *crit, *extra],
                   {**params, "lr": lr, **crit_params}, own_optimizer=True)
            for lr in lrs for name, smoothing, crit, crit_params in settings]


# flags of the recipe's common training arguments that a method with its own optimizer drops:
# (flag or prefix, takes a value)
OPTIMIZER_FLAGS = (("--optimizer", True), ("--lr", True), ("--adam-", True), ("--use-old-adam", False),
                   ("--fp16", False), ("--bf16", False), ("--amp", False), ("--memory-efficient-fp16", False),
                   ("--memory-efficient-bf16", False))


def without_optimizer_flags(args: Sequence[str]) -> List[str]:
    """`args` without the optimizer and precision flags (and their values)."""
    out, skip_value = [], False
    for word in args:
        if skip_value and not word.startswith("--"):
            skip_value = False
            continue
        skip_value = False
        match = next(((f, v) for f, v in OPTIMIZER_FLAGS if word == f or (f.endswith("-") and word.startswith(f))),
                     None)
        if match is None:
            out.append(word)
        else:
            skip_value = match[1]
    return out


def _substitute(value: str, variables: Dict[str, str], where: str) -> str:
    try:
        return value.format(**variables)
    except KeyError as missing:
        if missing.args[0] == "DATA_DIR":
            raise RecipeError(f"{where}: {value!r} needs the raw data's directory: pass --data-dir DIR "
                              f"(or set DATA_DIR)") from None
        raise RecipeError(f"{where}: {value!r} uses {missing}, which is not set "
                          f"(known: {', '.join(sorted(variables))})") from None


def _int_setting(table: dict, key: str, default: int, where: str, minimum: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RecipeError(f"{where} {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _evaluate_settings(evaluate: dict, train: dict, path: Path):
    """([evaluate] settings with defaults, checkpoint policy, average_last), all checked."""
    where = f"{path}: [evaluate]"
    # average_last may stand in [train] (older recipes) or [evaluate]
    average_last = _int_setting(evaluate if "average_last" in evaluate else train, "average_last", 0, where, 0)
    checkpoint = evaluate.get("checkpoint", "average" if average_last > 0 else "last")
    if checkpoint not in CHECKPOINT_POLICIES:
        raise RecipeError(f"{where} checkpoint must be one of {', '.join(CHECKPOINT_POLICIES)}, got {checkpoint!r}")
    if checkpoint == "average" and average_last < 2:
        raise RecipeError(f"{where} checkpoint = \"average\" needs average_last >= 2, got {average_last}")
    settings = {"beam": _int_setting(evaluate, "beam", 5, where, 1),
                "batch_size": _int_setting(evaluate, "batch_size", 128, where, 1)}
    lenpen = evaluate.get("lenpen", 1.0)
    if isinstance(lenpen, bool) or not isinstance(lenpen, (int, float)) or not math.isfinite(lenpen):
        raise RecipeError(f"{where} lenpen must be a finite number, got {lenpen!r}")
    cpu = evaluate.get("cpu", False)
    if not isinstance(cpu, bool):
        raise RecipeError(f"{where} cpu must be true or false, got {cpu!r}")
    level = evaluate.get("longtail_level", "word")
    if level not in ("word", "token", "auto"):
        raise RecipeError(f"{where} longtail_level must be \"word\", \"token\" or \"auto\", got {level!r}")
    settings.update(lenpen=float(lenpen), cpu=cpu, longtail_level=level)
    return settings, checkpoint, average_last


def load_recipe(path, data_dir: Optional[str] = None) -> Recipe:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} is not valid TOML: {e}") from None
    _check_keys(raw, RECIPE_KEYS, str(path))
    variables = {"REPO": str(REPO)}
    data_dir = data_dir or os.environ.get("DATA_DIR")
    if data_dir:
        variables["DATA_DIR"] = data_dir
    data, train, evaluate = raw.get("data", {}), raw.get("train", {}), raw.get("evaluate", {})
    _check_keys(data, DATA_KEYS, f"{path}: [data]")
    _check_keys(train, TRAIN_KEYS, f"{path}: [train]")
    _check_keys(evaluate, EVALUATE_KEYS, f"{path}: [evaluate]")
    for key in ("data_bin", "train_target"):
        if not isinstance(data.get(key), str):
            raise RecipeError(f"{path}: [data] needs {key}, a path")
    sub = lambda v: _substitute(str(v), variables, str(path))  # noqa: E731
    seeds = raw.get("seeds", [1])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           and 0 <= s < 2**32 for s in seeds):
        raise RecipeError(f"{path}: seeds must be a non-empty list of integers in [0, 2^32) "
                          f"(fairseq seeds numpy with them), got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"{path}: seeds repeat {sorted({s for s in seeds if seeds.count(s) > 1})}: "
                          f"each seed is one run directory; give distinct seeds")
    subsets = data.get("subsets", ["test"])
    if subsets == "all":
        subsets = ["all"]
    if not isinstance(subsets, list) or not subsets or not all(isinstance(x, str) and x for x in subsets):
        raise RecipeError(f"{path}: [data] subsets must be \"all\" or a non-empty list of split names, got {subsets!r}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{path}: name must be a non-empty string, got {name!r}")
    prepare = data.get("prepare")
    if prepare is not None:
        prepare = _string_list(prepare, f"{path}: [data] prepare")
    settings, checkpoint, average_last = _evaluate_settings(evaluate, train, path)
    train_args = [sub(a) for a in _string_list(train.get("args", []), f"{path}: [train] args")]
    if checkpoint == "best" and "--best-checkpoint-metric" not in train_args:
        train_args += BEST_BY_NLL
    save_every = _int_setting(train, "save_interval_updates", DEFAULT_SAVE_INTERVAL_UPDATES, f"{path}: [train]", 0)
    if save_every > 0 and "--save-interval-updates" not in train_args:
        train_args += ["--save-interval-updates", str(save_every)]
        if "--keep-interval-updates" not in train_args:
            train_args += ["--keep-interval-updates", "1"]
    return Recipe(path=path, name=name, seeds=seeds, variables=variables, prepare=prepare,
                  data_bin=Path(sub(data["data_bin"])), train_target=Path(sub(data["train_target"])),
                  subsets=subsets, train_args=train_args, checkpoint=checkpoint, average_last=average_last,
                  evaluate=settings, methods=expand_methods(raw.get("methods", []), str(path)))


def _split_name(path: Path) -> str:
    return path.name.split(".", 1)[0]  # "test1" of test1.de-en.en.bin


def resolve_subsets(recipe: Recipe) -> List[str]:
    """The recipe's subsets, each a split of the data-bin (checked before anything trains);
    "all" is every test split in the data-bin (test, test1, ...)."""
    splits = sorted({_split_name(p) for p in recipe.data_bin.glob("*.bin")})
    if recipe.subsets != ["all"]:
        missing = [s for s in recipe.subsets if s not in splits]
        if missing:
            raise RecipeError(f"{recipe.path}: [data] subsets names {', '.join(missing)}, which {recipe.data_bin} "
                              f"does not hold (its splits: {', '.join(splits) or 'none'})")
        return recipe.subsets
    found = sorted((n for n in splits if n == "test" or (n[4:].isdigit() and n.startswith("test"))),
                   key=lambda n: int(n[4:] or 0))
    if not found:
        raise RecipeError(f"{recipe.path}: subsets = \"all\" but {recipe.data_bin} has no test split")
    return found


def checkpoint_description(recipe: Recipe) -> str:
    return {"last": "checkpoint_last.pt",
            "best": "checkpoint_best.pt (lowest validation nll_loss)",
            "average": f"average of the last {recipe.average_last} epoch checkpoints"}[recipe.checkpoint]


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
    return [str(PYTHON_BIN / "fairseq-train"), str(recipe.data_bin), *common,
            *run.method.criterion_args, "--seed", str(run.seed), "--save-dir", str(run.checkpoints)]


def _flag_values(command: Sequence[str]) -> Dict[str, List[str]]:
    """{flag: [values]} of a command line (positional words under "")."""
    values: Dict[str, List[str]] = {}
    flag = ""
    for word in command[1:]:
        if word.startswith("--"):
            flag = word
            values.setdefault(flag, [])
        else:
            values.setdefault(flag, []).append(word)
    return values


def describe_command_change(recorded: Sequence[str], new: Sequence[str]) -> str:
    """'--max-update 4 -> 6; --fp16 added' for two command lines."""
    old_flags, new_flags = _flag_values(recorded), _flag_values(new)
    changes = []
    for flag in list(old_flags) + [f for f in new_flags if f not in old_flags]:
        name = flag or "positional arguments"
        if flag not in new_flags:
            changes.append(f"{name} removed")
        elif flag not in old_flags:
            changes.append(f"{name} added" + (f" ({' '.join(new_flags[flag])})" if new_flags[flag] else ""))
        elif old_flags[flag] != new_flags[flag]:
            changes.append(f"{name} {' '.join(old_flags[flag]) or '(no value)'} -> {' '.join(new_flags[flag]) or '(no value)'}")
    return "; ".join(changes) or "the order of the flags"


def _without_flags(command: Sequence[str], flags: Sequence[str]) -> List[str]:
    """`command` without `flags` and their values."""
    out, skipping = [], False
    for word in command:
        if word.startswith("--"):
            skipping = word in flags
        if not skipping:
            out.append(word)
    return out


def _schedule_limit(command: Sequence[str], flag: str) -> float:
    """The value of a schedule flag (the last one given); absent or <= 0 is fairseq's "no limit"."""
    values = _flag_values(command).get(flag)
    try:
        value = float(values[-1]) if values else 0.0
    except ValueError:
        return math.nan
    return math.inf if value <= 0 else value


def compare_commands(recorded: Sequence[str], new: Sequence[str]):
    """(change, extended, shortened) between a run's recorded training command and the recipe's:
    `change` describes the differences other than the schedule and save flags (None: none);
    `extended` / `shortened` describe schedule flags that now let training last longer / stop
    sooner (None: none). Save flags may differ freely."""
    ignored = SCHEDULE_FLAGS + SAVE_FLAGS
    kept_old, kept_new = _without_flags(recorded, ignored), _without_flags(new, ignored)
    change = describe_command_change(kept_old, kept_new) if kept_old != kept_new else None
    longer, shorter = [], []
    for flag in SCHEDULE_FLAGS:
        before, after = _schedule_limit(recorded, flag), _schedule_limit(new, flag)
        if before == after:
            continue
        text = describe_command_change([recorded[0], *_only_flag(recorded, flag)], [new[0], *_only_flag(new, flag)])
        if after > before:
            longer.append(text)
        else:  # shorter, or unreadable (NaN): not an extension
            shorter.append(text)
    return change, "; ".join(longer) or None, "; ".join(shorter) or None


def _only_flag(command: Sequence[str], flag: str) -> List[str]:
    values = _flag_values(command)
    return [flag, *values[flag]] if flag in values else []


def _say(message: str) -> None:
    print(f"[experiment] {message}", flush=True)


def _tool_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for the commands the pipeline runs: this venv's tools first, unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{PYTHON_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


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
        split = _split_name(path)
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
    done = run.run_dir / "eval.done"
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
    missing = [run.run_dir / "eval" / s / f for s in subsets for f in ("scores.json", "longtail.json")
               if not (run.run_dir / "eval" / s / f).exists()]
    return f"{missing[0]} is missing" if missing else None


def check_run_dir(recipe: Recipe, run: RunPlan, data: Optional[Dict[str, dict]]) -> Optional[str]:
    """Refuses (RunRefused) a run directory whose run.json is unreadable, records another training
    command, or records other training data than `data` (the data-bin's fingerprint now; None:
    not checked). A run.json without a fingerprint (older runs) is taken as trained on `data`.
    Schedule and save flags are not compared (compare_commands), except that a finished run is
    refused a shorter schedule. Returns how the schedule was extended (None: it was not)."""
    run_json = run.run_dir / "run.json"
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
    info = {"method": run.method.kind, "label": run.method.label, "config": run.method.name, "seed": run.seed,
            "recipe": recipe.name, "run": run.name, **run.method.params,
            "checkpoint": checkpoint_description(recipe), "subsets": list(subsets), "train_command": command,
            "data_fingerprint": data}
    write_json_atomic(run.run_dir / "run.json", info)
    return command, extended


def checkpoint_path(recipe: Recipe, run: RunPlan) -> Path:
    """The checkpoint file the recipe's policy evaluates."""
    name = {"last": "checkpoint_last.pt", "best": "checkpoint_best.pt",
            "average": f"checkpoint.avg{recipe.average_last}.pt"}[recipe.checkpoint]
    return run.checkpoints / name


def evaluation_checkpoint(recipe: Recipe, run: RunPlan) -> Path:
    """The checkpoint the recipe's policy evaluates (averaging the last epochs when asked)."""
    path = checkpoint_path(recipe, run)
    if recipe.checkpoint == "average" and not path.exists():
        from labo_fairseq.checkpoints import average_checkpoints, last_epoch_checkpoints

        average_checkpoints(last_epoch_checkpoints(run.checkpoints, recipe.average_last), path)
    return path


class ChildProcesses:
    """The running child processes, so that an interrupt can stop every one of them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set = set()
        self.stopping = threading.Event()
        self.active: Dict[str, RunPlan] = {}  # runs whose training is in progress
        self.since: Dict[str, tuple] = {}  # their (start time, train.log size at the start)

    @contextlib.contextmanager
    def training(self, run: RunPlan):
        log = run.run_dir / "train.log"
        with self._lock:
            self.active[run.name] = run
            self.since[run.name] = (time.time(), log.stat().st_size if log.exists() else 0)
        try:
            yield
        finally:
            with self._lock:
                self.active.pop(run.name, None)
                self.since.pop(run.name, None)

    def training_runs(self) -> List[RunPlan]:
        with self._lock:
            return list(self.active.values())

    def run(self, command: Sequence[str], log_path: Path, what: str, stream: bool, append: bool = False,
            env: Optional[Dict[str, str]] = None) -> None:
        """Runs `command` into `log_path` (and the console when `stream`); raises if it fails."""
        if self.stopping.is_set():
            raise Interrupted()
        with open(log_path, "a" if append else "w", encoding="utf-8") as log:
            # its own process group: a terminal's Ctrl-C reaches this process only, which
            # then stops the children itself; they also die with it (child_command)
            proc = subprocess.Popen(child_command(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=_tool_env(env), start_new_session=True)
            with self._lock:
                self._procs.add(proc)
            try:
                for line in proc.stdout:
                    log.write(line)
                    if stream:
                        sys.stdout.write("    " + line)
                        sys.stdout.flush()
                code = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
        if self.stopping.is_set():
            raise Interrupted()
        if code != 0:
            raise RuntimeError(f"{what} failed; see {log_path}")

    def stop_all(self, grace: float = 15.0) -> None:
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.time() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def evaluate_run(recipe: Recipe, run: RunPlan, checkpoint: Path, subsets: Sequence[str], children: ChildProcesses,
                 stream: bool, env: Optional[Dict[str, str]]) -> None:
    ev = recipe.evaluate
    (run.run_dir / "eval.done").unlink(missing_ok=True)
    record = evaluation_record(recipe, run, subsets)
    for subset in subsets:
        out = run.run_dir / "eval" / subset
        command = [sys.executable, "-m", "labo_fairseq.cli", "evaluate", str(recipe.data_bin), str(checkpoint), str(out),
                   "--subset", subset, "--beam", str(ev["beam"]), "--lenpen", str(ev["lenpen"]),
                   "--batch-size", str(ev["batch_size"]), *(["--cpu"] if ev["cpu"] else [])]
        if stream:
            _say(f"{run.name}: evaluating on {subset}")
        out.mkdir(parents=True, exist_ok=True)
        children.run(command, run.run_dir / f"evaluate.{subset}.log", f"evaluation of {run.name} on {subset}",
                     stream, env=env)
        longtail = [sys.executable, "-m", "labo_fairseq.cli", "longtail",
                    "--train-ref", str(recipe.train_target), "--hyp", str(out / "hyp.txt"), "--ref", str(out / "ref.txt"),
                    "--level", str(ev["longtail_level"]), "--json", str(out / "longtail.json")]
        children.run(longtail, run.run_dir / f"longtail.{subset}.log", f"long-tail analysis of {run.name} on {subset}",
                     stream, env=env)
    write_json_atomic(run.run_dir / "eval.done", record)


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
            _say(f"{run.name}: already finished, skipping")
        return "skipped"
    write_text_atomic(run.run_dir / "command.sh", shlex.join(command) + "\n")
    if not trained:
        resuming = (run.checkpoints / "checkpoint_last.pt").exists()
        if stream:
            doing = f"training further ({extended})" if extended else "resuming" if resuming else "training"
            _say(f"{run.name}: {doing} ({run.method.label}, seed {run.seed}); log: {run.run_dir / 'train.log'}")
        with children.training(run):
            children.run(command, run.run_dir / "train.log", f"training {run.name}", stream, append=resuming, env=env)
        write_text_atomic(run.run_dir / TRAIN_DONE, time.strftime("%Y-%m-%d %H:%M:%S\n"))
        if recipe.checkpoint == "average":  # an average of earlier epochs is out of date now
            checkpoint_path(recipe, run).unlink(missing_ok=True)
    elif stream:
        _say(f"{run.name}: evaluating again ({change})")
    evaluate_run(recipe, run, evaluation_checkpoint(recipe, run), subsets, children, stream, env)
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
    if subprocess.run(child_command(command), env=_tool_env()).returncode != 0:
        raise RecipeError(f"data preparation failed: {shlex.join(command)}")


def gpu_slots(jobs: int) -> List[Optional[str]]:
    """CUDA_VISIBLE_DEVICES value for each of `jobs` worker slots: round-robin over the visible
    GPUs when there are several, else None (inherit the environment)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        try:
            import torch
            devices = [str(i) for i in range(torch.cuda.device_count())]
        except ImportError:
            devices = []
    if len(devices) < 2:
        return [None] * jobs
    return [devices[i % len(devices)] for i in range(jobs)]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _last_valid_nll(run: RunPlan) -> Optional[float]:
    from labo_fairseq.evaluation.training_log import read_valid_log

    try:
        entries = read_valid_log(run.run_dir / "train.log")
    except (OSError, ValueError):
        return None
    values = [e["nll_loss"] for e in entries if isinstance(e.get("nll_loss"), (int, float))]
    return values[-1] if values else None


_SAVED = re.compile(r"Saved checkpoint .* \(epoch \d+ @ (\d+) updates")
_UPDATES = re.compile(r"num_updates[ =](\d+)")


def training_progress(log_path: Path):
    """(updates at the last saved checkpoint or None, last update train.log shows or None)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    saved = [int(m.group(1)) for m in _SAVED.finditer(text)]
    seen = [int(m.group(1)) for m in _UPDATES.finditer(text)]
    return (saved[-1] if saved else None), (seen[-1] if seen else None)


def resume_note(run: RunPlan) -> str:
    """What an interrupt costs a run in training: where it resumes and how many updates are redone."""
    saved, seen = training_progress(run.run_dir / "train.log")
    shown = f"at least {seen}" if seen is not None else "the"
    if saved is None:
        # fairseq logs "Saved checkpoint" only after the file is in place: a kill between the two
        # leaves a checkpoint that train.log does not mention yet.
        if (run.checkpoints / "checkpoint_last.pt").exists():
            return f"{run.name}: resumes from checkpoint_last.pt (saved as it was interrupted; its update is not " \
                   f"in train.log)"
        return f"{run.name}: no checkpoint saved yet; {shown} update(s) done so far will be redone"
    redo = "" if seen is None or seen <= saved else f"; about {seen - saved} update(s) since then will be redone"
    return f"{run.name}: resumes from its checkpoint at update {saved}{redo}"


_LOADED = re.compile(r"Loaded checkpoint .* \(epoch \d+ @ (\d+) updates\)")


def _max_update(command: Sequence[str]) -> Optional[int]:
    values = _flag_values(command).get("--max-update")
    try:
        value = int(values[-1]) if values else 0
    except ValueError:
        return None
    return value if value > 0 else None


class ProgressReporter:
    """A status line every `interval` seconds while runs train: runs started and finished, each
    training run's update (from its train.log) out of its --max-update, the time elapsed and an
    estimate of the training time left (from the update rates so far; evaluation not included)."""

    def __init__(self, recipe: Recipe, runs: Sequence[RunPlan], children: ChildProcesses, interval: float):
        self.recipe, self.runs, self.children, self.interval = recipe, list(runs), children, interval
        self.started_at = time.time()
        self.started = self.finished = 0
        self.started_names: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.children.stopping.is_set():
                _say(self.status())

    def _run_state(self, run: RunPlan, since: tuple, now: float):
        """(text, updates left or None, updates per second or None) of a training run."""
        started, offset = since
        target = _max_update(train_command(self.recipe, run))
        try:
            with open(run.run_dir / "train.log", "rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            text = ""
        loaded = _LOADED.findall(text)
        first = int(loaded[-1]) if loaded else 0
        seen = [int(u) for u in _UPDATES.findall(text)]
        update = seen[-1] if seen else first
        rate = (update - first) / (now - started) if update > first and now > started else None
        shown = f"{run.name} update {update}" + (f"/{target}" if target else "")
        return shown, (max(0, target - update) if target else None), rate

    def status(self) -> str:
        now = time.time()
        with self.children._lock:
            active = [(run, self.children.since[name]) for name, run in self.children.active.items()]
        states = [self._run_state(run, since, now) for run, since in active]
        parts = [f"{self.started}/{len(self.runs)} run(s) started, {self.finished} finished"]
        parts += [text for text, _, _ in states]
        parts.append(f"{_duration(now - self.started_at)} elapsed")
        rates = [rate for _, _, rate in states if rate]
        lefts = [left for _, left, _ in states]
        target = _max_update(train_command(self.recipe, self.runs[0])) if self.runs else None
        # runs still to start that will train (not those already trained)
        waiting = sum(1 for r in self.runs if r.name not in self.started_names and not (r.run_dir / TRAIN_DONE).exists())
        if states and rates and len(rates) == len(states) and None not in lefts and (target or not waiting):
            # the runs still waiting train from scratch at the same speed
            left = sum(lefts) + waiting * (target or 0)
            parts.append(f"training left about {_duration(left / sum(rates))}")
        return "progress: " + "; ".join(parts)


def run_all(recipe: Recipe, runs: Sequence[RunPlan], subsets: Sequence[str], jobs: int,
            progress_interval: float = 0.0) -> Dict[str, dict]:
    """Runs `runs`, up to `jobs` at once; returns {run name: {"status", "started", "finished"}}.
    With `progress_interval` > 0, a status line that often while runs train (ProgressReporter)."""
    children = ChildProcesses()
    reporter = ProgressReporter(recipe, runs, children, progress_interval)
    results: Dict[str, dict] = {}
    slots = gpu_slots(jobs)
    free = list(range(jobs))
    lock = threading.Lock()
    stream = jobs == 1
    counter = iter(range(1, len(runs) + 1))

    def work(run: RunPlan) -> None:
        with lock:
            slot = free.pop(0)
        env = None if slots[slot] is None else {"CUDA_VISIBLE_DEVICES": slots[slot]}
        started = time.time()
        entry = {"started": started}
        try:
            if children.stopping.is_set():  # interrupted before this run started: do not announce it
                raise Interrupted()
            with lock:
                reporter.started += 1
                reporter.started_names.add(run.name)
            if stream:
                _say(f"run {run.name}")
            entry["status"] = execute_run(recipe, run, subsets, children, stream, env)
            (run.run_dir / "FAILED").unlink(missing_ok=True)
        except Interrupted:
            entry["status"] = "interrupted"
        except Exception as error:  # noqa: BLE001  one run's failure must not stop the others
            entry["status"] = f"failed: {error}" if isinstance(error, (UserError, RuntimeError, ValueError, OSError)) \
                else f"failed: {type(error).__name__}: {error}"
            if run.run_dir.is_dir():
                (run.run_dir / "FAILED").write_text(f"{error}\n", encoding="utf-8")
        finally:
            entry["finished"] = time.time()
            with lock:
                free.append(slot)
                results[run.name] = entry
                reporter.finished += entry.get("status") != "interrupted"
                if entry.get("status") != "interrupted" and not children.stopping.is_set():
                    state = entry.get("status", "failed")
                    where = "" if slots[slot] is None else f" on GPU {slots[slot]}"
                    took = _duration(entry["finished"] - started)
                    if state.startswith("failed"):
                        line = f"failed{where} after {took}: {state[len('failed: '):]}"
                    else:
                        nll = _last_valid_nll(run)
                        line = f"{state}{where} in {took}" + ("" if nll is None else f", valid nll {nll:.2f}")
                    _say(f"[{next(counter)}/{len(runs)}] {run.name} {line}")

    interrupted = []

    def on_signal(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, on_signal)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    futures: List[concurrent.futures.Future] = []
    try:
        with reporter:
            futures = [pool.submit(work, run) for run in runs]
            for future in futures:
                future.result()
    except (KeyboardInterrupt, Interrupted):
        interrupted.append(True)
        children.stopping.set()  # first: no run starts or reports after the line below
        for future in futures:
            future.cancel()
        _say("interrupted: stopping every child process (runs stay resumable)")
        training = children.training_runs()
        children.stop_all()
        for run in training:
            _say(resume_note(run))
    finally:
        pool.shutdown(wait=True)
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        raise Interrupted()
    return results


class OutputLock:
    """An exclusive lock on OUT: one pipeline at a time writes an experiment directory. The lock
    file goes when its holder releases it; one left by a killed pipeline is simply taken over."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / ".experiment.lock"
        while True:
            handle = open(self.path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise RecipeError(f"{out_dir} is in use by another experiment; wait for it or choose another "
                                  f"--out") from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()  # its holder released and removed it between open and flock: try again
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # still held: nobody else holds this file now
            self._file.close()
            self._file = None


def run_experiment(recipe: Recipe, out_dir, only: Optional[Sequence[str]] = None, jobs: int = 1,
                   progress_interval: float = 0.0) -> dict:
    """Runs everything; returns {"runs": {name: "done"|"skipped"|"failed: ..."}, "timing": ..., "report": headline|None}."""
    from labo_fairseq.evaluation.errors import EvaluationError
    from labo_fairseq.evaluation.report import build_report

    out_dir = Path(out_dir)
    runs = select_runs(plan_runs(recipe, out_dir), only, str(recipe.path))
    lock = OutputLock(out_dir)
    try:
        prepare_data(recipe)
        subsets = resolve_subsets(recipe)
        _say(f"{len(runs)} run(s), {min(jobs, len(runs))} at a time; test sets: {', '.join(subsets)}; "
             f"evaluating {checkpoint_description(recipe)}")
        results = run_all(recipe, runs, subsets, max(1, min(jobs, len(runs))), progress_interval)
        status = {r.name: results[r.name]["status"] for r in runs}
        finished = [r.run_dir for r in runs if not status[r.name].startswith("failed")]
        failed = {name: state[len("failed: "):] for name, state in status.items() if state.startswith("failed")}
        headline = None
        if finished:
            _say(f"report: {len(finished)} run(s) -> {out_dir / 'report'}")
            try:
                headline = build_report(finished, out_dir / "report", subsets=subsets, failed=failed)
            except EvaluationError as error:
                _say(f"report: FAILED: {error}")
        if headline is None and (out_dir / "report").exists():
            _say(f"report: none built this time; {out_dir / 'report'} is from an earlier run of the pipeline")
        summary = {"recipe": str(recipe.path), "runs": status,
                   "timing": {r.name: {k: results[r.name][k] for k in ("started", "finished")} for r in runs},
                   "report": headline}
        write_text_atomic(out_dir / "experiment.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary
    finally:
        lock.release()


def run_state(recipe: Recipe, run: RunPlan, subsets: Optional[Sequence[str]]) -> str:
    """What running the recipe would do for this run now (what --dry-run prints); `subsets` is
    None while the data-bin is still to be prepared."""
    try:
        extended = check_run_dir(recipe, run, None if subsets is None else data_fingerprint(recipe.data_bin))
    except RunRefused as refused:
        return f"refused: {refused.reason}"
    if extended is not None and (run.run_dir / TRAIN_DONE).exists():
        return f"train further from checkpoint_last.pt ({extended}), then evaluate"
    if not (run.run_dir / TRAIN_DONE).exists():
        last = run.checkpoints / "checkpoint_last.pt"
        return "resume training from checkpoint_last.pt, then evaluate" if last.exists() else "train, then evaluate"
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
            shlex.join(_substitute(a, recipe.variables, str(recipe.path)) for a in recipe.prepare)
        data, subsets = f"prepare {recipe.data_bin}: {prepare}", None
    rows = [(r.name, r.method.label, r.seed, run_state(recipe, r, subsets)) for r in runs]
    shown = subsets or (None if recipe.subsets == ["all"] else recipe.subsets)
    lines = [f"recipe {recipe.path} -> {out_dir}", f"data: {data}",
             f"test sets: {', '.join(shown) if shown else 'every test split of the prepared data-bin'}; "
             f"evaluating {checkpoint_description(recipe)}", "",
             tabulate(rows, headers=["run", "method", "seed", "to do"], tablefmt="simple", disable_numparse=True),
             "", "# training commands (each run also writes its own to <run>/command.sh)"]
    for run in runs:
        lines += [f"# {run.name}", shlex.join(train_command(recipe, run))]
    return "\n".join(lines)


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
                        help="print a status line this often while runs train: runs started and finished, each "
                             "training run's update out of --max-update, elapsed time, training time left "
                             "(default 60; 0: none)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if not (args.progress >= 0 and math.isfinite(args.progress)):
        parser.error(f"--progress must be a number of seconds >= 0, got {args.progress:g}")

    def body() -> int:
        recipe = load_recipe(args.recipe, args.data_dir)
        out_dir = Path(args.out or Path("runs") / recipe.name)
        if args.dry_run:
            runs = select_runs(plan_runs(recipe, out_dir), args.only, str(recipe.path))
            print(describe_plan(recipe, runs, out_dir))
            return 0
        summary = run_experiment(recipe, out_dir, args.only, args.jobs, args.progress)
        print(format_summary(summary))
        failed = [name for name, state in summary["runs"].items() if state.startswith("failed")]
        return EXIT_FAILED if failed or summary["report"] is None else 0

    return run_command(prog, body, interrupted="every child process was stopped. Run the same command "
                                                "again to resume.")


if __name__ == "__main__":
    sys.exit(main())
