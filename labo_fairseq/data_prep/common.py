"""Shared plumbing: line I/O with clear errors, parallel line transforms, staged outputs, binarisation.

How a dataset command fails (each is one line, without a traceback, through run_command):
  - outputs are built in a staging directory and replace the previous ones only at the end, as a
    whole: --force swaps the pair <out>/NAME and <out>/data-bin/NAME through a journal, so that an
    interrupt or a killed run never leaves one new and one old (StagedOutputs has the details);
  - a failed or interrupted run removes the directories it created when they are empty (<out>
    included), never one that was there before;
  - an OSError while writing (disk full, quota) names the file being written, by its final path
    (staging paths are not shown);
  - --vocab above MAX_VOCAB is refused when parsing; --workers above the CPUs this process may use
    (its affinity mask) is lowered to that number, with a one-line notice.
"""
import argparse
import contextlib
import errno
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

from labo_fairseq.errors import EXIT_INTERRUPTED, UserError, run_command
from labo_fairseq.locks import LockFile
from labo_fairseq.procs import child_command, die_with_parent, pid_running
from labo_fairseq.textfiles import iter_lines
from labo_fairseq.textfiles import write_lines as _write_lines

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


def count_lines(path, name=None):
    return sum(1 for _ in iter_lines(path, shown=name))


def check_counts(src_name, n_src, tgt_name, n_tgt, unit="lines"):
    """Returns the common count of the two sides of a parallel corpus, or fails naming both counts."""
    if n_src != n_tgt:
        raise PrepError(f"line-count mismatch: {src_name} has {n_src} {unit}, {tgt_name} has {n_tgt}")
    return n_src


def concatenate(paths, dest):
    with open(dest, "wb") as out:
        for path in paths:
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    with writing(dest):
                        out.write(chunk)
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
    return tqdm(desc=desc, unit=unit if unit == "B" else f" {unit}", total=total, unit_scale=unit == "B",
                unit_divisor=1024 if unit == "B" else 1000, disable=not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True)


def map_lines(transform, lines, workers, desc=None):
    """Yields transform(block) results in input order; transform maps a list of lines to a list of lines.

    With workers > 1 the blocks go through a process pool (the transforms are pure Python regex work,
    so threads would not help). With `desc`, shows the lines done on a terminal.
    """
    total = len(lines) if hasattr(lines, "__len__") else None
    with progress(desc or "processing", total=total) as bar:
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
    return write_lines(dest, map_lines(transform, iter_lines(src, shown=name), workers, desc=Path(dest).name))


# ---------------------------------------------------------------------------------------- raw inputs


def download(url, dest, hint):
    """Downloads url to dest (via a .part file); on failure says how to supply the file locally."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            try:
                out = open(part, "wb")
            except OSError as e:
                raise _WriteError(part, e) from None
            with out, progress(dest.name, "B", int(response.headers.get("Content-Length") or 0) or None) as bar:
                while chunk := response.read(1 << 20):
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise _WriteError(part, e) from None
                    bar.update(len(chunk))
        part.replace(dest)
    except _WriteError as e:  # disk full, permissions: not the download's fault
        part.unlink(missing_ok=True)
        raise PrepError(f"cannot write {e.path} (downloading {url}): {e.reason}") from None
    except OSError as e:  # URLError, timeouts and HTTP errors are all OSErrors
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise PrepError(f"cannot download {url} ({reason}); {hint}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


class _WriteError(Exception):
    """An OSError while writing `path`, kept apart from the reading errors around it."""

    def __init__(self, path, error):
        super().__init__(path, error)
        if error.filename is None:
            error.filename = str(path)
        self.path, self.error, self.reason = path, error, error.strerror or str(error)


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
                    try:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        out = open(target, "wb")
                    except OSError as e:
                        raise _WriteError(target, e) from None
                    with out, tar.extractfile(info) as src:
                        while chunk := src.read(1 << 20):
                            try:
                                out.write(chunk)
                            except OSError as e:
                                raise _WriteError(target, e) from None
                    found[name] = target
    except _WriteError as e:  # disk full, permissions: the OSError, naming the file written (see writing)
        raise e.error from None
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
    for number, line in enumerate(iter_lines(path, shown=name), 1):
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


@contextlib.contextmanager
def writing(path):
    """An OSError raised inside that names no file (a failed write: disk full, quota exceeded) is
    given `path` as its file name, so that the message says what was being written."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


