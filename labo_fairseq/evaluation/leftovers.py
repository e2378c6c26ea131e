"""Temporary files the evaluation commands write beside their outputs carry the id of the process
that writes them (`.generate.out.part-PID`, `.report.tmp-PID-...`). A process killed outright
(SIGKILL, a lost machine) cannot remove them; the next run in the same place does, for processes
that no longer run, never those of a running one, and says so."""
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, List

from labo_fairseq.procs import pid_running


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (a reused id counts as running: its files are kept)."""
    return pid <= 0 or pid_running(pid)  # pid <= 0 is not a single process: keep its files


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


def remove_stale(directory, pattern: str, prog: str, remove: Callable[[Path], bool] = _remove) -> List[Path]:
    """Removes the entries of `directory` whose whole name matches `pattern` (a regular expression
    whose group "pid" is the writer's process id) when that process no longer runs, with `remove`
    (which says whether it removed the entry; default: the entry and all it holds); prints one
    line per entry removed and returns them."""
    try:
        entries = sorted(Path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for path in entries:
        match = re.fullmatch(pattern, path.name)
        if match is None or pid_alive(int(match.group("pid"))):
            continue
        try:
            if not remove(path):
                continue
        except FileNotFoundError:   # another run removed it first
            continue
        print(f"{prog}: removed {path}, left by process {match.group('pid')}, which no longer runs",
              file=sys.stderr)
        removed.append(path)
    return removed
