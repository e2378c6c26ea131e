"""Checkpoints survive a save cut short (a full disk, a kill), and a run resumes past a torn one.

The patched fairseq writes every checkpoint (the first of a save and each copy of it, such as
checkpoint_last.pt) aside and renames it over the old file; on resume it checks checkpoint_last.pt
and falls back to the newest intact checkpoint, or refuses in one line.
"""
import errno
import hashlib
import os
import resource
import shutil
import signal

import pytest
import torch
from fairseq import checkpoint_utils

from tests.toy import train_inner
from tests.toy import TINY_TRANSFORMER_ARGS, run_cli

# one xdist worker builds this module's trained save directory once (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("trained-checkpoints")


def train_args(data_bin, save_dir, max_update, *extra):
    return [str(data_bin), "--cpu", *TINY_TRANSFORMER_ARGS, "--optimizer", "adam", "--lr", "1e-3",
            "--max-tokens", "500", "--max-update", str(max_update), "--save-dir", str(save_dir), "--seed", "1",
            "--log-format", "simple", "--log-interval", "1", "--no-progress-bar", "--no-epoch-checkpoints",
            "--criterion", "label_smoothed_cross_entropy", "--save-interval-updates", "3", *extra]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def errors(stderr):
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


@pytest.fixture(scope="module")
def trained(toy_data_bin, tmp_path_factory):
    """A save directory after 6 updates: checkpoint_1_3.pt, checkpoint_1_6.pt, checkpoint_best.pt
    and checkpoint_last.pt, written in that order."""
    save_dir = tmp_path_factory.mktemp("trained") / "ckpt"
    run_cli(["fairseq-train", *train_args(toy_data_bin, save_dir, 6)])
    names = sorted(p.name for p in save_dir.iterdir())
    assert names == ["checkpoint_1_3.pt", "checkpoint_1_6.pt", "checkpoint_best.pt", "checkpoint_last.pt"], names
    return save_dir


def copy_of(trained, tmp_path):
    save_dir = tmp_path / "ckpt"
    shutil.copytree(trained, save_dir)  # keeps the modification times, hence which file is newest
    return save_dir


def cut_short(path, size=None):
    """What a full disk left of a copy: the file's first bytes."""
    os.truncate(path, size if size is not None else path.stat().st_size * 3 // 4)


def test_checkpoint_problem_names_what_is_wrong(trained, tmp_path):
    intact = trained / "checkpoint_last.pt"
    assert checkpoint_utils.checkpoint_problem(str(intact)) is None
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.ones(3)}}, legacy, _use_new_zipfile_serialization=False)
    assert checkpoint_utils.checkpoint_problem(str(legacy)) is None

    short = tmp_path / "short.pt"
    shutil.copy(intact, short)
    cut_short(short, 303_104)
    assert checkpoint_utils.checkpoint_problem(str(short)) == (
        "it is cut short (303,104 bytes, without the index torch writes at the end)")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert checkpoint_utils.checkpoint_problem(str(empty)) == "it is empty (0 bytes)"
    flipped = bytearray(intact.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # one byte inside a tensor's record
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(flipped))
    assert "fails its CRC check" in checkpoint_utils.checkpoint_problem(str(corrupt))
    zeros = tmp_path / "zeros.pt"
    zeros.write_bytes(bytes(1000))
    assert checkpoint_utils.checkpoint_problem(str(zeros)).startswith("it is not a checkpoint (1,000 bytes")


@pytest.mark.parametrize("damage,resumed_from,skipped", [
    ("cut short", "checkpoint_best.pt", None),
    # checkpoint_best.pt is the newer of the other three, but torn too: checkpoint_1_6.pt, not 1_3
    ("empty", "checkpoint_1_6.pt", "checkpoint_best.pt"),
])
def test_a_torn_checkpoint_last_resumes_from_the_newest_intact_checkpoint(
        trained, toy_data_bin, tmp_path, damage, resumed_from, skipped):
    save_dir = copy_of(trained, tmp_path)
    last = save_dir / "checkpoint_last.pt"
    if damage == "cut short":
        cut_short(last)
    else:
        last.write_bytes(b"")
    if skipped:
        cut_short(save_dir / skipped)
    proc = run_cli(["fairseq-train", *train_args(toy_data_bin, save_dir, 8)])
    log = proc.stdout + proc.stderr
    problem = "it is empty (0 bytes)" if damage == "empty" else "it is cut short"
    warning = [line for line in log.splitlines() if f"cannot resume from {last}: {problem}" in line]
    assert len(warning) == 1 and f"resuming from {save_dir / resumed_from} instead" in warning[0], log[-3000:]
    skipped_lines = [line for line in log.splitlines() if "not resuming from" in line]
    assert skipped_lines == ([] if skipped is None else [skipped_lines[0]])
    if skipped:
        assert f"not resuming from {save_dir / skipped} either: it is cut short" in skipped_lines[0]
    assert f"Loaded checkpoint {save_dir / resumed_from} (epoch 1 @ 6 updates)" in log
    assert sorted(train_inner(proc.stdout)) == [7, 8]
    # the next save replaced the torn file, whole
    assert checkpoint_utils.checkpoint_problem(str(last)) is None
    state = checkpoint_utils.load_checkpoint_to_cpu(str(last))
    assert state["optimizer_history"][-1]["num_updates"] == 8
    assert not list(save_dir.glob("*.tmp"))


