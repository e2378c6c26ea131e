"""scripts/run_experiment.py on a tiny recipe: training, evaluation, report, resume, failures."""
import json
import os
import signal
import subprocess
import time

import pytest
from PIL import Image

from labo_fairseq.experiment import RecipeError, expand_methods, load_recipe
from tests.toy import BIN_DIR, REPO_ROOT, TINY_TRANSFORMER_ARGS, run_cli

def tiny_train_args(max_update, save_every):
    """The tiny transformer's fairseq-train flags as a TOML array."""
    return json.dumps([*TINY_TRANSFORMER_ARGS, "--cpu", "--optimizer", "adam", "--lr", "1e-3",
                       "--max-tokens", "500", "--max-update", str(max_update),
                       "--save-interval-updates", str(save_every),
                       "--log-format", "simple", "--log-interval", "5", "--no-progress-bar"])


def write_recipe(path, data_bin, methods, max_update=12, save_every=0, average_last=0):
    path.write_text(f"""
name = "tiny"
seeds = [1]
[data]
data_bin = "{data_bin}"
train_target = "{data_bin.parent / 'text' / 'train.tgt'}"
subsets = ["test"]
[train]
args = {tiny_train_args(max_update, save_every)}
average_last = {average_last}
[evaluate]
beam = 2
batch_size = 64
cpu = true
longtail_level = "token"
{methods}
""")
    return path


LS_AND_LABO = """
[[methods]]
kind = "ls"
[[methods]]
kind = "labo"
tau = 1.25
"""


def run_experiment(recipe, out, check=True):
    return run_cli(["python", REPO_ROOT / "scripts" / "run_experiment.py", recipe, "--out", out], check=check,
                   timeout=900)


