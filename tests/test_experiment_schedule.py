"""The pipeline's checkpoints every N updates, extending a finished training, and interrupts that
start nothing more."""
import json
import re
import signal

import pytest

from labo_fairseq import experiment
from labo_fairseq.evaluation.runs import TRAIN_DONE
from labo_fairseq.experiment import (RecipeError, RunRefused, check_run_dir, compare_commands, load_recipe,
                                     plan_runs, resume_note, run_state, training_progress)
from tests.test_experiment import dry_run_states, run_experiment, start_experiment, wait_for, write_recipe


def saving_every(recipe, updates):
    """`recipe` (from write_recipe) with [train] save_interval_updates instead of the flag in args."""
    recipe.write_text(recipe.read_text().replace('"--save-interval-updates", "0", ', "")
                      .replace("[evaluate]", f"save_interval_updates = {updates}\n[evaluate]"))
    return recipe


def recipe_with_train(tmp_path, train):
    path = tmp_path / "r.toml"
    path.write_text(f'[data]\ndata_bin = "d"\ntrain_target = "t"\n[train]\n{train}\n[[methods]]\nkind = "ls"\n')
    return load_recipe(path)


def interval_flags(args):
    return [args[i:i + 2] for i, word in enumerate(args) if word.endswith("interval-updates")]


def test_save_interval_updates_adds_fairseq_flags_unless_the_args_set_them(tmp_path):
    default = recipe_with_train(tmp_path, 'args = ["--arch", "transformer"]').train_args
    assert interval_flags(default) == [["--save-interval-updates", str(experiment.DEFAULT_SAVE_INTERVAL_UPDATES)],
                                       ["--keep-interval-updates", "1"]]
    assert interval_flags(recipe_with_train(tmp_path, "save_interval_updates = 20").train_args) == [
        ["--save-interval-updates", "20"], ["--keep-interval-updates", "1"]]
    assert interval_flags(recipe_with_train(tmp_path, "save_interval_updates = 0").train_args) == []
    own = recipe_with_train(tmp_path, 'args = ["--save-interval-updates", "7", "--keep-interval-updates", "3"]\n'
                                      'save_interval_updates = 20')
    assert interval_flags(own.train_args) == [["--save-interval-updates", "7"], ["--keep-interval-updates", "3"]]
    with pytest.raises(RecipeError, match=r"\[train\] save_interval_updates must be an integer >= 0, got -5"):
        recipe_with_train(tmp_path, "save_interval_updates = -5")


def test_schedule_save_and_job_flags_are_compared_apart_from_the_rest():
    old = ["fairseq-train", "d", "--lr", "1", "--max-update", "30"]
    assert compare_commands(old, old + ["--save-interval-updates", "20", "--keep-interval-updates", "1"]) == (
        None, None, None)
    # a multi-node job's rendezvous port may change between its jobs; the world size may not
    assert compare_commands(old + ["--distributed-port", "20001"], old + ["--distributed-port", "29500"]) == (
        None, None, None)
    assert compare_commands(old, old + ["--distributed-world-size", "2"])[0] == "--distributed-world-size added (2)"
    # the same fairseq-train from another environment (a moved checkout) trains the same model
    assert compare_commands(old, ["/elsewhere/.venv/bin/fairseq-train", *old[1:]]) == (None, None, None)
    assert compare_commands(old + ["--seed", "1"], ["fairseq-train", "d", "--seed", "1", "--lr", "1"])[0] == (
        "the order of the flags")
    assert compare_commands(old, ["fairseq-train", "d", "--lr", "1", "--max-update", "40"]) == (
        None, "--max-update 30 -> 40", None)
    assert compare_commands(old, ["fairseq-train", "d", "--lr", "2", "--max-update", "20"]) == (
        "--lr 1 -> 2", None, "--max-update 30 -> 20")
    # no --max-epoch is no limit: adding one shortens, removing --max-update lengthens
    assert compare_commands(old, ["fairseq-train", "d", "--lr", "1", "--max-epoch", "3"]) == (
        None, "--max-update removed", "--max-epoch added (3)")


