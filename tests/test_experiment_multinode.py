"""labo-experiment --launcher slurm with [slurm] nodes > 1: one job of one task per node, trained
with fairseq's own SLURM initialisation (--distributed-port).

There is no SLURM here. The sbatch script is checked as submitit writes it (--dry-run). The two
nodes are two processes of this machine, each running what srun runs on a node (`python -m
submitit.core._submit FOLDER`, the job's pickled RunJob) with the SLURM variables srun gives that
node's task; `sbatch` and `scontrol` are small scripts on PATH (sbatch answers a job id,
`scontrol show hostnames` expands a comma-separated node list, `scontrol requeue` is logged).
Training runs on CPU with gloo. fairseq's SLURM initialisation with one task per node takes each
node's GPU count from torch.cuda.device_count() (rank = node x GPUs, world = nodes x GPUs, one
worker spawned per GPU), which is 0 here: a sitecustomize on the nodes' PYTHONPATH makes
fairseq-train see one GPU per node, and nothing else of torch or fairseq is replaced."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from labo_fairseq.experiment import load_recipe, plan_runs
from labo_fairseq.experiment.launchers import PORT_BASE, PORT_SPAN, distributed_port
from tests.test_experiment import wait_for, write_recipe
from tests.toy import BIN_DIR, run_cli

import submitit  # noqa: F401,E402  (the [test] extra installs it)
from submitit.core.utils import pickle_load  # noqa: E402

JOB_ID = "4242"
NODES = "localhost,127.0.0.1"  # two names of this machine: the job's two "nodes"
LS_OVER_GLOO = '[[methods]]\nkind = "ls"\nargs = ["--distributed-backend", "gloo"]\n'
TWO_NODES = "\n[slurm]\nnodes = 2\ngpus_per_run = 1\ntime_min = 30\n"
FAKE_SBATCH = f'#!/bin/sh\necho "sbatch $*" >> "$FAKE_SLURM_LOG"\necho "Submitted batch job {JOB_ID}"\n'
FAKE_SRUN = '#!/bin/sh\necho "srun is not run in this test" >&2\nexit 1\n'
FAKE_SCONTROL = """#!/bin/sh
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
if [ "$1 $2" = "show hostnames" ]; then echo "$3" | tr ',' '\\n'; fi
"""
ONE_GPU_PER_NODE = """import sys
if sys.argv and sys.argv[0].endswith("fairseq-train"):
    import torch
    torch.cuda.device_count = lambda: 1  # the node's one GPU (training itself runs with --cpu)