def test_methods_expand_to_fairseq_criterion_flags():
    methods = expand_methods([{"kind": "ls"}, {"kind": "labo", "tau": [1.15, 1.25]},
                              {"kind": "tsla", "tau": "inf", "stop_update": 100}], "recipe")
    assert [m.name for m in methods] == ["ls", "labo-tau1.15", "labo-tau1.25", "tsla-tauinf-stop100"]
    assert methods[0].criterion_args == ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    assert methods[2].criterion_args[-6:] == ["--criterion", "label_smoothed_labo", "--label-smoothing", "0.1",
                                              "--labo-tau", "1.25"]
    assert methods[3].criterion_args[-4:] == ["--labo-tau", "inf", "--smoothing-stop-update", "100"]
    assert methods[3].label == "TSLA (LS, stop 100)"
    with pytest.raises(RecipeError, match=r"methods\[0\].kind"):
        expand_methods([{"kind": "uniform"}], "recipe")
    with pytest.raises(RecipeError, match="stop_update"):
        expand_methods([{"kind": "tsla"}], "recipe")


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(RecipeError, match="bad.toml"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")


@pytest.mark.parametrize("recipe_name", ["multi30k-cpu", "iwslt14-de-en", "wmt14-en-de"])
def test_shipped_recipes_load(recipe_name):
    recipe = load_recipe(REPO_ROOT / "recipes" / f"{recipe_name}.toml", data_dir="/nonexistent")
    assert {m.kind for m in recipe.methods} >= {"ls", "labo"}
    assert "--arch" in recipe.train_args


def test_tiny_pipeline_end_to_end_then_skips_finished_runs(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "tiny.toml", toy_data_bin, LS_AND_LABO, max_update=16,
                          average_last=2)  # 16 updates = 2 epochs of 8 batches
    out = tmp_path / "exp"
    proc = run_experiment(recipe, out)
    for run in ("ls-seed1", "labo-tau1.25-seed1"):
        run_dir = out / run
        info = json.loads((run_dir / "run.json").read_text())
        assert info["seed"] == 1 and info["train_command"][0].endswith("fairseq-train")
        assert (run_dir / "command.sh").read_text().startswith(str(BIN_DIR / "fairseq-train"))
        assert "num_updates 16" in (run_dir / "train.log").read_text()
        assert (run_dir / "checkpoints" / "checkpoint.avg2.pt").exists()  # evaluated: last 2 epochs averaged
        assert json.loads((run_dir / "eval" / "test" / "scores.json").read_text())["checkpoint"].endswith("avg2.pt")
        scores = json.loads((run_dir / "eval" / "test" / "scores.json").read_text())
        assert {"bleu", "sacrebleu", "chrf"} <= scores.keys()
        longtail = json.loads((run_dir / "eval" / "test" / "longtail.json").read_text())
        assert longtail["level"] == "token" and longtail["buckets"]
        assert len((run_dir / "eval" / "test" / "hyp.txt").read_text().splitlines()) == 40
    assert json.loads((out / "ls-seed1" / "run.json").read_text())["method"] == "ls"
    assert "label_smoothed_labo" in (out / "labo-tau1.25-seed1" / "command.sh").read_text()
    report = out / "report"
    text = (report / "REPORT.md").read_text()
    assert "LS" in text and "LABO τ=1.25" in text
    for png in report.glob("*.png"):
        assert Image.open(png).size[0] > 100
    assert "<img" in (report / "REPORT.html").read_text()
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["runs"] == {"ls-seed1": "done", "labo-tau1.25-seed1": "done"}
    assert "headline (test set)" in proc.stdout and "LABO τ=1.25 - LS:" in proc.stdout

    logs = {p: p.stat().st_mtime_ns for p in out.glob("*/train.log")}
    again = run_experiment(recipe, out)
    assert again.stdout.count("already finished, skipping") == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/train.log")} == logs  # nothing retrained


def test_changed_recipe_is_refused_for_an_existing_run(toy_data_bin, tmp_path):
    out = tmp_path / "exp"
    run_experiment(write_recipe(tmp_path / "a.toml", toy_data_bin, "[[methods]]\nkind = \"ls\"\n", max_update=4), out)
    proc = run_experiment(write_recipe(tmp_path / "b.toml", toy_data_bin, "[[methods]]\nkind = \"ls\"\n",
                                       max_update=6), out, check=False)
    assert proc.returncode == 1
    assert "trained with a different command" in proc.stdout


def test_failing_method_is_reported_and_the_others_complete(toy_data_bin, tmp_path):
    methods = LS_AND_LABO + '\n[[methods]]\nkind = "labo"\ntau = -1.0\n'
    out = tmp_path / "exp"
    proc = run_experiment(write_recipe(tmp_path / "r.toml", toy_data_bin, methods, max_update=4), out, check=False)
    assert proc.returncode == 1
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["runs"]["ls-seed1"] == "done" and summary["runs"]["labo-tau1.25-seed1"] == "done"
    assert summary["runs"]["labo-tau-1-seed1"].startswith("failed: training labo-tau-1-seed1 failed")
    assert "--labo-tau must be > 0" in (out / "labo-tau-1-seed1" / "train.log").read_text()
    assert (out / "labo-tau-1-seed1" / "FAILED").exists()
    assert (out / "report" / "REPORT.md").exists()
    assert "labo-tau-1-seed1" in proc.stdout and "failed" in proc.stdout


def test_interrupted_training_resumes_from_its_last_checkpoint(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, "[[methods]]\nkind = \"labo\"\n",
                          max_update=400, save_every=5)
    out = tmp_path / "exp"
    env = dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([str(BIN_DIR / "python"), str(REPO_ROOT / "scripts" / "run_experiment.py"), str(recipe),
                             "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = out / "labo-tau1.25-seed1" / "checkpoints" / "checkpoint_last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # interrupt the whole pipeline mid-training
    proc.wait()
    assert last.exists(), "training never saved a checkpoint"
    assert not (out / "labo-tau1.25-seed1" / "train.done").exists()

    # Resume with a shorter schedule would change the command; resume the same recipe instead.
    result = run_experiment(recipe, out)
    log = (out / "labo-tau1.25-seed1" / "train.log").read_text()
    assert "resuming" in result.stdout
    loaded = [line for line in log.splitlines() if "Loaded checkpoint" in line]
    assert loaded and "@ 0 updates" not in loaded[-1]
    assert "num_updates 400" in log
    assert json.loads((out / "experiment.json").read_text())["runs"] == {"labo-tau1.25-seed1": "done"}


def test_demo_names_the_missing_raw_file(tmp_path):
    (tmp_path / "train.de.gz").write_bytes(b"")
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "demo.sh")], env=dict(os.environ, DATA_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"DATA_DIR={tmp_path} has no train.en.gz" in proc.stderr
