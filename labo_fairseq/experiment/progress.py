"""What the pipeline tells while it runs: each run's last validation loss, where an interrupted
run resumes, and its status while runs train (ProgressReporter)."""
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence

from labo_fairseq.evaluation.runs import LAST_CHECKPOINT, TRAIN_DONE, TRAIN_LOG
from labo_fairseq.experiment.commands import max_update
from labo_fairseq.experiment.console import CONSOLE, Console, duration
from labo_fairseq.experiment.recipe import Recipe
from labo_fairseq.experiment.runs import RunPlan, train_command


def last_valid_nll(run: RunPlan) -> Optional[float]:
    from labo_fairseq.evaluation.training_log import read_valid_log

    try:
        entries = read_valid_log(run.run_dir / TRAIN_LOG)
    except (OSError, ValueError):
        return None
    values = [e["nll_loss"] for e in entries if isinstance(e.get("nll_loss"), (int, float))]
    return values[-1] if values else None


def finished_line(run: RunPlan, status: str, took: str, where: str = "") -> str:
    """How the console reports a run that ended (`where`: e.g. " on GPU 1"): "done on GPU 1 in
    3m02s, valid nll 4.12", or "failed on GPU 1 after 10s: WHY"."""
    if status.startswith("failed"):
        return f"failed{where} after {took}: {status[len('failed: '):]}"
    nll = last_valid_nll(run)
    return f"{status}{where} in {took}" + ("" if nll is None else f", valid nll {nll:.2f}")


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
    saved, seen = training_progress(run.run_dir / TRAIN_LOG)
    shown = f"at least {seen}" if seen is not None else "the"
    if saved is None:
        # fairseq logs "Saved checkpoint" only after the file is in place: a kill between the two
        # leaves a checkpoint that train.log does not mention yet.
        if (run.checkpoints / LAST_CHECKPOINT).exists():
            return f"{run.name}: resumes from {LAST_CHECKPOINT} (saved as it was interrupted; its update is not " \
                   f"in train.log)"
        return f"{run.name}: no checkpoint saved yet; {shown} update(s) done so far will be redone"
    redo = "" if seen is None or seen <= saved else f"; about {seen - saved} update(s) since then will be redone"
    return f"{run.name}: resumes from its checkpoint at update {saved}{redo}"


_LOADED = re.compile(r"Loaded checkpoint .* \(epoch \d+ @ (\d+) updates\)")
LIVE_REFRESH_S = 1.0  # how often the status line on a terminal is rewritten


class TrainingSource(Protocol):
    """Where ProgressReporter learns which runs train now: ChildProcesses for the local pool,
    launchers.RunningJobs (the jobs last seen running) for the submitit launchers. While
    `stopping` is set the status is not shown."""
    stopping: threading.Event

    def training_since(self) -> List[tuple]:
        """[(run, (start time, train.log size at the start))] of the runs training now."""


@dataclass
class _LogPosition:
    """How far ProgressReporter has read a training run's train.log, and what it found there."""
    since: tuple
    offset: int
    target: Optional[int]       # the run's --max-update
    # the update training started from: a loaded checkpoint's, or where an attached job stood
    first: int = 0
    update: Optional[int] = None
    partial: bytes = b""        # an incomplete last line, kept for the next read


def _last_update_before(log_path: Path, offset: int, window: int = 65536) -> int:
    """The last update train.log names before byte `offset` (0: none): where a run that was
    already training when the reporter first saw it stood then (a submitit job attached to), so
    that its rate counts only the updates made since."""
    if offset <= 0:
        return 0
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, offset - window))
            text = log.read(min(offset, window)).decode("utf-8", errors="replace")
    except OSError:
        return 0
    seen = _UPDATES.findall(text)
    return int(seen[-1]) if seen else 0


class ProgressReporter:
    """The pipeline's status while runs train: runs started and finished, each training run's
    update (from its train.log) out of its --max-update, the time elapsed and an estimate of the
    training time left (from the update rates so far; evaluation not included). On a terminal it is
    one line rewritten every second; elsewhere a plain line every `interval` seconds. `interval` 0:
    no status at all."""

    def __init__(self, recipe: Recipe, runs: Sequence[RunPlan], source: TrainingSource, interval: float,
                 console: Console = CONSOLE):
        self.recipe, self.runs, self.source, self.interval = recipe, list(runs), source, interval
        self.console = console
        self.started_at = time.time()
        self.started = self.finished = 0
        self.started_names: set = set()
        self._logs: Dict[str, _LogPosition] = {}
        # the --max-update assumed for the runs still to start: the first run's
        self._target = max_update(train_command(recipe, self.runs[0])) if self.runs else None
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
        self.console.clear_status()

    def _loop(self) -> None:
        live = self.console.live
        while not self._stop.wait(LIVE_REFRESH_S if live else self.interval):
            if self.source.stopping.is_set():
                continue
            if live:
                self.console.status(self.status())
            else:
                self.console.say(self.status())

    def _read_log(self, run: RunPlan, since: tuple) -> _LogPosition:
        """Reads what train.log gained since the last call (a resumed log is read from `since`)."""
        position = self._logs.get(run.name)
        if position is None or position.since != since:
            target = max_update(train_command(self.recipe, run))
            position = self._logs[run.name] = _LogPosition(since, since[1], target,
                                                           _last_update_before(run.run_dir / TRAIN_LOG, since[1]))
        try:
            with open(run.run_dir / TRAIN_LOG, "rb") as log:
                if os.fstat(log.fileno()).st_size < position.offset:  # rewritten: a run trained from scratch
                    position.offset, position.partial, position.first = 0, b"", 0
                log.seek(position.offset)
                data = log.read()
        except OSError:
            return position
        position.offset += len(data)
        lines, _, position.partial = (position.partial + data).rpartition(b"\n")
        text = lines.decode("utf-8", errors="replace")
        loaded = _LOADED.findall(text)
        if loaded:
            position.first = int(loaded[-1])
        seen = _UPDATES.findall(text)
        if seen:
            position.update = int(seen[-1])
        return position

    def _run_state(self, run: RunPlan, since: tuple, now: float):
        """(text, updates left or None, updates per second or None) of a training run."""
        started = since[0]
        position = self._read_log(run, since)
        target = position.target
        first = position.first
        update = position.update if position.update is not None else first
        rate = (update - first) / (now - started) if update > first and now > started else None
        shown = f"{run.name} update {update}" + (f"/{target}" if target else "")
        return shown, (max(0, target - update) if target else None), rate

    def status(self) -> str:
        now = time.time()
        states = [self._run_state(run, since, now) for run, since in self.source.training_since()]
        parts = [f"{self.started}/{len(self.runs)} run(s) started, {self.finished} finished"]
        parts += [text for text, _, _ in states]
        parts.append(f"{duration(now - self.started_at)} elapsed")
        rates = [rate for _, _, rate in states if rate]
        lefts = [left for _, left, _ in states]
        target = self._target
        # runs still to start that will train (not those already trained)
        waiting = sum(1 for r in self.runs if r.name not in self.started_names and not (r.run_dir / TRAIN_DONE).exists())
        if states and rates and len(rates) == len(states) and None not in lefts and (target or not waiting):
            # the runs still waiting train from scratch at the same speed
            left = sum(lefts) + waiting * (target or 0)
            parts.append(f"training left about {duration(left / sum(rates))}")
        return "progress: " + "; ".join(parts)
