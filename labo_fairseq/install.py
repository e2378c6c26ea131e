"""`labo-install-fairseq`: builds fairseq 0.12.2 from its sdist with the project's patch applied and
installs it into a Python environment (default: the one running this command), leaving every
other package alone. Python's standard library only, so that a source checkout's
scripts/install_fairseq.sh can run it before anything else is installed.

Steps, one line each on the console:
  1. the build requirements fairseq is compiled against (cython, wheel, setuptools, numpy<2),
     installed only where missing; torch must be there already (your own build, CUDA or CPU)
  2. the sdist: --sdist FILE, else `pip download fairseq==0.12.2` (pip's index, or a wheelhouse
     with PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR)
  3. the patch (fairseq-0.12.2.patch, shipped inside this package) applied to the unpacked sdist
  4. `pip wheel --no-deps --no-build-isolation` of the patched tree, then `pip install --no-deps
     --force-reinstall` of that wheel: fairseq's own pins (hydra-core<1.1, omegaconf<2.1,
     torchaudio) do not work on Python 3.11 / a current torch; labo_fairseq's dependencies
     provide what fairseq needs at run time
  5. a check that the installed fairseq imports and carries the patch

The wheel is kept in a cache (--cache-dir, default $LABO_FAIRSEQ_CACHE or
~/.cache/labo-fairseq) under a key of everything it was compiled from and against: the patch,
the sdist, the Python, the platform, torch, numpy, and whether a CUDA toolkit was found and for
which GPU architectures it compiles. Another environment with the same key installs that wheel
instead of compiling (steps 2 to 4); --no-cache always builds.

It also holds the check every command that needs fairseq makes first (require_fairseq): cheap,
it reads two small files and imports nothing of fairseq or torch.
"""
import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

FAIRSEQ_VERSION = "0.12.2"
PATCH_NAME = f"fairseq-{FAIRSEQ_VERSION}.patch"
INSTALL_COMMAND = "labo-install-fairseq"
# What the patch defines in fairseq/options.py; a stock fairseq 0.12.2 lacks it.
PATCH_MARKER = ("options.py", "def bf16_implies_tpu(")
# Installed where missing, before fairseq is compiled against them (--no-build-isolation).
BUILD_REQUIREMENTS = {"Cython": "cython>=0.29,<4", "wheel": "wheel", "setuptools": "setuptools>=64",
                      "numpy": "numpy>=1.24,<2"}
TAG = "[install_fairseq]"


class InstallError(Exception):
    """A step that failed; the message says which and what to do."""


# ------------------------------------------------------------------------------------ the check


def patch_file() -> Path:
    """The patch: inside the installed package (labo_fairseq/patches/), or a checkout's patches/."""
    package = Path(__file__).resolve().parent
    for folder in (package / "patches", package.parent / "patches"):
        if (folder / PATCH_NAME).is_file():
            return folder / PATCH_NAME
    raise InstallError(f"{PATCH_NAME} is missing from {package / 'patches'} (a broken labo_fairseq install: "
                       f"reinstall it)")


def fairseq_problem() -> Optional[str]:
    """None when this interpreter has the patched fairseq 0.12.2, else what is wrong. Imports nothing:
    it finds the package, reads its installed version and looks for the patch's marker."""
    try:
        spec = importlib.util.find_spec("fairseq")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return f"fairseq {FAIRSEQ_VERSION} (patched) is not installed for {sys.executable}"
    where = Path(list(spec.submodule_search_locations)[0])
    try:
        version = importlib.metadata.version("fairseq")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is not None and version != FAIRSEQ_VERSION:
        return f"fairseq {version} is installed ({where}), not the patched {FAIRSEQ_VERSION}"
    name, marker = PATCH_MARKER
    try:
        patched = marker in (where / name).read_text(encoding="utf-8", errors="replace")
    except OSError:
        patched = False
    if not patched:
        return f"the fairseq in {where} is a stock {FAIRSEQ_VERSION}, without the project's patch"
    return None


def require_fairseq() -> None:
    """Raises UserError (one line, exit status 2 under run_command) unless the patched fairseq is
    installed: what the commands that run fairseq check before doing any work."""
    problem = fairseq_problem()
    if problem:
        from labo_fairseq.errors import UserError
        raise UserError(f"{problem}: run {INSTALL_COMMAND}")


