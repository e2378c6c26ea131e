"""Children started through labo_fairseq.procs die with their parent, even on SIGKILL."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from labo_fairseq.procs import child_command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_child_dies_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from labo_fairseq.procs import child_command
        child = subprocess.Popen(child_command(["sleep", "60"]), start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    time.sleep(0.5)  # the wrapper has exec'd sleep by now
    assert _alive(child_pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while _alive(child_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid), "the child outlived its killed parent"


def test_wrapper_runs_the_command_with_its_arguments_and_exit_code():
    proc = subprocess.run(child_command([sys.executable, "-c", "import sys; print(sys.argv[1:]); sys.exit(3)",
                                         "a b", "--x"]), capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stdout.strip() == "['a b', '--x']"
    missing = subprocess.run(child_command(["no-such-command-here"]), capture_output=True, text=True)
    assert missing.returncode != 0 and "cannot run no-such-command-here" in missing.stderr


def test_a_pipeline_child_log_holds_each_line_as_it_is_printed(tmp_path):
    from labo_fairseq.experiment.children import ChildProcesses, Interrupted
    children, log = ChildProcesses(), tmp_path / "train.log"
    command = [sys.executable, "-c", "import time; print('first line', flush=True); time.sleep(60)"]
    failures = []

    def run():
        try:
            children.run(command, log, "child", stream=False)
        except Interrupted:
            pass
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.time() + 20
        while "first line" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
            time.sleep(0.1)
        # still running: the line is in the file, not in a buffer that a killed pipeline loses
        assert thread.is_alive() and log.read_text() == "first line\n"
    finally:
        children.stop_all(grace=5)
        thread.join(10)
    assert not failures and not thread.is_alive()
