"""labo_fairseq.textfiles: line reading with errors on the right line, atomic writes."""
import gzip
import json

import pytest

from labo_fairseq.errors import UserError
from labo_fairseq.textfiles import iter_lines, read_lines, write_json_atomic, write_lines


def _lines_with_bad_byte(n_lines, bad_line, final_newline=True):
    lines = [f"sentence number {i} with some text".encode() for i in range(1, n_lines + 1)]
    lines[bad_line - 1] = lines[bad_line - 1][:5] + b"\xff" + lines[bad_line - 1][5:]
    return b"\n".join(lines) + (b"\n" if final_newline else b"")


@pytest.mark.parametrize("n_lines, bad_line, final_newline", [
    (400, 150, True),   # far past the first read-ahead block of a text decoder
    (400, 1, True),
    (400, 61, True),
    (400, 400, False),  # the last line, without a newline
    (5000, 4999, True),
])
def test_invalid_utf8_is_reported_on_its_own_line(tmp_path, n_lines, bad_line, final_newline):
    path = tmp_path / "train.de"
    path.write_bytes(_lines_with_bad_byte(n_lines, bad_line, final_newline))
    with pytest.raises(UserError) as error:
        read_lines(path, "training text")
    assert str(error.value).startswith(f"training text {path}: line {bad_line} is not valid UTF-8 (byte 6:")


def test_gzip_files_read_like_plain_ones_and_report_lines_too(tmp_path):
    plain, packed = tmp_path / "a.txt", tmp_path / "a.txt.gz"
    data = _lines_with_bad_byte(300, 222)
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    for path in (plain, packed):
        with pytest.raises(UserError, match="line 222 is not valid UTF-8"):
            read_lines(path)
    good = "ein Satz\nzwei\n"
    packed.write_bytes(gzip.compress(good.encode()))
    assert read_lines(packed) == ["ein Satz", "zwei"]


def test_lines_split_on_newline_only(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("a\r\nb\u2028c\nlast".encode())
    assert list(iter_lines(path)) == ["a\r", "b\u2028c", "last"]


def test_missing_directory_empty_and_truncated_gzip_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"^reference file .*nope\.txt does not exist$"):
        read_lines(tmp_path / "nope.txt", "reference file")
    with pytest.raises(UserError, match="is a directory, expected a file"):
        read_lines(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    assert read_lines(tmp_path / "empty.txt") == []
    with pytest.raises(UserError, match=r"empty\.txt is empty$"):
        read_lines(tmp_path / "empty.txt", allow_empty=False)
    truncated = tmp_path / "cut.gz"
    packed = gzip.compress("".join(f"line {i}\n" for i in range(20000)).encode())
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(UserError, match="corrupt or truncated gzip file"):
        read_lines(truncated)


def test_writes_round_trip_and_json_is_atomic(tmp_path):
    assert write_lines(tmp_path / "out.txt", ["a", "", "c"]) == 3
    assert (tmp_path / "out.txt").read_bytes() == b"a\n\nc\n"
    target = tmp_path / "scores.json"
    write_json_atomic(target, {"bleu": 1.5})
    with pytest.raises(ValueError):  # NaN is not JSON: the earlier file stays, no part file is left
        write_json_atomic(target, {"bleu": float("nan")})
    assert json.loads(target.read_text()) == {"bleu": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "scores.json"]