# ------------------------------------------------------------------------------------ the patch


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(text: str):
    """[(path, [(old_start, old_lines, new_lines), ...]), ...] of a git unified diff (no renames,
    new or deleted files: the project's patch only edits files)."""
    files, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0]
            path = path[2:] if path.startswith("b/") else path
            files.append((path, []))
        elif line.startswith("@@"):
            match = _HUNK.match(line)
            if not match or not files:
                raise InstallError(f"{PATCH_NAME}: line {i + 1}: malformed hunk header")
            old_count = int(match.group(2) or 1) if match.group(2) != "0" else 0
            new_count = int(match.group(4) or 1) if match.group(4) != "0" else 0
            old, new = [], []
            i += 1
            while (len(old) < old_count or len(new) < new_count) and i < len(lines):
                body = lines[i]
                kind, content = (body[:1] or " "), body[1:]
                if kind == " ":
                    old.append(content)
                    new.append(content)
                elif kind == "-":
                    old.append(content)
                elif kind == "+":
                    new.append(content)
                elif kind != "\\":
                    raise InstallError(f"{PATCH_NAME}: line {i + 1}: unexpected line in a hunk")
                i += 1
            if len(old) != old_count or len(new) != new_count:
                raise InstallError(f"{PATCH_NAME}: a hunk of {files[-1][0]} is truncated")
            files[-1][1].append((int(match.group(1)), old, new))
            continue
        i += 1
    return files


def apply_patch(patch: Path, tree: Path) -> List[str]:
    """Applies the patch to the source tree (like `patch -p1 --forward`, without fuzz: every hunk's
    context must match exactly, at its line or shifted); returns the files it changed."""
    changed = []
    for path, hunks in parse_patch(patch.read_text(encoding="utf-8")):
        target = tree / path
        if not target.is_file():
            raise InstallError(f"{PATCH_NAME}: {path} is not in the fairseq {FAIRSEQ_VERSION} sdist")
        with open(target, encoding="utf-8", newline="") as f:
            lines = f.read().splitlines(keepends=True)
        eol = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
        bare = [line.rstrip("\r\n") for line in lines]
        shift = 0
        for old_start, old, new in hunks:
            expected = max(old_start - 1 + shift, 0)
            at = _find(bare, old, expected)
            if at is None:
                if _find(bare, new, expected) is not None:
                    raise InstallError(f"{path} already carries {PATCH_NAME} (this sdist was patched before)")
                raise InstallError(f"{PATCH_NAME} does not apply to {path} near line {old_start} "
                                   f"(is this the fairseq {FAIRSEQ_VERSION} sdist?)")
            bare[at:at + len(old)] = new
            lines[at:at + len(old)] = [content + eol for content in new]
            shift = at - (old_start - 1) + len(new) - len(old)  # where the next hunk's lines moved
        with open(target, "w", encoding="utf-8", newline="") as f:
            f.write("".join(lines))
        changed.append(path)
    return changed


def _find(lines: List[str], block: List[str], expected: int) -> Optional[int]:
    """The start of `block` in `lines` nearest to `expected`, or None."""
    if not block:
        return min(expected, len(lines))
    for distance in range(len(lines) + 1):
        for at in (expected - distance, expected + distance) if distance else (expected,):
            if 0 <= at <= len(lines) - len(block) and lines[at:at + len(block)] == block:
                return at
    return None


# ------------------------------------------------------------------------------------ the install


def say(message: str) -> None:
    print(f"{TAG} {message}", flush=True)


def _run(cmd: Sequence[str], what: str) -> None:
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise InstallError(f"{what} failed (exit status {proc.returncode}):\n{tail}")


def _pip(python: str) -> List[str]:
    return [python, "-m", "pip", "--disable-pip-version-check", "--quiet"]


def missing_modules(python: str, modules: Sequence[str]) -> List[str]:
    code = ("import importlib.util, sys; "
            "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))")
    proc = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"{python} does not run: {proc.stderr.strip()[-500:]}")
    return proc.stdout.split()


def install_build_requirements(python: str) -> None:
    if missing_modules(python, ["torch"]):
        raise InstallError(f"{python} cannot import torch; install your torch build first "
                           f"(https://pytorch.org/get-started/locally/), then run {INSTALL_COMMAND} again")
    missing = missing_modules(python, list(BUILD_REQUIREMENTS))
    if not missing:
        say("build requirements present: " + ", ".join(BUILD_REQUIREMENTS))
        return
    wanted = [BUILD_REQUIREMENTS[m] for m in missing]
    say("installing the build requirements fairseq is compiled against: " + " ".join(wanted))
    _run([*_pip(python), "install", *wanted], "installing " + " ".join(wanted))


def download_sdist(python: str, dest: Path) -> Path:
    say(f"downloading the fairseq {FAIRSEQ_VERSION} sdist (pip download)")
    # --no-build-isolation: pip prepares the sdist's metadata with the environment's own torch/numpy
    _run([*_pip(python), "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
          "-d", dest, f"fairseq=={FAIRSEQ_VERSION}"], f"pip download fairseq=={FAIRSEQ_VERSION}")
    found = sorted(dest.glob(f"fairseq-{FAIRSEQ_VERSION}.tar.gz"))
    if not found:
        raise InstallError(f"pip download left no fairseq-{FAIRSEQ_VERSION}.tar.gz in {dest}")
    return found[0]