def fake_finished_run(tmp_path, recorded_command):
    recipe = recipe_with_train(tmp_path, 'args = ["--max-update", "30"]\nsave_interval_updates = 20')
    run = plan_runs(recipe, tmp_path / "exp")[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "run.json").write_text(json.dumps({"train_command": recorded_command(recipe, run)}))
    (run.run_dir / TRAIN_DONE).write_text("done\n")
    return recipe, run


def test_finished_run_from_before_the_save_flags_is_not_refused(tmp_path):
    # a run recorded without --save-interval-updates/--keep-interval-updates, as older recipes gave
    recipe, run = fake_finished_run(tmp_path, lambda r, run: experiment.commands.without_flags(
        experiment.train_command(r, run), experiment.SAVE_FLAGS))
    assert "--save-interval-updates" in experiment.train_command(recipe, run)
    assert check_run_dir(recipe, run, None) is None
    assert run_state(recipe, run, None) == "decided once the data-bin is prepared"  # not refused


def test_shorter_schedule_is_refused_for_a_finished_run(tmp_path):
    recipe, run = fake_finished_run(tmp_path, lambda r, run: [
        w.replace("30", "50") for w in experiment.train_command(r, run)])
    with pytest.raises(RunRefused, match=r"was trained for longer than recipe .* asks \(--max-update 50 -> 30\); "
                                         r"remove that directory"):
        check_run_dir(recipe, run, None)
    assert run_state(recipe, run, None) == "refused: trained for longer (--max-update 50 -> 30)"


def test_resume_note_reads_the_last_saved_checkpoint_from_train_log(tmp_path):
    recipe = recipe_with_train(tmp_path, "")
    run = plan_runs(recipe, tmp_path / "exp")[0]
    run.run_dir.mkdir(parents=True)
    log = run.run_dir / "train.log"
    log.write_text("epoch 001:      5 / 8 loss=9.1, num_updates=5, lr=1e-3\n")
    assert resume_note(run) == "ls-a0.1-seed1: no checkpoint saved yet; at least 5 update(s) done so far will be redone"
    log.write_text("epoch 001:     20 / 122 loss=9.1, num_updates=20\n"
                   "Saved checkpoint /x y/checkpoint_1_20.pt (epoch 1 @ 20 updates, score 8.1) (writing took 0.1 s)\n"
                   "epoch 001:     25 / 122 loss=9.0, num_updates=25\n")
    assert resume_note(run) == "ls-a0.1-seed1: resumes from its checkpoint at update 20; about 5 update(s) since " \
                               "then will be redone"
    log.write_text("epoch 001:      5 / 8 loss=9.1, num_updates=5, lr=1e-3\n")
    run.checkpoints.mkdir()
    (run.checkpoints / "checkpoint_last.pt").write_bytes(b"")  # written, not yet logged
    assert resume_note(run) == "ls-a0.1-seed1: resumes from checkpoint_last.pt (saved as it was interrupted; its " \
                               "update is not in train.log)"


def test_raising_max_update_trains_a_finished_run_further_and_other_changes_are_refused(toy_data_bin, tmp_path):
    # 8 updates an epoch; the average of the last 2 epoch checkpoints is evaluated, with a
    # checkpoint every 3 updates in between (which must not enter the average)
    out = tmp_path / "exp"
    ls = '[[methods]]\nkind = "ls"\n'
    run_experiment(saving_every(write_recipe(tmp_path / "a.toml", toy_data_bin, ls, max_update=16, average_last=2),
                                3), out)
    run_dir = out / "ls-a0.1-seed1"
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint_*_*.pt")) == ["checkpoint_2_15.pt"]
    average = (checkpoints / "checkpoint.avg2.pt").read_bytes()
    scores = (run_dir / "eval" / "test" / "scores.json").stat().st_mtime_ns
    longer = saving_every(write_recipe(tmp_path / "b.toml", toy_data_bin, ls, max_update=24, average_last=2), 3)
    assert dry_run_states(longer, out) == {
        "ls-a0.1-seed1": "train further from checkpoint_last.pt (--max-update 16 -> 24), then evaluate"}
    proc = run_experiment(longer, out)
    assert "training further (--max-update 16 -> 24)" in proc.stdout
    log = (run_dir / "train.log").read_text()
    loaded = [line for line in log.splitlines() if "Loaded checkpoint" in line]
    assert loaded and "@ 16 updates" in loaded[-1] and "num_updates 24" in log
    assert (checkpoints / "checkpoint3.pt").exists()
    assert (checkpoints / "checkpoint.avg2.pt").read_bytes() != average  # epochs 2 and 3 now
    assert (run_dir / "eval" / "test" / "scores.json").stat().st_mtime_ns != scores  # evaluated again
    assert dry_run_states(longer, out) == {"ls-a0.1-seed1": "finished (skipped)"}

    other = saving_every(write_recipe(tmp_path / "c.toml", toy_data_bin, ls, max_update=24, average_last=2), 3)
    other.write_text(other.read_text().replace('"--lr", "1e-3"', '"--lr", "2e-3"'))
    proc = run_experiment(other, out, check=False)
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if "[1/1]" in line)
    assert re.fullmatch(r"\[experiment\] \[1/1\] ls-a0\.1-seed1 failed after \d+s: \S+ was trained with a "
                        r"different command than recipe \S+ now gives \(--lr 1e-3 -> 2e-3\); remove that directory "
                        r"to run it again, or choose another --out", line), line
    assert dry_run_states(other, out) == {"ls-a0.1-seed1": "refused: trained with another command (--lr 1e-3 -> 2e-3)"}


