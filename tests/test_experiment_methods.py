"""The pipeline's `ols` and `sam` methods: expansion to fairseq flags, run names, recipe checks,
the shipped GPU recipes' dry runs, and one tiny end-to-end run of both through the report."""
import json
import re

import pytest

from labo_fairseq.experiment import RecipeError, expand_methods, load_recipe, plan_runs, train_command
from tests.test_experiment import run_experiment, write_recipe
from tests.toy import REPO_ROOT, run_cli

OLS_AND_SAM = """
[[methods]]
kind = "ols"
ols_weight = 0.5
[[methods]]
kind = "sam"
sam_rho = 0.05
"""


def flag_value(command, flag):
    return command[command.index(flag) + 1] if flag in command else None


def test_ols_and_sam_expand_to_their_criterion_and_task_flags():
    methods = expand_methods([
        {"kind": "ols", "ols_weight": [0.3, 0.5]},
        {"kind": "ols", "ols_topk": 64, "label_smoothing": 0.2},
        {"kind": "sam", "sam_rho": [0.05, 0.1]},
        {"kind": "sam", "criterion": "labo", "tau": [1.25, 2.0]},
        {"kind": "sam", "criterion": "ols", "sam_adaptive": True, "sam_rho": 0.5, "ols_weight": 0.3},
    ], "r")
    by_name = {m.name: m for m in methods}
    assert list(by_name) == ["ols-a0.1-w0.3", "ols-a0.1-w0.5", "ols-a0.2-w0.5-k64", "sam-ls-a0.1-r0.05",
                             "sam-ls-a0.1-r0.1", "sam-labo-a0.1-tau1.25-r0.05", "sam-labo-a0.1-tau2-r0.05",
                             "asam-ols-a0.1-w0.3-r0.5"]
    ols = by_name["ols-a0.2-w0.5-k64"]
    assert ols.label == "OLS α=0.2 w=0.5 top-64"
    assert ols.params == {"label_smoothing": 0.2, "ols_weight": 0.5, "ols_topk": 64}
    args = ols.criterion_args
    assert args[0] == "--user-dir" and flag_value(args, "--criterion") == "label_smoothed_ols"
    assert (flag_value(args, "--ols-weight"), flag_value(args, "--ols-topk"), flag_value(args, "--label-smoothing")) \
        == ("0.5", "64", "0.2")
    assert "--ols-topk" not in by_name["ols-a0.1-w0.3"].criterion_args  # the criterion's own default

    sam = by_name["sam-ls-a0.1-r0.1"]
    assert sam.label == "SAM + LS α=0.1 (ρ 0.1)" and sam.fp32_only and not sam.own_optimizer
    assert sam.params == {"label_smoothing": 0.1, "criterion": "ls", "sam_rho": 0.1, "sam_adaptive": False}
    assert flag_value(sam.criterion_args, "--task") == "translation_sam"
    assert flag_value(sam.criterion_args, "--sam-rho") == "0.1" and "--sam-adaptive" not in sam.criterion_args
    assert flag_value(sam.criterion_args, "--criterion") == "label_smoothed_cross_entropy"
    labo = by_name["sam-labo-a0.1-tau2-r0.05"].criterion_args
    assert flag_value(labo, "--criterion") == "label_smoothed_labo" and flag_value(labo, "--labo-tau") == "2"
    assert labo.count("--user-dir") == 1
    asam = by_name["asam-ols-a0.1-w0.3-r0.5"]
    assert asam.label == "ASAM + OLS α=0.1 w=0.3 (ρ 0.5)" and "--sam-adaptive" in asam.criterion_args
    assert flag_value(asam.criterion_args, "--ols-weight") == "0.3" and asam.params["sam_adaptive"] is True


def test_sam_drops_the_recipes_precision_flags_and_keeps_its_optimizer(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndata_bin = "d"\ntrain_target = "t"\n'
                      '[train]\nargs = ["--optimizer", "adam", "--lr", "7e-4", "--fp16", "--max-epoch", "3"]\n'
                      '[[methods]]\nkind = "sam"\n[[methods]]\nkind = "ols"\n')
    loaded = load_recipe(recipe)
    sam, ols = (train_command(loaded, run) for run in plan_runs(loaded, tmp_path / "out"))
    assert "--fp16" not in sam and flag_value(sam, "--optimizer") == "adam" and flag_value(sam, "--lr") == "7e-4"
    assert "--fp16" in ols and flag_value(sam, "--max-epoch") == "3"


