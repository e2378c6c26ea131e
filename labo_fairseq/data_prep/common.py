"""Shared plumbing: line I/O with clear errors, parallel line transforms, staged outputs, binarisation."""
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
from labo_fairseq.textfiles import count_lines, iter_lines as read_lines, write_lines  # noqa: F401  (re-exported)

# Relative: outputs go under the working directory, wherever the package is installed.
DEFAULT_OUT = Path("data")
BLOCK_LINES = 2000


class PrepError(UserError):
    """A problem with the inputs or the destination, reported as one line without a traceback."""


def log(tag, message):
    print(f"[{tag}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- reading


def concatenate(paths, dest):
    with open(dest, "wb") as out:
        for path in paths:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out)
    return dest


def check_parallel(src_path, tgt_path):
    """Returns the common line count of two sides of a parallel corpus, or fails naming both counts."""
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    if n_src != n_tgt:
        raise PrepError(f"line-count mismatch: {src_path} has {n_src} lines, {tgt_path} has {n_tgt}")
    return n_src


# ------------------------------------------------------------------------------------ parallel transforms

_worker_transform = None


def _init_worker(transform):
    global _worker_transform
    _worker_transform = transform
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
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(transform,))
        try:
            for result in pool.imap(_apply_worker, _blocks(lines), chunksize=1):
                bar.update(len(result))
                yield from result
            pool.close()
        finally:
            pool.terminate()
            pool.join()


def map_file(transform, src, dest, workers):
    """Applies a block transform to every line of src, writing dest; returns the line count."""
    return write_lines(dest, map_lines(transform, read_lines(src), workers, desc=Path(dest).name))


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


def extract_members(archive, members, dest_dir):
    """Extracts the named members (exact names) of a tar archive into dest_dir; returns their paths.

    Missing members and corrupt archives are reported naming the archive.
    """
    archive = Path(archive)
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
        raise PrepError(f"{archive}: file not found") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise PrepError(f"{archive}: corrupt or unreadable archive ({e or type(e).__name__})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise PrepError(f"{archive}: missing {', '.join(missing)}")
    return [found[m] for m in members]


def list_members(archive):
    try:
        with tarfile.open(archive) as tar:
            return [info.name.removeprefix("./") for info in tar if info.isfile()]
    except FileNotFoundError:
        raise PrepError(f"{archive}: file not found") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise PrepError(f"{archive}: corrupt or unreadable archive ({e or type(e).__name__})") from None


_SEGMENT_LINE = re.compile(r'\s*<seg id="[0-9]*">(.*)</seg>\s*')


def extract_segments(path):
    """The texts of the `<seg id="N">...</seg>` lines of an IWSLT .xml / WMT .sgm file.

    fairseq's recipes do this with grep '<seg id' and two seds; here a line that mentions '<seg id' but
    is not exactly one such segment is an error rather than text passed on with its tags.
    """
    segments = []
    for number, line in enumerate(read_lines(path), 1):
        if "<seg id" not in line:
            continue
        match = _SEGMENT_LINE.fullmatch(line)
        if not match or "<seg" in match.group(1) or "</seg>" in match.group(1):
            raise PrepError(f'{path}: line {number}: malformed segment, expected <seg id="N">text</seg>: '
                            f"{line.strip()[:80]!r}")
        segments.append(match.group(1).strip(" \t\r\f\v"))
    if not segments:
        raise PrepError(f"{path}: no <seg id=...> lines")
    return segments


# ------------------------------------------------------------------------------------- staged outputs


class StagedOutputs:
    """Builds outputs in a temporary directory next to them and moves them into place only on commit.

    `outputs` are final paths (files or directories) under `out_dir`. An existing output is only
    replaced with `force`; a run that fails or is interrupted before commit leaves them untouched.
    """

    def __init__(self, out_dir, outputs, force, tag):
        self.out_dir = Path(out_dir).absolute()
        self.outputs = [Path(p).absolute() for p in outputs]
        self.force = force
        self.tag = tag
        self.root = None
        existing = [p for p in self.outputs if p.exists()]
        if existing and not force:
            raise PrepError(f"{existing[0]} already exists; pass --force to replace it")

    def __enter__(self):
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=f".{self.tag}.tmp-", dir=self.out_dir))
        except OSError as e:
            raise PrepError(f"cannot write to {self.out_dir}: {e.strerror or e}") from None
        self.work = self.root / "work"
        self.work.mkdir()
        return self

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
        return False


# -------------------------------------------------------------------------------------- binarisation


def _tool(name):
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        raise PrepError(f"{name} not found (install fairseq into this environment)")
    return found


def binarise(text_dir, dest, src, tgt, test_splits, joined, workers):
    """Runs fairseq-preprocess on {train,valid,test*}.{src,tgt} in text_dir; returns dictionary sizes.

    Sizes count the 4 special symbols, as fairseq's own log line does.
    """
    text_dir = Path(text_dir)
    cmd = [_tool("fairseq-preprocess"), "--source-lang", src, "--target-lang", tgt,
           "--trainpref", text_dir / "train", "--validpref", text_dir / "valid",
           "--testpref", ",".join(str(text_dir / s) for s in test_splits),
           "--destdir", dest, "--workers", str(workers)]
    if joined:
        cmd.append("--joined-dictionary")
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PrepError(f"fairseq-preprocess failed with exit code {proc.returncode}: {tail[0]}")
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


def run_main(tag, body):
    return run_command(tag, body)
