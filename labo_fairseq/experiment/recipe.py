"""The recipe: its schema, the checks of every key, and the expansion of grids of methods (lists
of label_smoothing, tau, lr give one Method each). The format is in the package's docstring."""
import math
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.errors import UserError
from labo_fairseq.evaluation.runs import (BEST_CHECKPOINT, LAST_CHECKPOINT, encode_hyperparameter,
                                          format_hyperparameter)
from labo_fairseq.labo_scalars import TAU_MIN

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # fairseq's --user-dir, in a checkout or installed
REPO = PACKAGE_DIR.parent
PYTHON_BIN = Path(sys.executable).parent
METHOD_KINDS = ("ls", "labo", "tsla", "ivon", "ols", "sam")
IVON_CRITERIA = ("ce", "ls", "labo")
SAM_CRITERIA = ("ls", "labo", "ols")  # SAM runs on top of one of these (default ls)
# keys that only some kinds take (the others refuse them instead of ignoring them)
KIND_KEYS = {"ols_weight": ("ols", "sam"), "ols_topk": ("ols", "sam"), "sam_rho": ("sam",), "sam_adaptive": ("sam",)}
CHECKPOINT_POLICIES = ("last", "average", "best")
BEST_BY_NLL = ["--best-checkpoint-metric", "nll_loss"]

RECIPE_KEYS = {"name", "seeds", "data", "train", "evaluate", "methods", "slurm"}
DATA_KEYS = {"prepare", "data_bin", "train_target", "subsets", "launcher"}
DATA_LAUNCHERS = ("here", "job")  # [data] launcher: where the prepare command runs (experiment.launchers)
TRAIN_KEYS = {"args", "average_last", "save_interval_updates", "tensorboard"}
DEFAULT_SAVE_INTERVAL_UPDATES = 250
EVALUATE_KEYS = {"beam", "lenpen", "batch_size", "cpu", "longtail_level", "checkpoint", "average_last"}
METHOD_KEYS = {"kind", "label", "label_smoothing", "tau", "stop_update", "args", "criterion", "lr", "mc_samples",
               "ess", "hess_init", "ols_weight", "ols_topk", "sam_rho", "sam_adaptive"}


class RecipeError(UserError):
    """A recipe that cannot be run; the message names the file and the offending entry."""


@dataclass
class Method:
    kind: str
    name: str    # file-system safe, e.g. "labo-a0.1-tau1.25"
    label: str   # shown in tables, e.g. "LABO α=0.1 τ=1.25"
    criterion_args: List[str]
    params: Dict[str, object] = field(default_factory=dict)
    own_optimizer: bool = False  # IVON: the recipe's optimizer and precision flags do not apply
    fp32_only: bool = False      # SAM: the recipe's precision flags do not apply (the task refuses them)


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
    slurm: Dict[str, object] = field(default_factory=dict)  # the [slurm] keys given (checked: slurm_settings)
    tensorboard: bool = False    # [train] tensorboard: each run logs to <run>/tb/ (--tensorboard-logdir)
    data_launcher: str = "here"  # [data] launcher: "job" prepares the data as a job of --launcher slurm/submitit-local


_fmt = format_hyperparameter  # names and labels show τ and α as the report does


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
        misplaced = sorted(k for k, kinds in KIND_KEYS.items() if k in entry and kind not in kinds)
        if misplaced:
            raise RecipeError(f"{here} ({kind}) does not take {', '.join(misplaced)}")
        if kind == "ivon":
            methods += _ivon_methods(entry, here, alphas, extra, label)
            continue
        if kind == "sam":
            methods += _sam_methods(entry, here, alphas, extra, label)
            continue
        if kind == "ols":
            methods += [Method("ols", name, label or smoothing, ["--user-dir", str(PACKAGE_DIR), *args, *extra], params)
                        for name, smoothing, args, params in _criterion_settings("ols", entry, here, alphas)]
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
                params = {"label_smoothing": alpha, "tau": encode_hyperparameter(tau)}
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
    samples = f", {mc} samples" if mc > 1 else ""
    return [Method("ivon", f"ivon-{name}-lr{_fmt(lr)}" + (f"-mc{mc}" if mc > 1 else ""),
                   label or f"IVON + {smoothing} (lr {_fmt(lr)}{samples})",
                   ["--user-dir", str(PACKAGE_DIR), "--task", "translation_ivon", "--optimizer", "ivon",
                    "--lr", _fmt(lr), *ivon_flags, *crit, *extra],
                   {**params, "lr": lr, **crit_params}, own_optimizer=True)
            for lr in lrs for name, smoothing, crit, crit_params in _criterion_settings(criterion, entry, here, alphas)]


