"""How every command of the package fails: one line, a documented exit status, nothing half-written.

    UserError        a problem the user can fix (an argument, an input file, the destination);
                     its message names the argument or file and the value
    run_command      runs a command body and turns UserError, OSError, Ctrl-C and SIGTERM into
                     `PROG: error: ...` / `PROG: interrupted ...` and an exit status
    FlagError        an invalid flag of a fairseq plugin (criterion, optimizer, task), raised
                     inside fairseq-train; report_flag_errors() makes it one line and exit status 2

Exit statuses, the same for every command:
    0    done
    1    the command ran but part of its work failed (a pipeline run), reported above
    2    nothing was produced: bad arguments or inputs (argparse's status for a usage error)
    130  interrupted (Ctrl-C or SIGTERM); the message says what was left (by default: earlier
         outputs as they were)
"""
import os
import signal
import sys
from typing import Callable

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's arguments, inputs or destination, reported as one line."""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_command(prog: str, body: Callable[[], object], interrupted: str = "previous outputs left as they were") -> int:
    """Runs body(); returns its integer result (None counts as 0) or the exit status of its failure.

    SIGTERM is handled like Ctrl-C while body runs, so `finally` blocks (staging directories,
    child processes) clean up however the command is stopped short of SIGKILL.
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        status = body()
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:  # disk full, permissions: name the file, no traceback
        where = f"{error.filename}: " if error.filename else ""
        print(f"{prog}: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, previous)
    return int(status or 0)


class FlagError(ValueError):
    """An invalid flag of the fairseq plugins; fairseq-train reports it as one line (see
    `report_flag_errors`)."""


def check_at_least(flag: str, value, minimum, error=FlagError, note: str = "") -> None:
    """Raises `error` ("FLAG must be >= MINIMUM, got VALUE") when value < minimum or is NaN."""
    if not value >= minimum:
        raise error(f"{flag} must be >= {minimum}{note}, got {value}")


def report_flag_errors() -> None:
    """Makes an uncaught FlagError print one line instead of fairseq-train's traceback;
    every other exception goes to the previous hook unchanged."""
    previous = sys.excepthook

    def hook(kind, error, tb):
        if issubclass(kind, FlagError):
            print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USAGE)  # refused at start-up: nothing was produced
        previous(kind, error, tb)

    if getattr(previous, "_labo_flag_hook", False):
        return
    hook._labo_flag_hook = True
    sys.excepthook = hook