def write_lines(path, lines):
    """labo_fairseq.textfiles.write_lines, with write errors naming `path` (see writing)."""
    with writing(path):
        return _write_lines(path, lines)


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM received inside are held back (yields the list of those received); the
    caller acts on them once the block is over. Only the main thread can change signal handlers:
    elsewhere nothing is deferred."""
    received = []
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    except ValueError:  # not the main thread
        pass
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StagedOutputs:
    """Builds outputs in a temporary directory next to them and moves them into place only on commit.

    `outputs` are final paths (files or directories) under `out_dir`. An existing output is only
    replaced with `force`; a run that fails or is interrupted before commit leaves them untouched.

    A run holds an exclusive lock on `out_dir/.TAG.lock` while it stages, so a second run of the
    same command into the same directory is refused. Its staging directory `.TAG.tmp-*` records the
    owning process; staging directories of runs that died without cleaning up (SIGKILL, power loss)
    are removed by the next run, which names them in one log line.

    Replacing the outputs (commit) keeps the set whole: at every instant either all the previous
    outputs or all the new ones are in place, as seen by the next run. In the staging directory:

        result/<output>   the new outputs, complete before commit starts
        swap.json         the journal: the outputs being replaced and which of them existed
        previous/<n>      previous output n, moved aside

    commit writes the journal, moves every previous output aside, then moves every new one in, and
    removes the journal: the swap is done. Ctrl-C and SIGTERM are held back while it runs (a few
    renames) and take effect after it, with the new outputs in place (the message says so). Any
    failure during the swap puts the previous outputs back (the new ones return to result/), so the
    message "previous outputs left as they were" stays true. If the process dies mid-swap
    (SIGKILL), or putting back fails, the journal stays in the staging directory, which is then kept:
    the next run into the same directory finds it, puts the previous outputs back, says so in one
    log line, and only then goes on.

    Directories the run creates (`out_dir` and its missing parents, `out_dir/data-bin`, download
    directories) are removed again when the run fails and they are empty; a directory that was
    there before the run is never removed.
    """

    JOURNAL = "swap.json"

    def __init__(self, out_dir, outputs, force, tag):
        self.out_dir = Path(out_dir).absolute()
        self.outputs = [Path(p).absolute() for p in outputs]
        self.force = force
        self.tag = tag
        self.root = None
        self.lock = None
        self.created = []  # directories this run created, parents first
        self.committed = False  # the new outputs are in place
        self.unfinished = False  # a swap could not be undone: the journal is left for the next run

    def _check_existing(self):
        existing = [p for p in self.outputs if p.exists()]
        if existing and not self.force:
            raise PrepError(f"{existing[0]} already exists; pass --force to replace it")

    def makedirs(self, path):
        """mkdir -p, recording the directories it creates (removed again, if empty, on failure)."""
        path = Path(path).absolute()
        missing = []
        for directory in (path, *path.parents):
            if directory.exists():
                break
            missing.append(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.created.extend(reversed(missing))
        return path

    def __enter__(self):
        try:
            self.makedirs(self.out_dir)
            self.lock = self._acquire_lock()
            self._remove_stale()
            self._check_existing()  # after _remove_stale: undoing a killed run's swap puts outputs back
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
        path = self.out_dir / f".{self.tag}.lock"
        return LockFile(path, lambda holder: PrepError(
            f"{self.out_dir} is in use by another {self.tag} run (process {holder}, lock {path}); wait for it to "
            f"finish or pass another --out"), make_parent=lambda: self.makedirs(self.out_dir))

    def _remove_stale(self):
        """Removes `.TAG.tmp-*` directories whose owner process is gone (with the lock held, no other
        run of this command is staging here), first undoing the swap of one that died replacing the
        outputs."""
        removed = []
        for path in sorted(self.out_dir.glob(f".{self.tag}.tmp-*")):
            if path.is_dir() and not owner_alive(path / OWNER_FILE):
                if (path / self.JOURNAL).exists():
                    self._recover(path)  # says so itself
                else:
                    removed.append(path.name)
                shutil.rmtree(path, ignore_errors=True)
        if removed:
            log(self.tag, f"removed {len(removed)} staging director{'y' if len(removed) == 1 else 'ies'} "
                          f"left in {self.out_dir} by a run that was killed: {', '.join(removed)}")

    def _recover(self, root):
        try:
            restored = self._roll_back(root)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PrepError(f"{root}: a run was killed while replacing its outputs and they could not be put "
                            f"back ({getattr(e, 'strerror', None) or e}); its previous outputs are in "
                            f"{root / 'previous'}, listed in {root / self.JOURNAL}") from None
        if restored:
            log(self.tag, f"put back the previous {' and '.join(map(str, restored))}: a run was killed while "
                          f"replacing them (its staging directory {root.name} is removed)")
        else:
            log(self.tag, f"took back the outputs that a run killed while moving them into {self.out_dir} had "
                          f"partly moved in (its staging directory {root.name} is removed)")

    def _roll_back(self, root):
        """Undoes the swap recorded in root's journal, whatever point it reached: new outputs moved in
        go back to result/, previous ones moved aside come back; then removes the journal. Returns
        the outputs put back. Each step checks what is where, so running it again is harmless."""
        journal = json.loads((root / self.JOURNAL).read_text(encoding="utf-8"))
        restored = []
        for n, entry in enumerate(journal["outputs"]):
            final = self.out_dir / entry["path"]
            staged, aside = root / "result" / entry["path"], root / "previous" / str(n)
            moved_aside = _present(aside)
            if (moved_aside or not entry["previous"]) and _present(final) and not _present(staged):
                final.rename(staged)  # the new output had been moved in
            if moved_aside:
                aside.rename(final)
            if entry["previous"]:
                restored.append(final)
        (root / self.JOURNAL).unlink()
        return restored

    def staged(self, output):
        """Where to build `output` (one of the final paths) before commit."""
        path = self.root / "result" / Path(output).absolute().relative_to(self.out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def shown(self, path):
        """How messages name a path of this run: a staged output by its final path, a working file
        as one in out_dir (staging names mean nothing to the user), any other path as it is."""
        path = Path(path).absolute()
        if self.root is not None:
            for base, shown in ((self.root / "result", self.out_dir), (self.root / "work", None),
                                (self.root, None)):
                if path.is_relative_to(base):
                    relative = path.relative_to(base)
                    return shown / relative if shown else f"a working file in {self.out_dir} ({relative})"
        return path

    def os_error_message(self, error):
        """One line for an OSError raised while building: names the file being written (or read)."""
        reason = error.strerror or str(error)
        if not error.filename:
            return f"while preparing the outputs in {self.out_dir}: {reason}"
        path = Path(error.filename).absolute()
        if self.root is not None and path.is_relative_to(self.root):
            return f"cannot write {self.shown(path)}: {reason}"
        return f"{path}: {reason}"

    def commit(self):
        """Replaces the outputs by the staged ones (see the class docstring)."""
        for final in self.outputs:
            if not self.staged(final).exists():
                raise PrepError(f"internal error: {final} was never built")
        self._check_existing()
        journal = {"outputs": [{"path": str(final.relative_to(self.out_dir)),
                                "previous": _present(final)} for final in self.outputs]}
        with signals_deferred() as received:
            try:
                part = self.root / f"{self.JOURNAL}.part"
                part.write_text(json.dumps(journal) + "\n", encoding="utf-8")
                part.rename(self.root / self.JOURNAL)
                (self.root / "previous").mkdir()
                for n, (final, entry) in enumerate(zip(self.outputs, journal["outputs"])):
                    if entry["previous"]:
                        final.rename(self.root / "previous" / str(n))
                for final in self.outputs:
                    self.makedirs(final.parent)
                    self.staged(final).rename(final)
                self.committed = True
                (self.root / self.JOURNAL).unlink()
            except BaseException as error:
                if self.committed:  # only removing the journal failed: the swap is done
                    raise
                self._undo_failed_swap()
                if isinstance(error, OSError):
                    raise PrepError(f"cannot move results into {self.out_dir}: {error.strerror or error}; "
                                    f"previous outputs left as they were") from None
                raise
        if received:
            raise KeyboardInterrupt  # held back during the swap; the new outputs are in place

    def _undo_failed_swap(self):
        if not (self.root / self.JOURNAL).exists():
            return  # the journal was never written: nothing was moved
        try:
            self._roll_back(self.root)
        except BaseException as error:
            self.unfinished = True  # keep the staging directory and its journal for the next run
            if isinstance(error, OSError):
                raise PrepError(
                    f"cannot move results into {self.out_dir}, nor put the previous outputs back: "
                    f"{error.strerror or error}; the next run into {self.out_dir} puts them back") from None
            raise

    def __exit__(self, *exc):
        try:
            if self.root is not None and not self.unfinished:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            if not self.committed:
                for directory in reversed(self.created):
                    try:
                        directory.rmdir()  # only when empty
                    except OSError:
                        pass
                self.created = []
        return False


def _present(path):
    return path.exists() or path.is_symlink()


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
    except (OSError, ValueError):
        return False
    if not pid_running(pid):
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
        raise PrepError(f"{name} not found (the patched fairseq is not installed here: run labo-install-fairseq)")
    return found


def binarise(text_dir, dest, src, tgt, test_splits, joined, workers, shown="the data-bin"):
    """Runs fairseq-preprocess on {train,valid,test*}.{src,tgt} in text_dir; returns dictionary sizes.

    Sizes count the 4 special symbols, as fairseq's own log line does. The child gets SIGTERM when
    this process dies, however it dies (see labo_fairseq.procs). Its errors name dest as `shown`.
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
        tail = tail[0].replace(f"{text_dir}/", "").replace(str(dest), str(shown))
        if any(reason in tail for reason in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))):
            tail += f" (writing {shown})"
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
    path = Path(data_bin) / "prepare.json"
    with writing(path), open(path, "w", encoding="utf-8") as out:
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