def _sam_methods(entry: dict, here: str, alphas: List[float], extra: List[str], label: Optional[str]) -> List[Method]:
    """kind = "sam": fairseq-train with --task translation_sam on top of the criterion "ls"
    (default), "labo" or "ols"; a list of sam_rho gives one method each. SAM refuses reduced
    precision, so the recipe's --fp16/--bf16/--amp are dropped for it."""
    criterion = entry.get("criterion", "ls")
    if criterion not in SAM_CRITERIA:
        raise RecipeError(f"{here}.criterion must be one of {', '.join(SAM_CRITERIA)}, got {criterion!r}")
    # the task's own start-up check (translation_sam), here at check time
    rhos = _number_list(entry, "sam_rho", 0.05, here, lambda v: v > 0.0, "a finite number > 0")
    adaptive = entry.get("sam_adaptive", False)
    if not isinstance(adaptive, bool):
        raise RecipeError(f"{here}.sam_adaptive must be true or false, got {adaptive!r}")
    sam, adaptive_flag = ("asam", ["--sam-adaptive"]) if adaptive else ("sam", [])
    return [Method("sam", f"{sam}-{name}-r{_fmt(rho)}", label or f"{sam.upper()} + {smoothing} (ρ {_fmt(rho)})",
                   ["--user-dir", str(PACKAGE_DIR), "--task", "translation_sam", "--sam-rho", _fmt(rho),
                    *adaptive_flag, *crit, *extra],
                   {**crit_params, "criterion": criterion, "sam_rho": rho, "sam_adaptive": adaptive}, fp32_only=True)
            for rho in rhos for name, smoothing, crit, crit_params in _criterion_settings(criterion, entry, here, alphas)]


