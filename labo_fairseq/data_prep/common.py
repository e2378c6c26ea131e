"""Shared plumbing: line I/O with clear errors, parallel line transforms, staged outputs, binarisation."""
import argparse
import fcntl
import gzip
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

from labo_fairseq.cli.errors import UserError, run_command
from labo_fairseq.procs import child_command, die_with_parent
from labo_fairseq.textfiles import iter_lines, write_lines

# Relative: outputs go under the working directory, wherever the package is installed.
DEFAULT_OUT = Path("data")
BLOCK_LINES = 2000


class PrepError(UserError):
    """A problem with the inputs or the destination, reported as one line without a traceback."""


def log(tag, message):
    print(f"[{tag}] {message}", flush=True)


def warn(tag, message):
    print(f"[{tag}] warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- reading


def member_name(archive, member):
    """How messages name a file that was extracted from an archive into the staging directory."""
    return f"{member} in {archive}"


def read_lines(path, name=None):
    """Yields the lines of a text file (see labo_fairseq.textfiles.iter_lines); errors name the file
    as `name` when given: the user's file or archive member that `path` is a working copy of."""
    try:
        yield from iter_lines(path)
    except UserError as error:
        if name is None:
            raise PrepError(str(error)) from None
        raise PrepError(str(error).replace(str(path), str(name))) from None


def count_lines(path, name=None):
    return sum(1 for _ in read_lines(path, name))


def check_counts(src_name, n_src, tgt_name, n_tgt, unit="lines"):
    """Returns the common count of the two sides of a parallel corpus, or fails naming both counts."""
    if n_src != n_tgt:
        raise PrepError(f"line-count mismatch: {src_name} has {n_src} {unit}, {tgt_name} has {n_tgt}")
    return n_src


def concatenate(paths, dest):
    with open(dest, "wb") as out:
        for path in paths:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out)
    return dest


def check_parallel(src_path, tgt_path, names=(None, None)):
    """check_counts on the line counts of two files (named as `names`, when given)."""
    src_name, tgt_name = (name or path for name, path in zip(names, (src_path, tgt_path)))
    return check_counts(src_name, count_lines(src_path, src_name), tgt_name, count_lines(tgt_path, tgt_name))


# ------------------------------------------------------------------------------------ parallel transforms

_worker_transform = None


def _init_worker(transform, parent_pid):
    global _worker_transform
    _worker_transform = transform
    die_with_parent(parent_pid)  # a SIGKILLed prepare leaves no worker behind
    # The parent handles Ctrl-C / SIGTERM and terminates the pool; workers should not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _apply_worker(block):
    return _worker_transform(block)


def _blocks(lines, size=BLOCK_LINES):
    block = []
    for line in lines:
        block.append(line)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def progress(desc, unit="lines", total=None):
    """A tqdm bar on stderr for a person watching a long step; disabled when stderr is not a
    terminal, so logs and the tests see only the usual count lines."""
    from tqdm import tqdm
    return tqdm(desc=desc, unit=unit, total=total, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True)


def map_lines(transform, lines, workers, desc=None):
    """Yields transform(block) results in input order; transform maps a list of lines to a list of lines.

    With workers > 1 the blocks go through a process pool (the transforms are pure Python regex work,
    so threads would not help). With `desc`, shows the lines done on a terminal.
    """
    with progress(desc or "processing") as bar:
        if workers <= 1:
            for block in _blocks(lines):
                result = transform(block)
                bar.update(len(block))
                yield from result
            return
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker,
                                                        initargs=(transform, os.getpid()))
        try:
            for result in pool.imap(_apply_worker, _blocks(lines), chunksize=1):
                bar.update(len(result))
                yield from result
            pool.close()
        finally:
            pool.terminate()
            pool.join()


def map_file(transform, src, dest, workers, name=None):
    """Applies a block transform to every line of src (named as `name` in errors), writing dest;
    returns the line count."""
    return write_lines(dest, map_lines(transform, read_lines(src, name), workers, desc=Path(dest).name))


# ---------------------------------------------------------------------------------------- raw inputs