def available_cpus():
    """The CPUs this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity call on this platform
        return os.cpu_count() or 1


def add_output_args(parser, name, work="tokenisation, subwords and binarisation"):
    """--out (writing <out>/NAME/ and <out>/data-bin/NAME/), --workers and --force."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output root; writes <out>/{name}/ and <out>/data-bin/{name}/ (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=available_cpus(),
                        help=f"processes for {work}; more than the CPUs this process may use is lowered to "
                             f"that number, with a notice (default: all of them, %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")


# Far above any real vocabulary; the tools misbehave near 2**31 (sentencepiece runs for hours,
# subword-nmt's progress bar overflows).
MAX_VOCAB = 100_000_000


def check_sizes(parser, tag, args, vocab):
    """Checks the sizes given on the command line: parser.error (one line, exit 2) for a --vocab that
    is not in 1..MAX_VOCAB or a --workers below 1; a --workers above available_cpus() is lowered to
    it, with a one-line notice."""
    for option, value in (("--vocab", vocab), ("--workers", args.workers)):
        if value < 1:
            parser.error(f"{option} must be a positive number, got {value}")
    if vocab > MAX_VOCAB:
        parser.error(f"--vocab must be at most {MAX_VOCAB}, got {vocab}")
    cpus = available_cpus()
    if args.workers > cpus:
        log(tag, f"--workers {args.workers}: using {cpus}, the number of CPUs this process may use")
        args.workers = cpus


