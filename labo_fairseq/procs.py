"""Child processes that die with their parent.

`child_command(cmd)` wraps a command so that, on Linux, the kernel sends it SIGTERM when the
thread that started it dies, however that happens (SIGKILL included): nothing trains unattended
after the pipeline is gone. The wrapper is this module run as a script: it sets
PR_SET_PDEATHSIG, checks the parent is still the one that started it (it may have died before
the prctl call), then execs the command. Elsewhere the command runs unwrapped.
"""
import ctypes
import os
import signal
import sys
from typing import List, Sequence

PR_SET_PDEATHSIG = 1


def child_command(command: Sequence[str]) -> List[str]:
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-m", "labo_fairseq.procs", str(os.getpid()), *map(str, command)]


def pid_running(pid: int) -> bool:
    """Whether a process with this id exists (signal 0); another user's process counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(parent_pid: int) -> None:
    """Asks Linux to SIGTERM this process when the thread that started it dies (SIGKILL
    included); exits at once if the parent `parent_pid` is already gone. No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the prctl call
        os._exit(143)


def _exec_with_parent_death_signal(parent_pid: int, command: Sequence[str]) -> None:
    die_with_parent(parent_pid)
    os.execvp(command[0], list(command))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m labo_fairseq.procs PARENT_PID COMMAND [ARG...]")
    try:
        _exec_with_parent_death_signal(int(sys.argv[1]), sys.argv[2:])
    except OSError as error:
        sys.exit(f"labo_fairseq.procs: cannot run {sys.argv[2]}: {error}")