"""


def experiment(recipe, out, *flags, env=None, check=False, timeout=600):
    return run_cli(["labo-experiment", recipe, "--out", out, *flags], cwd=recipe.parent, env=env, check=check,
                   timeout=timeout)


def fake_slurm(tmp_path):
    """A directory of fake sbatch, srun and scontrol, and the environment that puts it first on PATH."""
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    (tmp_path / "gpu-shim").mkdir()
    (tmp_path / "gpu-shim" / "sitecustomize.py").write_text(ONE_GPU_PER_NODE)
    return {"PATH": f"{fake}{os.pathsep}{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
            "FAKE_SLURM_LOG": str(tmp_path / "slurm-calls.log")}


def start_node(node, folder, env, cwd, shim):
    """What srun starts on node `node` of job JOB_ID: submitit's entry point, that node's SLURM variables."""
    task = {key: value for key, value in os.environ.items()
            if key not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK") and not key.startswith("SLURM_")}
    task.update(env, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=JOB_ID, SLURM_JOB_NODELIST=NODES,
                SLURM_STEP_NODELIST=NODES, SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2",
                SLURM_NTASKS_PER_NODE="1", SLURM_NODEID=str(node), SLURM_PROCID=str(node), SLURM_LOCALID="0",
                PYTHONPATH=str(shim), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = open(folder / f"{JOB_ID}_{node}_log.out", "a")
    return subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", str(folder)], cwd=cwd, env=task,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def descendants(pid):
    """Every process below `pid` (SLURM's cgroup would hold them all)."""
    out = []
    path = Path(f"/proc/{pid}/task/{pid}/children")
    for child in (int(p) for p in path.read_text().split()) if path.exists() else []:
        out += [child, *descendants(child)]
    return out


def kill_tree(proc):
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def test_multinode_dry_run_asks_for_nodes_and_trains_over_them(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n', seeds=(1, 2))
    recipe.write_text(recipe.read_text() + '\n[slurm]\nnodes = 2\ngpus_per_run = 4\ncpus_per_gpu = 3\n')
    out = tmp_path / "out"
    proc = experiment(recipe, out, "--launcher", "slurm", "--dry-run", check=True)
    assert not out.exists()
    scripts = proc.stdout.split("#!/bin/bash")[1:]
    assert len(scripts) == 2 and "one per run, 2 nodes each" in proc.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=12", "--output " + str(out.resolve() / "ls-a0.1-seed1" / "submitit")
                 + "/%j_%t_log.out"):
        assert line in scripts[0], line
    runs = plan_runs(load_recipe(recipe), out)
    ports = [distributed_port(run, {}) for run in runs]
    assert ports[0] != ports[1] and all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports)
    commands = [line for line in proc.stdout.splitlines() if "fairseq-train" in line]
    assert len(commands) == 2
    for command, port in zip(commands, ports):
        # the port is the job's flag: last, after the run's own flags
        assert "--distributed-world-size 8" in command and command.endswith(f" --distributed-port {port}")
    # the port is the run's: the same from another working directory (it hashes the absolute path)
    again = experiment(recipe, out.resolve(), "--launcher", "slurm", "--dry-run", check=True)
    assert [line for line in again.stdout.splitlines() if "fairseq-train" in line] == commands

    # flags override; one node keeps today's single-node job (no port, fairseq spawns on its GPUs)
    proc = experiment(recipe, out, "--launcher", "slurm", "--dry-run", "--slurm-distributed-port", "29123",
                      "--slurm-nodes", "3", "--slurm-gpus-per-run", "2", check=True)
    assert "#SBATCH --nodes=3" in proc.stdout and "#SBATCH --gpus-per-node=2" in proc.stdout
    commands = [line for line in proc.stdout.splitlines() if "fairseq-train" in line]
    assert all("--distributed-world-size 6" in c and c.endswith(" --distributed-port 29123") for c in commands)
    proc = experiment(recipe, out, "--launcher", "slurm", "--dry-run", "--slurm-nodes", "1", check=True)
    assert "#SBATCH --nodes=1" in proc.stdout and "--distributed-port" not in proc.stdout
    assert "--distributed-world-size 4" in proc.stdout


