"""The one error type of the evaluation tools, and the wrapper that turns it into a one-line
message with a non-zero exit status instead of a traceback."""
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple


class EvaluationError(Exception):
    """A problem with the user's inputs (missing/empty/mismatched files), reported in one line."""


def read_lines(path, what: str = "file", allow_empty: bool = False) -> List[str]:
    """Lines of a UTF-8 text file without their newline; raises EvaluationError if the file is
    missing or (unless allowed) empty."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{what} {path} does not exist")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines and not allow_empty:
        raise EvaluationError(f"{what} {path} is empty")
    return lines


def read_parallel(hyp_path, ref_path) -> Tuple[List[str], List[str]]:
    """Hypothesis and reference lines, which must be equally many and not zero."""
    hyps = read_lines(hyp_path, "hypothesis file")
    refs = read_lines(ref_path, "reference file")
    if len(hyps) != len(refs):
        raise EvaluationError(
            f"line counts differ: hypothesis file {hyp_path} has {len(hyps)} lines, "
            f"reference file {ref_path} has {len(refs)}")
    return hyps, refs


def run_main(main: Callable[[Optional[Sequence[str]]], object], prog: str,
             argv: Optional[Sequence[str]] = None) -> int:
    """Runs a CLI main; an EvaluationError becomes `PROG: error: ...` on stderr and exit status 2."""
    try:
        main(argv)
    except EvaluationError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