@pytest.mark.parametrize("method,message", [
    ('kind = "ols"\nols_weight = 2', r"methods\[0\]\.ols_weight must be a number in \[0, 1\], got 2$"),
    ('kind = "ols"\nols_weight = [0.5, -0.1]', r"methods\[0\]\.ols_weight must be a number in \[0, 1\], got -0\.1$"),
    ('kind = "ols"\nols_topk = 2.5', r"methods\[0\]\.ols_topk must be an integer >= 0 \(0: dense S\), got 2\.5$"),
    ('kind = "sam"\nsam_rho = -1', r"methods\[0\]\.sam_rho must be a finite number > 0, got -1$"),
    ('kind = "sam"\nsam_rho = "inf"', r"methods\[0\]\.sam_rho must be a finite number > 0, got 'inf'$"),
    ('kind = "sam"\nsam_adaptive = "yes"', r"methods\[0\]\.sam_adaptive must be true or false, got 'yes'$"),
    ('kind = "sam"\ncriterion = "ce"', r"methods\[0\]\.criterion must be one of ls, labo, ols, got 'ce'$"),
    ('kind = "ls"\nsam_rho = 0.05', r"methods\[0\] \(ls\) does not take sam_rho$"),
    ('kind = "labo"\nols_weight = 0.5', r"methods\[0\] \(labo\) does not take ols_weight$"),
])
def test_bad_ols_and_sam_values_are_refused_at_check_time(tmp_path, method, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\ndata_bin = "d"\ntrain_target = "t"\n[[methods]]\n{method}\n')
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_bad_ols_weight_is_one_line_from_the_command(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndata_bin = "d"\ntrain_target = "t"\n[[methods]]\nkind = "ols"\nols_weight = 2\n')
    proc = run_cli(["python", REPO_ROOT / "scripts" / "run_experiment.py", recipe, "--dry-run"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"run_experiment.py: error: {recipe}: methods[0].ols_weight must be a number in [0, 1], got 2"]


def dry_run(recipe_name, cwd):
    """labo-experiment RECIPE --dry-run, from a directory without data: (runs, {run: command})."""
    proc = run_cli(["python", REPO_ROOT / "scripts" / "run_experiment.py", REPO_ROOT / "recipes" / f"{recipe_name}.toml",
                    "--dry-run", "--data-dir", cwd / "raw"], cwd=cwd)
    table = proc.stdout.split("\n\n")[1].splitlines()[2:]
    commands = dict(re.findall(r"^# (\S+)\n(.+)$", proc.stdout, re.M))
    return proc.stdout, [line.split()[0] for line in table], commands


def test_gpu_recipes_dry_run_with_ols_and_sam(tmp_path):
    outputs = {name: dry_run(name, tmp_path) for name in ("multi30k-gpu", "multi30k-noise-gpu", "multi30k-gpu-quick")}
    for name, (text, runs, commands) in outputs.items():
        assert f"-> runs/{name}" in text and "train, then evaluate" in text and set(runs) == set(commands)
        assert {"ols-a0.1-w0.5-seed1", "sam-ls-a0.1-r0.05-seed3", "ls-a0.1-seed2"} <= set(runs)
        ols, sam = commands["ols-a0.1-w0.5-seed1"], commands["sam-ls-a0.1-r0.05-seed1"]
        assert "--criterion label_smoothed_ols --label-smoothing 0.1 --ols-weight 0.5" in ols and "--fp16" in ols
        assert "--task translation_sam --sam-rho 0.05" in sam and "--fp16" not in sam
        assert "label_smoothed_cross_entropy" in sam
    text, runs, _ = outputs["multi30k-gpu"]
    assert len(runs) == 39 and "prepare data/data-bin/multi30k.de-en" in text
    # the noisy data has its own directories: the clean data-bin is never written by this recipe
    text, runs, commands = outputs["multi30k-noise-gpu"]
    assert len(runs) == 15 and {r.rsplit("-seed", 1)[0] for r in runs} == {
        "ls-a0.1", "labo-a0.1-tau1.25", "ivon-ce-lr1", "ols-a0.1-w0.5", "sam-ls-a0.1-r0.05"}
    assert "--out data/noise20 --test-sets all --target-noise 0.2 --target-noise-mode by-class" in text
    assert all(c.split()[1] == "data/noise20/data-bin/multi30k.de-en" for c in commands.values())
    noise = load_recipe(REPO_ROOT / "recipes" / "multi30k-noise-gpu.toml", data_dir="/raw")
    assert noise.subsets == ["all"] and noise.train_target.name == "train.clean.en"
    # the quick recipe: six methods x three seeds, SAM's longer runs first, every test set
    text, runs, commands = outputs["multi30k-gpu-quick"]
    assert len(runs) == 18 and runs[0].startswith("sam-")
    assert {r.rsplit("-seed", 1)[0] for r in runs} == {
        "sam-ls-a0.1-r0.05", "ls-a0.1", "labo-a0.1-tau1.25", "labo-a0.1-tau2", "ivon-ce-lr1", "ols-a0.1-w0.5"}
    assert "every test split of the prepared data-bin" in text
    assert all("--max-epoch 6" in c for c in commands.values())


def test_ols_and_sam_run_end_to_end_into_the_report(toy_data_bin, tmp_path):
    # 10 updates: epoch 2 starts at update 9, so OLS rebuilds S once from epoch 1's statistics
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, OLS_AND_SAM, max_update=10)
    out = tmp_path / "exp"
    run_experiment(recipe, out, jobs=2)
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["runs"] == {"ols-a0.1-w0.5-seed1": "done", "sam-ls-a0.1-r0.05-seed1": "done"}

    ols = json.loads((out / "ols-a0.1-w0.5-seed1" / "run.json").read_text())
    sam = json.loads((out / "sam-ls-a0.1-r0.05-seed1" / "run.json").read_text())
    assert (ols["method"], ols["label"], ols["ols_weight"], ols["label_smoothing"]) == ("ols", "OLS α=0.1 w=0.5", 0.5, 0.1)
    assert (sam["method"], sam["label"], sam["sam_rho"], sam["criterion"], sam["sam_adaptive"]) == \
        ("sam", "SAM + LS α=0.1 (ρ 0.05)", 0.05, "ls", False)
    assert flag_value(ols["train_command"], "--criterion") == "label_smoothed_ols"
    assert flag_value(ols["train_command"], "--ols-weight") == "0.5"
    assert flag_value(sam["train_command"], "--task") == "translation_sam"
    assert flag_value(sam["train_command"], "--sam-rho") == "0.05"
    # what each trained with shows in its log: OLS's statistics, SAM's sharpness
    ols_log = (out / "ols-a0.1-w0.5-seed1" / "train.log").read_text()
    sam_log = (out / "sam-ls-a0.1-r0.05-seed1" / "train.log").read_text()
    assert "ols_row_entropy" in ols_log and "num_updates 10" in ols_log
    assert "sam_sharpness" in sam_log and "num_updates 10" in sam_log

    report = json.loads((out / "report" / "report.json").read_text())
    methods = {m["label"]: m for m in report["methods"]}
    assert methods["OLS α=0.1 w=0.5"]["method"] == "ols"
    assert methods["OLS α=0.1 w=0.5"]["hyperparameters"] == {"label_smoothing": 0.1, "ols_weight": 0.5}
    assert methods["SAM + LS α=0.1 (ρ 0.05)"]["hyperparameters"] == {"criterion": "ls", "label_smoothing": 0.1,
                                                                     "sam_rho": 0.05}
    markdown = (out / "report" / "REPORT.md").read_text()
    assert re.search(r"\| OLS α=0\.1 w=0\.5 +\| OLS +\| α 0\.1, w 0\.5 +\| 1 ", markdown)
    assert re.search(r"\| SAM \+ LS α=0\.1 \(ρ 0\.05\) +\| SAM +\| on LS, α 0\.1, ρ 0\.05 +\| 1 ", markdown)
