"""What the dataset commands do when things go wrong: killed runs, concurrent runs, bad bytes,
impossible vocabulary sizes, bad --url patterns; messages name the user's files, never staging paths."""
import gzip
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

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
