"""Runs `fairseq-train` several times in one Python process, so that tests of its refusals pay
fairseq's import (seconds) once: reads [{"argv": [...], "cwd": DIR}, ...] as JSON on stdin and
writes [{"returncode", "stdout", "stderr"}, ...] as JSON on stdout.

Each run goes through fairseq-train's own entry point (fairseq_cli.train.cli_main) with its
output captured; an exception it raises goes to sys.excepthook, as an uncaught one would, so a
plugin's FlagError becomes the one line and exit status that report_flag_errors makes of it.
"""
import contextlib
import io
import json
import logging
import os
import sys

from fairseq_cli import train


def run_once(argv, cwd):
    out, err = io.StringIO(), io.StringIO()
    handlers = [h for h in logging.root.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(out) for h in handlers]  # fairseq logs to the stdout of its import time
    os.chdir(cwd)
    sys.argv = ["fairseq-train", *argv]
    status = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                train.cli_main()
            except SystemExit as exit_:
                status = exit_.code
            except BaseException as error:  # noqa: B902  (what the interpreter would hand the hook)
                try:
                    sys.excepthook(type(error), error, error.__traceback__)
                    status = 1
                except SystemExit as exit_:
                    status = exit_.code
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
    if not isinstance(status, int):  # sys.exit(None) is 0; sys.exit("text") prints it and is 1
        err.write("" if status is None else f"{status}\n")
        status = 0 if status is None else 1
    return {"returncode": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    runs = json.load(sys.stdin)
    json.dump([run_once(r["argv"], r["cwd"]) for r in runs], sys.__stdout__)
