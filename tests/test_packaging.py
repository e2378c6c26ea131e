"""The package as users install it: a wheel with its commands, recipes and dependency metadata; an
environment whose own torch (a CUDA build on a GPU machine) is kept; an offline wheelhouse.

The torch already installed for the tests stands in for the user's CUDA torch: a throw-away
environment gets it, with what it requires, as hard links to the files of this environment's
installation (what `pip install torch==2.13.0` would write, without unpacking a wheel of 800 MB
again; pip removing or replacing it would only unlink the copies). One such environment costs
the pinned requirements and the fairseq wheel that building .venv/ kept in the cache, or one
fairseq build (a few minutes, shared by the tests of this module).
"""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import labo_fairseq
from tests.toy import REPO_ROOT, TINY_TRANSFORMER_ARGS

# installs into, builds from or checks the checkout and its .venv/: one xdist worker runs these
# modules one after another (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("installs")

BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def clean_env(**extra):
    """The environment of a user's shell: no venv of ours active, nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO_ROOT / ".venv")))
    env.update(extra)
    return env


def run(cmd, timeout=1200, check=True, **kwargs):
    kwargs.setdefault("env", clean_env())
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout ---\n"
                                      f"{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-5000:]}")
    return proc


def _torch_distributions():
    """torch and the distributions it requires here, recursively (markers evaluated)."""
    found, todo = {}, ["torch"]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower().replace("-", "_")
        if name in found:
            continue
        found[name] = dist
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def venv_with_torch(venv):
    """A new venv holding this environment's torch installation (and its requirements), each file
    a hard link (a copy across file systems) listed by the distribution's RECORD; a requirement
    the venv already has (setuptools) is left as it is."""
    run([BASE_PYTHON, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    present = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    for name, dist in _torch_distributions().items():
        if name in present:
            continue
        source_root = Path(dist.locate_file(""))
        for entry in dist.files:
            source = Path(dist.locate_file(entry))
            if not source.resolve().is_relative_to(source_root.resolve()) or not source.is_file():
                continue  # console scripts (their shebang names this environment's python)
            target = site / entry
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    return python


def torch_fingerprint(python):
    """Where torch is installed and when its files were written: changes if pip reinstalls it."""
    code = ("import torch, os, importlib.metadata as m; d = m.distribution('torch'); "
            "print(torch.__version__, torch.__file__, os.stat(torch.__file__).st_mtime_ns, "
            "os.stat(d._path).st_ino)")
    return run([python, "-c", code], cwd="/").stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    # what `pip wheel . -w dist` builds (without isolation: setuptools is in the venv already)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO_ROOT, "-w", dist],
        env=clean_env())
    wheels = list(dist.glob("labo_fairseq-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_has_commands_recipes_and_dependency_bounds(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert wheel.name.startswith(f"labo_fairseq-{labo_fairseq.__version__}-")
    assert f"Version: {labo_fairseq.__version__}" in metadata
    shipped = sorted(p.stem for p in (REPO_ROOT / "recipes").glob("*.toml"))
    assert len(shipped) >= 6
    for recipe in shipped:
        assert f"labo_fairseq/recipes/{recipe}.toml" in names
    assert "labo_fairseq/cli/__init__.py" in names and "labo_fairseq/evaluation/evaluate.py" in names
    # the fairseq installer and its patch: a wheel needs no checkout to get the patched fairseq
    assert "labo_fairseq/install.py" in names and "labo_fairseq/patches/fairseq-0.12.2.patch" in names
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("labo_fairseq/patches/fairseq-0.12.2.patch") == \
            (REPO_ROOT / "patches" / "fairseq-0.12.2.patch").read_bytes()
    for command in ("labo-prepare", "labo-evaluate", "labo-longtail", "labo-report", "labo-experiment", "labo-bench",
                    "labo-install-fairseq"):
        assert f"{command} = labo_fairseq.cli:" in entry_points
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert "torch>=2.1" in requires  # a lower bound: any installed build (CUDA or CPU) satisfies it
    assert not [r for r in requires if "==" in r.split(";")[0]], requires
    assert not [r for r in requires if r.startswith("fairseq")]  # installed by labo-install-fairseq
    for extra in ("gpu", "eval", "ivon", "test"):
        assert f"Provides-Extra: {extra}" in metadata
    assert any(r.startswith("triton") and 'extra == "gpu"' in r for r in requires)


@pytest.fixture(scope="module")
def own_torch_env(tmp_path_factory):
    """A throw-away venv whose torch was installed before the project's script ran, like a GPU
    machine's CUDA torch; then `setup_env.sh --into-current-env` installs everything else."""
    venv = tmp_path_factory.mktemp("own-torch") / "env"
    python = venv_with_torch(venv)
    assert run([python, "-m", "pip", "show", "torch"]).stdout.startswith("Name: torch\nVersion: 2.13.0")
    before = torch_fingerprint(python)
    proc = run(["bash", REPO_ROOT / "scripts" / "setup_env.sh", "--into-current-env"],
               env=clean_env(PYTHON=str(python)), cwd="/")
    return venv, before, proc


