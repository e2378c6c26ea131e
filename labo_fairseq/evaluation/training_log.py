"""Validation statistics from a fairseq-train log, in either `--log-format simple`

    ... | INFO | valid | epoch 003 | valid on 'valid' subset | loss 5.992 | nll_loss 5.864 | ppl 58.22 | ... | num_updates 20

or `--log-format json`

    ... | INFO | valid | {"epoch": 3, "valid_loss": "5.992", ..., "valid_ppl": "58.22", "valid_num_updates": "20"}
"""
import json
import re
from pathlib import Path
from typing import List

from labo_fairseq.evaluation.errors import EvaluationError

_SIMPLE = re.compile(r"\| valid on '(?P<subset>[^']+)' subset \| (?P<stats>.*)$")
_JSON = re.compile(r"\| INFO \| (?P<subset>[^|{}]+?) \| (?P<stats>\{.*\})\s*$")


def _numeric_entry(stats: dict):
    """The numeric fields of one log line, with an integer num_updates; None without it."""
    entry = {}
    for key, value in stats.items():
        try:
            entry[key] = float(value)
        except (TypeError, ValueError):
            pass
    if "num_updates" not in entry:
        return None
    entry["num_updates"] = int(entry["num_updates"])
    return entry


def parse_valid_lines(text: str, subset: str = "valid") -> List[dict]:
    """[{"num_updates": int, "loss": float, "nll_loss": float, "ppl": float, ...}] in log order,
    for the validation subset `subset`; non-numeric fields are dropped."""
    entries = []
    for line in text.splitlines():
        stats = {}
        simple = _SIMPLE.search(line)
        if simple and simple.group("subset") == subset:
            for field in simple.group("stats").split(" | "):
                key, _, value = field.strip().partition(" ")
                stats[key] = value
        else:
            as_json = _JSON.search(line)
            if not as_json or as_json.group("subset").strip() != subset:
                continue
            try:
                record = json.loads(as_json.group("stats"))
            except json.JSONDecodeError:
                continue
            prefix = subset + "_"
            stats = {key[len(prefix):]: value for key, value in record.items() if key.startswith(prefix)}
            if "epoch" in record:
                stats.setdefault("epoch", record["epoch"])
        entry = _numeric_entry(stats)
        if entry is not None:
            entries.append(entry)
    return entries


def read_valid_log(path, subset: str = "valid") -> List[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"training log {path} does not exist")
    return parse_valid_lines(path.read_text(encoding="utf-8", errors="replace"), subset)


_INNER_SIMPLE = re.compile(r"\| train_inner \| epoch \d+:\s+\d+ / \d+ (?P<stats>.*)$")
_INNER_JSON = re.compile(r"\| train_inner \| (?P<stats>\{.*\})\s*$")


def parse_train_lines(text: str) -> List[dict]:
    """Training statistics logged every --log-interval updates (`train_inner` lines, simple or
    json format): [{"num_updates": int, "loss", "nll_loss", "ppl", "q_entropy", ...}] in log order."""
    entries = []
    for line in text.splitlines():
        stats = {}
        simple = _INNER_SIMPLE.search(line)
        if simple:
            for field in simple.group("stats").split(", "):
                key, _, value = field.strip().partition("=")
                stats[key] = value
        else:
            as_json = _INNER_JSON.search(line)
            if not as_json:
                continue
            try:
                stats = json.loads(as_json.group("stats"))
            except json.JSONDecodeError:
                continue
        entry = _numeric_entry(stats)
        if entry is not None:
            entries.append(entry)
    return entries


def read_train_log(path) -> List[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"training log {path} does not exist")
    return parse_train_lines(path.read_text(encoding="utf-8", errors="replace"))
