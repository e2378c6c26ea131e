"""[data] launcher = "job": the recipe's prepare command as a submitit job of its own, before any
run's job (experiment.launchers.PrepareJob), run here through --launcher submitit-local: waiting
for it, --no-wait and re-attaching without a second submission, a failing preparation, the pool's
refusal while a preparation job may still write the data-bin, and the SLURM dry run's script."""
import json
import shutil
import time

import pytest

from labo_fairseq.errors import UserError
from labo_fairseq.experiment import RecipeError, load_recipe, prepare_data
from labo_fairseq.experiment.pipeline import prepare_data_as_job
from labo_fairseq.experiment.runner import LocalLauncher
from tests.test_experiment import wait_for, write_recipe
from tests.toy import run_cli

import submitit  # noqa: F401,E402  (the [test] extra installs it)

LS = '[[methods]]\nkind = "ls"\n'
LOCAL = ("--launcher", "submitit-local")


def experiment(recipe, out, *flags, check=False, timeout=600):
    return run_cli(["labo-experiment", recipe, "--out", out, *flags], cwd=recipe.parent, check=check,
                   timeout=timeout)


def data_job_recipe(tmp_path, toy_data_bin, prepare, launcher="job"):
    """A recipe whose data-bin (tmp_path/data-bin) is still to be prepared by `prepare`."""
    shutil.copytree(toy_data_bin.parent / "text", tmp_path / "text")
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "data-bin", LS)
    recipe.write_text(recipe.read_text().replace(
        "[data]\n", f"[data]\nprepare = {json.dumps(prepare)}\nlauncher = \"{launcher}\"\n", 1))
    return recipe


def preprocess_command(tmp_path, gate=None):
    """fairseq-preprocess of the toy text into tmp_path/data-bin; with `gate`, only once that file exists."""
    text = tmp_path / "text"
    command = (f"fairseq-preprocess --source-lang src --target-lang tgt --trainpref {text}/train "
               f"--validpref {text}/valid --testpref {text}/test --destdir {tmp_path}/data-bin --workers 1 "
               f"--joined-dictionary")
    wait = f"while [ ! -e {gate} ]; do sleep 0.2; done; " if gate else ""
    return ["sh", "-c", f"echo preparing the toy data; {wait}exec {command}"]


def record(out):
    return json.loads((out / "prepare" / "job.json").read_text())


def submissions(out):
    return sorted(p.name for p in (out / "prepare" / "submitit").glob("*_submitted.pkl"))


