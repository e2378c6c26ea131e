"""labo_fairseq.evaluation.evaluate without fairseq-generate: argument checks, the checkpoint
check and the one-line summary of a failed fairseq-generate or checkpoint load."""
import datetime
import zipfile

import pytest
import torch

from labo_fairseq.checkpoints import checkpoint_load_error
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.evaluate import build_parser, check_checkpoint, failure_summary


@pytest.mark.parametrize("flag, value, message", [
    ("--beam", "0", "argument --beam: must be at least 1, got 0"),
    ("--beam", "-3", "argument --beam: must be at least 1, got -3"),
    ("--beam", "five", "argument --beam: expected an integer, got 'five'"),
    ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
    ("--lenpen", "nan", "argument --lenpen: must be a finite number, got 'nan'"),
    ("--lenpen", "inf", "argument --lenpen: must be a finite number, got 'inf'"),
])
def test_parser_refuses_bad_numbers(flag, value, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser("labo-evaluate").parse_args(["d", "c", "o", flag, value])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"labo-evaluate: error: {message}"


def test_parser_accepts_lenpen_zero_and_negative():
    parser = build_parser("labo-evaluate")
    assert parser.parse_args(["d", "c", "o", "--lenpen", "0"]).lenpen == 0.0   # unnormalised scores
    assert parser.parse_args(["d", "c", "o", "--lenpen", "-0.5", "--beam", "1"]).lenpen == -0.5


def test_checkpoint_check_accepts_both_torch_formats(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "zip.pt")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    check_checkpoint(tmp_path / "zip.pt")
    check_checkpoint(tmp_path / "legacy.pt")


def test_checkpoint_check_refuses_what_torch_cannot_load(tmp_path):
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    (tmp_path / "ckpts").mkdir()
    for name, message in (("truncated.pt", "is not a PyTorch checkpoint, or is truncated"),
                          ("random.pt", "is not a PyTorch checkpoint, or is truncated"),
                          ("empty.pt", "is empty"), ("other.zip", "no data.pkl"),
                          ("ckpts", "is a directory"), ("missing.pt", "does not exist")):
        with pytest.raises(EvaluationError, match=message) as raised:
            check_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(raised.value)


def test_failure_summary_is_the_last_exception_line(tmp_path):
    log = tmp_path / "generate.log"
    log.write_text("2024 | INFO | fairseq_cli.generate | loading model\n"
                   "Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n"
                   "KeyError: 'model'\n\nDuring handling of the above exception, another exception occurred:\n\n"
                   "Traceback (most recent call last):\n  File \"b.py\", line 2, in load\n    raise\n"
                   "RuntimeError: cannot reshape tensor of 0 elements\nmore detail on a second line\n")
    assert failure_summary(log) == "RuntimeError: cannot reshape tensor of 0 elements"
    log.write_text("usage: generate.py [-h]\ngenerate.py: error: argument --max-len-a: invalid float value: 'x'\n\n")
    assert failure_summary(log) == "generate.py: error: argument --max-len-a: invalid float value: 'x'"
    log.write_text("Traceback (most recent call last):\n  File \"c.py\", line 3\nValueError: " + "x" * 1000 + "\n")
    summary = failure_summary(log)
    assert summary.startswith("ValueError: xxx") and summary.endswith("...") and len(summary) == 300
    log.write_text("")
    assert failure_summary(log) == "no output"
    assert failure_summary(tmp_path / "missing.log") == "no log"


def test_parser_refuses_an_out_dir_that_is_a_file(tmp_path, capsys):
    existing = tmp_path / "scores.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit):
        build_parser("labo-evaluate").parse_args(["d", "c", str(existing)])
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"labo-evaluate: error: argument OUT_DIR: {existing} exists and is not a directory")


def _load_error(load) -> str:
    try:
        load()
    except Exception as error:   # what torch raises, whatever its words
        return str(error)
    raise AssertionError("no error")


def test_checkpoint_load_errors_are_one_line_naming_the_cause(tmp_path):
    torch.save({"when": datetime.date(2020, 1, 1)}, tmp_path / "dated.pt")   # a global torch does not allow
    text = _load_error(lambda: torch.load(tmp_path / "dated.pt", weights_only=True))
    line = checkpoint_load_error("dated.pt", "bin", text)
    assert line == "checkpoint dated.pt is refused, nothing of it was run: its pickle refers to datetime.date, " \
                   "which a checkpoint of tensors never needs"
    text = _load_error(lambda: torch.nn.Linear(2, 3).load_state_dict(torch.nn.Linear(2, 4).state_dict()))
    assert checkpoint_load_error("c.pt", "bin", text) == (
        "checkpoint c.pt does not fit the model built for data-bin bin: weight is [4, 2] in the checkpoint, "
        "[3, 2] in the model (and 1 more parameters)")
    text = _load_error(lambda: torch.nn.Linear(2, 3).load_state_dict({}))
    line = checkpoint_load_error("c.pt", "bin", text)
    assert line.startswith("checkpoint c.pt does not fit the model built for data-bin bin: Missing key(s) in "
                           "state_dict: ") and "\n" not in line and "weight" in line
    assert checkpoint_load_error("c.pt", "bin", "KeyError: 'model'") is None


def test_translation_progress_without_a_terminal_is_a_line_every_interval(tmp_path):
    """Inside labo-experiment (stderr a pipe) no bar is drawn: run_generate reports lines instead."""
    import io
    import sys

    from labo_fairseq.evaluation import evaluate

    stream = io.StringIO()
    with evaluate.ProgressLines(3, interval=0.0, stream=stream) as progress:
        for _ in range(3):
            progress.update(1)
    assert stream.getvalue().splitlines() == [f"translating: {n}/3 sentences" for n in (1, 2, 3)]
    quiet = io.StringIO()
    with evaluate.ProgressLines(None, interval=3600.0, stream=quiet) as progress:
        progress.update(5)
    assert quiet.getvalue() == "" and progress.count == 5
    # the real path: a child printing S- lines, stderr not a terminal
    script = "import sys\nfor i in range(4):\n    print(f'S-{i}\\tx')\n"
    original = evaluate.PROGRESS_LINE_SECONDS
    evaluate.PROGRESS_LINE_SECONDS = 0.0
    try:
        captured = io.StringIO()
        real_stderr, sys.stderr = sys.stderr, captured
        try:
            status = evaluate.run_generate([sys.executable, "-c", script], tmp_path, 4)
        finally:
            sys.stderr = real_stderr
    finally:
        evaluate.PROGRESS_LINE_SECONDS = original
    assert status == 0 and (tmp_path / "generate.out").read_text().count("S-") == 4
    assert captured.getvalue().splitlines()[-1] == "translating: 4/4 sentences"
