"""What the dataset commands do when things go wrong: killed runs, concurrent runs, bad bytes,
impossible vocabulary sizes, bad --url patterns; messages name the user's files, never staging paths."""
import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from labo_fairseq.data_prep import common, iwslt14, multi30k
from tests.data_prep import fixtures
from tests.toy import REPO_ROOT

NAME = "multi30k.de-en"
TAG = "prepare-multi30k"


def copy_raw(multi30k_raw, raw_dir):
    raw_dir.mkdir()
    for path in multi30k_raw[0].iterdir():
        (raw_dir / path.name).write_bytes(path.read_bytes())
    return raw_dir


def multi30k_args(raw_dir, out, *extra):
    return ["--raw-dir", str(raw_dir), "--out", str(out), "--workers", "1", "--vocab", "60", *map(str, extra)]


def one_error_line(capsys, prog=TAG):
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"{prog}: error: "), captured.err
    assert ".tmp-" not in captured.err, captured.err
    return captured.err.rstrip("\n")


# ------------------------------------------------------------------------------ staging and locking


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_staging_of_a_dead_run_is_removed_and_a_live_one_kept(tmp_path, capsys):
    stale = tmp_path / f".{TAG}.tmp-dead"
    (stale / "work").mkdir(parents=True)
    (stale / "owner").write_text(f"{dead_pid()}\n")
    unowned = tmp_path / f".{TAG}.tmp-noowner"  # killed between mkdtemp and writing its owner
    unowned.mkdir()
    live = tmp_path / f".{TAG}.tmp-live"
    live.mkdir()
    (live / "owner").write_text(common.process_identity(os.getpid()) + "\n")
    other_command = tmp_path / ".prepare-iwslt14.tmp-x"
    other_command.mkdir()
    with common.StagedOutputs(tmp_path, [tmp_path / "result"], False, TAG) as staging:
        assert not stale.exists() and not unowned.exists()
        assert live.exists() and other_command.exists()
        assert (staging.root / "owner").read_text().split()[0] == str(os.getpid())
    out = capsys.readouterr().out
    assert out == (f"[{TAG}] removed 2 staging directories left in {tmp_path} by a run that was killed: "
                   f".{TAG}.tmp-dead, .{TAG}.tmp-noowner\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_command.name])


def test_owner_with_a_reused_pid_is_dead(tmp_path):
    owner = tmp_path / "owner"
    owner.write_text(f"{os.getpid()} 1\n")  # this PID, but a process started at another time
    assert not common.owner_alive(owner)
    owner.write_text(common.process_identity(os.getpid()))
    assert common.owner_alive(owner)


def test_second_run_into_the_same_out_is_refused(tmp_path):
    with common.StagedOutputs(tmp_path, [tmp_path / "a"], False, TAG) as first:
        with pytest.raises(common.PrepError, match=rf"^{tmp_path} is in use by another {TAG} run "
                                                   rf"\(process {os.getpid()}, lock .*\.{TAG}\.lock\)"):
            with common.StagedOutputs(tmp_path, [tmp_path / "b"], False, TAG):
                pass
        assert first.root.exists()
        with common.StagedOutputs(tmp_path, [tmp_path / "c"], False, "prepare-iwslt14"):
            pass  # another command writes other outputs
    assert list(tmp_path.iterdir()) == []  # no staging, no lock file
    with common.StagedOutputs(tmp_path, [tmp_path / "a"], False, TAG):
        pass


FAKE_PREPROCESS = """\
#!{python}
import os, sys, time
open({pid_file!r}, "w").write(str(os.getpid()))
time.sleep(120)
"""

RUN_WITH_FAKE_TOOL = """\
import sys
from labo_fairseq.data_prep import common, multi30k
common._tool = lambda name: {fake!r}
sys.exit(multi30k.main({argv!r}))
"""


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = common._proc_stat(pid)
    return stat is None or stat[0] == "Z"


def test_sigkill_leaves_no_child_and_the_next_run_cleans_up(multi30k_raw, tmp_path, capsys):
    raw_dir = copy_raw(multi30k_raw, tmp_path / "raw")
    out = tmp_path / "out"
    pid_file = tmp_path / "preprocess.pid"
    fake = tmp_path / "fairseq-preprocess"
    fake.write_text(FAKE_PREPROCESS.format(python=sys.executable, pid_file=str(pid_file)))
    fake.chmod(0o755)
    script = RUN_WITH_FAKE_TOOL.format(fake=str(fake), argv=multi30k_args(raw_dir, out))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    run = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert run.poll() is None, run.stderr.read().decode()
            assert time.monotonic() < deadline, "fairseq-preprocess never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        staging = [p for p in out.iterdir() if p.name.startswith(f".{TAG}.tmp-")]
        assert len(staging) == 1

        # while it runs, a second run into the same --out is refused and leaves its staging alone
        assert multi30k.main(multi30k_args(raw_dir, out, "--force")) == 2
        assert f"{out} is in use by another {TAG} run (process {run.pid}" in one_error_line(capsys)
        assert staging[0].exists()

        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + 5
        while not gone(child):
            assert time.monotonic() < deadline, f"fairseq-preprocess (pid {child}) outlived its killed parent"
            time.sleep(0.05)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert staging[0].exists()  # SIGKILL: nothing could clean up

    assert multi30k.main(multi30k_args(raw_dir, out)) == 0
    stdout = capsys.readouterr().out
    assert (f"[{TAG}] removed 1 staging directory left in {out} by a run that was killed: {staging[0].name}\n"
            in stdout)
    assert (out / "data-bin" / NAME / "train.de-en.de.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == ["data-bin", NAME]


# -------------------------------------------------------------------------- messages name the inputs


def test_empty_valid_side_names_the_raw_file(multi30k_raw, tmp_path, capsys):
    raw_dir = copy_raw(multi30k_raw, tmp_path / "raw")
    with gzip.open(raw_dir / "val.en.gz", "wb"):
        pass
    assert multi30k.main(multi30k_args(raw_dir, tmp_path / "out")) == 2
    assert one_error_line(capsys).endswith(
        f"line-count mismatch: {raw_dir / 'val.de.gz'} has 20 lines, {raw_dir / 'val.en.gz'} has 0")
    for name in ("val.de.gz", "val.en.gz"):
        with gzip.open(raw_dir / name, "wb"):
            pass
    assert multi30k.main(multi30k_args(raw_dir, tmp_path / "out")) == 2
    assert one_error_line(capsys).endswith(f"{raw_dir / 'val.de.gz'}: no lines")


def rewrite_member(source, dest, member, change):
    """A copy of the tar archive `source` with change(bytes) applied to one member."""
    with tarfile.open(source) as tar_in, tarfile.open(dest, "w:gz") as tar_out:
        for info in tar_in:
            data = tar_in.extractfile(info).read()
            fixtures.add_bytes(tar_out, info.name, change(data) if info.name == member else data)
    return dest


def test_iwslt_line_count_mismatch_names_the_archive_members(iwslt_archive, tmp_path, capsys):
    archive = rewrite_member(iwslt_archive, tmp_path / "de-en.tgz", "de-en/train.tags.de-en.en",
                             lambda data: data.rsplit(b"\n", 2)[0] + b"\n")  # drops the last line
    assert iwslt14.main(["--archive", str(archive), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = one_error_line(capsys, "prepare-iwslt14")
    assert err.endswith(f"line-count mismatch: de-en/train.tags.de-en.de in {archive} has 131 lines without tags, "
                        f"de-en/train.tags.de-en.en in {archive} has 130"), err


def with_bad_byte(data, line_number):
    lines = data.split(b"\n")
    lines[line_number - 1] = lines[line_number - 1][:3] + b"\xff" + lines[line_number - 1][3:]
    return b"\n".join(lines)


@pytest.mark.parametrize("line_number", [150, 200])  # 200: the last line
def test_invalid_utf8_in_raw_train_file(multi30k_raw, tmp_path, capsys, line_number):
    raw_dir = copy_raw(multi30k_raw, tmp_path / "raw")
    path = raw_dir / "train.en.gz"
    data = gzip.decompress(path.read_bytes())
    assert data.count(b"\n") == 200
    path.write_bytes(gzip.compress(with_bad_byte(data, line_number)))
    assert multi30k.main(multi30k_args(raw_dir, tmp_path / "out")) == 2
    assert f"file {path}: line {line_number} is not valid UTF-8 (byte 4: " in one_error_line(capsys)


def test_invalid_utf8_in_archive_member(tmp_path, capsys):
    source = fixtures.make_iwslt_archive(tmp_path / "good.tgz", train_pairs=fixtures.iwslt_train_pairs(n_regular=200))
    member = "de-en/train.tags.de-en.en"
    archive = rewrite_member(source, tmp_path / "de-en.tgz", member, lambda data: with_bad_byte(data, 150))
    assert iwslt14.main(["--archive", str(archive), "--out", str(tmp_path / "out"), "--workers", "2"]) == 2
    assert (f"file {member} in {archive}: line 150 is not valid UTF-8 (byte 4: "
            in one_error_line(capsys, "prepare-iwslt14"))


# ------------------------------------------------------------------------------- arguments, vocabulary


@pytest.mark.parametrize("url,message", [
    ("http://x/{name}", "--url http://x/{name}: unknown field {name}; the only field is {file}"),
    ("http://x/{file", "--url http://x/{file: not a valid pattern"),
    ("http://x/{0}", "--url http://x/{0}: not a valid pattern"),
])
def test_url_pattern_is_checked_when_parsing(url, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        multi30k.parse_args(["--url", url])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"prepare-multi30k.sh: error: {message}"), err


def test_positive_numbers(capsys):
    for args, message in ((["--vocab", "0"], "--vocab must be a positive number, got 0"),
                          (["--workers", "-1"], "--workers must be a positive number, got -1")):
        with pytest.raises(SystemExit):
            multi30k.parse_args(args)
        assert capsys.readouterr().err.splitlines()[-1] == f"prepare-multi30k.sh: error: {message}"


@pytest.mark.parametrize("subwords,vocab", [("bpe", 99999999), ("spm", 100000)])
def test_vocabulary_shortfall_is_recorded_and_warned(multi30k_raw, tmp_path, capsys, subwords, vocab):
    out = tmp_path / "out"
    args = multi30k_args(multi30k_raw[0], out) + ["--subwords", subwords, "--vocab", str(vocab)]
    assert multi30k.main(args) == 0
    record = json.loads((out / "data-bin" / NAME / "prepare.json").read_text())
    produced = record["vocab_produced"]
    assert record["vocab"] == vocab and 0 < produced < 1000
    if subwords == "bpe":
        assert len((out / NAME / "code").read_text().splitlines()) == produced + 1  # + the version line
    else:
        assert produced == common_pieces(out / NAME / "spm.model")
    dictionary = (out / "data-bin" / NAME / "dict.de.txt").read_text().splitlines()
    assert record["dictionary_sizes"] == {"de": len(dictionary) + 4, "en": len(dictionary) + 4}
    unit = "BPE merges" if subwords == "bpe" else "sentencepiece pieces"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"[{TAG}] warning: --vocab {vocab}: the train text of {multi30k_raw[0] / 'train.de.gz'} "
                        f"and {multi30k_raw[0] / 'train.en.gz'} allows only {produced} {unit} "
                        f"(prepare.json records both)"]


def common_pieces(model):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()


def test_iwslt_records_merges_learned(iwslt_prepared):
    out, proc = iwslt_prepared
    record = json.loads((out / "data-bin" / "iwslt14.tokenized.de-en" / "prepare.json").read_text())
    assert record["bpe_merges"] == record["bpe_merges_learned"] == 50  # the fixture allows 50
    assert set(record["dictionary_sizes"]) == {"de", "en"}
    assert "warning" not in proc.stderr


# ------------------------------------------------------------------- replacing outputs with --force


def old_pair(out, with_text=True):
    """A previous text directory (unless not with_text) and data-bin, with marker files, as --force
    finds them; returns both final paths."""
    finals = [out / NAME, out / "data-bin" / NAME]
    for final in finals if with_text else finals[1:]:
        final.mkdir(parents=True)
        (final / "marker").write_text("old\n")
    return finals


def markers(finals):
    return [(final / "marker").read_text() if (final / "marker").exists() else None for final in finals]


def build_new(staging, finals):
    for final in finals:
        staging.staged(final).mkdir()
        (staging.staged(final) / "marker").write_text("new\n")


class Interrupt:
    """Path.rename that does the rename, then raises KeyboardInterrupt after the k-th call (and, with
    `again`, after every later one: a second Ctrl-C that hits the putting back too)."""

    def __init__(self, monkeypatch, k, again=False, action=None):
        self.real, self.k, self.again, self.calls = Path.rename, k, again, 0
        self.action = action or self.raise_interrupt
        monkeypatch.setattr(Path, "rename", lambda path, target: self.rename(path, target))

    @staticmethod
    def raise_interrupt():
        raise KeyboardInterrupt

    def rename(self, path, target):
        result = self.real(path, target)
        self.calls += 1
        if self.calls == self.k or (self.again and self.calls > self.k):
            self.action()
        return result


def only_outputs_left(out):
    """No staging directory, journal or lock left behind."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


# renames of a commit: the journal, then each previous output aside, then each new one in
SWAP_CASES = [(True, k) for k in range(1, 6)] + [(False, k) for k in range(1, 5)]


@pytest.mark.parametrize("with_text,k", SWAP_CASES)
def test_interrupt_between_the_renames_of_force_keeps_the_previous_pair(tmp_path, monkeypatch, with_text, k):
    out = tmp_path / "out"
    finals = old_pair(out, with_text)
    before = markers(finals)
    with pytest.raises(KeyboardInterrupt):
        with common.StagedOutputs(out, finals, True, TAG) as staging:
            build_new(staging, finals)
            interrupt = Interrupt(monkeypatch, k)
            staging.commit()
    monkeypatch.undo()
    assert interrupt.calls >= k
    assert not staging.committed and not staging.unfinished
    assert markers(finals) == before  # the whole previous pair, nothing new
    assert finals[0].exists() == with_text
    assert only_outputs_left(out) == []


def test_interrupt_that_also_hits_the_putting_back_is_undone_by_the_next_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    finals = old_pair(out)
    with pytest.raises(KeyboardInterrupt):
        with common.StagedOutputs(out, finals, True, TAG) as staging:
            build_new(staging, finals)
            Interrupt(monkeypatch, 4, again=True)  # after the first new output moved in, and on every rename
            staging.commit()
    monkeypatch.undo()
    assert staging.unfinished and not staging.committed
    assert markers(finals) == [None, None]  # both previous outputs still aside: the next run must undo it
    assert (staging.root / "swap.json").exists()
    (staging.root / "owner").write_text(f"{dead_pid()}\n")  # the interrupted process has exited
    with pytest.raises(common.PrepError, match="already exists; pass --force"):
        with common.StagedOutputs(out, finals, False, TAG):
            pass
    assert capsys.readouterr().out == (
        f"[{TAG}] put back the previous {finals[0]} and {finals[1]}: a run was killed while replacing them "
        f"(its staging directory {staging.root.name} is removed)\n")
    assert markers(finals) == ["old\n", "old\n"]
    assert only_outputs_left(out) == []


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_run_killed_mid_swap_is_undone_by_the_next_run(tmp_path, capsys, k):
    out = tmp_path / "out"
    finals = old_pair(out)
    child = os.fork()
    if child == 0:  # a run that is SIGKILLed after the k-th rename of its commit
        try:
            with common.StagedOutputs(out, finals, True, TAG) as staging:
                build_new(staging, finals)
                Interrupt(pytest.MonkeyPatch(), k, action=lambda: os.kill(os.getpid(), signal.SIGKILL))
                staging.commit()
        finally:
            os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert markers(finals) != ["old\n", "old\n"]  # the swap was cut short
    with common.StagedOutputs(out, finals, True, TAG):
        assert markers(finals) == ["old\n", "old\n"]
    log_line = capsys.readouterr().out
    assert log_line.startswith(f"[{TAG}] put back the previous {finals[0]} and {finals[1]}: ") and \
        log_line.count("\n") == 1
    assert markers(finals) == ["old\n", "old\n"] and only_outputs_left(out) == []


@pytest.mark.parametrize("again", [False, True])  # True: a second interrupt hits the putting back too
def test_ctrl_c_between_the_renames_of_force_end_to_end(multi30k_raw, tmp_path, monkeypatch, capsys, again):
    out = tmp_path / "out"
    finals = old_pair(out)
    real_binarise = common.binarise

    def binarise_then_interrupt_the_swap(*args, **kwargs):
        result = real_binarise(*args, **kwargs)
        # without `again`: after the previous text directory went aside, its data-bin not yet; with
        # `again`: after both went aside, and the putting back stops after the text directory
        Interrupt(monkeypatch, 3 if again else 2, again)
        return result
    monkeypatch.setattr(common, "binarise", binarise_then_interrupt_the_swap)
    assert multi30k.main(multi30k_args(multi30k_raw[0], out, "--force")) == 130
    monkeypatch.undo()
    err = capsys.readouterr().err
    if not again:
        assert err == f"{TAG}: interrupted; previous outputs left as they were\n"
    else:
        assert err == (f"{TAG}: interrupted while replacing {finals[0]} and {finals[1]}; the next run into {out} "
                       f"puts the previous ones back\n")
        assert markers(finals) == ["old\n", None]  # the data-bin is still aside
        staging, = [p for p in out.iterdir() if p.name.startswith(f".{TAG}.tmp-")]
        (staging / "owner").write_text(f"{dead_pid()}\n")  # the interrupted process has exited
        assert multi30k.main(multi30k_args(multi30k_raw[0], out)) == 2
        captured = capsys.readouterr()
        assert captured.out == (f"[{TAG}] put back the previous {finals[0]} and {finals[1]}: a run was killed "
                                f"while replacing them (its staging directory {staging.name} is removed)\n")
        assert captured.err == f"{TAG}: error: {finals[0]} already exists; pass --force to replace it\n"
    assert markers(finals) == ["old\n", "old\n"]
    assert sorted(p.name for p in finals[1].iterdir()) == ["marker"]
    assert only_outputs_left(out) == []


def test_sigint_during_the_renames_takes_effect_after_them(multi30k_raw, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    finals = old_pair(out)
    real_binarise = common.binarise

    def binarise_then_signal_during_the_swap(*args, **kwargs):
        result = real_binarise(*args, **kwargs)
        Interrupt(monkeypatch, 2, action=lambda: os.kill(os.getpid(), signal.SIGINT))
        return result
    monkeypatch.setattr(common, "binarise", binarise_then_signal_during_the_swap)
    assert multi30k.main(multi30k_args(multi30k_raw[0], out, "--force")) == 130
    monkeypatch.undo()
    assert capsys.readouterr().err == (f"{TAG}: interrupted; the new {finals[0]} and {finals[1]} were already "
                                       f"in place and are complete\n")
    assert markers(finals) == [None, None]
    assert (finals[0] / "test-sets.tsv").exists() and (finals[1] / "prepare.json").exists()
    assert only_outputs_left(out) == []


# ------------------------------------------------------------------------ failures leave nothing behind


def test_failed_prepare_removes_the_out_directory_it_created(multi30k_raw, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    args = ["--out", str(out), "--workers", "1", "--url", f"file://{tmp_path}/missing/{{file}}"]
    assert multi30k.main(args) == 2  # the download into <out>/orig/multi30k fails
    assert "cannot download file://" in one_error_line(capsys)
    assert not (tmp_path / "new").exists()

    kept = tmp_path / "kept"
    kept.mkdir()
    assert multi30k.main(multi30k_args(tmp_path / "no-raw", kept)) == 2
    assert "no-raw/train.de.gz: file not found" in one_error_line(capsys)
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_interrupted_prepare_removes_the_out_directory_it_created(multi30k_raw, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(common, "binarise", interrupted)
    assert multi30k.main(multi30k_args(multi30k_raw[0], tmp_path / "out")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def disk_full_on(monkeypatch, name):
    """open() whose files named `name` (path ending), opened for writing, fail every write with
    ENOSPC, as write() reports it: without a file name."""
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if ("w" in mode or "a" in mode) and str(path).endswith(name):
            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = write
        return handle
    monkeypatch.setattr("builtins.open", full_open)


@pytest.mark.parametrize("written", ["multi30k.de-en/tok/train.de", "data-bin/multi30k.de-en/valid.raw.en",
                                     "data-bin/multi30k.de-en/prepare.json"])
def test_disk_full_names_the_file_being_written(multi30k_raw, tmp_path, monkeypatch, capsys, written):
    disk_full_on(monkeypatch, "/" + written.split("/", 1)[1])
    out = tmp_path / "out"
    code = multi30k.main(multi30k_args(multi30k_raw[0], out))
    monkeypatch.undo()
    assert code == 2
    assert one_error_line(capsys) == f"{TAG}: error: cannot write {out / written}: No space left on device"
    assert not out.exists()  # nothing half-written left, and the --out it created removed


def test_disk_full_while_downloading_names_the_file(multi30k_raw, tmp_path, monkeypatch, capsys):
    disk_full_on(monkeypatch, "train.de.gz.part")
    out = tmp_path / "out"
    url = f"file://{multi30k_raw[0]}/{{file}}"
    code = multi30k.main(["--url", url, "--out", str(out), "--workers", "1"])
    monkeypatch.undo()
    assert code == 2
    assert one_error_line(capsys) == (f"{TAG}: error: cannot write {out}/orig/multi30k/train.de.gz.part "
                                      f"(downloading {url.format(file='train.de.gz')}): No space left on device")
    assert not out.exists()


def test_disk_full_while_extracting_names_the_file(iwslt_archive, tmp_path, monkeypatch, capsys):
    disk_full_on(monkeypatch, "de-en/train.tags.de-en.en")
    out = tmp_path / "out"
    code = iwslt14.main(["--archive", str(iwslt_archive), "--out", str(out), "--workers", "1"])
    monkeypatch.undo()
    assert code == 2
    assert one_error_line(capsys, "prepare-iwslt14") == (
        f"prepare-iwslt14: error: cannot write a working file in {out} (orig/de-en/train.tags.de-en.en): "
        f"No space left on device")
    assert not out.exists()


# ------------------------------------------------------------------------------- bounds of the sizes


@pytest.mark.parametrize("dataset,option", [("multi30k", "--vocab"), ("iwslt14", "--vocab"),
                                            ("iwslt14", "--bpe-tokens"), ("wmt14", "--vocab")])
def test_huge_vocab_is_refused_when_parsing(tmp_path, capsys, dataset, option):
    from labo_fairseq.cli import prepare
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        prepare([dataset, "--out", str(out), option, "99999999999999999999"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"labo-prepare {dataset}: error: {option.replace('--bpe-tokens', '--vocab')} "
                                    f"must be at most {common.MAX_VOCAB}, got 99999999999999999999"), err
    assert "Traceback" not in err and not out.exists()


def test_largest_vocab_is_accepted():
    assert multi30k.parse_args(["--vocab", str(common.MAX_VOCAB)]).vocab == common.MAX_VOCAB


def usable_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_workers_above_the_cpu_count_are_lowered_with_a_notice(capsys):
    cpus = usable_cpus()
    assert multi30k.parse_args([]).workers == cpus  # the default: all of them
    assert multi30k.parse_args(["--workers", str(cpus)]).workers == cpus
    assert capsys.readouterr().out == ""
    assert iwslt14.parse_args(["--workers", "1000"]).workers == cpus
    assert capsys.readouterr().out == (
        f"[prepare-iwslt14] --workers 1000: using {cpus}, the number of CPUs this process may use\n")


def test_available_cpus_follows_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    assert common.available_cpus() == len(os.sched_getaffinity(0)) <= os.cpu_count()


def test_terminal_progress_bar_shows_the_total_and_spaced_units(monkeypatch):
    import io
    import sys

    from labo_fairseq.data_prep import common

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    out = list(common.map_lines(lambda block: [line.upper() for line in block], ["a"] * 2000, 1, desc="train.de"))
    assert out == ["A"] * 2000
    shown = terminal.getvalue()
    assert "/2000 [" in shown and " lines/s" in shown, shown  # "0/2000", not a bare "2000lines"
