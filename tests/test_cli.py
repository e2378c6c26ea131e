"""The console commands: each answers --help, bad input is a one-line error, the older flag
spellings still work, outputs default to the working directory, packaged recipes are found by
name, and progress bars stay off when nobody watches a terminal."""
import json
from pathlib import Path

import pytest

from labo_fairseq import cli
from labo_fairseq.data_prep import common, iwslt14, multi30k, wmt14
from labo_fairseq.evaluation import evaluate
from tests.toy import BIN_DIR, REPO_ROOT, run_cli

# one xdist worker runs the modules that share the toy checkpoint and evaluation (session
# fixtures), so that they are built once (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("toy-checkpoint")

COMMANDS = ["labo-prepare", "labo-evaluate", "labo-longtail", "labo-report", "labo-experiment", "labo-bench",
            "labo-install-fairseq"]


@pytest.mark.parametrize("command", COMMANDS)
def test_console_command_help(command):
    assert (BIN_DIR / command).exists(), f"{command} is not installed in {BIN_DIR}"
    proc = run_cli([command, "--help"])
    assert proc.stdout.count("usage:") == 1 and command in proc.stdout


@pytest.mark.parametrize("dataset", cli.DATASETS)
def test_prepare_dataset_help(dataset):
    proc = run_cli(["labo-prepare", dataset, "--help"])
    assert proc.stdout.startswith(f"usage: labo-prepare {dataset} ")
    assert "--out" in proc.stdout and "--vocab" in proc.stdout and "--raw-dir" in proc.stdout


def test_prepare_unknown_dataset_is_one_line_error():
    proc = run_cli(["labo-prepare", "europarl"], check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == ["labo-prepare: error: unknown dataset 'europarl' (choose from iwslt14, wmt14, multi30k)"]


@pytest.mark.parametrize("benchmark", cli.BENCHMARKS)
def test_bench_subcommands(benchmark):
    proc = run_cli(["labo-bench", benchmark, "--help"])
    assert proc.stdout.startswith(f"usage: labo-bench {benchmark} ")
    bad = run_cli(["labo-bench", "speed"], check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "labo-bench: error: unknown benchmark 'speed'")


def test_prepare_errors_name_the_command(tmp_path):
    proc = run_cli(["labo-prepare", "iwslt14", "--raw-dir", tmp_path, "--out", tmp_path / "out"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"labo-prepare iwslt14: error: {tmp_path / 'de-en.tgz'}: file not found"]


def test_old_flag_spellings_are_aliases(tmp_path):
    assert iwslt14.parse_args(["--bpe-tokens", "50"]).bpe_tokens == iwslt14.parse_args(["--vocab", "50"]).bpe_tokens == 50
    assert iwslt14.parse_args(["--raw-dir", str(tmp_path)]).archive == tmp_path / "de-en.tgz"
    assert iwslt14.parse_args(["--archive", str(tmp_path / "x.tgz")]).archive == tmp_path / "x.tgz"
    with pytest.raises(SystemExit):
        iwslt14.parse_args(["--raw-dir", str(tmp_path), "--archive", str(tmp_path / "x.tgz")])
    parser = evaluate.build_parser("labo-evaluate")
    for flag, value, expected in (("--subwords", "bpe", "bpe"), ("--post-process", "subword_nmt", "subword_nmt"),
                                  ("--post-process", "spm", "spm"), ("--subwords", "sentencepiece", "sentencepiece")):
        assert parser.parse_args(["d", "c", "o", flag, value]).subwords == expected


def test_outputs_default_to_the_working_directory():
    for module in (iwslt14, multi30k, wmt14):
        assert module.parse_args([]).out == Path("data")


def test_packaged_recipes_are_found_by_name(tmp_path):
    recipes = cli.packaged_recipes()
    assert {"multi30k-cpu", "multi30k-gpu", "iwslt14-de-en", "wmt14-en-de"} <= set(recipes)
    assert Path(cli.resolve_recipe("multi30k-cpu")) == REPO_ROOT / "recipes" / "multi30k-cpu.toml"
    assert Path(cli.resolve_recipe("multi30k-cpu.toml")) == REPO_ROOT / "recipes" / "multi30k-cpu.toml"
    own = tmp_path / "multi30k-cpu.toml"
    own.write_text("")
    assert cli.resolve_recipe(str(own)) == str(own)  # a file the user names wins
    assert cli.resolve_recipe("no-such-recipe") == "no-such-recipe"


def test_progress_is_quiet_when_stderr_is_not_a_terminal(capsys):
    with common.progress("x") as bar:
        assert bar.disable
    assert list(common.map_lines(lambda block: [s.upper() for s in block], iter(["a", "b"]), 1, desc="t")) == ["A", "B"]
    assert capsys.readouterr().err == ""


def test_evaluate_command_on_the_toy_model(toy_data_bin, toy_ls_checkpoint, tmp_path):
    assert evaluate.sentence_count(toy_data_bin, "test", "src", "tgt") == 40
    out = tmp_path / "eval"
    proc = run_cli(["labo-evaluate", toy_data_bin, toy_ls_checkpoint, out, "--cpu", "--beam", "2",
                    "--subwords", "none"])
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_sentences"] == 40 and scores["post_process"] == "none"
    assert "translating" in proc.stderr and "\r" not in proc.stderr  # no progress bar in a pipe
    proc = run_cli(["labo-evaluate", toy_data_bin, tmp_path / "missing.pt", out], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"labo-evaluate: error: checkpoint {tmp_path / 'missing.pt'} does not exist"]