def _criterion_settings(criterion: str, entry: dict, here: str, alphas: List[float]):
    """[(name, label, fairseq flags, params)] of the criterion a method trains with ("ce", "ls",
    "labo" over the grid of label_smoothing x tau, "ols" over label_smoothing x ols_weight); the
    flags leave out --user-dir, which the method adds."""
    if criterion == "ce":
        return [("ce", "CE", ["--criterion", "cross_entropy"], {})]
    if criterion == "ls":
        return [(f"ls-a{_fmt(a)}", f"LS α={_fmt(a)}",
                 ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", _fmt(a)], {"label_smoothing": a})
                for a in alphas]
    if criterion == "labo":
        taus = _taus(entry, here)
        return [(f"labo-a{_fmt(a)}-tau{_fmt(t)}", f"LABO α={_fmt(a)} τ={_fmt(t)}", _labo_args(a, t)[2:],
                 {"label_smoothing": a, "tau": encode_hyperparameter(t)}) for a in alphas for t in taus]
    # the criterion's own start-up checks (label_smoothed_ols._check_flags), here at check time
    weights = _number_list(entry, "ols_weight", 0.5, here, lambda w: 0.0 <= w <= 1.0, "a number in [0, 1]")
    topk = entry.get("ols_topk")
    if topk is not None and (not isinstance(topk, int) or isinstance(topk, bool) or topk < 0):
        raise RecipeError(f"{here}.ols_topk must be an integer >= 0 (0: dense S), got {topk!r}")
    top_flags, top_name, top_label = ([], "", "") if topk is None else \
        (["--ols-topk", str(topk)], f"-k{topk}", " dense" if topk == 0 else f" top-{topk}")
    return [(f"ols-a{_fmt(a)}-w{_fmt(w)}{top_name}", f"OLS α={_fmt(a)} w={_fmt(w)}{top_label}",
             ["--criterion", "label_smoothed_ols", "--label-smoothing", _fmt(a), "--ols-weight", _fmt(w), *top_flags],
             {"label_smoothing": a, "ols_weight": w, **({} if topk is None else {"ols_topk": topk})})
            for a in alphas for w in weights]


# flags of the recipe's common training arguments that a method with its own optimizer drops
# (all of them) or that a method trained in fp32 drops (the precision flags):
# (flag or prefix, takes a value)
PRECISION_FLAGS = (("--fp16", False), ("--bf16", False), ("--amp", False), ("--memory-efficient-fp16", False),
                   ("--memory-efficient-bf16", False))
OPTIMIZER_FLAGS = (("--optimizer", True), ("--lr", True), ("--adam-", True), ("--use-old-adam", False),
                   *PRECISION_FLAGS)


def without_optimizer_flags(args: Sequence[str], flags=OPTIMIZER_FLAGS) -> List[str]:
    """`args` without the optimizer and precision flags (or the given `flags`) and their values."""
    out, skip_value = [], False
    for word in args:
        if skip_value and not word.startswith("--"):
            skip_value = False
            continue
        skip_value = False
        match = next(((f, v) for f, v in flags if word == f or (f.endswith("-") and word.startswith(f))),
                     None)
        if match is None:
            out.append(word)
        else:
            skip_value = match[1]
    return out


def substitute(value: str, variables: Dict[str, str], where: str) -> str:
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
    sub = lambda v: substitute(str(v), variables, str(path))  # noqa: E731
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
    data_launcher = data.get("launcher", "here")
    if data_launcher not in DATA_LAUNCHERS:
        raise RecipeError(f"{path}: [data] launcher must be \"here\" or \"job\", got {data_launcher!r}")
    settings, checkpoint, average_last = _evaluate_settings(evaluate, train, path)
    train_args = [sub(a) for a in _string_list(train.get("args", []), f"{path}: [train] args")]
    if checkpoint == "best" and "--best-checkpoint-metric" not in train_args:
        train_args += BEST_BY_NLL
    save_every = _int_setting(train, "save_interval_updates", DEFAULT_SAVE_INTERVAL_UPDATES, f"{path}: [train]", 0)
    if save_every > 0 and "--save-interval-updates" not in train_args:
        train_args += ["--save-interval-updates", str(save_every)]
        if "--keep-interval-updates" not in train_args:
            train_args += ["--keep-interval-updates", "1"]
    tensorboard = train.get("tensorboard", False)
    if not isinstance(tensorboard, bool):
        raise RecipeError(f"{path}: [train] tensorboard must be true or false, got {tensorboard!r}")
    return Recipe(path=path, name=name, seeds=seeds, variables=variables, prepare=prepare,
                  data_bin=Path(sub(data["data_bin"])), train_target=Path(sub(data["train_target"])),
                  subsets=subsets, train_args=train_args, checkpoint=checkpoint, average_last=average_last,
                  evaluate=settings, methods=expand_methods(raw.get("methods", []), str(path)),
                  slurm=slurm_settings(raw.get("slurm", {}), path), tensorboard=tensorboard,
                  data_launcher=data_launcher)


def split_name(path: Path) -> str:
    return path.name.split(".", 1)[0]  # "test1" of test1.de-en.en.bin


def resolve_subsets(recipe: Recipe) -> List[str]:
    """The recipe's subsets, each a split of the data-bin (checked before anything trains);
    "all" is every test split in the data-bin (test, test1, ...)."""
    splits = sorted({split_name(p) for p in recipe.data_bin.glob("*.bin")})
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
    return {"last": LAST_CHECKPOINT,
            "best": f"{BEST_CHECKPOINT} (lowest validation nll_loss)",
            "average": f"average of the last {recipe.average_last} epoch checkpoints"}[recipe.checkpoint]


# [slurm]: how each run is submitted as a job (labo-experiment --launcher slurm / submitit-local).
# key: (the rule in words, the check); the defaults are in experiment.launchers.
SLURM_RULES = {
    "partition": ("a non-empty string", lambda v: isinstance(v, str) and v.strip() != ""),
    "account": ("a non-empty string", lambda v: isinstance(v, str) and v.strip() != ""),
    "qos": ("a non-empty string", lambda v: isinstance(v, str) and v.strip() != ""),
    "constraint": ("a non-empty string", lambda v: isinstance(v, str) and v.strip() != ""),
    "nodes": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "gpus_per_run": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "cpus_per_gpu": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "mem_gb": ("a finite number > 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v) and v > 0),
    "time_min": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "array_parallelism": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "distributed_port": ("an integer in [1024, 65535]", lambda v: isinstance(v, int) and not isinstance(v, bool)
                         and 1024 <= v <= 65535),
    "setup": ("a list of shell lines (strings)", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def slurm_setting_error(key: str, value) -> Optional[str]:
    """'must be an integer >= 1, got 0' when `value` is not a valid [slurm] `key`, else None."""
    rule, check = SLURM_RULES[key]
    return None if check(value) else f"must be {rule}, got {value!r}"


def slurm_settings(table, path: Path) -> Dict[str, object]:
    """The [slurm] table as given, every key checked."""
    where = f"{path}: [slurm]"
    _check_keys(table, set(SLURM_RULES), where)
    for key, value in table.items():
        error = slurm_setting_error(key, value)
        if error:
            raise RecipeError(f"{where} {key} {error}")
    return dict(table)
