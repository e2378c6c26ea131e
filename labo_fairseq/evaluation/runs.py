"""The run-directory convention shared by the experiment pipeline and the report:

    RUN_DIR/
      run.json      {"method": "ls" | "labo" | "tsla" | ..., "label": "LABO τ=1.25", "seed": 1, ...}
                    method: what kind of training (the report's baseline is method "ls");
                    label: the name shown in tables and plots (runs with the same label are
                    seeds of one configuration; default: method); seed: an integer. Read when
                    present: "config", "label_smoothing" and "tau" (numbers; τ = ∞ is the string
                    "inf", as JSON has no infinity; older runs wrote both as strings, "1.25", which
                    read the same), "stop_update",
                    "checkpoint" (which checkpoint was evaluated, in words), "train_command"
                    (τ and α are taken from it when the keys are absent). Other keys are kept.
      train.log     fairseq-train output (--log-format simple or json)
      command.sh    the training command (labo-experiment), train.done once training finished,
                    eval.done what the finished evaluation depended on, FAILED why the last attempt
                    failed, evaluate.<subset>.log and longtail.<subset>.log the evaluation's output
      checkpoints/  fairseq's --save-dir: checkpoint_last.pt, checkpoint_best.pt, checkpointN.pt,
                    checkpoint.avgN.pt (the average of the last N epoch checkpoints)
      eval/<subset>/
        generate.out, hyp.txt, ref.txt, src.txt, hyp.detok.txt, ref.detok.txt, [ref.raw.txt], scores.json
                    (scripts/evaluate.sh DATA_BIN CHECKPOINT RUN_DIR/eval/<subset> --subset <subset>)
        longtail.json
                    (scripts/longtail.py ... --hyp .../hyp.txt --ref .../ref.txt --json .../longtail.json)
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.longtail import load_longtail
from labo_fairseq.evaluation.training_log import read_train_log, read_valid_log
from labo_fairseq.textfiles import read_json_object

RUN_FILE = "run.json"
TRAIN_LOG = "train.log"
COMMAND_FILE = "command.sh"
TRAIN_DONE = "train.done"
EVAL_DONE = "eval.done"
FAILED_FILE = "FAILED"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"  # fairseq-train --tensorboard-logdir, with [train] tensorboard = true
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
EVAL_DIR = "eval"
SCORES_FILE = "scores.json"
LONGTAIL_FILE = "longtail.json"
HYP_FILE = "hyp.txt"
REF_FILE = "ref.txt"
REQUIRED_EVAL_FILES = (SCORES_FILE, LONGTAIL_FILE, "hyp.detok.txt", "ref.detok.txt")


def averaged_checkpoint(last: int) -> str:
    """The file name of the average of the last `last` epoch checkpoints."""
    return f"checkpoint.avg{last}.pt"


def tool_log(run_dir, tool: str, subset: str) -> Path:
    """The log of an evaluation step ("evaluate", "longtail") of a run on `subset`."""
    return Path(run_dir) / f"{tool}.{subset}.log"


# run.json's τ = ∞ (uniform smoothing): JSON has no infinity
INFINITY = "inf"


def encode_hyperparameter(value: float):
    """τ or α as run.json stores it: the number, or "inf"."""
    return INFINITY if math.isinf(value) else value


def decode_hyperparameter(raw) -> Optional[float]:
    """A run.json number, "inf", or an older run's string ("1.25") as a float; None otherwise."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def format_hyperparameter(value: float) -> str:
    """How names, labels and tables show τ and α: "1.25", "0.1", "inf"."""
    return INFINITY if math.isinf(value) else f"{value:g}"


def eval_dir(run_dir, subset: str = "test") -> Path:
    """Where scripts/evaluate.sh and longtail.py write a run's results for `subset`."""
    return Path(run_dir) / EVAL_DIR / subset


@dataclass
class SubsetEval:
    """One evaluated subset of a run."""
    subset: str
    directory: Path
    scores: dict                 # scores.json
    longtail: dict               # longtail.json

    @property
    def reference_file(self) -> Path:
        """What sacreBLEU scored against: ref.raw.txt, or ref.detok.txt without a raw reference."""
        return self.directory / self.scores.get("reference", {}).get("file", "ref.detok.txt")

    @property
    def lowercase(self) -> bool:
        return bool(self.scores.get("reference", {}).get("lowercase", False))