def prepare_outputs(args, name, tag, build, prog=None):
    """Builds <out>/NAME/ and <out>/data-bin/NAME/ through StagedOutputs: build(args, staging,
    text_dir, bin_dir) fills their staged copies (text_dir exists, fairseq-preprocess makes bin_dir),
    which replace the final ones only when it returns. An OSError while building (disk full) is
    reported naming the file being written. Returns the exit status when it reports an interrupt
    itself: one that came too late to stop the replacement, or one that left it to the next run."""
    text_final, bin_final = args.out / name, args.out / "data-bin" / name
    total = Timer()
    staging = StagedOutputs(args.out, [text_final, bin_final], args.force, tag)
    try:
        with staging:
            try:
                text_dir, bin_dir = staging.staged(text_final), staging.staged(bin_final)
                text_dir.mkdir()
                build(args, staging, text_dir, bin_dir)
            except OSError as error:
                raise PrepError(staging.os_error_message(error)) from None
            staging.commit()
        log(tag, f"done in {total}: {text_final} and {bin_final}")
    except KeyboardInterrupt:
        if staging.committed:
            print(f"{prog or tag}: interrupted; the new {text_final} and {bin_final} were already in place "
                  f"and are complete", file=sys.stderr)
            return EXIT_INTERRUPTED
        if staging.unfinished:
            print(f"{prog or tag}: interrupted while replacing {text_final} and {bin_final}; the next run into "
                  f"{args.out} puts the previous ones back", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise  # before the replacement: run_command says the previous outputs were left as they were


def command(tag, name, parse_args, build):
    """The `main(argv=None, prog=None)` of a dataset module: parses argv (a usage error exits 2),
    then runs prepare_outputs under run_command, which turns failures into one line and a status."""
    def main(argv=None, prog=None):
        args = parse_args(argv) if prog is None else parse_args(argv, prog)
        return run_command(prog or tag, lambda: prepare_outputs(args, name, tag, build, prog or tag))
    return main