def test_prepare_job_no_wait_attach_once_then_train(toy_data_bin, tmp_path):
    gate = tmp_path / "raw-data-arrived"
    recipe = data_job_recipe(tmp_path, toy_data_bin, preprocess_command(tmp_path, gate))
    out = tmp_path / "exp"

    # --no-wait: the preparation job is submitted and recorded; no run's job yet
    first = experiment(recipe, out, *LOCAL, "--no-wait", check=True, timeout=120)
    job = record(out)
    assert job["launcher"] == "submitit-local" and job["folder"] == str((out / "prepare" / "submitit").resolve())
    assert "outcome" not in job and job["command"] == preprocess_command(tmp_path, gate)
    assert f"data: preparing as job {job['id']}: sh -c" in first.stdout
    assert f"--no-wait: data preparation job {job['id']} running; run the same command again" in first.stdout
    assert not (out / "ls-a0.1-seed1").exists() and not (tmp_path / "data-bin").exists()

    # the same command attaches to it and never submits it again
    again = experiment(recipe, out, *LOCAL, "--no-wait", check=True, timeout=120)
    assert f"data: attached to preparation job {job['id']} (submitted earlier)" in again.stdout
    assert "preparing as job" not in again.stdout and record(out)["id"] == job["id"]
    assert submissions(out) == [f"{job['id']}_submitted.pkl"] and not (out / "ls-a0.1-seed1").exists()

    # the pool may not go on while the job may still be writing the data-bin
    pool = experiment(recipe, out, timeout=120)
    assert pool.returncode == 2 and pool.stderr.strip().count("\n") == 0
    assert f"{out / 'prepare' / 'job.json'}: submitit-local job {job['id']} preparing the data may still be " \
           f"running; run the same command with --launcher submitit-local" in pool.stderr

    # the data arrives: the waiting pipeline sees the job end, then submits and waits for the run
    gate.touch()
    done = experiment(recipe, out, *LOCAL, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"data: preparation job {job['id']} done in" in done.stdout
    lines = done.stdout.splitlines()
    prepared = next(i for i, line in enumerate(lines) if f"preparation job {job['id']} done" in line)
    run_submitted = next(i for i, line in enumerate(lines) if "ls-a0.1-seed1: submitted as job" in line)
    assert prepared < run_submitted
    assert record(out)["outcome"] == "done" and submissions(out) == [f"{job['id']}_submitted.pkl"]
    assert (tmp_path / "data-bin" / "dict.src.txt").exists()
    log = (out / "prepare" / "submitit" / f"{job['id']}_0_log.out").read_text()
    assert f"data: preparing in job {job['id']}" in log and "preparing the toy data" in log
    assert json.loads((out / "experiment.json").read_text())["runs"] == {"ls-a0.1-seed1": "done"}

    # prepared data is used as it is: no job
    rerun = experiment(recipe, out, *LOCAL, check=True, timeout=120)
    assert f"data: using {tmp_path / 'data-bin'}" in rerun.stdout and "preparation job" not in rerun.stdout
    assert len(submissions(out)) == 1


def test_a_failing_prepare_job_stops_everything_and_names_its_log(toy_data_bin, tmp_path):
    recipe = data_job_recipe(tmp_path, toy_data_bin,
                             ["sh", "-c", "echo looking for the raw data; echo 'raw data not found' >&2; exit 3"])
    out = tmp_path / "exp"
    folder = (out / "prepare" / "submitit").resolve()

    proc = experiment(recipe, out, *LOCAL, timeout=120)
    job = record(out)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"labo-experiment: error: data preparation failed in job {job['id']}: the prepare command exited with " \
           f"status 3; log: {folder / (job['id'] + '_0_log.out')}" in proc.stderr
    assert "raw data not found" in (folder / f"{job['id']}_0_log.out").read_text()
    assert job["outcome"] == "failed: the prepare command exited with status 3"
    assert not (out / "ls-a0.1-seed1").exists() and not (out / "experiment.json").exists()

    # --no-wait, the job fails while nobody waits: the next run says so and submits nothing
    experiment(recipe, out, *LOCAL, "--no-wait", check=True, timeout=120)
    second = record(out)
    assert second["id"] != job["id"] and len(submissions(out)) == 2
    assert wait_for(lambda: (folder / f"{second['id']}_0_result.pkl").exists(), 60)
    time.sleep(1)  # the job's process exits after writing its result
    seen = experiment(recipe, out, *LOCAL, timeout=120)
    assert seen.returncode == 2 and f"data preparation failed in job {second['id']}" in seen.stderr
    assert "preparing as job" not in seen.stdout and len(submissions(out)) == 2
    assert record(out)["outcome"].startswith("failed")
    # a failure already reported: the same command tries again
    retry = experiment(recipe, out, *LOCAL, timeout=120)
    assert retry.returncode == 2 and "preparing as job" in retry.stdout and len(submissions(out)) == 3


def test_slurm_dry_run_prints_the_prepare_jobs_script(toy_data_bin, tmp_path):
    recipe = data_job_recipe(tmp_path, toy_data_bin, preprocess_command(tmp_path))
    recipe.write_text(recipe.read_text() + '\n[slurm]\npartition = "gpu"\naccount = "nlp"\ngpus_per_run = 2\n'
                                           'cpus_per_gpu = 5\ntime_min = 45\nsetup = ["module load gcc"]\n')
    out = tmp_path / "exp"
    proc = experiment(recipe, out, "--launcher", "slurm", "--dry-run", check=True)
    assert not out.exists()
    head, prepare, run = proc.stdout.split("#!/bin/bash")
    assert f"# ---- data preparation (before any run's job): {out.resolve()}/prepare/submitit/<job id>_submission.sh" \
           in head
    for line in ("#SBATCH --job-name=tiny/prepare", "#SBATCH --partition=gpu", "#SBATCH --account=nlp",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --time=45", "# setup\nmodule load gcc\n",
                 f"-m submitit.core._submit {out.resolve()}/prepare/submitit"):
        assert line in prepare, line
    assert "gpus" not in prepare  # CPU only
    assert "#SBATCH --gpus-per-node=2" in run
    # prepared data: no preparation job
    shutil.copytree(toy_data_bin, tmp_path / "data-bin")
    proc = experiment(recipe, out, "--launcher", "slurm", "--dry-run", check=True)
    assert f"# data: {tmp_path / 'data-bin'} holds fairseq data: no preparation job" in proc.stdout
    assert proc.stdout.count("#!/bin/bash") == 1


def test_data_launcher_errors_and_the_pool(toy_data_bin, tmp_path, capsys):
    recipe = data_job_recipe(tmp_path, toy_data_bin, preprocess_command(tmp_path), launcher="cluster")
    with pytest.raises(RecipeError, match=r'\[data\] launcher must be "here" or "job", got \'cluster\''):
        load_recipe(recipe)
    proc = experiment(recipe, tmp_path / "exp", *LOCAL)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "[data] launcher must be" in proc.stderr

    # the pool prepares here, saying that "job" does not apply to it
    recipe.write_text(recipe.read_text().replace('launcher = "cluster"', 'launcher = "job"'))
    out = tmp_path / "exp"
    out.mkdir()
    prepare_data_as_job(load_recipe(recipe), LocalLauncher(), out)
    prepare_data(load_recipe(recipe))
    said = capsys.readouterr().out
    assert 'data: [data] launcher = "job" applies to --launcher slurm and submitit-local; preparing here' in said
    assert (tmp_path / "data-bin" / "dict.src.txt").exists() and not (out / "prepare").exists()

    # an unreadable record of a preparation job: one line naming it
    (out / "prepare").mkdir()
    (out / "prepare" / "job.json").write_text("{not json")
    with pytest.raises(UserError, match="data-preparation record .*job.json is not valid JSON"):
        prepare_data_as_job(load_recipe(recipe), LocalLauncher(), out)