def test_into_current_env_keeps_the_torch_it_finds(own_torch_env):
    venv, before, proc = own_torch_env
    python = venv / "bin" / "python"
    assert "keeping torch 2.13.0" in proc.stdout and "CUDA available: False" in proc.stdout
    assert torch_fingerprint(python) == before  # not reinstalled
    # compiled here, or the wheel that building .venv/ kept in the cache (~/.cache/labo-fairseq)
    assert "[install_fairseq] ok: fairseq 0.12.2" in proc.stdout
    run([python, "-c", "import fairseq, labo_fairseq.criterions, tensorboardX"], cwd="/")
    # a second run finds every step done
    again = run(["bash", REPO_ROOT / "scripts" / "setup_env.sh", "--into-current-env"],
                env=clean_env(PYTHON=str(python)), cwd="/")
    assert "installing" not in again.stdout and "building" not in again.stdout, again.stdout


def test_system_torch_refuses_an_environment_without_torch(tmp_path):
    proc = run(["bash", REPO_ROOT / "scripts" / "setup_env.sh", "--into-current-env"], check=False,
               env=clean_env(PYTHON=BASE_PYTHON))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "cannot import torch" in errors[0], proc.stderr


def write_recipe(path, data_bin):
    train_args = [*TINY_TRANSFORMER_ARGS, "--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500",
                  "--max-update", "6", "--log-format", "simple", "--log-interval", "3", "--no-progress-bar"]
    path.write_text(f"""
name = "wheel"
seeds = [1]
[data]
data_bin = "{data_bin}"
train_target = "{data_bin.parent / 'text' / 'train.tgt'}"
subsets = ["test"]
[train]
args = {json.dumps(train_args)}
[evaluate]
beam = 2
batch_size = 64
cpu = true
longtail_level = "token"
[[methods]]
kind = "ls"
[[methods]]
kind = "labo"
tau = 1.25
""")
    return path