def unpack(sdist: Path, dest: Path) -> Path:
    try:
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(dest, filter="data")
            else:  # Python < 3.10.12: the archive is pip's download of a fixed version
                archive.extractall(dest)
    except (tarfile.TarError, OSError) as error:
        raise InstallError(f"{sdist}: not a readable sdist ({error})") from None
    tree = dest / f"fairseq-{FAIRSEQ_VERSION}"
    if not (tree / "setup.py").is_file():
        raise InstallError(f"{sdist} does not hold fairseq-{FAIRSEQ_VERSION}/setup.py")
    return tree


def verify(python: str, patch: Path) -> str:
    """Imports the installed fairseq in the target environment: its version, and the patch's marker."""
    code = ("import fairseq, fairseq.options as o; "
            "print(fairseq.__version__, hasattr(o, 'bf16_implies_tpu'))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise InstallError(f"the installed fairseq does not import:\n{proc.stderr.strip()[-2000:]}")
    words = (proc.stdout.strip().splitlines() or [""])[-1].split()
    version, patched = words if len(words) == 2 else ("?", "False")
    if version != FAIRSEQ_VERSION or patched != "True":
        raise InstallError(f"{python} imports fairseq {version} {'with' if patched == 'True' else 'without'} "
                           f"{patch.name}")
    return version


# ------------------------------------------------------------------------------- the wheel cache

# What a compiled fairseq depends on, read in the target environment: its Python and platform,
# the torch and numpy its extensions were compiled against, and whether a CUDA toolkit was found
# (fairseq then also compiles its CUDA kernels, for TORCH_CUDA_ARCH_LIST or else the GPUs seen).
_BUILD_FACTS = """import json, os, sys, sysconfig, numpy, torch
from torch.utils import cpp_extension
toolkit = cpp_extension.CUDA_HOME is not None
arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or [
    list(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
print(json.dumps({"python": sys.implementation.cache_tag, "platform": sysconfig.get_platform(),
                  "torch": torch.__version__, "numpy": numpy.__version__,
                  "cuda_toolkit": toolkit, "cuda_arch": arch if toolkit else None}))"""


def default_cache_dir() -> Path:
    if os.environ.get("LABO_FAIRSEQ_CACHE"):
        return Path(os.environ["LABO_FAIRSEQ_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labo-fairseq"


def build_facts(python: str) -> dict:
    proc = subprocess.run([python, "-c", _BUILD_FACTS], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise InstallError(f"{python} cannot report its torch and numpy:\n{proc.stderr.strip()[-1000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cache_key(facts: dict, patch: bytes, sdist: Optional[bytes]) -> str:
    """The cache entry of a fairseq wheel: a hash of the build facts, the patch, and the sdist
    (None: pip's download of the fixed version FAIRSEQ_VERSION)."""
    digest = hashlib.sha256(json.dumps({"fairseq": FAIRSEQ_VERSION, **facts}, sort_keys=True).encode())
    digest.update(hashlib.sha256(patch).digest())
    digest.update(hashlib.sha256(sdist).digest() if sdist is not None else b"pip download")
    return digest.hexdigest()[:24]


def cached_wheel(entry: Path) -> Optional[Path]:
    wheels = sorted(entry.glob(f"fairseq-{FAIRSEQ_VERSION}-*.whl")) if entry.is_dir() else []
    return wheels[0] if wheels else None


def keep_wheel(wheel: Path, entry: Path) -> None:
    """Copies a built wheel into its cache entry (aside, then renamed: a reader never sees half a
    wheel); a cache that cannot be written only costs the next environment a build."""
    try:
        entry.mkdir(parents=True, exist_ok=True)
        part = entry / f".{wheel.name}.part-{os.getpid()}"
        shutil.copyfile(wheel, part)
        part.replace(entry / wheel.name)
        say(f"kept the wheel for other environments: {entry / wheel.name}")
    except OSError as error:
        say(f"note: the wheel was not kept in the cache {entry} ({error.strerror or error})")


# -------------------------------------------------------------------------------- the install


def build_wheel(python: str, sdist: Optional[Path], patch: Path, dest: Path) -> Path:
    """Steps 2 to 4 up to the wheel: download or take the sdist, patch it, `pip wheel` it."""
    if sdist is None:
        sdist = download_sdist(python, dest)
    say(f"building fairseq {FAIRSEQ_VERSION} with {patch.name} for {python}")
    tree = unpack(sdist, dest / "src")
    apply_patch(patch, tree)
    _run([*_pip(python), "wheel", "--no-deps", "--no-build-isolation", "-w", dest / "wheel", tree],
         f"building the patched fairseq {FAIRSEQ_VERSION}")
    wheels = sorted((dest / "wheel").glob(f"fairseq-{FAIRSEQ_VERSION}-*.whl"))
    if not wheels:
        raise InstallError(f"pip wheel left no fairseq-{FAIRSEQ_VERSION} wheel in {dest / 'wheel'}")
    return wheels[0]


def install(python: str, sdist: Optional[Path], build_requirements: bool = True,
            cache_dir: Optional[Path] = None) -> None:
    """Installs the patched fairseq into `python`'s environment; `cache_dir` None: always builds."""
    patch = patch_file()
    if sdist is not None and not sdist.is_file():
        raise InstallError(f"--sdist {sdist} does not exist")
    if build_requirements:
        install_build_requirements(python)
    else:
        missing = missing_modules(python, ["torch", *BUILD_REQUIREMENTS])
        if missing:
            raise InstallError(f"{python} lacks what fairseq is compiled against: {' '.join(missing)} "
                               f"(run without --no-build-requirements, or install them first)")
    entry = None
    if cache_dir is not None:
        sdist_bytes = sdist.read_bytes() if sdist is not None else None
        entry = cache_dir / cache_key(build_facts(python), patch.read_bytes(), sdist_bytes)
    with tempfile.TemporaryDirectory(prefix="labo-fairseq-build-") as build:
        wheel = cached_wheel(entry) if entry is not None else None
        if wheel is not None:
            say(f"installing the wheel built before for this Python, torch and numpy: {wheel}")
            what = f"installing the cached {wheel} ({INSTALL_COMMAND} --no-cache builds it again)"
        else:
            wheel = build_wheel(python, sdist, patch, Path(build))
            if entry is not None:
                keep_wheel(wheel, entry)
            what = f"installing the patched fairseq {FAIRSEQ_VERSION}"
        _run([*_pip(python), "install", "--no-deps", "--force-reinstall", wheel], what)
    say(f"ok: fairseq {verify(python, patch)}")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Builds fairseq 0.12.2 from its sdist with the project's patch and installs it "
                    "(--no-deps, --no-build-isolation) into a Python environment; installs the build "
                    "requirements (cython, wheel, setuptools, numpy<2) first where missing. torch must "
                    "be installed already. The wheel it builds is kept in a cache and installed, without "
                    "compiling, into another environment with the same Python, platform, torch and numpy.",
        epilog="offline: PIP_NO_INDEX=1 PIP_FIND_LINKS=WHEELHOUSE, or --sdist FILE")
    parser.add_argument("--python", default=sys.executable,
                        help="the environment's interpreter (default: this one, %(default)s)")
    parser.add_argument("--sdist", type=Path, metavar="FILE",
                        help=f"a local fairseq-{FAIRSEQ_VERSION}.tar.gz (default: pip downloads it)")
    parser.add_argument("--no-build-requirements", dest="build_requirements", action="store_false",
                        help="do not install cython, wheel, setuptools or numpy; fail if one is missing")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", default=None,
                        help="where built wheels are kept, one per Python, platform, torch, numpy and patch "
                             "(default: $LABO_FAIRSEQ_CACHE, else ~/.cache/labo-fairseq)")
    parser.add_argument("--no-cache", action="store_true",
                        help="build even if the cache holds a wheel for this environment, and keep none")
    parser.add_argument("--check", action="store_true",
                        help="only say whether the interpreter (--python) has the patched fairseq (exit "
                             "status 0 if it has, 1 if not); installs nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = INSTALL_COMMAND) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.check:
        if os.path.realpath(args.python) != os.path.realpath(sys.executable):
            code = "from labo_fairseq.install import fairseq_problem as p; print(p() or '')"
            proc = subprocess.run([args.python, "-c", code], capture_output=True, text=True)
            problem = proc.stdout.strip() if proc.returncode == 0 else f"{args.python}: {proc.stderr.strip()[-300:]}"
        else:
            problem = fairseq_problem()
        print(f"{prog}: {problem}" if problem else f"{prog}: fairseq {FAIRSEQ_VERSION} (patched) is installed")
        return 1 if problem else 0
    if shutil.which(args.python) is None and not Path(args.python).is_file():
        print(f"{prog}: error: {args.python} not found; pass --python /path/to/python", file=sys.stderr)
        return 2
    # absolute, not resolved (a venv's python is a link to the base interpreter): the steps run
    # the interpreter from other working directories
    args.python = os.path.abspath(args.python) if os.sep in args.python else shutil.which(args.python)
    try:
        install(args.python, args.sdist, args.build_requirements,
                None if args.no_cache else args.cache_dir or default_cache_dir())
    except InstallError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; fairseq may be half installed: run {prog} again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
