"""The child processes of a pipeline (training, evaluation), so that an interrupt stops every one."""
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.evaluation.runs import TRAIN_LOG
from labo_fairseq.experiment.console import CONSOLE
from labo_fairseq.experiment.recipe import PYTHON_BIN
from labo_fairseq.experiment.runs import RunPlan
from labo_fairseq.procs import child_command


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: children are stopped, runs stay resumable."""


def tool_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for the commands the pipeline runs: this venv's tools first, unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{PYTHON_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| ")
# fairseq's commands' configuration dict (one line) and fairseq-train's model print (a record
# ending in "Model(", continued by lines without a time stamp)
_DUMP = re.compile(r"\| fairseq_cli\.\w+ \| (\{'_name'|\w+\($)")


class ConsoleFilter:
    """What of a child's output the console shows (all of it goes to the log): fairseq's
    configuration and model dumps are left out, once replaced by a note; everything else, also
    a traceback's continuation lines, is shown."""

    def __init__(self, log_name: str):
        self.log_name = log_name
        self.skipping = False
        self.noted = False

    def shown(self, line: str) -> Optional[str]:
        """The line as the console shows it, or None."""
        if _LOG_RECORD.match(line):
            self.skipping = bool(_DUMP.search(line.rstrip("\n")))
        if not self.skipping:
            return line
        if self.noted:
            return None
        self.noted = True
        return f"(fairseq's configuration and model print: in {self.log_name}; --verbose shows them)\n"


class ChildProcesses:
    """The running child processes, so that an interrupt can stop every one of them; `verbose`:
    the console shows all of a streamed child's output (else ConsoleFilter's part)."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self._lock = threading.Lock()
        self._procs: set = set()
        self.stopping = threading.Event()
        self.active: Dict[str, RunPlan] = {}  # runs whose training is in progress
        self.since: Dict[str, tuple] = {}  # their (start time, train.log size at the start)

    @contextlib.contextmanager
    def training(self, run: RunPlan):
        log = run.run_dir / TRAIN_LOG
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

    def training_since(self) -> List[tuple]:
        """[(run, (start time, train.log size at the start))] of the runs training now."""
        with self._lock:
            return [(run, self.since[name]) for name, run in self.active.items()]

    def run(self, command: Sequence[str], log_path: Path, what: str, stream: bool, append: bool = False,
            env: Optional[Dict[str, str]] = None) -> None:
        """Runs `command` into `log_path` (and the console when `stream`); raises if it fails."""
        if self.stopping.is_set():
            raise Interrupted()
        # line-buffered: the log holds every line the child printed even if this process is
        # killed (a SLURM node's log would otherwise lose its last 8 KB)
        with open(log_path, "a" if append else "w", encoding="utf-8", buffering=1) as log:
            # its own process group: a terminal's Ctrl-C reaches this process only, which
            # then stops the children itself; they also die with it (child_command)
            proc = subprocess.Popen(child_command(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=tool_env(env), start_new_session=True)
            with self._lock:
                self._procs.add(proc)
            console = None if self.verbose else ConsoleFilter(log_path.name)
            try:
                for line in proc.stdout:
                    log.write(line)
                    shown = line if console is None else console.shown(line)
                    if stream and shown is not None:
                        CONSOLE.write("    " + shown if shown.endswith("\n") else "    " + shown + "\n")
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