def download(url, dest, hint):
    """Downloads url to dest (via a .part file); on failure says how to supply the file locally."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out, \
                progress(dest.name, "B", int(response.headers.get("Content-Length") or 0) or None) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
        part.replace(dest)
    except OSError as e:  # URLError, timeouts and HTTP errors are all OSErrors
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise PrepError(f"cannot download {url} ({reason}); {hint}") from None
    return dest


def extract_members(archive, members, dest_dir, name=None):
    """Extracts the named members (exact names) of a tar archive into dest_dir; returns their paths.

    Missing members and corrupt archives are reported naming the archive (as `name`, when given:
    where a downloaded archive came from).
    """
    archive = Path(archive)
    shown = name or archive
    wanted = set(members)
    found = {}
    try:
        with tarfile.open(archive) as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name in wanted and info.isfile():
                    target = Path(dest_dir) / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
                    found[name] = target
    except FileNotFoundError:
        raise PrepError(f"{shown}: file not found") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise PrepError(f"{shown}: corrupt or unreadable archive ({e or type(e).__name__})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise PrepError(f"{shown}: missing {', '.join(missing)}")
    return [found[m] for m in members]


_SEGMENT_LINE = re.compile(r'\s*<seg id="[0-9]*">(.*)</seg>\s*')


def extract_segments(path, name=None):
    """The texts of the `<seg id="N">...</seg>` lines of an IWSLT .xml / WMT .sgm file (named as
    `name` in errors, when given).

    fairseq's recipes do this with grep '<seg id' and two seds; here a line that mentions '<seg id' but
    is not exactly one such segment is an error rather than text passed on with its tags.
    """
    shown = name or path
    segments = []
    for number, line in enumerate(read_lines(path, name), 1):
        if "<seg id" not in line:
            continue
        match = _SEGMENT_LINE.fullmatch(line)
        if not match or "<seg" in match.group(1) or "</seg>" in match.group(1):
            raise PrepError(f'{shown}: line {number}: malformed segment, expected <seg id="N">text</seg>: '
                            f"{line.strip()[:80]!r}")
        segments.append(match.group(1).strip(" \t\r\f\v"))
    if not segments:
        raise PrepError(f"{shown}: no <seg id=...> lines")
    return segments


# ------------------------------------------------------------------------------------- staged outputs


class StagedOutputs:
    """Builds outputs in a temporary directory next to them and moves them into place only on commit.

    `outputs` are final paths (files or directories) under `out_dir`. An existing output is only
    replaced with `force`; a run that fails or is interrupted before commit leaves them untouched.

    A run holds an exclusive lock on `out_dir/.TAG.lock` while it stages, so a second run of the
    same command into the same directory is refused. Its staging directory `.TAG.tmp-*` records the
    owning process; staging directories of runs that died without cleaning up (SIGKILL, power loss)
    are removed by the next run, which names them in one log line.
    """

    def __init__(self, out_dir, outputs, force, tag):
        self.out_dir = Path(out_dir).absolute()
        self.outputs = [Path(p).absolute() for p in outputs]
        self.force = force
        self.tag = tag
        self.root = None
        self.lock = None
        existing = [p for p in self.outputs if p.exists()]
        if existing and not force:
            raise PrepError(f"{existing[0]} already exists; pass --force to replace it")

    def __enter__(self):
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.lock = self._acquire_lock()
            self._remove_stale()
            self.root = Path(tempfile.mkdtemp(prefix=f".{self.tag}.tmp-", dir=self.out_dir))
            (self.root / OWNER_FILE).write_text(process_identity(os.getpid()) + "\n", encoding="utf-8")
        except OSError as e:
            self.__exit__(None, None, None)
            raise PrepError(f"cannot write to {self.out_dir}: {e.strerror or e}") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.work = self.root / "work"
        self.work.mkdir()
        return self

    def _acquire_lock(self):
        """An open lock file holding an exclusive flock. The file is removed when the run ends, so a
        lock taken on a file that was unlinked meanwhile is dropped and taken again on the new one."""
        path = self.out_dir / f".{self.tag}.lock"
        while True:
            handle = open(path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise PrepError(f"{self.out_dir} is in use by another {self.tag} run (process {holder}, "
                                f"lock {path}); wait for it to finish or pass another --out") from None
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                return handle
            handle.close()

    def _remove_stale(self):
        """Removes `.TAG.tmp-*` directories whose owner process is gone (with the lock held, no other
        run of this command is staging here)."""
        removed = []
        for path in sorted(self.out_dir.glob(f".{self.tag}.tmp-*")):
            if path.is_dir() and not owner_alive(path / OWNER_FILE):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        if removed:
            log(self.tag, f"removed {len(removed)} staging director{'y' if len(removed) == 1 else 'ies'} "
                          f"left in {self.out_dir} by a run that was killed: {', '.join(removed)}")

    def staged(self, output):
        """Where to build `output` (one of the final paths) before commit."""
        path = self.root / "result" / Path(output).absolute().relative_to(self.out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self):
        moved_aside, placed = [], []
        try:
            for n, final in enumerate(self.outputs):
                staged = self.staged(final)
                if not staged.exists():
                    raise PrepError(f"internal error: {final} was never built")
                if final.exists():
                    aside = self.root / f"previous-{n}"
                    final.rename(aside)
                    moved_aside.append((aside, final))
                final.parent.mkdir(parents=True, exist_ok=True)
                staged.rename(final)
                placed.append(final)
        except OSError as e:
            for final in placed:
                shutil.rmtree(final, ignore_errors=True)
            for aside, final in moved_aside:
                aside.rename(final)
            raise PrepError(f"cannot move results into {self.out_dir}: {e.strerror or e}") from None

    def __exit__(self, *exc):
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if self.lock is not None:
            Path(self.lock.name).unlink(missing_ok=True)
            self.lock.close()
            self.lock = None
        return False


OWNER_FILE = "owner"


def _proc_stat(pid):
    """(state, start time in clock ticks since boot) of a process from /proc (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def process_identity(pid):
    """'PID START': with the start time, a later process that reuses the PID is not the owner."""
    stat = _proc_stat(pid)
    return f"{pid} {stat[1]}" if stat else str(pid)


def owner_alive(owner_file):
    """Whether the process recorded in owner_file still runs (a missing or unreadable record counts
    as dead: the owner was killed before writing it; so does a zombie)."""
    try:
        pid, *start = Path(owner_file).read_text(encoding="utf-8").split()
        pid = int(pid)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    return stat[0] != "Z" and (not start or start[0] == stat[1])


# -------------------------------------------------------------------------------------- binarisation


def _tool(name):
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        raise PrepError(f"{name} not found (install fairseq into this environment)")
    return found


def binarise(text_dir, dest, src, tgt, test_splits, joined, workers):
    """Runs fairseq-preprocess on {train,valid,test*}.{src,tgt} in text_dir; returns dictionary sizes.

    Sizes count the 4 special symbols, as fairseq's own log line does. The child gets SIGTERM when
    this process dies, however it dies (see labo_fairseq.procs).
    """
    text_dir = Path(text_dir)
    cmd = [_tool("fairseq-preprocess"), "--source-lang", src, "--target-lang", tgt,
           "--trainpref", text_dir / "train", "--validpref", text_dir / "valid",
           "--testpref", ",".join(str(text_dir / s) for s in test_splits),
           "--destdir", dest, "--workers", str(workers)]
    if joined:
        cmd.append("--joined-dictionary")
    proc = subprocess.run(child_command([str(c) for c in cmd]), capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        # the staged text files vanish with the run: name them by their split file names
        tail = tail[0].replace(f"{text_dir}/", "").replace(str(dest), "the data-bin")
        raise PrepError(f"fairseq-preprocess failed with exit code {proc.returncode}: {tail}")
    return {lang: sum(1 for _ in open(Path(dest) / f"dict.{lang}.txt", encoding="utf-8")) + 4
            for lang in (src, tgt)}


def write_raw_references(data_bin, tgt, references):
    """Keeps each evaluation split's target text as published (untokenised, cased) next to its binary
    data, so that sacreBLEU can score against it; returns prepare.json's "raw_references" entry
    ({split: file name relative to the data-bin})."""
    names = {}
    for split, lines in references.items():
        names[split] = f"{split}.raw.{tgt}"
        write_lines(Path(data_bin) / names[split], lines)
    return names


def write_prepare_json(data_bin, record):
    """Records how the data was made so evaluation can undo subwords the same way."""
    record = dict(record)
    record["remove_bpe"] = {"bpe": "subword_nmt", "spm": "sentencepiece"}[record["subwords"]]
    with open(Path(data_bin) / "prepare.json", "w", encoding="utf-8") as out:
        json.dump(record, out, indent=2, sort_keys=True)
        out.write("\n")


# ------------------------------------------------------------------------------------------- running


class Timer:
    def __init__(self):
        self.start = time.monotonic()

    def __str__(self):
        return f"{time.monotonic() - self.start:.1f}s"


def argument_parser(prog, description):
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_output_args(parser, name, work="tokenisation, subwords and binarisation"):
    """--out (writing <out>/NAME/ and <out>/data-bin/NAME/), --workers and --force."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output root; writes <out>/{name}/ and <out>/data-bin/{name}/ (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help=f"processes for {work} (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")


def require_positive(parser, values):
    """parser.error naming the first option in {option: value} whose value is below 1."""
    for option, value in values.items():
        if value < 1:
            parser.error(f"{option} must be a positive number, got {value}")


def prepare_outputs(args, name, tag, build):
    """Builds <out>/NAME/ and <out>/data-bin/NAME/ through StagedOutputs: build(args, staging,
    text_dir, bin_dir) fills their staged copies (text_dir exists, fairseq-preprocess makes bin_dir),
    which replace the final ones only when it returns."""
    text_final, bin_final = args.out / name, args.out / "data-bin" / name
    total = Timer()
    with StagedOutputs(args.out, [text_final, bin_final], args.force, tag) as staging:
        text_dir, bin_dir = staging.staged(text_final), staging.staged(bin_final)
        text_dir.mkdir()
        build(args, staging, text_dir, bin_dir)
        staging.commit()
    log(tag, f"done in {total}: {text_final} and {bin_final}")


def command(tag, name, parse_args, build):
    """The `main(argv=None, prog=None)` of a dataset module: parses argv (a usage error exits 2),
    then runs prepare_outputs under run_command, which turns failures into one line and a status."""
    def main(argv=None, prog=None):
        args = parse_args(argv) if prog is None else parse_args(argv, prog)
        return run_command(prog or tag, lambda: prepare_outputs(args, name, tag, build))
    return main