def test_offline_wheelhouse_installs_without_an_index(tmp_path):
    subset = tmp_path / "subset.txt"
    subset.write_text("tabulate==0.10.0\nsix==1.17.0\nsetuptools==80.9.0\nwheel==0.45.1\n")
    house = tmp_path / "wheelhouse"
    proc = run(["bash", REPO_ROOT / "scripts" / "wheelhouse.sh", "--dest", house, "--requirements", subset,
                "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "--no-fairseq"],
               env=clean_env(PYTHON=sys.executable))
    assert sorted(p.name.split("-")[0].lower() for p in house.iterdir()) == ["setuptools", "six", "tabulate", "wheel"]
    assert "setup_env.sh --offline" in proc.stdout
    venv = tmp_path / "offline-env"
    # no machine pip configuration and an index that does not exist: only the wheelhouse can serve
    offline = clean_env(VENV=str(venv), PYTHON=BASE_PYTHON, PIP_CONFIG_FILE=os.devnull,
                        PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0")
    offline.pop("PIP_FIND_LINKS", None)
    proc = run(["bash", REPO_ROOT / "scripts" / "setup_env.sh", "--offline", house, "--requirements", subset,
                "--no-fairseq"], env=offline)
    assert "offline: installing from" in proc.stdout
    run([venv / "bin" / "python", "-c", "import tabulate, six, labo_fairseq"], cwd="/")


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory):
    """A user's environment, step by step: torch; `pip install` of the wheel alone (its declared
    dependencies); a command that needs fairseq; `labo-install-fairseq`. Returns the venv, the
    environment variables of its shell and {step: what it printed}."""
    root = tmp_path_factory.mktemp("wheel-env")
    venv = root / "env"
    python = venv_with_torch(venv)
    run([python, "-m", "pip", "install", "-q", wheel])
    env = clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{clean_env()['PATH']}", OMP_NUM_THREADS="1")
    steps = {"missing": run([python, "-c", "import importlib.util as u; print([m for m in ('Cython', 'wheel', "
                                          "'fairseq') if u.find_spec(m) is None])"], cwd=root).stdout.strip(),
             "prepare": run([venv / "bin" / "labo-prepare", "multi30k", "--out", root / "data"], env=env, cwd=root,
                            check=False),
             "data made": (root / "data").exists(),
             "install": run([venv / "bin" / "labo-install-fairseq"], env=env, cwd=root)}
    return venv, env, steps


def test_wheel_installs_its_own_patched_fairseq(wheel_env, tmp_path):
    """The wheel alone, in an environment with only torch: the commands that run fairseq stop at once
    and name labo-install-fairseq, which installs its build requirements, downloads the fairseq
    sdist, applies the patch it ships and installs it (the compiled wheel is shared through the
    cache with the environment that `make` built, whose patch is the same bytes). Before:
    labo-prepare tokenised and learned BPE and then failed on "fairseq-preprocess not found", and
    labo-evaluate named scripts/install_fairseq.sh, which the wheel does not ship (and which needed
    cython and wheel)."""
    venv, env, steps = wheel_env
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    assert steps["missing"] == "['Cython', 'wheel', 'fairseq']"  # what install_fairseq.sh needed first
    refused = steps["prepare"]
    assert refused.returncode == 2 and not steps["data made"]
    assert refused.stderr.strip().splitlines() == [
        f"labo-prepare multi30k: error: fairseq 0.12.2 (patched) is not installed for {python}: "
        f"run labo-install-fairseq"]
    proc = steps["install"]
    assert "installing the build requirements" in proc.stdout and "Cython" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[install_fairseq] ok: fairseq 0.12.2"
    assert run([bin_dir / "labo-install-fairseq", "--check"], env=env, cwd=tmp_path).returncode == 0
    # compiled here and kept, or (usually) the wheel that building .venv/ compiled and kept: the same
    # patch, Python, torch and numpy give the same cache entry; installing again compiles nothing
    kept = re.search(r"(?:kept the wheel for other environments|installing the wheel built before for this "
                     r"Python, torch and numpy): (\S+\.whl)", proc.stdout)
    assert kept, proc.stdout
    again = run([bin_dir / "labo-install-fairseq"], env=env, cwd=tmp_path)
    assert f"installing the wheel built before for this Python, torch and numpy: {kept.group(1)}" in again.stdout
    assert "building" not in again.stdout and again.stdout.strip().endswith("ok: fairseq 0.12.2")
    run([python, "-c", "import fairseq.options as o, fairseq.data.data_utils_fast; "
                       "assert o.bf16_implies_tpu"], cwd=tmp_path)


def test_installed_wheel_runs_the_pipeline(wheel_env, toy_data_bin, tmp_path):
    """The wheel's declared dependencies and labo-install-fairseq are all a pipeline needs (triton,
    Transformers and the test tools are extras, not installed here)."""
    venv, env, _ = wheel_env
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    where = run([python, "-c", "import labo_fairseq; print(labo_fairseq.__file__)"], cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)) and "site-packages" in where  # not the checkout
    for command in ("labo-prepare", "labo-evaluate", "labo-longtail", "labo-report", "labo-experiment", "labo-bench"):
        assert "usage:" in run([bin_dir / command, "--help"], env=env, cwd=tmp_path).stdout
    assert "multi30k-cpu" in run([bin_dir / "labo-experiment", "--help"], env=env, cwd=tmp_path).stdout
    recipe = write_recipe(tmp_path / "recipe.toml", toy_data_bin)
    proc = run([bin_dir / "labo-experiment", recipe], env=env, cwd=tmp_path)
    out = tmp_path / "runs" / "wheel"  # the default output is under the working directory
    assert (out / "report" / "REPORT.md").is_file(), proc.stdout[-3000:]
    for run_name in ("ls-a0.1-seed1", "labo-a0.1-tau1.25-seed1"):
        scores = json.loads((out / run_name / "eval" / "test" / "scores.json").read_text())
        assert scores["num_sentences"] == 40
        assert (out / run_name / "eval" / "test" / "longtail.json").is_file()
    command = (out / "labo-a0.1-tau1.25-seed1" / "command.sh").read_text()
    assert f"--user-dir {Path(where).parent}" in command