@dataclass
class Run:
    path: Path
    method: str
    label: str
    seed: Optional[int]
    info: dict                   # all of run.json
    evals: Dict[str, SubsetEval]
    valid: List[dict] = field(default_factory=list)   # validation entries of train.log
    train: List[dict] = field(default_factory=list)   # train_inner entries of train.log

    # The first subset's results, for callers that look at one test set.
    @property
    def subset(self) -> str:
        return next(iter(self.evals))

    @property
    def scores(self) -> dict:
        return self.evals[self.subset].scores

    @property
    def longtail(self) -> dict:
        return self.evals[self.subset].longtail

    @property
    def eval_dir(self) -> Path:
        return self.evals[self.subset].directory

    @property
    def name(self) -> str:
        return self.label if self.seed is None else f"{self.label} (seed {self.seed})"

    @property
    def config(self) -> str:
        return str(self.info.get("config") or self.label)

    def _hyperparameter_raw(self, key: str):
        if self.info.get(key) is not None:
            return self.info[key]
        flag = {"tau": "--labo-tau", "label_smoothing": "--label-smoothing"}[key]
        command = self.info.get("train_command") or []
        return next((command[i + 1] for i, arg in enumerate(command[:-1]) if arg == flag), None)

    def hyperparameter(self, key: str) -> Optional[str]:
        """run.json's "tau" / "label_smoothing", else the value of --labo-tau / --label-smoothing in
        its train_command, as tables show it ("1.25", "inf"); None when neither has it."""
        raw = self._hyperparameter_raw(key)
        value = decode_hyperparameter(raw)
        return format_hyperparameter(value) if value is not None and not isinstance(raw, str) else \
            None if raw is None else str(raw)

    def hyperparameter_value(self, key: str) -> Optional[float]:
        """The same as a number (inf for "inf"); None when absent or not a number."""
        return decode_hyperparameter(self._hyperparameter_raw(key))


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise EvaluationError(f"run directory {path.parent} has no {what} ({path} is missing)")
    return read_json_object(path, what)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_run_info(path: Path, info: dict) -> None:
    """The keys of run.json the report reads must have the documented types."""
    if not isinstance(info.get("method"), str) or not info["method"]:
        raise EvaluationError(f"{path} needs a \"method\" string (e.g. \"ls\", \"labo\"), "
                              f"got {info.get('method')!r}")
    seed = info.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise EvaluationError(f"{path}: \"seed\" must be an integer, got {seed!r}")
    for key in ("label", "config", "checkpoint"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise EvaluationError(f"{path}: \"{key}\" must be a string, got {info[key]!r}")
    for key in ("tau", "label_smoothing", "stop_update"):
        value = info.get(key)
        if value is not None and not isinstance(value, str) and not _is_number(value):
            raise EvaluationError(f"{path}: \"{key}\" must be a number or a string, got {value!r}")
    command = info.get("train_command")
    if command is not None and (not isinstance(command, list) or not all(isinstance(a, str) for a in command)):
        raise EvaluationError(f"{path}: \"train_command\" must be a list of strings, got {command!r}")


def _check_scores(path: Path, scores: dict) -> None:
    """The numbers of scores.json the report reads must be numbers."""
    for key in ("bleu", "sacrebleu", "chrf", "ter"):
        if key == "ter" and key not in scores:
            continue
        if not isinstance(scores.get(key), dict) or "score" not in scores[key]:
            raise EvaluationError(f"{path} has no {key}.score")
        if not _is_number(scores[key]["score"]):
            raise EvaluationError(f"{path}: {key}.score must be a number, got {scores[key]['score']!r}")
    for key, name in (("sacrebleu", "length_ratio"), ("bleu", "sys_len"), ("bleu", "ref_len")):
        value = scores[key].get(name)
        if value is not None and not _is_number(value):
            raise EvaluationError(f"{path}: {key}.{name} must be a number, got {value!r}")
    reference = scores.get("reference", {})
    if not isinstance(reference, dict):
        raise EvaluationError(f"{path}: \"reference\" must be an object, got {reference!r}")
    if not isinstance(reference.get("file", ""), str) or not isinstance(reference.get("lowercase", False), bool):
        raise EvaluationError(f"{path}: \"reference\" needs a \"file\" string and a \"lowercase\" boolean, "
                              f"got {reference!r}")


def load_run(run_dir, subsets: Union[str, Sequence[str]] = "test") -> Run:
    """Reads one run directory and its evaluations of `subsets`; names the first missing or
    malformed file in an EvaluationError."""
    run_dir = Path(run_dir)
    if isinstance(subsets, str):
        subsets = [subsets]
    if not run_dir.is_dir():
        raise EvaluationError(f"run directory {run_dir} does not exist")
    info = _read_json(run_dir / RUN_FILE, RUN_FILE)
    _check_run_info(run_dir / RUN_FILE, info)
    seed = info.get("seed")
    evals = {}
    for subset in subsets:
        directory = eval_dir(run_dir, subset)
        for name in REQUIRED_EVAL_FILES:
            if not (directory / name).is_file():
                raise EvaluationError(f"run directory {run_dir} has no {subset} evaluation file {directory / name}")
        scores = _read_json(directory / SCORES_FILE, SCORES_FILE)
        _check_scores(directory / SCORES_FILE, scores)
        evals[subset] = SubsetEval(subset, directory, scores, load_longtail(directory / LONGTAIL_FILE))
        if not evals[subset].reference_file.is_file():
            raise EvaluationError(f"run directory {run_dir} has no {subset} evaluation file "
                                  f"{evals[subset].reference_file}")
    if not (run_dir / TRAIN_LOG).is_file():
        raise EvaluationError(f"run directory {run_dir} has no training log {run_dir / TRAIN_LOG}")
    return Run(
        path=run_dir, method=info["method"], label=str(info.get("label") or info["method"]), seed=seed,
        info=info, evals=evals, valid=read_valid_log(run_dir / TRAIN_LOG), train=read_train_log(run_dir / TRAIN_LOG),
    )
