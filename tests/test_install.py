"""Installing from a wheel: the patched fairseq is installed by a command the wheel ships
(labo-install-fairseq), every command that runs fairseq says so before doing any work when it is
missing or stock, and setup_env.sh / the commands print nothing alarming or mute."""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from labo_fairseq import install
from tests.toy import BIN_DIR, REPO_ROOT, run_cli

# installs into, builds from or checks the checkout and its .venv/: one xdist worker runs these
# modules one after another (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("installs")

STOCK_OPTIONS = "def get_parser(desc, default_task='translation'):\n    pass\n"
PATCHED_OPTIONS = STOCK_OPTIONS + "\n\ndef bf16_implies_tpu(args) -> bool:\n    return False\n"


def fake_fairseq(root: Path, options: str = STOCK_OPTIONS, version: str = "0.12.2") -> Path:
    """A directory that, first on sys.path, looks like an installed fairseq (package and metadata)."""
    package = root / "fairseq"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (package / "options.py").write_text(options)
    info = root / f"fairseq-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fairseq\nVersion: {version}\n")
    return root


def problem_with(path_first) -> str:
    """fairseq_problem() in a fresh interpreter whose sys.path is path_first + the standard library."""
    code = ("import sys; sys.path = [p for p in sys.argv[1:] if p] + [p for p in sys.path[1:] "
            "if 'site-packages' not in p]; from labo_fairseq.install import fairseq_problem; "
            "print(fairseq_problem() or 'ok')")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(path_first or ""), str(REPO_ROOT)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_fairseq_check_tells_missing_stock_other_version_and_patched(tmp_path):
    assert "fairseq 0.12.2 (patched) is not installed" in problem_with(None)
    assert "is a stock 0.12.2, without the project's patch" in problem_with(fake_fairseq(tmp_path / "stock"))
    assert "fairseq 0.13.0 is installed" in problem_with(fake_fairseq(tmp_path / "new", PATCHED_OPTIONS, "0.13.0"))
    assert problem_with(fake_fairseq(tmp_path / "patched", PATCHED_OPTIONS)) == "ok"
    assert install.fairseq_problem() is None  # the test environment's own fairseq is the patched one


def test_check_imports_neither_fairseq_nor_torch():
    code = ("import sys, labo_fairseq; labo_fairseq.require_fairseq(); "
            "print('fairseq' in sys.modules, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["False", "False"], proc.stderr


def stock_env(tmp_path):
    """PYTHONPATH that puts a stock (unpatched) fairseq 0.12.2 before the environment's own."""
    return {"PYTHONPATH": str(fake_fairseq(tmp_path / "stock-fairseq"))}


@pytest.mark.parametrize("command", [
    ["labo-prepare", "multi30k", "--raw-dir", "{tmp}/raw", "--out", "{tmp}/out"],
    ["labo-evaluate", "{tmp}/data-bin", "{tmp}/checkpoint.pt", "{tmp}/out"],
    ["labo-experiment", "multi30k-cpu", "--dry-run", "--out", "{tmp}/out"],
    ["labo-experiment", "multi30k-cpu", "--out", "{tmp}/out"],
    ["labo-bench", "train", "--out", "{tmp}/out"],
], ids=["prepare", "evaluate", "experiment-dry-run", "experiment", "bench-train"])
def test_commands_that_run_fairseq_refuse_a_stock_one_before_any_work(command, tmp_path):
    """Before: labo-prepare tokenised and learned BPE, then failed on fairseq-preprocess;
    labo-evaluate pointed at a script the wheel does not ship."""
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    proc = run_cli(argv, check=False, cwd=tmp_path, env=stock_env(tmp_path))
    prog = " ".join(argv[:2]) if argv[0] in ("labo-prepare", "labo-bench") else argv[0]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"{prog}: error: the fairseq in {tmp_path / 'stock-fairseq' / 'fairseq'} is a stock 0.12.2, without the "
        f"project's patch: run labo-install-fairseq"], proc.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stock-fairseq"]  # nothing written