@pytest.mark.parametrize("table,flags,message", [
    ("nodes = 0", (), "[slurm] nodes must be an integer >= 1, got 0"),
    ("nodes = 1.5", (), "[slurm] nodes must be an integer >= 1, got 1.5"),
    ("distributed_port = 80", (), "[slurm] distributed_port must be an integer in [1024, 65535], got 80"),
    ("", ("--slurm-nodes", "0"), "--slurm-nodes must be an integer >= 1, got 0"),
    ("", ("--slurm-distributed-port", "70000"), "--slurm-distributed-port must be an integer in [1024, 65535], "
                                                "got 70000"),
    ("nodes = 2\ngpus_per_run = 0", (), "[slurm] nodes = 2 needs gpus_per_run >= 1, got 0: fairseq's multi-node "
                                        "training runs one worker per GPU of each node"),
    ("", ("--slurm-nodes", "2", "--slurm-gpus-per-run", "0"), "--slurm-nodes 2 needs gpus_per_run >= 1"),
])
def test_multinode_settings_errors_are_one_line(toy_data_bin, tmp_path, table, flags, message):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n')
    recipe.write_text(recipe.read_text() + f"\n[slurm]\n{table}\n")
    proc = experiment(recipe, tmp_path / "out", "--launcher", "slurm", "--dry-run", *flags)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("labo-experiment: error: ") and message in lines[-1], lines
    # a bad flag value is argparse's usage and one error line; a bad recipe or combination, one line
    assert len(lines) == 1 or lines[0].startswith("usage: ") and flags and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_multinode_needs_the_slurm_launcher(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n')
    recipe.write_text(recipe.read_text() + TWO_NODES)
    proc = experiment(recipe, tmp_path / "out", "--launcher", "submitit-local")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert f"{recipe}: [slurm] nodes = 2 needs --launcher slurm (submitit-local runs each job as processes of " \
           f"this machine)" in proc.stderr
    assert not list((tmp_path / "out").glob("*/run.json"))


def test_fairseqs_slurm_init_matches_the_job(toy_data_bin, tmp_path, monkeypatch):
    """fairseq's own rank and world inference, on the training command of a 2-node x 4-GPU run,
    with the variables srun gives the second node's task: world 8, rank 4, the port in the command."""
    import torch
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed.utils import infer_init_method

    from labo_fairseq.experiment.launchers import distributed_recipe, distributed_runs, job_settings

    recipe = load_recipe(write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n'))
    settings = job_settings(recipe, {"nodes": 2, "gpus_per_run": 4})
    recipe = distributed_recipe(recipe, settings)
    (run,) = distributed_runs(recipe, plan_runs(recipe, tmp_path / "out"), settings)
    from labo_fairseq.experiment.runs import train_command

    command = train_command(recipe, run)
    env = fake_slurm(tmp_path)
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**env, "SLURM_JOB_NODELIST": "gpu-a,gpu-b", "SLURM_STEP_NODELIST": "gpu-a,gpu-b",
                       "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, command[1:]))
    infer_init_method(cfg.distributed_training)
    port = distributed_port(run, settings)
    assert cfg.distributed_training.distributed_init_method == f"tcp://gpu-a:{port}"
    assert cfg.distributed_training.distributed_world_size == 8 == int(command[command.index(
        "--distributed-world-size") + 1])
    assert cfg.distributed_training.distributed_rank == 4
    assert cfg.distributed_training.distributed_num_procs == 4  # one worker per GPU of the node
    assert "scontrol show hostnames gpu-a,gpu-b" in Path(env["FAKE_SLURM_LOG"]).read_text()


def test_two_node_job_trains_over_both_requeues_and_only_the_first_node_keeps_records(toy_data_bin, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, LS_OVER_GLOO, max_update=30, save_every=5)
    recipe.write_text(recipe.read_text() + TWO_NODES)
    out = tmp_path / "exp"
    run_dir = out / "ls-a0.1-seed1"
    folder = run_dir.resolve() / "submitit"
    env = fake_slurm(tmp_path)
    calls = Path(env["FAKE_SLURM_LOG"])

    # the pipeline submits the run's job (fake sbatch) and records it
    submitted = experiment(recipe, out, "--launcher", "slurm", "--no-wait", env=env, check=True, timeout=120)
    assert f"submitted as job {JOB_ID}" in submitted.stdout and "(2 nodes x 1 GPU(s) each)" in submitted.stdout
    script = (folder / f"{JOB_ID}_submission.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert f"-m submitit.core._submit {folder}" in script
    record = json.loads((run_dir / "run.json").read_text())
    assert [job["id"] for job in record["jobs"]] == [JOB_ID]
    command = record["train_command"]
    port = int(command[command.index("--distributed-port") + 1])
    assert port == distributed_port(plan_runs(load_recipe(recipe), out)[0], {})
    assert command[command.index("--distributed-world-size") + 1] == "2"
    submitted_json = (run_dir / "run.json").read_bytes()

    nodes = {}
    try:
        # node 1 alone: its fairseq-train asks SLURM for the nodes and spawns its worker, which waits
        # for rank 0; nothing of the run's records is written
        nodes[1] = start_node(1, folder, env, tmp_path, tmp_path / "gpu-shim")
        assert wait_for(lambda: "scontrol show hostnames" in (calls.read_text() if calls.exists() else "")
                        and len(descendants(nodes[1].pid)) >= 2, 180, nodes[1]), \
            (folder / f"{JOB_ID}_1_log.out").read_text()
        assert (run_dir / "run.json").read_bytes() == submitted_json
        assert not [p.name for p in run_dir.iterdir() if p.name not in ("run.json", "submitit", "train.node1.log")]

        # node 0 joins; once a checkpoint is saved, the preemption signal reaches both tasks: the
        # first checkpoints and requeues the job, the other is left to SLURM, which kills it
        nodes[0] = start_node(0, folder, env, tmp_path, tmp_path / "gpu-shim")
        train_log = run_dir / "train.log"
        assert wait_for(lambda: train_log.exists() and "Saved checkpoint" in train_log.read_text(), 300,
                        nodes[0]), (folder / f"{JOB_ID}_0_log.out").read_text()
        for proc in nodes.values():
            os.kill(proc.pid, signal.SIGUSR2)
        assert nodes[0].wait(90) != 0
        assert f"scontrol requeue {JOB_ID}" in calls.read_text()
        wait_for(lambda: nodes[1].poll() is not None, 30)  # its training fails or waits: SLURM kills it
        kill_tree(nodes[1])
        first_log = (folder / f"{JOB_ID}_0_log.out").read_text()
        assert "stopping its training for a requeue" in first_log and "Not checkpointing nor requeuing" in \
            (folder / f"{JOB_ID}_1_log.out").read_text()

        # the requeued job starts both tasks again: both resume, node 0 evaluates
        nodes = {node: start_node(node, folder, env, tmp_path, tmp_path / "gpu-shim") for node in (0, 1)}
        for node, proc in nodes.items():
            assert proc.wait(600) == 0, (folder / f"{JOB_ID}_{node}_log.out").read_text()[-3000:]
    finally:
        for proc in nodes.values():
            if proc.poll() is None:
                kill_tree(proc)

    assert pickle_load(folder / f"{JOB_ID}_0_result.pkl")[1]["status"] == "done"
    assert pickle_load(folder / f"{JOB_ID}_1_result.pkl")[1]["status"] == "trained on node 1"
    text, node1 = (run_dir / "train.log").read_text(), (run_dir / "train.node1.log").read_text()
    assert f"distributed init (rank 0): tcp://localhost:{port}" in text and "'distributed_world_size': 2" in text
    assert "(rank 1)" not in text and "as rank 0" not in node1
    # rank 1 joined the resumed training (the first attempt's log may be lost with the killed task;
    # that it trained is the checkpoint rank 0 saved, which takes both ranks' gradients)
    assert f"distributed init (rank 1): tcp://localhost:{port}" in node1
    resumed = text.rsplit("Loaded checkpoint", 1)
    assert len(resumed) == 2 and "num_updates 30" in resumed[1]
    # records and evaluation come from node 0 only
    assert (run_dir / "train.done").exists() and (run_dir / "command.sh").exists()
    assert (run_dir / "eval" / "test" / "scores.json").exists() and not (run_dir / "FAILED").exists()
    assert "evaluat" not in (folder / f"{JOB_ID}_1_log.out").read_text()

    # the pipeline collects the job's outcome (node 0's result) and writes the report
    proc = experiment(recipe, out, "--launcher", "slurm", env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"job {JOB_ID} finished while nobody waited" in proc.stdout
    assert json.loads((run_dir / "run.json").read_text())["jobs"][-1]["outcome"] == "done"
    assert calls.read_text().count("sbatch ") == 1  # submitted once


def test_other_nodes_stop_when_the_first_nodes_task_ends_first(toy_data_bin, tmp_path):
    """Node 0 refuses the run before its training starts (its run.json now records another
    command): node 1, whose training would wait for rank 0 for ever, stops and fails."""
    recipe = write_recipe(tmp_path / "r.toml", toy_data_bin, LS_OVER_GLOO, max_update=30)
    recipe.write_text(recipe.read_text() + TWO_NODES)
    out = tmp_path / "exp"
    run_dir = out / "ls-a0.1-seed1"
    folder = run_dir.resolve() / "submitit"
    env = fake_slurm(tmp_path)
    calls = Path(env["FAKE_SLURM_LOG"])
    experiment(recipe, out, "--launcher", "slurm", "--no-wait", env=env, check=True, timeout=120)
    record = json.loads((run_dir / "run.json").read_text())
    record["train_command"] = [*record["train_command"], "--dropout", "0.3"]
    (run_dir / "run.json").write_text(json.dumps(record))

    nodes = {}
    try:
        nodes[1] = start_node(1, folder, env, tmp_path, tmp_path / "gpu-shim")
        assert wait_for(lambda: "scontrol show hostnames" in (calls.read_text() if calls.exists() else "")
                        and len(descendants(nodes[1].pid)) >= 2, 180, nodes[1])
        nodes[0] = start_node(0, folder, env, tmp_path, tmp_path / "gpu-shim")
        assert nodes[0].wait(120) != 0
        assert nodes[1].wait(60) != 0
    finally:
        for proc in nodes.values():
            if proc.poll() is None:
                kill_tree(proc)
    assert "trained with a different command" in (run_dir / "FAILED").read_text()
    log = (folder / f"{JOB_ID}_1_log.out").read_text()
    assert f"the first node's task ended ({folder / (JOB_ID + '_0_result.pkl')}) while node 1 was training" in log
    assert not (run_dir / "train.log").exists() and not (run_dir / "command.sh").exists()
