"""labo-experiment --launcher submitit-local / slurm: runs as submitit jobs (experiment.launchers).

The local executor runs the same jobs as SLURM would, as processes of this machine: submission,
job ids in run.json, re-attaching after --no-wait, a failing run, a simulated preemption (the
signal submitit's jobs get before a time limit or preemption: USR2) and Ctrl-C. The SLURM path
itself is checked through the sbatch scripts that submitit's SlurmExecutor writes (--dry-run)."""
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from labo_fairseq.errors import UserError
from labo_fairseq.experiment import RecipeError, load_recipe, plan_runs
from labo_fairseq.experiment.runner import refuse_runs_with_live_jobs
from labo_fairseq.procs import pid_running
from tests.test_experiment import processes_mentioning, wait_for, write_recipe
from tests.toy import BIN_DIR, run_cli

import submitit  # noqa: F401,E402  (the [test] extra installs it: a missing one fails here)

THREE_RUNS = """
[[methods]]
kind = "ls"
[[methods]]
kind = "labo"
tau = 1.25
[[methods]]
kind = "labo"
tau = 1.5
label = "LABO broken"
args = ["--labo-chunk-size", "0"]
"""
SLURM = """
[slurm]
partition = "gpu"
account = "nlp"
gpus_per_run = 2
cpus_per_gpu = 6
time_min = 90
mem_gb = 48
setup = ["module load cuda/12.4", "source /shared/venv/bin/activate"]
"""


def experiment(recipe, out, *flags, check=False, timeout=600):
    return run_cli(["labo-experiment", recipe, "--out", out, *flags], check=check, timeout=timeout)


