"""argparse types of the commands: a bad value is refused at parsing, as
`PROG: error: argument --FLAG: ...` naming the value, before any work is done."""
import argparse
import math
from pathlib import Path
from typing import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer type that refuses values below `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = int_at_least(1)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _blocking_file(path: Path):
    """The first existing ancestor of `path` that is not a directory (its parents cannot be made)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_file(text: str) -> Path:
    """A file a command writes (its missing parent directories are made): not a directory, and
    not under an existing file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {blocking} is a file, not a directory")
    return path


def output_dir(text: str) -> Path:
    """A directory a command writes (made when missing): not an existing file, nor under one."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {blocking} is a file, not a directory")
    return path
