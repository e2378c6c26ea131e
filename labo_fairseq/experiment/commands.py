"""Training command lines compared flag by flag: what changed between the command a run was
trained with and the one its recipe gives now, and which changes only extend its schedule."""
import math
from typing import Dict, List, Optional, Sequence

# flags that set how long training lasts: raising them trains a finished run further
SCHEDULE_FLAGS = ("--max-update", "--max-epoch")
# flags that set how often training saves: they do not change the model
SAVE_FLAGS = ("--save-interval-updates", "--keep-interval-updates")
# flags that only add logging: a run may resume with or without them
LOGGING_FLAGS = ("--tensorboard-logdir",)
# flags of the job, not of the model: where a multi-node job's workers meet
JOB_FLAGS = ("--distributed-port",)


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


def without_flags(command: Sequence[str], flags: Sequence[str]) -> List[str]:
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
    sooner (None: none). Save, logging and job flags may differ freely, and so may the program's
    path: it names the environment that runs fairseq-train (a moved checkout), not the model."""
    ignored = SCHEDULE_FLAGS + SAVE_FLAGS + LOGGING_FLAGS + JOB_FLAGS
    kept_old, kept_new = without_flags(recorded[1:], ignored), without_flags(new[1:], ignored)
    change = describe_command_change(recorded[:1] + kept_old, new[:1] + kept_new) if kept_old != kept_new else None
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


def max_update(command: Sequence[str]) -> Optional[int]:
    values = _flag_values(command).get("--max-update")
    try:
        value = int(values[-1]) if values else 0
    except ValueError:
        return None
    return value if value > 0 else None