def start(recipe, out, *flags, log):
    """The pipeline in the background, its own session (signals reach only it), output to `log`."""
    env = dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([str(BIN_DIR / "labo-experiment"), str(recipe), "--out", str(out), *map(str, flags)],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def jobs_of(run_dir):
    return json.loads((run_dir / "run.json").read_text()).get("jobs", [])


def task_pids(controller_pid):
    """The job processes that a submitit-local controller (pid = the job id) runs."""
    path = Path(f"/proc/{controller_pid}/task/{controller_pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("table,message", [
    ("[slurm]\ngpus = 2\n", "[slurm] has unknown key(s) gpus (known: account, array_parallelism, constraint"),
    ("[slurm]\ngpus_per_run = -1\n", "[slurm] gpus_per_run must be an integer >= 0, got -1"),
    ("[slurm]\ntime_min = 0\n", "[slurm] time_min must be an integer >= 1, got 0"),
    ("[slurm]\nmem_gb = \"lots\"\n", "[slurm] mem_gb must be a finite number > 0, got 'lots'"),
    ("[slurm]\nsetup = \"module load cuda\"\n", "[slurm] setup must be a list of shell lines (strings), got"),
    ("[slurm]\npartition = \"\"\n", "[slurm] partition must be a non-empty string, got ''"),
    ("slurm = 3\n", "[slurm] must be a table, got 3"),
])
def test_slurm_section_errors_are_one_line(toy_data_bin, tmp_path, table, message):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n')
    text = recipe.read_text()
    recipe.write_text(table + text if table.startswith("slurm =") else text + table)
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert message in str(error.value) and str(recipe) in str(error.value)
    proc = experiment(recipe, tmp_path / "out", "--launcher", "slurm", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_slurm_flag_errors_exit_2(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n')
    proc = experiment(recipe, tmp_path / "out", "--launcher", "slurm", "--slurm-array-parallelism", "0", "--dry-run")
    assert proc.returncode == 2 and "--slurm-array-parallelism must be an integer >= 1, got 0" in proc.stderr
    proc = experiment(recipe, tmp_path / "out", "--slurm-partition", "gpu", "--dry-run")  # pool: no SLURM flags
    assert proc.returncode == 2 and "need --launcher slurm or submitit-local" in proc.stderr
    # a real submission needs srun; here there is none: one line, nothing written
    proc = experiment(recipe, tmp_path / "out", "--launcher", "slurm")
    assert proc.returncode == 2 and "labo-experiment: error: --launcher slurm: no srun here" in proc.stderr
    assert not list((tmp_path / "out").glob("*/run.json"))


def test_the_pool_refuses_a_run_whose_submitit_job_may_still_run(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n')
    run_dir = tmp_path / "out" / "ls-a0.1-seed1"
    run_dir.mkdir(parents=True)
    record = {"jobs": [{"launcher": "submitit-local", "id": "4242", "folder": str(run_dir / "submitit")}]}
    (run_dir / "run.json").write_text(json.dumps(record))
    proc = experiment(recipe, tmp_path / "out")
    assert proc.returncode != 0
    assert f"{run_dir} has submitit-local job 4242 that may still be running; run the same command with " \
           "--launcher submitit-local to attach to it" in proc.stderr + proc.stdout
    assert json.loads((run_dir / "run.json").read_text()) == record and not (run_dir / "checkpoints").exists()
    runs = plan_runs(load_recipe(recipe), tmp_path / "out")
    with pytest.raises(UserError, match="job 4242 that may still be running"):
        refuse_runs_with_live_jobs(runs)
    record["jobs"][0]["outcome"] = "done"  # an ended job: the pool may go on
    (run_dir / "run.json").write_text(json.dumps(record))
    refuse_runs_with_live_jobs(runs)


def test_slurm_dry_run_prints_submitits_sbatch_scripts(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n', seeds=(1, 2))
    recipe.write_text(recipe.read_text() + SLURM)
    out = tmp_path / "out"
    proc = experiment(recipe, out, "--launcher", "slurm", "--dry-run", check=True)
    assert not out.exists()  # a dry run writes nothing
    scripts = proc.stdout.split("#!/bin/bash")[1:]
    assert len(scripts) == 2
    first = scripts[0]
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=nlp", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --time=90", "#SBATCH --mem=48GB", "#SBATCH --nodes=1",
                 "#SBATCH --signal=USR2@120", f"#SBATCH --output={out.resolve()}/ls-a0.1-seed1/submitit/%j_0_log.out",
                 "# setup\nmodule load cuda/12.4\nsource /shared/venv/bin/activate\n",
                 f"-m submitit.core._submit {out.resolve()}/ls-a0.1-seed1/submitit"):
        assert line in first, line
    assert "ls-a0.1-seed2/submitit" in scripts[1]
    # two GPUs per run: fairseq's own distributed training on them
    commands = [line for line in proc.stdout.splitlines() if "fairseq-train" in line]
    assert len(commands) == 2 and all("--distributed-world-size 2" in c for c in commands)

    # flags override the recipe
    proc = experiment(recipe, out, "--launcher", "slurm", "--dry-run", "--slurm-partition", "a100",
                      "--slurm-gpus-per-run", "1", "--slurm-time-min", "30", "--slurm-setup", "module load gcc",
                      "--slurm-qos", "high", "--only", "ls-a0.1-seed2", check=True)
    script = proc.stdout.split("#!/bin/bash")[1]
    assert "#SBATCH --partition=a100" in script and "#SBATCH --gpus-per-node=1" in script
    assert "#SBATCH --time=30" in script and "#SBATCH --qos=high" in script and "#SBATCH --cpus-per-task=6" in script
    assert "# setup\nmodule load gcc\n" in script and "module load cuda" not in script
    assert "--distributed-world-size" not in proc.stdout  # one GPU: no distributed training


def test_submitit_local_jobs_attach_requeue_and_report(toy_data_bin, tmp_path):
    # ls and LABO train 40 updates (a checkpoint every 10); the third run's training fails at start
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, THREE_RUNS, max_update=40, save_every=10)
    out = tmp_path / "exp"
    ls, labo, broken = out / "ls-a0.1-seed1", out / "labo-a0.1-tau1.25-seed1", out / "labo-a0.1-tau1.5-seed1"
    flags = ("--launcher", "submitit-local", "--jobs", "3")

    # 1. --no-wait: three jobs submitted, recorded in each run.json, the pipeline exits at once
    submitted = experiment(recipe, out, *flags, "--no-wait", check=True, timeout=120)
    assert "--no-wait: 3 job(s) queued or running" in submitted.stdout
    for run_dir in (ls, labo, broken):
        (job,) = jobs_of(run_dir)
        assert job["launcher"] == "submitit-local" and job["folder"] == str(run_dir.resolve() / "submitit")
        assert (run_dir / "submitit").is_dir() and f"submitted as job {job['id']}" in submitted.stdout
    ls_job = jobs_of(ls)[0]["id"]

    # 2. the same command attaches to the jobs; a preemption signal (USR2) to the ls job stops its
    #    training after a checkpoint and requeues it; Ctrl-C leaves the jobs running
    log = tmp_path / "attach.log"
    attach = start(recipe, out, *flags, log=log)
    try:
        assert wait_for(lambda: "Saved checkpoint" in (ls / "train.log").read_text()
                        if (ls / "train.log").exists() else False, 240), log.read_text()
        (task,) = task_pids(int(ls_job))
        os.kill(task, signal.SIGUSR2)
        assert wait_for(lambda: "ls-a0.1-seed1: requeued" in log.read_text(), 60, attach), log.read_text()
        attach.send_signal(signal.SIGINT)
        assert attach.wait(60) == 130
    finally:
        if attach.poll() is None:
            attach.kill()
    text = log.read_text()
    assert text.count("attached to job") == 3, text
    assert "submitted as job" not in text  # nothing submitted twice
    assert "left queued or running; run the same command again to attach" in text
    assert pid_running(int(ls_job))  # the requeued job goes on without the pipeline

    # 3. attach again and wait: every run ends, the report is written
    proc = experiment(recipe, out, *flags, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]  # one run failed
    summary = json.loads((out / "experiment.json").read_text())
    assert summary["runs"]["ls-a0.1-seed1"] == "done" and summary["runs"]["labo-a0.1-tau1.25-seed1"] == "done"
    failure = summary["runs"]["labo-a0.1-tau1.5-seed1"]
    assert failure.startswith("failed: training labo-a0.1-tau1.5-seed1 failed; see ") and "/submitit/" in failure
    assert "--labo-chunk-size must be >= 1" in (broken / "train.log").read_text()
    log_path = Path(failure.rsplit("log: ", 1)[1].rstrip(")"))
    assert log_path.exists() and log_path.parent == broken.resolve() / "submitit"
    assert "LS α=0.1" in (out / "report" / "REPORT.md").read_text()
    assert "headline:" in proc.stdout
    # ls and LABO each ran as one job, never submitted again; the failed run was retried
    assert len(jobs_of(ls)) == 1 and len(jobs_of(labo)) == 1 and len(jobs_of(broken)) == 2
    assert jobs_of(ls)[0]["outcome"] == "done"
    # the preempted run resumed from its checkpoint and trained to the same final update
    train_log = (ls / "train.log").read_text()
    resumed = [int(u) for u in re.findall(r"Loaded checkpoint .* \(epoch \d+ @ (\d+) updates\)", train_log)]
    # the first save is the end of epoch 1 (update 8) or the interval save (update 10): USR2 follows
    # the first "Saved checkpoint" line, so either may be where it resumes
    assert resumed and resumed[-1] >= 8, train_log[-2000:]
    assert "num_updates 40" in train_log.rsplit("Loaded checkpoint", 1)[1]
    assert "num_updates 40" in (labo / "train.log").read_text()
    job_log = (ls / "submitit" / f"{ls_job}_0_log.out").read_text()
    assert "Requeued job" in job_log and "stopping its training for a requeue" in job_log
    for run_dir in (ls, labo):
        assert (run_dir / "eval" / "test" / "scores.json").exists()

    # 4. finished runs are skipped without a job
    again = experiment(recipe, out, *flags, "--only", "ls-a0.1", "labo-a0.1-tau1.25", check=True, timeout=120)
    assert again.stdout.count("already finished, skipping") == 2 and "submitted" not in again.stdout
    assert len(jobs_of(ls)) == 1 and len(jobs_of(labo)) == 1


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_jobs(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n', max_update=100000)
    out = tmp_path / "exp"
    run_dir = out / "ls-a0.1-seed1"
    log = tmp_path / "pipeline.log"
    proc = start(recipe, out, "--launcher", "submitit-local", "--cancel-on-interrupt", "--progress", "1", log=log)
    # while it waits, the pool's status line (a plain line every second here: not a terminal),
    # from the running job's train.log
    status = re.compile(r"progress: 1/1 run\(s\) started, 0 finished; ls-a0\.1-seed1 update [1-9]\d*/100000; ")
    try:
        assert wait_for(lambda: status.search(log.read_text()), 180, proc), log.read_text()
        job = jobs_of(run_dir)[0]["id"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"interrupted: cancelled job(s) {job}" in text
    assert "progress:" not in text.split("interrupted:", 1)[1]
    assert not pid_running(int(job))
    assert wait_for(lambda: not processes_mentioning(str(run_dir / "checkpoints")), 30)
    assert not (run_dir / "train.done").exists()