@pytest.mark.parametrize("command", [["labo-prepare", "multi30k", "--help"], ["labo-evaluate", "--help"],
                                     ["labo-experiment", "--help"], ["labo-bench", "train", "--help"],
                                     ["labo-longtail", "--help"], ["labo-report", "--help"]])
def test_help_works_without_the_patched_fairseq(command, tmp_path):
    proc = run_cli(command, cwd=tmp_path, env=stock_env(tmp_path))
    assert proc.stdout.startswith("usage:") and "error" not in proc.stderr


def test_experiment_help_prints_usage_first_and_the_recipes_last():
    """Before: the packaged-recipes line came before `usage:`."""
    proc = run_cli(["labo-experiment", "--help"])
    assert proc.stdout.startswith("usage: labo-experiment")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("Packaged recipes (labo-experiment NAME): ") and "multi30k-cpu" in last


def test_install_command_is_installed_and_checks(tmp_path):
    assert (BIN_DIR / "labo-install-fairseq").exists()
    proc = run_cli(["labo-install-fairseq", "--help"])
    assert proc.stdout.startswith("usage: labo-install-fairseq") and "--sdist" in proc.stdout
    ok = run_cli(["labo-install-fairseq", "--check"])
    assert ok.stdout.strip() == "labo-install-fairseq: fairseq 0.12.2 (patched) is installed"
    stock = run_cli(["labo-install-fairseq", "--check"], check=False, env=stock_env(tmp_path))
    assert stock.returncode == 1 and "stock 0.12.2" in stock.stdout
    missing = run_cli(["labo-install-fairseq", "--sdist", tmp_path / "nope.tar.gz", "--no-build-requirements"],
                      check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"labo-install-fairseq: error: --sdist {tmp_path / 'nope.tar.gz'} does not exist"]


