"""The console commands (setup.py's entry points). Each runs the same code as the corresponding
script of a source checkout (data-prep/*.sh, scripts/*.sh, scripts/*.py), which are thin wrappers
around `python -m labo_fairseq.cli COMMAND`.

    labo-prepare {iwslt14,wmt14,multi30k} ...   data preparation (labo_fairseq.data_prep)
    labo-evaluate DATA_BIN CHECKPOINT OUT_DIR   translate and score (labo_fairseq.evaluation.evaluate)
    labo-longtail ...                           rare-word accuracy (labo_fairseq.evaluation.longtail)
    labo-report RUN_DIR... --out DIR            comparison report (labo_fairseq.evaluation.report)
    labo-experiment RECIPE ...                  the whole pipeline (labo_fairseq.experiment)
    labo-bench {loss,train,kernels,hf} ...      benchmarks (labo_fairseq.benchmarks)
    labo-install-fairseq [--python PY] ...      the patched fairseq 0.12.2 (labo_fairseq.install)

The commands that run fairseq (labo-prepare, labo-evaluate, labo-experiment, labo-bench train)
first check that the patched fairseq is installed (labo_fairseq.require_fairseq) and otherwise stop
with one line naming labo-install-fairseq, before any work; their --help works without it.

Each function takes argv (default: sys.argv[1:]) and the program name shown in messages, and
returns the exit status.
"""
import importlib
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from labo_fairseq.errors import run_command

DATASETS = ("iwslt14", "wmt14", "multi30k")


def _argv(argv: Optional[Sequence[str]]) -> List[str]:
    return list(sys.argv[1:] if argv is None else argv)


def _asks_for_help(argv: Sequence[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def _fairseq_missing(prog: str) -> int:
    """0 when the patched fairseq is installed; else prints `PROG: error: ...` and returns 2."""
    from labo_fairseq.install import require_fairseq
    return run_command(prog, require_fairseq)


def _subcommand(argv: Optional[Sequence[str]], prog: str, choices: Sequence[str], package: str,
                kind: str, description: str, needs_fairseq: Sequence[str] = ()) -> int:
    """`PROG CHOICE [options]`: runs labo_fairseq.PACKAGE.CHOICE's main(argv, prog="PROG CHOICE");
    the choices in needs_fairseq first check for the patched fairseq (not for --help)."""
    argv = _argv(argv)
    usage = f"usage: {prog} {{{','.join(choices)}}} [options]   ({prog} {kind.upper()} --help for the options)"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{description}", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in choices:
        print(f"{usage}\n{prog}: error: unknown {kind} {argv[0]!r} (choose from {', '.join(choices)})",
              file=sys.stderr)
        return 2
    if argv[0] in needs_fairseq and not _asks_for_help(argv[1:]):
        status = _fairseq_missing(f"{prog} {argv[0]}")
        if status:
            return status
    module = importlib.import_module(f"labo_fairseq.{package}.{argv[0]}")
    return module.main(argv[1:], prog=f"{prog} {argv[0]}") or 0


def prepare(argv: Optional[Sequence[str]] = None, prog: str = "labo-prepare") -> int:
    # fairseq-preprocess makes the binary data: checked before tokenising and learning subwords
    return _subcommand(argv, prog, DATASETS, "data_prep", "dataset",
                       "Prepares a translation benchmark into text and fairseq binary data.",
                       needs_fairseq=DATASETS)


def evaluate(argv: Optional[Sequence[str]] = None, prog: str = "labo-evaluate") -> int:
    if _argv(argv) and not _asks_for_help(_argv(argv)) and _fairseq_missing(prog):
        return 2
    from labo_fairseq.evaluation import evaluate as module
    return run_command(prog, lambda: module.main(_argv(argv), prog=prog),
                       interrupted="fairseq-generate was stopped; OUT_DIR holds no results, run it again")


def longtail(argv: Optional[Sequence[str]] = None, prog: str = "labo-longtail") -> int:
    from labo_fairseq.evaluation import longtail as module
    return run_command(prog, lambda: module.main(_argv(argv), prog=prog))


def report(argv: Optional[Sequence[str]] = None, prog: str = "labo-report") -> int:
    from labo_fairseq.evaluation import report as module
    return run_command(prog, lambda: module.main(_argv(argv), prog=prog))


def packaged_recipes() -> dict:
    """{name: path} of the recipes that ship with the package: labo_fairseq/recipes/ when installed
    from a wheel, the checkout's recipes/ otherwise (an editable install maps nothing)."""
    package = Path(__file__).resolve().parent.parent
    for folder in (package / "recipes", package.parent / "recipes"):
        if folder.is_dir():
            return {path.stem: path for path in sorted(folder.glob("*.toml"))}
    return {}


def resolve_recipe(name: str) -> str:
    """A recipe file as given, or a packaged recipe named without its directory (`multi30k-cpu`,
    `multi30k-cpu.toml`), so that an installed labo-experiment needs no checkout."""
    if Path(name).exists():
        return name
    recipes = packaged_recipes()
    key = name[:-len(".toml")] if name.endswith(".toml") else name
    if Path(key).name == key and key in recipes:
        return str(recipes[key])
    return name  # the pipeline reports the missing file


def experiment(argv: Optional[Sequence[str]] = None, prog: str = "labo-experiment") -> int:
    from labo_fairseq import experiment as module
    from labo_fairseq.experiment.recipe import SLURM_RULES
    argv = _argv(argv)
    takes_value = {"--out", "--data-dir", "--jobs", "--progress", "--launcher",
                   *(f"--slurm-{key.replace('_', '-')}" for key in SLURM_RULES)}
    recipe = None
    for i, arg in enumerate(argv):
        if not arg.startswith("-") and (i == 0 or argv[i - 1] not in takes_value):
            argv[i] = recipe = resolve_recipe(arg)
            break
    if _asks_for_help(argv):
        names = ", ".join(sorted(packaged_recipes()))
        return _with_epilog(lambda: module.main(argv, prog=prog), f"\nPackaged recipes ({prog} NAME): {names}")
    # a usage error (no recipe) is argparse's to report; a run, --dry-run included, needs fairseq
    if recipe is not None and _fairseq_missing(prog):
        return 2
    return module.main(argv, prog=prog)


def _with_epilog(show_help, epilog: str) -> int:
    """Runs show_help() (an argparse --help, which exits 0), then prints epilog after its text."""
    try:
        status = show_help()
    except SystemExit as done:
        status = done.code
    if not status:
        print(epilog)
    return status or 0


BENCHMARKS = ("loss", "train", "kernels", "hf")


def bench(argv: Optional[Sequence[str]] = None, prog: str = "labo-bench") -> int:
    return run_command(prog, lambda: _subcommand(argv, prog, BENCHMARKS, "benchmarks", "benchmark",
                       "loss: the loss op against fairseq's label smoothing (and peer kernels on CUDA), "
                       "--model for the roofline model; kernels: offline GPU compile report of the Triton "
                       "kernels (registers, spills, SASS per element; no GPU needed); "
                       "train: fairseq-train words/s and peak memory, LS vs LABO; "
                       "hf: a Transformers Marian training step, label_smoothing_factor vs LABO (fused, unfused).",
                       needs_fairseq=("train",)))


def install_fairseq(argv: Optional[Sequence[str]] = None, prog: str = "labo-install-fairseq") -> int:
    from labo_fairseq import install
    return install.main(_argv(argv), prog=prog)


COMMANDS = {"prepare": prepare, "evaluate": evaluate, "longtail": longtail, "report": report,
            "experiment": experiment, "bench": bench, "install-fairseq": install_fairseq}
