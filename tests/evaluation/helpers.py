"""Assertions shared by the evaluation tests."""


def assert_one_line_error(proc, prog, *needles, status=2):
    """The command failed with `status`, without a traceback, and said why in exactly one
    `PROG: error: ...` line that contains every needle; returns that line."""
    assert proc.returncode == status, f"exit status {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


def dead_pid() -> int:
    """The id of a process that has finished (and been reaped): what a killed command leaves in
    the names of its temporary files."""
    import subprocess
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
