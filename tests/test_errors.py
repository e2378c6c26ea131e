"""labo_fairseq.errors: every command fails the same way (one line, documented exit status)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from labo_fairseq.errors import EXIT_INTERRUPTED, EXIT_USAGE, UserError, run_command


def test_user_error_is_one_line_with_exit_status_2(capsys):
    def body():
        raise UserError("--beam must be >= 1, got 0")
    assert run_command("labo-evaluate", body) == EXIT_USAGE == 2
    assert capsys.readouterr().err == "labo-evaluate: error: --beam must be >= 1, got 0\n"


def test_os_error_names_the_file(capsys, tmp_path):
    def body():
        open(tmp_path / "missing" / "x.txt", "w")
    assert run_command("cmd", body) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cmd: error: {tmp_path / 'missing' / 'x.txt'}: ")


def test_status_passes_through_and_none_is_success():
    assert run_command("cmd", lambda: None) == 0
    assert run_command("cmd", lambda: 1) == 1


def test_other_exceptions_are_not_swallowed():
    def body():
        raise ZeroDivisionError("a bug, which deserves its traceback")
    with pytest.raises(ZeroDivisionError):
        run_command("cmd", body)


def test_ctrl_c_is_exit_130(capsys):
    def body():
        raise KeyboardInterrupt
    assert run_command("cmd", body) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "cmd: interrupted; previous outputs left as they were\n"


def test_sigterm_runs_cleanup_and_exits_130(tmp_path):
    """SIGTERM becomes KeyboardInterrupt inside the body: `finally` blocks clean up."""
    marker = tmp_path / "cleaned"
    script = textwrap.dedent(f"""
        import time
        from labo_fairseq.errors import run_command

        def body():
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                open({str(marker)!r}, "w").close()

        raise SystemExit(run_command("cmd", body))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - start < 20
    assert err.strip() == "cmd: interrupted; previous outputs left as they were" and marker.exists()