def test_install_script_is_a_wrapper_of_the_command(tmp_path):
    proc = subprocess.run(["bash", REPO_ROOT / "scripts" / "install_fairseq.sh", "--python", sys.executable,
                           "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "(patched) is installed" in proc.stdout, proc.stderr
    # an interpreter without labo_fairseq installed: the checkout's runs it
    proc = subprocess.run(["bash", REPO_ROOT / "scripts" / "install_fairseq.sh", "--python",
                           getattr(sys, "_base_executable", sys.executable), "--check"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1 and "not installed" in proc.stdout, proc.stderr


FACTS = {"python": "cpython-311", "platform": "linux-x86_64", "torch": "2.13.0+cpu", "numpy": "1.26.4",
         "cuda_toolkit": True, "cuda_arch": [[9, 0]]}


def test_wheel_cache_key_names_everything_the_build_depends_on():
    key = install.cache_key(FACTS, b"patch", None)
    assert key == install.cache_key(dict(reversed(FACTS.items())), b"patch", None)  # order does not matter
    others = [install.cache_key({**FACTS, fact: value}, b"patch", None)
              for fact, value in [("python", "cpython-312"), ("platform", "linux-aarch64"), ("torch", "2.13.0+cu128"),
                                  ("numpy", "1.26.3"), ("cuda_toolkit", False), ("cuda_arch", [[8, 0]])]]
    others += [install.cache_key(FACTS, b"another patch", None), install.cache_key(FACTS, b"patch", b"an sdist")]
    assert len({key, *others}) == 1 + len(others)


def test_build_facts_of_this_environment_and_the_default_cache(monkeypatch, tmp_path):
    import numpy
    import torch

    facts = install.build_facts(sys.executable)
    assert (facts["torch"], facts["numpy"]) == (torch.__version__, numpy.__version__)
    assert facts["python"] == sys.implementation.cache_tag and isinstance(facts["cuda_toolkit"], bool)
    monkeypatch.setenv("LABO_FAIRSEQ_CACHE", str(tmp_path / "c"))
    assert install.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LABO_FAIRSEQ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert install.default_cache_dir() == tmp_path / "x" / "labo-fairseq"


def test_a_kept_wheel_is_found_and_an_unwritable_cache_only_notes_it(tmp_path, capsys):
    wheel = tmp_path / "fairseq-0.12.2-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"wheel bytes")
    entry = tmp_path / "cache" / "key"
    assert install.cached_wheel(entry) is None
    install.keep_wheel(wheel, entry)
    assert install.cached_wheel(entry) == entry / wheel.name and (entry / wheel.name).read_bytes() == b"wheel bytes"
    assert [p.name for p in entry.iterdir()] == [wheel.name]  # nothing left aside
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    install.keep_wheel(wheel, blocked / "key")  # the build still installs; only the cache is skipped
    assert "note: the wheel was not kept in the cache" in capsys.readouterr().out


def test_patch_ships_with_the_package():
    assert install.patch_file() == REPO_ROOT / "patches" / install.PATCH_NAME  # a checkout's
    hunks = install.parse_patch(install.patch_file().read_text())
    assert "fairseq/options.py" in [path for path, _ in hunks]
    name, marker = install.PATCH_MARKER
    added = "\n".join(line for path, file_hunks in hunks if path == f"fairseq/{name}"
                      for _, _, new in file_hunks for line in new)
    assert marker in added  # what the check looks for is what the patch adds


def test_patch_applier_matches_patch_on_a_shifted_file(tmp_path):
    original = [f"line {i}\n" for i in range(1, 40)]
    changed = list(original)
    changed[4] = "line five\n"
    changed.insert(20, "inserted\n")
    del changed[30]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f.py").write_text("".join(original))
    (tmp_path / "b" / "f.py").write_text("".join(changed))
    diff = subprocess.run(["git", "diff", "--no-index", "--no-prefix", "a/f.py", "b/f.py"], cwd=tmp_path,
                          capture_output=True, text=True).stdout
    patch = tmp_path / "x.patch"
    patch.write_text(diff)
    tree = tmp_path / "tree"
    tree.mkdir()
    # three lines more at the top than the diff was made against: every hunk is found shifted
    (tree / "f.py").write_text("extra\n" * 3 + "".join(original))
    assert install.apply_patch(patch, tree) == ["f.py"]
    assert (tree / "f.py").read_text() == "extra\n" * 3 + "".join(changed)
    with pytest.raises(install.InstallError, match="already carries"):
        install.apply_patch(patch, tree)


def fairseq_sdist(tmp_path) -> Path:
    """The fairseq 0.12.2 sdist from pip's index, find-links or cache (skips where none serves it)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                           "--no-build-isolation", "-d", tmp_path, "fairseq==0.12.2"],
                          capture_output=True, text=True, timeout=600)
    found = list(tmp_path.glob("fairseq-0.12.2.tar.gz"))
    if proc.returncode != 0 or not found:
        pytest.skip(f"no fairseq 0.12.2 sdist available: {proc.stderr.strip()[-300:]}")
    return found[0]


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs the patch program to compare with")
def test_patch_applies_to_the_sdist_exactly_as_patch_does(tmp_path):
    sdist = fairseq_sdist(tmp_path)
    ours = install.unpack(sdist, tmp_path / "ours")
    theirs = install.unpack(sdist, tmp_path / "theirs")
    install.apply_patch(install.patch_file(), ours)
    with open(install.patch_file()) as patch:
        subprocess.run(["patch", "-d", theirs, "-p1", "--quiet", "--forward"], stdin=patch, check=True)
    diff = subprocess.run(["diff", "-r", theirs, ours], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout[-3000:]


def fake_installed_fairseq_venv(path: Path) -> Path:
    """A venv holding the metadata of fairseq 0.12.2 (its own pins: hydra-core<1.1, omegaconf<2.1)."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", path], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    info = Path(site) / "fairseq-0.12.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fairseq\nVersion: 0.12.2\n"
                                   "Requires-Dist: hydra-core<1.1,>=1.0.7\nRequires-Dist: omegaconf<2.1\n")
    (info / "RECORD").write_text("")
    return python


def test_setup_env_explains_fairseqs_unmet_pins_in_one_line_and_says_what_it_installs(tmp_path):
    """Before: a re-run printed pip's "ERROR: ... fairseq 0.12.2 requires hydra-core<1.1" block,
    and nothing at all for the minutes pip took."""
    venv = tmp_path / "env"
    fake_installed_fairseq_venv(venv)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("hydra-core==1.3.2\nomegaconf==2.3.0\nantlr4-python3-runtime==4.9.3\nPyYAML==6.0.3\n"
                            "packaging==26.3\nsetuptools==80.9.0\nwheel==0.45.1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["VENV"] = str(venv)
    proc = subprocess.run(["bash", REPO_ROOT / "scripts" / "setup_env.sh", "--requirements", requirements,
                           "--no-fairseq"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR" not in proc.stderr and "requires hydra-core" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line for line in lines if "note:" in line] == [
        "[setup_env] note: pip reports fairseq 0.12.2's own pins (hydra-core<1.1, omegaconf<2.1, torchaudio) "
        "as unmet; that is intended (it runs with the versions pinned here)"]
    assert any(line.startswith(f"[setup_env] installing the 7 pinned packages of {requirements} (hydra-core==1.3.2")
               for line in lines), proc.stdout
    assert "[setup_env] installing labo_fairseq (editable, --no-deps) and its console commands" in lines


def test_fairseqs_known_harmless_warnings_are_filtered_and_no_others():
    """Before: every CPU training printed torch's pin_memory and key_padding_mask UserWarnings."""
    import labo_fairseq

    def shown(message, module):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # not pytest's own filters
            labo_fairseq.quiet_known_warnings()
            warnings.warn_explicit(message, UserWarning, f"{module.replace('.', '/')}.py", 1, module=module,
                                   registry={})
        return len(caught) == 1

    pin = "'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used."
    mask = "Support for mismatched key_padding_mask and attn_mask is deprecated. Use same type for both instead."
    assert not shown(pin, "torch.utils.data.dataloader")
    assert not shown(mask, "torch.nn.functional")
    assert shown(pin, "some.other.module") and shown(mask, "some.other.module")
    assert shown("'pin_memory_device' is deprecated", "torch.utils.data.dataloader")
    assert shown("Support for mismatched attn_mask and key_padding_mask", "torch.nn.functional")


def test_real_torch_warnings_are_filtered_in_a_process_that_imports_the_plugin():
    code = """
import sys, warnings
warnings.simplefilter("default")
if sys.argv[1] == "plugin":
    import labo_fairseq
import torch
from torch.utils.data import DataLoader
list(DataLoader(list(range(4)), batch_size=2, pin_memory=True))
attention = torch.nn.MultiheadAttention(4, 1, batch_first=True)
x = torch.zeros(1, 3, 4)
causal = torch.triu(torch.full((3, 3), float("-inf")), 1)
torch.nn.functional.multi_head_attention_forward(
    x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), 4, 1, attention.in_proj_weight,
    attention.in_proj_bias, None, None, False, 0.0, attention.out_proj.weight, attention.out_proj.bias,
    key_padding_mask=torch.zeros(1, 3, dtype=torch.bool), attn_mask=causal)
"""
    outputs = {}
    for mode in ("plain", "plugin"):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs[mode] = proc.stderr
    import torch
    if not torch.accelerator.is_available():
        assert "pin_memory" in outputs["plain"]
    assert "key_padding_mask" in outputs["plain"]
    assert "pin_memory" not in outputs["plugin"] and "key_padding_mask" not in outputs["plugin"], outputs["plugin"]