@pytest.mark.parametrize("restore", ["default", "--restore-file"])
def test_a_torn_checkpoint_without_an_intact_one_is_refused_in_one_line(toy_data_bin, tmp_path, restore):
    save_dir = tmp_path / "ckpt"
    save_dir.mkdir()
    torn = save_dir / "checkpoint_last.pt" if restore == "default" else tmp_path / "elsewhere.pt"
    torn.write_bytes(b"")
    extra = [] if restore == "default" else ["--restore-file", str(torn)]
    proc = run_cli(["fairseq-train", *train_args(toy_data_bin, save_dir, 8, *extra)], check=False)
    if restore == "default":
        expected = (f"cannot resume from {torn}: it is empty (0 bytes), and {save_dir} holds no other intact "
                    "checkpoint; move the file aside to train from scratch, or pass --restore-file with a "
                    "checkpoint to resume from")
    else:
        expected = f"cannot load checkpoint {torn}: it is empty (0 bytes); pass another checkpoint"
    assert proc.returncode == 2 and errors(proc.stderr) == [f"fairseq-train: error: {expected}"], proc.stderr[-3000:]
    assert "begin training epoch" not in proc.stdout
    assert torn.stat().st_size == 0  # left as it was
    assert sorted(p.name for p in save_dir.iterdir()) == (["checkpoint_last.pt"] if restore == "default" else [])


FAULTY_COPY = """
import errno, os, shutil, signal, sys
from fairseq_cli.train import cli_main

fault = sys.argv.pop(1)

def copy_cut_short(source, target, length=0):
    target.write(source.read(100_000))
    target.flush()
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

def copyfile_cut_short(source, target, *args, **kwargs):
    with open(source, "rb") as s, open(target, "wb") as t:
        copy_cut_short(s, t)

# however the copy is made (stock fairseq copied with shutil.copyfile, in place)
shutil.copyfileobj, shutil.copyfile = copy_cut_short, copyfile_cut_short
sys.argv[0] = "fairseq-train"
cli_main()
"""


@pytest.mark.parametrize("fault", ["disk full", "kill"])
def test_a_copy_cut_short_leaves_checkpoint_last_as_it_was(trained, toy_data_bin, tmp_path, fault):
    """fairseq copies a save's first checkpoint to the others (here checkpoint_best.pt to
    checkpoint_last.pt); a copy cut short by a full disk or a kill used to leave a torn
    checkpoint_last.pt."""
    save_dir = copy_of(trained, tmp_path)
    last = save_dir / "checkpoint_last.pt"
    before = digest(last)
    proc = run_cli(["python", "-c", FAULTY_COPY, "kill" if fault == "kill" else "fail",
                    *train_args(toy_data_bin, save_dir, 8)], check=False)
    assert "Saving checkpoint to" in proc.stdout and digest(last) == before
    if fault == "disk full":
        assert proc.returncode == 1 and errors(proc.stderr) == [
            f"fairseq-train: error: cannot write checkpoint {last}: No space left on device "
            "(the file was left as it was)"], proc.stderr[-3000:]
        assert not list(save_dir.glob("*.tmp"))
        return
    assert proc.returncode == -signal.SIGKILL
    # the partial copy was aside (the next save overwrites it: see the test below); the run
    # resumes from checkpoint_last.pt, intact at 6 updates
    assert (save_dir / "checkpoint_last.pt.tmp").stat().st_size == 100_000
    assert checkpoint_utils.checkpoint_problem(str(last)) is None
    assert checkpoint_utils.load_checkpoint_to_cpu(str(last))["optimizer_history"][-1]["num_updates"] == 6


def test_a_write_cut_short_raises_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """The first checkpoint of a save, written by torch.save, failing partway: with a real
    write error (a file size limit), and with a full disk."""
    path = tmp_path / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save({"old": torch.zeros(10)}, str(path))
    before = digest(path)
    state = {"model": {"w": torch.randn(200_000)}}  # 800 KB

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, hard))
    try:
        with pytest.raises(checkpoint_utils.CheckpointError) as failed:
            checkpoint_utils.torch_persistent_save(state, str(path))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert str(failed.value) == f"cannot write checkpoint {path}: File too large (the file was left as it was)"
    assert digest(path) == before and sorted(tmp_path.iterdir()) == [path]

    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        class Full:
            written = 0

            def write(self, data):
                if self.written + len(data) > 300_000:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.written += len(data)
                return f.write(data)

            def flush(self):
                f.flush()

        return real_save(obj, Full(), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(checkpoint_utils.CheckpointError) as failed:
        checkpoint_utils.torch_persistent_save(state, str(path))
    assert str(failed.value) == (f"cannot write checkpoint {path}: No space left on device "
                                 "(the file was left as it was)")
    assert digest(path) == before and sorted(tmp_path.iterdir()) == [path]

    # what is not a failed write (here a bug) comes as it was, with the same clean-up
    def save_with_a_bug(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise TypeError("a bug")

    monkeypatch.setattr(torch, "save", save_with_a_bug)
    with pytest.raises(TypeError, match="^a bug$"):
        checkpoint_utils.torch_persistent_save(state, str(path))
    assert digest(path) == before and sorted(tmp_path.iterdir()) == [path]

    # a partial file a kill left aside is overwritten by the next save
    monkeypatch.setattr(torch, "save", real_save)
    (tmp_path / "checkpoint_last.pt.tmp").write_bytes(bytes(100_000))
    checkpoint_utils.torch_persistent_save(state, str(path))
    assert sorted(tmp_path.iterdir()) == [path]
    assert torch.equal(torch.load(path)["model"]["w"], state["model"]["w"])