def test_interrupt_starts_no_further_run_and_says_what_is_redone(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n', max_update=400,
                          seeds=(1, 2))
    saving_every(recipe, 5)  # the recipe key instead of the flags in args
    out = tmp_path / "exp"
    proc = start_experiment(recipe, out, jobs=1)
    first = out / "ls-a0.1-seed1"
    # the log line, not the file: fairseq writes "Saved checkpoint" just after the file appears
    assert wait_for(lambda: training_progress(first / "train.log")[0] is not None, 300, proc), \
        "training never saved a checkpoint"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    after = output.split("interrupted: stopping every child process", 1)[1]
    assert "seed2" not in after, after  # the next run is neither announced ...
    assert not (out / "ls-a0.1-seed2").exists()  # ... nor started
    note = re.search(r"ls-a0\.1-seed1: resumes from its checkpoint at update (\d+)", after)
    assert note, after
    saved = int(note.group(1))
    assert saved % 5 == 0 or saved % 8 == 0  # an interval save or an epoch end
    interval = list((first / "checkpoints").glob("checkpoint_*_*.pt"))
    assert len(interval) <= 1  # --keep-interval-updates 1
    assert dry_run_states(recipe, out) == {"ls-a0.1-seed1": "resume training from checkpoint_last.pt, then evaluate",
                                           "ls-a0.1-seed2": "train, then evaluate"}


def test_progress_estimates_the_training_left(tmp_path):
    recipe = recipe_with_train(tmp_path, 'args = ["--max-update", "100"]\nsave_interval_updates = 0')
    recipe.seeds = [1, 2, 3]
    runs = plan_runs(recipe, tmp_path / "exp")
    runs[2].run_dir.mkdir(parents=True)
    (runs[2].run_dir / TRAIN_DONE).write_text("done\n")  # trained earlier: it will be skipped
    children = experiment.ChildProcesses()
    reporter = experiment.ProgressReporter(recipe, runs, children, 0)
    runs[0].run_dir.mkdir(parents=True)
    log = runs[0].run_dir / "train.log"
    log.write_text("an earlier attempt: num_updates=90\n")
    with children.training(runs[0]):
        reporter.started = 1
        reporter.started_names.add(runs[0].name)
        start, offset = children.since[runs[0].name]
        children.since[runs[0].name] = (start - 30, offset)  # resumed 30 s ago at update 20
        with open(log, "a") as f:
            f.write("Loaded checkpoint c/checkpoint_last.pt (epoch 1 @ 20 updates)\n"
                    "epoch 002:  5 / 8 loss=3.1, num_updates=50\n")
        status = reporter.status()
    # 30 updates in 30 s: 50 left of this run and 100 of the run still to train take about 150 s
    assert re.fullmatch(r"progress: 1/3 run\(s\) started, 0 finished; ls-a0\.1-seed1 update 50/100; \d+s elapsed; "
                        r"training left about 2m3\ds", status), status
