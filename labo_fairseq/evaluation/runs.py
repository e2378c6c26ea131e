"""The run-directory convention shared by the experiment pipeline and the report:

    RUN_DIR/
      run.json      {"method": "ls" | "labo" | "tsla" | ..., "label": "LABO τ=1.25", "seed": 1, ...}
                    method: what kind of training (the report's baseline is method "ls");
                    label: the name shown in tables and plots (runs with the same label are
                    seeds of one configuration; default: method); seed: an integer; any other
                    keys (hyper-parameters, paths) are kept but not interpreted.
      train.log     fairseq-train output (--log-format simple or json)
      eval/<subset>/
        generate.out, hyp.txt, ref.txt, src.txt, hyp.detok.txt, ref.detok.txt, scores.json
                    (scripts/evaluate.sh DATA_BIN CHECKPOINT RUN_DIR/eval/<subset> --subset <subset>)
        longtail.json
                    (scripts/longtail.py ... --hyp .../hyp.txt --ref .../ref.txt --json .../longtail.json)
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.longtail import load_longtail
from labo_fairseq.evaluation.training_log import read_valid_log

RUN_FILE = "run.json"
TRAIN_LOG = "train.log"
EVAL_DIR = "eval"
REQUIRED_EVAL_FILES = ("scores.json", "longtail.json", "hyp.detok.txt", "ref.detok.txt")


def eval_dir(run_dir, subset: str = "test") -> Path:
    """Where scripts/evaluate.sh and longtail.py write a run's results for `subset`."""
    return Path(run_dir) / EVAL_DIR / subset


@dataclass
class Run:
    path: Path
    method: str
    label: str
    seed: Optional[int]
    info: dict                   # all of run.json
    subset: str
    scores: dict                 # scores.json
    longtail: dict               # longtail.json
    valid: List[dict] = field(default_factory=list)   # validation entries of train.log

    @property
    def eval_dir(self) -> Path:
        return eval_dir(self.path, self.subset)

    @property
    def name(self) -> str:
        return self.label if self.seed is None else f"{self.label} (seed {self.seed})"


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise EvaluationError(f"run directory {path.parent} has no {what} ({path} is missing)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path} is not valid JSON: {error}")
    if not isinstance(data, dict):
        raise EvaluationError(f"{path} must hold a JSON object")
    return data


def load_run(run_dir, subset: str = "test") -> Run:
    """Reads one run directory; names the first missing or malformed file in an EvaluationError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvaluationError(f"run directory {run_dir} does not exist")
    info = _read_json(run_dir / RUN_FILE, RUN_FILE)
    if not isinstance(info.get("method"), str) or not info["method"]:
        raise EvaluationError(f"{run_dir / RUN_FILE} needs a \"method\" string (e.g. \"ls\", \"labo\")")
    seed = info.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise EvaluationError(f"{run_dir / RUN_FILE}: \"seed\" must be an integer, got {seed!r}")
    directory = eval_dir(run_dir, subset)
    for name in REQUIRED_EVAL_FILES:
        if not (directory / name).is_file():
            raise EvaluationError(f"run directory {run_dir} has no {subset} evaluation file {directory / name}")
    scores = _read_json(directory / "scores.json", "scores.json")
    for key in ("bleu", "sacrebleu", "chrf"):
        if not isinstance(scores.get(key), dict) or "score" not in scores[key]:
            raise EvaluationError(f"{directory / 'scores.json'} has no {key}.score")
    if not (run_dir / TRAIN_LOG).is_file():
        raise EvaluationError(f"run directory {run_dir} has no training log {run_dir / TRAIN_LOG}")
    return Run(
        path=run_dir, method=info["method"], label=str(info.get("label") or info["method"]), seed=seed,
        info=info, subset=subset, scores=scores, longtail=load_longtail(directory / "longtail.json"),
        valid=read_valid_log(run_dir / TRAIN_LOG),
    )
