"""scripts/run_experiment.py on a tiny recipe: training, evaluation, report, resume, failures."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from labo_fairseq.experiment import (RecipeError, checkpoint_description, describe_command_change,
                                     expand_methods, load_recipe, plan_runs, select_runs, without_optimizer_flags)
from tests.toy import BIN_DIR, REPO_ROOT, TINY_TRANSFORMER_ARGS, run_cli

def tiny_train_args(max_update, save_every):
    """The tiny transformer's fairseq-train flags as a TOML array."""
    return json.dumps([*TINY_TRANSFORMER_ARGS, "--cpu", "--optimizer", "adam", "--lr", "1e-3",
                       "--max-tokens", "500", "--max-update", str(max_update),
                       "--save-interval-updates", str(save_every),
                       "--log-format", "simple", "--log-interval", "5", "--no-progress-bar"])


def write_recipe(path, data_bin, methods, max_update=12, save_every=0, average_last=0, seeds=(1,),
                 subsets='["test"]'):
    path.write_text(f"""
name = "tiny"
seeds = {list(seeds)}
[data]
data_bin = "{data_bin}"
train_target = "{data_bin.parent / 'text' / 'train.tgt'}"
subsets = {subsets}
[train]
args = {tiny_train_args(max_update, save_every)}
[evaluate]
average_last = {average_last}
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


def run_experiment(recipe, out, check=True, jobs=1):
    return run_cli(["python", REPO_ROOT / "scripts" / "run_experiment.py", recipe, "--out", out, "--jobs", jobs],
                   check=check, timeout=900)


def dry_run_states(recipe, out):
    """{run: "to do"} from --dry-run's table."""
    proc = run_cli(["python", REPO_ROOT / "scripts" / "run_experiment.py", recipe, "--out", out, "--dry-run"])
    table = proc.stdout.split("\n\n")[1].splitlines()[2:]
    return {line.split()[0]: re.split(r"\s{2,}", line.strip())[-1] for line in table}


def start_experiment(recipe, out, jobs=1, progress=None, stdout=subprocess.PIPE):
    """The pipeline in the background (its own session, so that signals reach only it)."""
    env = dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    every = [] if progress is None else ["--progress", str(progress)]
    return subprocess.Popen([str(BIN_DIR / "python"), str(REPO_ROOT / "scripts" / "run_experiment.py"), str(recipe),
                             "--out", str(out), "--jobs", str(jobs), *every], env=env, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def processes_mentioning(text):
    """PIDs of live processes whose command line contains `text`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().split(")")[-1].split()[0] == "Z"
        except OSError:
            continue
        if text in cmdline and not zombie:
            pids.append(int(entry))
    return pids


def wait_for(predicate, timeout, proc=None):
    deadline = time.time() + timeout
    while not predicate() and time.time() < deadline and (proc is None or proc.poll() is None):
        time.sleep(0.2)
    return predicate()


def test_methods_expand_to_fairseq_criterion_flags():
    methods = expand_methods([{"kind": "ls"}, {"kind": "labo", "tau": [1.15, 1.25]},
                              {"kind": "tsla", "tau": "inf", "stop_update": 100}], "recipe")
    assert [m.name for m in methods] == ["ls-a0.1", "labo-a0.1-tau1.15", "labo-a0.1-tau1.25",
                                         "tsla-a0.1-tauinf-stop100"]
    assert methods[0].criterion_args == ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    assert methods[2].criterion_args[-6:] == ["--criterion", "label_smoothed_labo", "--label-smoothing", "0.1",
                                              "--labo-tau", "1.25"]
    assert methods[3].criterion_args[-4:] == ["--labo-tau", "inf", "--smoothing-stop-update", "100"]
    assert methods[3].label == "TSLA (LS α=0.1, stop 100)"
    with pytest.raises(RecipeError, match=r"methods\[0\].kind"):
        expand_methods([{"kind": "uniform"}], "recipe")
    with pytest.raises(RecipeError, match="stop_update"):
        expand_methods([{"kind": "tsla"}], "recipe")


def test_lists_of_tau_and_label_smoothing_expand_to_a_grid():
    methods = expand_methods([{"kind": "labo", "tau": [1.25, "inf"], "label_smoothing": [0.1, 0.3]}], "recipe")
    assert [m.name for m in methods] == ["labo-a0.1-tau1.25", "labo-a0.1-tauinf", "labo-a0.3-tau1.25",
                                         "labo-a0.3-tauinf"]
    assert methods[2].params == {"label_smoothing": 0.3, "tau": 1.25}
    assert methods[2].label == "LABO α=0.3 τ=1.25"
    ls = expand_methods([{"kind": "ls", "label_smoothing": [0.1, 0.2]}], "recipe")
    assert [m.name for m in ls] == ["ls-a0.1", "ls-a0.2"]


def test_ivon_methods_bring_their_own_optimizer():
    methods = expand_methods([{"kind": "ivon", "lr": [0.5, 2]},
                              {"kind": "ivon", "criterion": "labo", "lr": 1, "mc_samples": 2, "tau": [1.25, 2.0]}],
                             "recipe")
    assert [m.name for m in methods] == ["ivon-ce-lr0.5", "ivon-ce-lr2", "ivon-labo-a0.1-tau1.25-lr1-mc2",
                                         "ivon-labo-a0.1-tau2-lr1-mc2"]
    assert methods[0].label == "IVON + CE (lr 0.5)"
    methods = methods[:1] + methods[2:]
    assert methods[1].criterion_args[methods[1].criterion_args.index("--optimizer") + 1] == "ivon"
    assert "--task" in methods[0].criterion_args and methods[0].criterion_args[-1] == "cross_entropy"
    assert methods[1].params == {"criterion": "labo", "lr": 1.0, "mc_samples": 2, "label_smoothing": 0.1,
                                 "tau": 1.25}
    assert methods[1].criterion_args.count("--user-dir") == 1
    common = ["--arch", "t", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "7e-4", "--fp16",
              "--clip-norm", "0.0"]
    assert without_optimizer_flags(common) == ["--arch", "t", "--clip-norm", "0.0"]
    with pytest.raises(RecipeError, match="needs lr"):
        expand_methods([{"kind": "ivon"}], "recipe")
    with pytest.raises(RecipeError, match=r"criterion must be one of ce, ls, labo"):
        expand_methods([{"kind": "ivon", "lr": 1, "criterion": "tsla"}], "recipe")


def test_ivon_run_trains_with_ivon_instead_of_the_recipes_optimizer(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ivon"\nlr = 1.0\n', max_update=4)
    out = tmp_path / "exp"
    run_experiment(recipe, out)
    run_dir = out / "ivon-ce-lr1-seed1"
    command = json.loads((run_dir / "run.json").read_text())["train_command"]
    assert command.count("--optimizer") == 1 and command[command.index("--optimizer") + 1] == "ivon"
    assert command[command.index("--lr") + 1] == "1" and command.count("--lr") == 1
    log = (run_dir / "train.log").read_text()
    assert "ivon_sigma" in log and "num_updates 4" in log
    assert (run_dir / "eval" / "test" / "scores.json").exists()


@pytest.mark.parametrize("text,message", [
    ('[train]\nargs = "--arch transformer"', r"\[train\] args must be a list of strings"),
    ('[[methods]]\nkind = "labo"\nlabel_smoothing = "abc"', r"methods\[0\]\.label_smoothing must be a number"),
    ('[[methods]]\nkind = "labo"\ntau = "abc"', r"methods\[0\]\.tau must be a number >= 0.0001"),
    ('[[methods]]\nkind = "labo"\ntau = -1.0', r"methods\[0\]\.tau must be a number >= 0.0001"),
    ('[[methods]]\nkind = "labo"\nlabel_smoothing = 1.0', r"label_smoothing must be a number in \[0, 1\)"),
    ('[evaluate]\naverage_last = "x"', r"average_last must be an integer >= 0, got 'x'"),
    ('[evaluate]\nbeam = "abc"', r"beam must be an integer >= 1, got 'abc'"),
    ('[evaluate]\ncheckpoint = "average"', r"needs average_last >= 2"),
    ('[evaluate]\ncheckpoint = "first"', r"checkpoint must be one of last, average, best"),
    ('[evaluate]\nbeem = 5', r"unknown key\(s\) beem"),
    ('[[methods]]\nkind = "ls"\ntemperature = 2', r"unknown key\(s\) temperature"),
])
def test_recipe_is_validated_before_anything_runs(tmp_path, text, message):
    recipe = tmp_path / "r.toml"
    body = text if "[[methods]]" in text else text + '\n[[methods]]\nkind = "ls"'
    recipe.write_text('[data]\ndata_bin = "d"\ntrain_target = "t"\n' + body + "\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_missing_data_dir_says_to_pass_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_DIR", raising=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndata_bin = "{DATA_DIR}/bin"\ntrain_target = "t"\n[[methods]]\nkind = "ls"\n')
    with pytest.raises(RecipeError, match=r"needs the raw data's directory: pass --data-dir DIR \(or set DATA_DIR\)"):
        load_recipe(recipe)
    assert load_recipe(recipe, data_dir="/raw").data_bin == Path("/raw/bin")


def test_best_checkpoint_is_chosen_by_nll_loss(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndata_bin = "d"\ntrain_target = "t"\n[evaluate]\ncheckpoint = "best"\n'
                      '[[methods]]\nkind = "ls"\n')
    loaded = load_recipe(recipe)
    i = loaded.train_args.index("--best-checkpoint-metric")
    assert loaded.train_args[i:i + 2] == ["--best-checkpoint-metric", "nll_loss"]
    assert checkpoint_description(loaded) == "checkpoint_best.pt (lowest validation nll_loss)"


def test_changed_command_names_the_flags_that_differ():
    recorded = ["fairseq-train", "data", "--max-update", "4", "--fp16", "--seed", "1"]
    new = ["fairseq-train", "data", "--max-update", "6", "--seed", "1", "--bf16"]
    assert describe_command_change(recorded, new) == "--max-update 4 -> 6; --fp16 removed; --bf16 added"


def test_only_names_are_checked(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, LS_AND_LABO)
    out = tmp_path / "exp"
    proc = run_cli(["python", REPO_ROOT / "scripts" / "run_experiment.py", recipe, "--out", out, "--only", "lbao"],
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("run_experiment.py: error: --only lbao: no such method")
    assert "labo-a0.1-tau1.25" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "experiment.json").exists()
    runs = plan_runs(load_recipe(recipe), out)
    assert [r.name for r in select_runs(runs, ["ls-a0.1"], "r")] == ["ls-a0.1-seed1"]


@pytest.mark.parametrize("recipe_name", sorted(p.stem for p in (REPO_ROOT / "recipes").glob("*.toml")))
def test_shipped_recipes_load(recipe_name):
    recipe = load_recipe(REPO_ROOT / "recipes" / f"{recipe_name}.toml", data_dir="/nonexistent")
    assert {m.kind for m in recipe.methods} >= {"ls", "labo"}
    assert "--arch" in recipe.train_args
    # data preparation through the installed console command, with a dataset it knows
    from labo_fairseq.cli import DATASETS
    assert recipe.prepare[0] == "labo-prepare" and recipe.prepare[1] in DATASETS


def test_demo_names_the_missing_raw_file(tmp_path):
    (tmp_path / "train.de.gz").write_bytes(b"")
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "demo.sh")], env=dict(os.environ, DATA_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"DATA_DIR={tmp_path} has no train.en.gz" in proc.stderr


GRID = """
[[methods]]
kind = "ls"
[[methods]]
kind = "labo"
tau = [1.25, 2.0]
label_smoothing = [0.1, 0.2]
[[methods]]
kind = "labo"
tau = 1.5
label = "LABO broken"
args = ["--labo-chunk-size", "0"]
"""


def test_tiny_pipeline_end_to_end_skips_finished_runs_then_grows_into_a_parallel_grid(toy_data_bin, tmp_path):
    # one experiment serves the whole life of a recipe: trained, skipped, evaluated again, then
    # grown into a grid that trains its new runs 2 at a time next to a failing one
    recipe = write_recipe(tmp_path / "tiny.toml", toy_data_bin, LS_AND_LABO, max_update=16,
                          average_last=2)  # 16 updates = 2 epochs of 8 batches
    out = tmp_path / "exp"
    runs = ("ls-a0.1-seed1", "labo-a0.1-tau1.25-seed1")
    assert dry_run_states(recipe, out) == {run: "train, then evaluate" for run in runs}
    assert not out.exists()  # a dry run writes nothing
    proc = run_experiment(recipe, out)
    assert dry_run_states(recipe, out) == {run: "finished (skipped)" for run in runs}
    assert "TransformerModel(" not in proc.stdout and "{'_name'" not in proc.stdout  # in train.log only
    assert proc.stdout.count("(fairseq's configuration and model print: in train.log; --verbose shows them)") == 2
    assert "fairseq_cli.generate | {'_name'" not in proc.stdout
    assert not (out / ".experiment.lock").exists()
    for run in runs:
        run_dir = out / run
        info = json.loads((run_dir / "run.json").read_text())
        assert info["seed"] == 1 and info["train_command"][0].endswith("fairseq-train")
        assert (run_dir / "command.sh").read_text().startswith(str(BIN_DIR / "fairseq-train"))
        assert "num_updates 16" in (run_dir / "train.log").read_text()
        assert "TransformerModel(" in (run_dir / "train.log").read_text()
        assert (run_dir / "checkpoints" / "checkpoint.avg2.pt").exists()  # evaluated: last 2 epochs averaged
        assert json.loads((run_dir / "eval" / "test" / "scores.json").read_text())["checkpoint"].endswith("avg2.pt")
        scores = json.loads((run_dir / "eval" / "test" / "scores.json").read_text())
        assert {"bleu", "sacrebleu", "chrf"} <= scores.keys()
        assert isinstance(scores["beam"], int) and isinstance(scores["lenpen"], float)  # typed, not parsed back
        longtail = json.loads((run_dir / "eval" / "test" / "longtail.json").read_text())
        assert longtail["level"] == "token" and longtail["buckets"]
        assert len((run_dir / "eval" / "test" / "hyp.txt").read_text().splitlines()) == 40
    assert json.loads((out / "ls-a0.1-seed1" / "run.json").read_text())["method"] == "ls"
    labo_info = json.loads((out / "labo-a0.1-tau1.25-seed1" / "run.json").read_text())
    assert (labo_info["tau"], labo_info["label_smoothing"]) == (1.25, 0.1)  # numbers in run.json
    assert "label_smoothed_labo" in (out / "labo-a0.1-tau1.25-seed1" / "command.sh").read_text()
    report = out / "report"
    text = (report / "REPORT.md").read_text()
    assert "LS α=0.1" in text and "LABO α=0.1 τ=1.25" in text
    for png in report.glob("*.png"):
        assert Image.open(png).size[0] > 100
    assert "<img" in (report / "REPORT.html").read_text()
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["runs"] == {"ls-a0.1-seed1": "done", "labo-a0.1-tau1.25-seed1": "done"}
    headline = proc.stdout.split("headline:", 1)[1]
    assert "test:" in headline and "Δ sacreBLEU" in headline and "LABO α=0.1 τ=1.25" in headline

    logs = {p: p.stat().st_mtime_ns for p in out.glob("*/train.log")}
    again = run_experiment(recipe, out)
    assert again.stdout.count("already finished, skipping") == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/train.log")} == logs  # nothing retrained

    # other [evaluate] settings re-evaluate the trained runs instead of skipping them
    recipe.write_text(recipe.read_text().replace("beam = 2", "beam = 1"))
    assert set(dry_run_states(recipe, out).values()) == {"evaluate again (beam 2 -> 1)"}
    changed = run_experiment(recipe, out)
    assert changed.stdout.count("evaluating again (beam 2 -> 1)") == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/train.log")} == logs
    for run in ("ls-a0.1-seed1", "labo-a0.1-tau1.25-seed1"):
        assert str(json.loads((out / run / "eval" / "test" / "scores.json").read_text())["beam"]) == "1"

    # the recipe grows into a 2 x 2 grid over tau and alpha, plus a method whose training fails;
    # the two finished runs are skipped and the four new ones train 2 at a time
    recipe.write_text(recipe.read_text().replace(LS_AND_LABO, GRID))
    proc = run_experiment(recipe, out, check=False, jobs=2)
    assert proc.returncode == 1, proc.stdout[-3000:]
    summary = json.loads((out / "experiment.json").read_text())
    assert all(summary["runs"][name] == "skipped" for name in runs), summary["runs"]
    assert {out / r / "train.log": (out / r / "train.log").stat().st_mtime_ns for r in runs} == logs
    grid = [f"labo-a{a}-tau{t}-seed1" for a in ("0.1", "0.2") for t in ("1.25", "2")]
    new = [name for name in grid if name not in runs]
    assert all(summary["runs"][name] == "done" for name in new), summary["runs"]
    broken = [n for n in summary["runs"] if n.startswith("labo-a0.1-tau1.5")]
    assert broken and all(summary["runs"][n].startswith("failed: training") for n in broken)
    assert "--labo-chunk-size must be >= 1" in (out / broken[0] / "train.log").read_text()
    # one progress line per run, the skipped and the failed included
    progress = [line for line in proc.stdout.splitlines() if re.search(r"\[\d+/6\] ", line)]
    assert len(progress) == 6 and sum(re.search(r" failed after \d+s: training", line) is not None
                                     for line in progress) == 1, progress
    assert any(re.search(r"done in \d+s, valid nll \d+\.\d\d", line) for line in progress)
    # two runs were in flight at once: some new run started before another had finished
    spans = sorted((summary["timing"][n]["started"], summary["timing"][n]["finished"]) for n in new + broken)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    # each run keeps its own log, and what was evaluated is the average of the last 2 epochs
    for name in new:
        run_dir = out / name
        assert "num_updates 16" in (run_dir / "train.log").read_text()
        info = json.loads((run_dir / "run.json").read_text())
        assert info["checkpoint"] == "average of the last 2 epoch checkpoints"
        assert info["config"] == name.rsplit("-seed", 1)[0] and info["label_smoothing"] in (0.1, 0.2)
        scores = json.loads((run_dir / "eval" / "test" / "scores.json").read_text())
        assert scores["checkpoint"].endswith("checkpoint.avg2.pt")
    report = (out / "report" / "REPORT.md").read_text()
    assert "LABO α=0.2 τ=2" in report and broken[0] in report  # the failed run is listed too


def test_interrupted_pipeline_stops_its_children_shows_progress_and_resumes(toy_data_bin, tmp_path):
    # one recipe, three pipelines: SIGTERM stops the first cleanly; the second resumes both runs,
    # shows their progress and is SIGKILLed; the third finishes them
    methods = '[[methods]]\nkind = "labo"\n'
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, methods, max_update=300, save_every=5, seeds=(1, 2))
    out = tmp_path / "exp"
    names = [f"labo-a0.1-tau1.25-seed{s}" for s in (1, 2)]
    proc = start_experiment(recipe, out, jobs=2)
    lasts = [out / name / "checkpoints" / "checkpoint_last.pt" for name in names]
    assert wait_for(lambda: all(p.exists() for p in lasts), 300, proc), "training never saved checkpoints"
    assert len(processes_mentioning(str(out))) >= 2  # both trainings are running
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output and "Run the same command again" in output
    assert wait_for(lambda: not processes_mentioning(str(out)), 30), "a child outlived the pipeline"
    assert not any((out / name / "train.done").exists() for name in names)
    assert not any((out / name / "FAILED").exists() for name in names)
    assert not (out / ".experiment.lock").exists()

    # resumed 2 at a time with a status line every second (plain lines: the output is a file)
    console = tmp_path / "console.txt"
    with open(console, "w") as sink:
        proc = start_experiment(recipe, out, jobs=2, progress=1, stdout=sink)
    both = re.compile(r"seed\d update \d+/300; labo-a0\.1-tau1\.25-seed\d update \d+/300; .*training left about")
    assert wait_for(lambda: both.search(console.read_text()), 300, proc), console.read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # only the pipeline: its children must follow by themselves
    proc.wait()
    assert wait_for(lambda: not processes_mentioning(str(out)), 30), "fairseq-train kept training unattended"
    assert not any((out / name / "train.done").exists() for name in names)
    lines = [line for line in console.read_text().splitlines() if line.startswith("[experiment] progress: ")]
    pattern = (r"\[experiment\] progress: [0-2]/2 run\(s\) started, 0 finished"
               r"(; labo-a0\.1-tau1\.25-seed[12] update \d+/300)*; \d+(m\d\ds|s) elapsed(; training left about \S+)?")
    assert lines and all(re.fullmatch(pattern, line) for line in lines), lines

    torn = out / names[0] / "checkpoints" / "checkpoint_9_99.pt.tmp"  # a save that a kill cut short
    torn.write_bytes(b"PK")
    result = run_experiment(recipe, out)
    assert result.stdout.count("resuming") == 2 and not torn.exists()
    for name in names:
        log = (out / name / "train.log").read_text()
        loaded = [line for line in log.splitlines() if "Loaded checkpoint" in line]
        assert len(loaded) == 2 and "@ 0 updates" not in loaded[-1] and "num_updates 300" in log
    assert json.loads((out / "experiment.json").read_text())["runs"] == {name: "done" for name in names}


def test_reading_and_planning_a_labo_recipe_imports_no_torch(toy_data_bin, tmp_path):
    # a dry run, a refusal or a re-run with nothing to train takes a fraction of a second, not
    # the seconds of importing torch
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, LS_AND_LABO)
    code = ("import sys; from labo_fairseq.experiment import load_recipe, plan_runs; "
            "from labo_fairseq.experiment.runner import gpu_slots; "
            f"from pathlib import Path; plan_runs(load_recipe(Path({str(recipe)!r})), Path({str(tmp_path / 'exp')!r})); "
            "assert gpu_slots(2) == [None, None]; print('torch' in sys.modules)")
    # one visible GPU (or none): nothing to count, also on a machine with several
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="0"))
    assert proc.stdout.strip() == "False", proc.stderr


def test_parallel_runs_take_the_visible_gpus_in_turn(monkeypatch):
    from labo_fairseq.experiment.runner import gpu_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 1")
    assert gpu_slots(3) == ["0", "1", "0"]
    assert gpu_slots(1) == ["0"]  # one run at a time still trains on one GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert gpu_slots(2) == [None, None]  # one GPU: the environment as it is
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr("labo_fairseq.experiment.runner.gpu_driver_present", lambda: False)
    assert gpu_slots(2) == [None, None]


def test_output_directory_is_locked_while_a_pipeline_uses_it(tmp_path):
    from labo_fairseq.experiment import OutputLock

    lock = OutputLock(tmp_path)
    with pytest.raises(RecipeError, match="in use by another experiment"):
        OutputLock(tmp_path)
    lock.release()
    OutputLock(tmp_path).release()
