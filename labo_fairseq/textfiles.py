"""Reading and writing the line-oriented text files every command works on (corpora, hypotheses,
references), with errors that name the file and the line.

Lines are split on '\\n' only (as Perl's <STDIN> and sacreBLEU do): a '\\r' stays part of its line.
Each line is decoded on its own, so an invalid UTF-8 byte is reported on the line that holds it.
"""
import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterable, Iterator, List

from labo_fairseq.errors import UserError


def iter_lines(path, what: str = "file", shown=None) -> Iterator[str]:
    """Yields the lines of a UTF-8 text file (plain, or gzip when the name ends in .gz) without '\\n'.
    Errors name the file as `shown` when given (the user's file or archive member that `path` is
    a working copy of)."""
    path = Path(path)
    where = f"{what} {path if shown is None else shown}"
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise UserError(f"{where}: line {number} is not valid UTF-8 "
                                    f"(byte {error.start + 1}: {error.reason})") from None
                yield line[:-1] if line.endswith("\n") else line
    except FileNotFoundError:
        raise UserError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{where} is a directory, expected a file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise UserError(f"{where}: corrupt or truncated gzip file after line {number} "
                        f"({error or type(error).__name__})") from None


def read_lines(path, what: str = "file", allow_empty: bool = True) -> List[str]:
    """All lines of a text file (see iter_lines); an empty file is an error unless allowed."""
    lines = list(iter_lines(path, what))
    if not lines and not allow_empty:
        raise UserError(f"{what} {path} is empty")
    return lines


def read_json_object(path, what: str = "file") -> dict:
    """A JSON file holding an object; missing, unreadable, invalid JSON or another type is a
    UserError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, expected a file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def write_lines(path, lines: Iterable[str]) -> int:
    """Writes lines with '\\n' endings; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for line in lines:
            out.write(line + "\n")
            count += 1
    return count


def write_text_atomic(path, text: str) -> None:
    """Writes beside the destination and renames: a reader never sees a half-written file."""
    path = Path(path)
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        part.write_text(text, encoding="utf-8")
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def write_json_atomic(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
