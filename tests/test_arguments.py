"""labo_fairseq.arguments: argparse types that refuse bad values at parsing."""
import argparse

import pytest

from labo_fairseq.arguments import finite_float, int_at_least, output_dir, output_file, positive_int


def test_numbers():
    assert positive_int("3") == 3 and int_at_least(0)("0") == 0 and finite_float("-1.5") == -1.5
    for parse, text, message in ((positive_int, "0", "must be at least 1, got 0"),
                                 (int_at_least(2), "-3", "must be at least 2, got -3"),
                                 (positive_int, "2.5", "expected an integer, got '2.5'"),
                                 (finite_float, "nan", "must be a finite number"),
                                 (finite_float, "abc", "expected a number, got 'abc'")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)


def test_output_paths(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    assert output_file(str(tmp_path / "new" / "a.json")) == tmp_path / "new" / "a.json"  # parents are made later
    assert output_dir(str(tmp_path / "report")) == tmp_path / "report"
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory; give a file name"):
        output_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="file.txt is a file, not a directory"):
        output_file(str(tmp_path / "file.txt" / "a.json"))
    with pytest.raises(argparse.ArgumentTypeError, match="exists and is not a directory"):
        output_dir(str(tmp_path / "file.txt"))
    with pytest.raises(argparse.ArgumentTypeError, match="file.txt is a file, not a directory"):
        output_dir(str(tmp_path / "file.txt" / "sub"))
