"""Runs as submitit jobs: `--launcher slurm` (one SLURM job per run) and `--launcher submitit-local`
(the same jobs as processes of this machine, --jobs at a time: the test of the whole path).

Each job runs execute_run (train -> evaluate -> long-tail), as the local thread pool does, so a
run resumes from its checkpoint_last.pt whoever starts it. A job's files (pickled call, result,
log) are in <run>/submitit/; run.json lists the run's jobs ("jobs": launcher, id, folder), so that
running the same command again attaches to a job still queued or running instead of submitting
the run a second time. A preempted or timed-out job (submitit's signal, USR2) stops its training
child and is requeued (RunJob.checkpoint); it resumes from the last checkpoint saved.

A run over several nodes ([slurm] nodes > 1) is one job of one task per node; submitit runs
RunJob on each. The first node's task (global rank 0) does what a one-node job does; the others
only run the same training command (execute.train_on_other_node), which fairseq's own SLURM
initialisation (--distributed-port) joins into one training. [data] launcher = "job" prepares the
data as a job of its own (PrepareJob), recorded in OUT/prepare/job.json, before any run's job.
"""
import contextlib
import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.errors import UserError
from labo_fairseq.evaluation.runs import FAILED_FILE, RUN_FILE, TRAIN_DONE, TRAIN_LOG
from labo_fairseq.experiment.children import ChildProcesses, Interrupted, tool_env
from labo_fairseq.experiment.console import duration, say
from labo_fairseq.experiment.progress import ProgressReporter, finished_line, resume_note
from labo_fairseq.experiment.recipe import SLURM_RULES, Recipe, RecipeError, slurm_setting_error
from labo_fairseq.experiment.records import (JOBS_KEY, RunRefused, check_run_dir, clear_failure, data_fingerprint,
                                             evaluation_change, prepare_run_dir, record_failure, recorded_jobs)
from labo_fairseq.experiment.runs import RunPlan
from labo_fairseq.procs import child_command, pid_running
from labo_fairseq.textfiles import read_json_object, write_json_atomic

LAUNCHERS = ("pool", "submitit-local", "slurm")
SUBMITIT_DIR = "submitit"  # a run's submitit folder: pickled call, result, log of each of its jobs
# [slurm] defaults (the recipe's [slurm] table and --slurm-* flags override them)
SLURM_DEFAULTS = {"nodes": 1, "gpus_per_run": 1, "cpus_per_gpu": 4, "time_min": 1440, "array_parallelism": 256,
                  "setup": []}
# a multi-node run's --distributed-port unless [slurm] distributed_port sets one: PORT_BASE + a hash
# of the run's directory modulo PORT_SPAN, below Linux's ephemeral ports (32768-60999)
PORT_BASE, PORT_SPAN = 20000, 12000
FIRST_NODE_POLL_S = 10.0    # how often another node looks whether the first node's task has ended
PREPARE_DIR = "prepare"     # OUT/prepare/: the data-preparation job's submitit folder and record
PREPARE_RECORD = "job.json"
SIGNAL_DELAY_S = 120        # submitit's USR2 comes this long before the time limit
RECORD_WAIT_S = 60          # a job waits this long for the submitter to record it in run.json
POLL_S = {"submitit-local": 1.0, "slurm": 30.0}
SLURM_QUEUED = {"PENDING", "REQUEUED", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                "UNKNOWN", "PREEMPTED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
RESULT_GRACE_S = 60         # a SLURM job that ended waits this long for its result file (shared filesystems lag)


class JobsSubmitted(Exception):
    """--no-wait: the runs' jobs are submitted (or still queued or running); nothing more to do now."""


def add_launcher_arguments(parser) -> None:
    """--launcher, --no-wait, --cancel-on-interrupt and a --slurm-KEY flag for each [slurm] key."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="pool",
                        help="how runs run: pool (default: this machine, --jobs at a time), slurm (one SLURM job "
                             "per run through submitit; see the recipe's [slurm] and the --slurm-* flags) or "
                             "submitit-local (the same jobs as processes of this machine, --jobs at a time)")
    parser.add_argument("--no-wait", action="store_true",
                        help="with slurm or submitit-local: submit the jobs and exit; the same command run again "
                             "attaches to them and writes the report once all are done")
    parser.add_argument("--cancel-on-interrupt", action="store_true",
                        help="with slurm or submitit-local: Ctrl-C cancels the submitted jobs (default: ask when "
                             "interactive, else leave them running; run the same command again to attach)")
    group = parser.add_argument_group("SLURM job settings (override the recipe's [slurm] table)")
    kinds = {"nodes": int, "gpus_per_run": int, "cpus_per_gpu": int, "time_min": int, "array_parallelism": int,
             "mem_gb": float, "distributed_port": int}
    meaning = {"nodes": ": nodes of each run's job, one task each (> 1: --launcher slurm, fairseq's multi-node "
                        "training over nodes x gpus_per_run GPUs)",
               "gpus_per_run": ": GPUs on each node of a run's job (> 1 on one node: fairseq's "
                               "--distributed-world-size on them)",
               "mem_gb": ": memory of each node of a job",
               "distributed_port": " (default: from a hash of the run's directory): the --distributed-port of "
                                   "multi-node runs"}
    for key in SLURM_RULES:
        flag = f"--slurm-{key.replace('_', '-')}"
        if key == "setup":
            group.add_argument(flag, action="append", metavar="LINE", dest="slurm_setup",
                               help="a shell line run before each job (module load, conda activate; repeat the "
                                    "flag for several; replaces the recipe's setup)")
        else:
            default = f" (default {SLURM_DEFAULTS[key]})" if key in SLURM_DEFAULTS else ""
            group.add_argument(flag, type=kinds.get(key, str), dest=f"slurm_{key}",
                               help=f"[slurm] {key}{default}{meaning.get(key, '')}",
                               metavar={int: "N", float: "GB"}.get(kinds.get(key), "NAME"))


def flag_overrides(args, error) -> Dict[str, object]:
    """The --slurm-* flags given, checked like the recipe's keys; `error(message)` reports a bad one."""
    given = {}
    for key in SLURM_RULES:
        value = getattr(args, f"slurm_{key}", None)
        if value is None:
            continue
        problem = slurm_setting_error(key, value)
        if problem:
            error(f"--slurm-{key.replace('_', '-')} {problem}")
        given[key] = value
    if args.launcher == "pool" and (given or args.no_wait or args.cancel_on_interrupt):
        error("--no-wait, --cancel-on-interrupt and --slurm-* need --launcher slurm or submitit-local")
    return given


def job_settings(recipe: Recipe, overrides: Dict[str, object]) -> Dict[str, object]:
    return {**SLURM_DEFAULTS, **recipe.slurm, **overrides}


def check_job_settings(kind: str, recipe: Recipe, overrides: Dict[str, object], settings: Dict[str, object]) -> None:
    """Refuses, in one line, settings that no job could train with: several nodes without GPUs
    (fairseq's SLURM initialisation counts each node's GPUs: on CPUs its world would be empty) or
    on submitit-local (one process of this machine, no SLURM to start a task on each node)."""
    nodes = int(settings["nodes"])
    if nodes == 1:
        return
    given = f"--slurm-nodes {nodes}" if "nodes" in overrides else f"{recipe.path}: [slurm] nodes = {nodes}"
    if kind != "slurm":
        raise UserError(f"{given} needs --launcher slurm ({kind} runs each job as processes of this machine)")
    if int(settings["gpus_per_run"]) < 1:
        raise UserError(f"{given} needs gpus_per_run >= 1, got 0: fairseq's multi-node training runs one worker "
                        f"per GPU of each node")


def distributed_recipe(recipe: Recipe, settings: Dict[str, object]) -> Recipe:
    """The recipe as the jobs train it: with several GPUs, fairseq's own distributed training on
    them (--distributed-world-size nodes x gpus_per_run; fairseq spawns one worker per GPU of
    each node)."""
    world = int(settings["nodes"]) * int(settings["gpus_per_run"])
    if world <= 1 or "--distributed-world-size" in recipe.train_args:
        return recipe
    return dataclasses.replace(recipe, train_args=[*recipe.train_args, "--distributed-world-size", str(world)])


def distributed_port(run: RunPlan, settings: Dict[str, object]) -> int:
    """A multi-node run's --distributed-port: [slurm] distributed_port, else one derived from the
    run's directory, so that it stays the same for every job of the run and differs between runs
    that may share a first node."""
    if "distributed_port" in settings:
        return int(settings["distributed_port"])
    digest = hashlib.sha256(str(run.run_dir.resolve()).encode("utf-8")).digest()
    return PORT_BASE + int.from_bytes(digest[:8], "big") % PORT_SPAN


def distributed_runs(recipe: Recipe, runs: Sequence[RunPlan], settings: Dict[str, object]) -> List[RunPlan]:
    """The runs as the jobs train them: over several nodes each adds its --distributed-port, which
    turns on fairseq's SLURM initialisation (rank 0 listens on it on the first node). The port
    is a flag of the run's job (RunPlan.job_args); the recipe's args may set one."""
    if int(settings["nodes"]) <= 1 or "--distributed-port" in recipe.train_args:
        return list(runs)
    return [dataclasses.replace(run, job_args=("--distributed-port", str(distributed_port(run, settings))))
            for run in runs]


def job_folder(run: RunPlan) -> Path:
    return run.run_dir.resolve() / SUBMITIT_DIR


def prepare_folder(out_dir) -> Path:
    """The data-preparation job's submitit folder."""
    return Path(out_dir).resolve() / PREPARE_DIR / SUBMITIT_DIR


def prepare_record_path(out_dir) -> Path:
    """OUT/prepare/job.json: the data-preparation job last submitted ({"launcher", "id", "folder",
    "submitted", "command", "outcome"}), so that running the command again attaches to it."""
    return Path(out_dir) / PREPARE_DIR / PREPARE_RECORD


def _cpus_per_task(settings: Dict[str, object]) -> int:
    """The CPUs of a job's task: cpus_per_gpu for each GPU of its node (or for one, without GPUs)."""
    return int(settings["cpus_per_gpu"]) * max(1, int(settings["gpus_per_run"]))


def _cluster_parameters(settings: Dict[str, object]) -> Dict[str, object]:
    """The sbatch parameters that every job of the pipeline shares."""
    from submitit.slurm.slurm import _convert_mem

    params = {"time": settings["time_min"], "signal_delay_s": SIGNAL_DELAY_S, "stderr_to_stdout": True,
              "setup": list(settings["setup"])}
    for key in ("partition", "account", "qos", "constraint"):
        if key in settings:
            params[key] = settings[key]
    if "mem_gb" in settings:
        params["mem"] = _convert_mem(float(settings["mem_gb"]))
    return params


def sbatch_parameters(recipe: Recipe, run: RunPlan, settings: Dict[str, object]) -> Dict[str, object]:
    """The sbatch parameters of a run's job, in submitit's SlurmExecutor names: `nodes` nodes, one
    task and gpus_per_run GPUs on each."""
    gpus = int(settings["gpus_per_run"])
    params = {"job_name": f"{recipe.name}/{run.name}", "nodes": int(settings["nodes"]), "ntasks_per_node": 1,
              "cpus_per_task": _cpus_per_task(settings), **_cluster_parameters(settings)}
    if gpus:
        params["gpus_per_node"] = gpus
    return params


def prepare_sbatch_parameters(recipe: Recipe, settings: Dict[str, object]) -> Dict[str, object]:
    """The data-preparation job's: one node, the CPUs of a run's job and no GPU."""
    cpus = _cpus_per_task(settings)
    return {"job_name": f"{recipe.name}/prepare", "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": cpus,
            **_cluster_parameters(settings)}


def _sbatch_text(folder: Path, params: Dict[str, object]) -> str:
    """The sbatch script submitit's SlurmExecutor writes for a job of this folder."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)


def sbatch_script(recipe: Recipe, run: RunPlan, settings: Dict[str, object]) -> str:
    """The sbatch script submitit's SlurmExecutor writes for this run's job."""
    return _sbatch_text(job_folder(run), sbatch_parameters(recipe, run, settings))


def describe_jobs(recipe: Recipe, runs: Sequence[RunPlan], settings: Dict[str, object], out_dir) -> str:
    """--launcher slurm --dry-run: the data-preparation job's sbatch script ([data] launcher =
    "job", when the data-bin is still to be prepared), then each run's."""
    nodes = int(settings["nodes"])
    each = f", {nodes} nodes each" if nodes > 1 else ""
    lines = [f"# SLURM jobs: one per run{each}, at most {settings['array_parallelism']} queued or running at once"]
    if recipe.data_launcher == "job":
        if any(recipe.data_bin.glob("dict.*.txt")):
            lines += ["", f"# data: {recipe.data_bin} holds fairseq data: no preparation job"]
        elif recipe.prepare is not None:
            script = prepare_folder(out_dir) / "<job id>_submission.sh"
            lines += ["", f"# ---- data preparation (before any run's job): {script}",
                      _sbatch_text(prepare_folder(out_dir), prepare_sbatch_parameters(recipe, settings))]
    for run in runs:
        script = job_folder(run) / "<job id>_submission.sh"
        lines += ["", f"# ---- {run.name}: {script}", sbatch_script(recipe, run, settings)]
    return "\n".join(lines)


class RunJob:
    """One run as a submitit job: execute_run in the job's process, returning {"status", "started",
    "finished"}. checkpoint() is submitit's hook for preemption and time limits: it stops the
    training child and asks for the same call again, which resumes from checkpoint_last.pt.
    In a multi-node job every node's task runs it: the first (global rank 0, the task whose
    result the pipeline reads and that submitit checkpoints and requeues) as above, the others
    only their part of the training (_train_on_other_node); a requeued job starts every task
    again, and all resume together."""

    def __init__(self, recipe: Recipe, run: RunPlan, subsets: Sequence[str]):
        self.recipe, self.run, self.subsets = recipe, run, list(subsets)
        self._children: Optional[ChildProcesses] = None

    def __getstate__(self):
        return {"recipe": self.recipe, "run": self.run, "subsets": self.subsets}

    def __setstate__(self, state):
        self.__dict__.update(state, _children=None)

    def __call__(self) -> dict:
        import submitit

        environment = submitit.JobEnvironment()
        _wait_for_record(self.run, environment.job_id)
        if environment.cluster == "local":
            # submitit-local: the submitter cancels a job with SIGTERM (its SIGINT is ignored, so that
            # a Ctrl-C at the submitter's terminal does not reach it)
            signal.signal(signal.SIGTERM, _raise_interrupted)
        self._children = children = ChildProcesses()
        started = time.time()
        node = environment.global_rank  # one task per node: a task's rank is its node's
        where = f" (node {node} of {environment.num_nodes})" if environment.num_nodes > 1 else ""
        print(f"run {self.run.name} in job {environment.job_id} on {environment.hostname}{where}", flush=True)
        if node != 0:
            return self._train_on_other_node(environment, children, started)
        try:
            status = execute_run_here(self.recipe, self.run, self.subsets, children)
        except (KeyboardInterrupt, Interrupted):
            children.stop_all()
            raise
        except Exception as error:  # the job fails; its reason also goes where the pool leaves it
            record_failure(self.run, error)
            raise
        clear_failure(self.run)
        print(f"run {self.run.name}: {status}", flush=True)
        return {"status": status, "started": started, "finished": time.time()}

    def _train_on_other_node(self, environment, children: ChildProcesses, started: float) -> dict:
        """Node N > 0: the training command only, into <run>/train.node<N>.log; no record, no
        evaluation. Should the first node's task end first (it failed before its training
        joined, say), this node's training would wait for it forever: it is stopped then."""
        from submitit.core.utils import JobPaths

        from labo_fairseq.experiment.execute import train_on_other_node

        node = environment.global_rank
        first_result = JobPaths(environment.paths.folder, job_id=environment.job_id, task_id=0).result_pickle
        finished, first_ended = threading.Event(), threading.Event()

        def watch_first_node():
            while not finished.wait(FIRST_NODE_POLL_S):
                if first_result.exists():
                    first_ended.set()
                    children.stop_all()
                    return

        threading.Thread(target=watch_first_node, daemon=True).start()
        try:
            status = train_on_other_node(self.recipe, self.run, node, children)
        except (KeyboardInterrupt, Interrupted):
            children.stop_all()
            if first_ended.is_set():
                raise RuntimeError(f"the first node's task ended ({first_result}) while node {node} was training; "
                                   f"stopped it") from None
            raise
        finally:
            finished.set()
        print(f"run {self.run.name}: {status}", flush=True)
        return {"status": status, "started": started, "finished": time.time()}

    def checkpoint(self):
        from submitit.core.utils import DelayedSubmission

        if self._children is not None:
            print(f"{resume_note(self.run)}; stopping its training for a requeue", flush=True)
            self._children.stop_all()
        return DelayedSubmission(RunJob(self.recipe, self.run, self.subsets))


def execute_run_here(recipe, run, subsets, children) -> str:
    from labo_fairseq.experiment.execute import execute_run

    return execute_run(recipe, run, subsets, children, stream=False)


def _raise_interrupted(signum, frame):
    raise Interrupted()


class PrepareJob:
    """The recipe's [data] prepare command as a submitit job ([data] launcher = "job"); its output
    is the job's log. Preparing again from the start is safe, so a preempted job is simply
    requeued by submitit."""

    def __init__(self, command: Sequence[str]):
        self.command = list(command)

    def __call__(self) -> dict:
        import submitit

        environment = submitit.JobEnvironment()
        if environment.cluster == "local":  # as RunJob: the submitter cancels with SIGTERM
            signal.signal(signal.SIGTERM, _raise_interrupted)
        started = time.time()
        print(f"data: preparing in job {environment.job_id} on {environment.hostname}: {shlex.join(self.command)}",
              flush=True)
        code = subprocess.run(child_command(self.command), env=tool_env()).returncode
        if code != 0:
            raise RuntimeError(f"the prepare command exited with status {code}")
        return {"status": "done", "started": started, "finished": time.time()}


def _wait_for_record(run: RunPlan, job_id: str) -> None:
    """Waits until the submitter has recorded this job in run.json, which it writes only before
    the job starts to run (so that the two never write run.json at once)."""
    deadline = time.time() + RECORD_WAIT_S
    while time.time() < deadline:
        if any(job.get("id") == job_id for job in recorded_jobs(run)):
            return
        time.sleep(0.5)


def _record_job(run: RunPlan, entry: dict) -> None:
    path = run.run_dir / RUN_FILE
    info = read_json_object(path, "run record")
    jobs = info.get(JOBS_KEY) if isinstance(info.get(JOBS_KEY), list) else []
    info[JOBS_KEY] = [*jobs, entry]
    write_json_atomic(path, info)


def _update_last_job(run: RunPlan, **fields) -> None:
    path = run.run_dir / RUN_FILE
    info = read_json_object(path, "run record")
    if isinstance(info.get(JOBS_KEY), list) and info[JOBS_KEY]:
        info[JOBS_KEY][-1].update(fields)
        write_json_atomic(path, info)


@dataclasses.dataclass
class Tracked:
    """A run's job as the waiting pipeline follows it."""
    run: Optional[RunPlan]  # None: the data-preparation job
    job: object            # a submitit Job
    submitted: float
    shown: str = ""        # the state last printed
    pickle_mtime: Optional[int] = None
    ended_at: Optional[float] = None  # when SLURM said the job ended (its result file may lag)


class RunningJobs:
    """The runs whose job the submitit launcher last saw running, for ProgressReporter (its
    TrainingSource): since when, and how long the run's train.log was then."""

    def __init__(self):
        self.stopping = threading.Event()  # set at Ctrl-C: no status while the launcher asks what to do
        self._lock = threading.Lock()
        self._since: Dict[str, Tuple[RunPlan, tuple]] = {}

    def seen(self, run: RunPlan, running: bool) -> bool:
        """Records the job's state; True when the run starts running now."""
        with self._lock:
            if not running:
                self._since.pop(run.name, None)
                return False
            if run.name in self._since:
                return False
            log = run.run_dir / TRAIN_LOG
            self._since[run.name] = (run, (time.time(), log.stat().st_size if log.exists() else 0))
            return True

    def training_since(self) -> List[tuple]:
        with self._lock:
            return list(self._since.values())


@dataclasses.dataclass
class SubmititLauncher:
    """Runs each run as a submitit job (`kind` "slurm" or "submitit-local"), at most `in_flight`
    at once, and waits for them (unless `wait` is False); `cancel_on_interrupt` None asks at Ctrl-C
    when interactive, else leaves the jobs running. While it waits, the status line of the pool
    (ProgressReporter) every `progress_interval` seconds (0: none), from the running jobs'
    train.log."""
    kind: str
    settings: Dict[str, object]
    in_flight: int
    wait: bool = True
    cancel_on_interrupt: Optional[bool] = None
    poll_s: Optional[float] = None
    progress_interval: float = 0.0
    counter: int = dataclasses.field(default=0, init=False)  # runs reported ended so far
    total: int = dataclasses.field(default=0, init=False)
    running: RunningJobs = dataclasses.field(default_factory=RunningJobs, init=False)
    reporter: Optional[ProgressReporter] = dataclasses.field(default=None, init=False)

    def describe(self, count: int) -> str:
        gpus, nodes = int(self.settings["gpus_per_run"]), int(self.settings["nodes"])
        if self.kind == "submitit-local" and not self._local_gpus(advance=False).get("gpus_per_node"):
            gpus = 0
        each = f"{nodes} nodes x {gpus} GPU(s) each" if nodes > 1 else f"{gpus} GPU(s) each" if gpus else "no GPU"
        if self.kind == "slurm":
            where = f" on partition {self.settings['partition']}" if "partition" in self.settings else ""
            return f"one SLURM job each{where} ({each}), at most {min(count, self.in_flight)} at once"
        return f"one submitit-local job each ({each}), {min(count, self.in_flight)} at a time"

    def runs_as_jobs(self, recipe: Recipe, runs: Sequence[RunPlan]) -> List[RunPlan]:
        """The runs as their jobs train them (multi-node runs: with their --distributed-port)."""
        return distributed_runs(recipe, runs, self.settings)

    def _check_cluster(self) -> None:
        if self.kind == "slurm" and shutil.which("srun") is None:
            raise UserError("--launcher slurm: no srun here: run it on a SLURM cluster's login node (--dry-run "
                            "prints the jobs' sbatch scripts anywhere)")

    def __call__(self, recipe: Recipe, runs: Sequence[RunPlan], subsets: Sequence[str]) -> Dict[str, dict]:
        self._check_cluster()
        runs = self.runs_as_jobs(recipe, runs)
        self.counter = 0
        self.total = len(runs)
        results: Dict[str, dict] = {}
        tracked: Dict[str, Tracked] = {}
        waiting: List[RunPlan] = []
        data = data_fingerprint(recipe.data_bin)
        for run in runs:
            self._sort(recipe, run, subsets, data, results, tracked, waiting)
        poll = self.poll_s or POLL_S[self.kind]
        self.running = RunningJobs()
        self.reporter = ProgressReporter(recipe, runs, self.running, self.progress_interval if self.wait else 0)
        for name in results:  # finished earlier or refused: started and finished, as the pool counts them
            self._count_started(name)
        self.reporter.finished = len(results)
        try:
            with self.reporter:
                while waiting or tracked:
                    while waiting and len(tracked) < self.in_flight:
                        run = waiting.pop(0)
                        item = self._submit(recipe, run, subsets, data, results)
                        if item is not None:
                            tracked[run.name] = item
                    if not self.wait:
                        break
                    self._poll(tracked, results)
                    if waiting or tracked:
                        time.sleep(poll)
        except KeyboardInterrupt:
            self.running.stopping.set()
            self._interrupted(tracked)
            raise Interrupted() from None
        if not self.wait:
            ids = ", ".join(f"{t.run.name} {t.job.job_id}" for t in tracked.values())
            later = f"; {len(waiting)} run(s) wait for a free slot: run the same command again to submit them" \
                if waiting else ""
            raise JobsSubmitted(f"{len(tracked)} job(s) queued or running ({ids or 'none'}){later}; run the same "
                                f"command again to attach to them and write the report")
        return results

    # -- deciding what each run needs ----------------------------------------------------------

    def _sort(self, recipe, run, subsets, data, results, tracked, waiting) -> None:
        """Attaches to the run's live job, collects the outcome of its last job if nobody saw it
        end, or decides the run is finished, refused or to be submitted."""
        jobs = recorded_jobs(run)
        if jobs and jobs[-1].get("launcher") == self.kind and "outcome" not in jobs[-1]:
            job = self._job(run, jobs[-1])
            if self._alive(job):
                tracked[run.name] = Tracked(run, job, float(jobs[-1].get("submitted", time.time())))
                tracked[run.name].pickle_mtime = _mtime(job.paths.submitted_pickle)
                say(f"{run.name}: attached to job {job.job_id} (submitted earlier)")
                return
            outcome = self._outcome(Tracked(run, job, 0.0))
            if outcome is not None:
                _update_last_job(run, outcome=outcome["status"])
                if not outcome["status"].startswith("failed") and (run.run_dir / TRAIN_DONE).exists():
                    say(f"{run.name}: job {job.job_id} finished while nobody waited")
                    results[run.name] = outcome
                    return
                if outcome["status"].startswith("failed"):
                    say(f"{run.name}: its job {job.job_id} {outcome['status']}; submitting it again")
        try:
            check_run_dir(recipe, run, data)
        except RunRefused as refused:
            self._refuse(run, refused, results)
            return
        if (run.run_dir / TRAIN_DONE).exists() and evaluation_change(recipe, run, subsets) is None:
            results[run.name] = {"status": "skipped", "started": time.time(), "finished": time.time()}
            say(f"{run.name}: already finished, skipping")
            return
        waiting.append(run)

    # -- submitting ----------------------------------------------------------------------------

    def _submit(self, recipe, run, subsets, data, results) -> Optional[Tracked]:
        """Submits the run's job and records it in run.json before the job may start to run."""
        try:
            prepare_run_dir(recipe, run, subsets, data)  # what the job checks again: refused early here
        except RunRefused as refused:
            self._refuse(run, refused, results)
            return None
        executor = self._executor(recipe, run)
        with _detached():
            job = executor.submit(RunJob(recipe, run, subsets))
        now = time.time()
        _record_job(run, {"launcher": self.kind, "id": str(job.job_id), "folder": str(job_folder(run)),
                          "submitted": now})
        say(f"{run.name}: submitted as job {job.job_id}; log: {job.paths.stdout}")
        return Tracked(run, job, now, pickle_mtime=_mtime(job.paths.submitted_pickle))

    def _executor(self, recipe: Recipe, run: Optional[RunPlan], folder: Optional[Path] = None):
        """The executor of a run's job, or (run None) of the data-preparation job in `folder`."""
        folder = job_folder(run) if run is not None else folder
        if self.kind == "slurm":
            from submitit import SlurmExecutor

            executor = SlurmExecutor(folder=folder)
            executor.update_parameters(**(sbatch_parameters(recipe, run, self.settings) if run is not None
                                          else prepare_sbatch_parameters(recipe, self.settings)))
            return executor
        from submitit import LocalExecutor

        executor = LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(self.settings["time_min"]), signal_delay_s=SIGNAL_DELAY_S,
                                   stderr_to_stdout=True, setup=list(self.settings["setup"]),
                                   **(self._local_gpus() if run is not None else {"gpus_per_node": 0}))
        return executor

    def _local_gpus(self, advance: bool = True) -> dict:
        """submitit-local: the GPUs of the next job, round-robin over the visible ones."""
        from labo_fairseq.experiment.runner import gpu_slots

        gpus = int(self.settings["gpus_per_run"])
        devices = [d for d in gpu_slots(max(1, self.in_flight) * max(1, gpus)) if d is not None]
        if not gpus or not devices:
            return {"gpus_per_node": 0}
        start = getattr(self, "_next_gpu", 0)
        chosen = [int(devices[(start + k) % len(devices)]) for k in range(gpus)]
        self._next_gpu = start + gpus if advance else start
        return {"gpus_per_node": gpus, "visible_gpus": chosen}

    def _job(self, run: Optional[RunPlan], entry: dict):
        folder = entry.get("folder") or job_folder(run)
        if self.kind == "slurm":
            from submitit.slurm.slurm import SlurmJob

            return SlurmJob(folder=folder, job_id=str(entry["id"]))
        from submitit.local.local import LocalJob

        return LocalJob(folder=folder, job_id=str(entry["id"]))

    # -- following the jobs --------------------------------------------------------------------

    def _alive(self, job) -> bool:
        if job.paths.result_pickle.exists():
            return False
        if self.kind == "slurm":
            return job.get_info(mode="force").get("State", "UNKNOWN").split()[0] in SLURM_QUEUED | SLURM_RUNNING
        return _local_job_alive(job)

    def _state(self, tracked: Tracked) -> str:
        """"queued", "running" or "ended" (the job's process or SLURM job is over)."""
        job = tracked.job
        if job.paths.result_pickle.exists():
            return "ended"
        if self.kind == "slurm":
            state = job.watcher.get_state(job.job_id, mode="cache").split()[0]
            if state in SLURM_QUEUED:
                return "queued"
            if state in SLURM_RUNNING:
                return "running"
            tracked.ended_at = tracked.ended_at or time.time()
            return "ended" if time.time() - tracked.ended_at > RESULT_GRACE_S else "running"
        return "running" if _local_job_alive(job) else "ended"

    def _result(self, job) -> Optional[Tuple[str, object]]:
        """How an ended job ended: ("success", its value), ("error", its traceback) or ("lost",
        why there is no result); None while it is not over."""
        from submitit.core.utils import pickle_load

        if job.paths.result_pickle.exists():
            try:
                return pickle_load(job.paths.result_pickle)
            except (OSError, EOFError, ValueError) as error:
                return "error", f"unreadable result {job.paths.result_pickle}: {error}"
        if self.kind == "slurm" and not self._alive(job):
            return "lost", f"job ended without a result (SLURM state {job.state})"
        if self.kind != "slurm" and not _local_job_alive(job):
            return "lost", "job ended without a result (killed or cancelled)"
        return None

    def _outcome(self, tracked: Tracked) -> Optional[dict]:
        """{"status", "started", "finished"} of an ended job (None: it is not over)."""
        job, run = tracked.job, tracked.run
        ended = self._result(job)
        if ended is None:
            return None
        outcome, value = ended
        if outcome == "success" and isinstance(value, dict) and "status" in value:
            return value
        reason = value if outcome == "lost" else _failure_reason(run, str(value))
        return {"status": f"failed: {reason} (job {job.job_id}; log: {job.paths.stdout})", "started": tracked.submitted,
                "finished": time.time()}

    def _poll(self, tracked: Dict[str, Tracked], results: Dict[str, dict]) -> None:
        if self.kind == "slurm" and tracked:
            next(iter(tracked.values())).job.watcher.update()  # one sacct call for every job
        for name, item in list(tracked.items()):
            mtime = _mtime(item.job.paths.submitted_pickle)
            if item.pickle_mtime is not None and mtime is not None and mtime != item.pickle_mtime:
                item.pickle_mtime = mtime  # checkpoint() wrote the call again: preempted or timed out
                say(f"{name}: requeued (job {item.job.job_id}): {resume_note(item.run).split(': ', 1)[1]}")
                item.shown = "requeued"
                self.running.seen(item.run, False)
            state = self._state(item)
            if self.running.seen(item.run, state == "running" and item.shown != "requeued"):
                self._count_started(name)
            if state != "ended":
                if state != item.shown:
                    say(f"{name}: {state} (job {item.job.job_id})")
                    item.shown = state
                continue
            outcome = self._outcome(item)
            if outcome is None:
                continue
            del tracked[name]
            _update_last_job(item.run, outcome=outcome["status"])
            self._finish(item.run, outcome, results, item.job.job_id)

    def _finish(self, run: RunPlan, outcome: dict, results: Dict[str, dict], job_id) -> None:
        results[run.name] = outcome
        self.counter += 1
        if self.reporter is not None:
            self._count_started(run.name)
            self.reporter.finished += 1
        took = duration(outcome["finished"] - outcome["started"])
        # a failure's status already names its job and log
        job = "" if job_id is None or outcome["status"].startswith("failed") else f" (job {job_id})"
        say(f"[{self.counter}/{self.total}] {run.name} {finished_line(run, outcome['status'], took, job)}")

    def _count_started(self, name: str) -> None:
        if name not in self.reporter.started_names:
            self.reporter.started += 1
            self.reporter.started_names.add(name)

    def _refuse(self, run: RunPlan, refused: RunRefused, results: Dict[str, dict]) -> None:
        now = time.time()
        self._finish(run, {"status": f"failed: {refused}", "started": now, "finished": now}, results, None)

    # -- the data-preparation job ([data] launcher = "job") -----------------------------------

    def follow_prepare_job(self, out_dir) -> None:
        """Attaches to the data-preparation job that OUT/prepare/job.json records without an end
        (it may still be writing the data-bin) and waits for it as submit_prepare_job does;
        returns at once when there is none."""
        record = live_prepare_job(out_dir)
        if record is None:
            return
        if record.get("launcher") != self.kind:
            refuse_live_prepare_job(out_dir)
        job = self._job(None, record)
        if self._alive(job):
            say(f"data: attached to preparation job {job.job_id} (submitted earlier)")
        self._wait_for_prepare(Tracked(None, job, float(record.get("submitted", time.time()))), out_dir)

    def submit_prepare_job(self, recipe: Recipe, command: Sequence[str], out_dir) -> None:
        """Submits the recipe's prepare command as a job, records it in OUT/prepare/job.json and
        waits for it (--no-wait: raises JobsSubmitted). A failed job raises RecipeError naming
        its log; nothing else is submitted then."""
        self._check_cluster()
        folder = prepare_folder(out_dir)
        executor = self._executor(recipe, None, folder)
        with _detached():
            job = executor.submit(PrepareJob(command))
        now = time.time()
        write_json_atomic(prepare_record_path(out_dir), {"launcher": self.kind, "id": str(job.job_id),
                                                         "folder": str(folder), "submitted": now,
                                                         "command": list(command)})
        say(f"data: preparing as job {job.job_id}: {shlex.join(command)}; log: {job.paths.stdout}")
        self._wait_for_prepare(Tracked(None, job, now), out_dir)

    def _wait_for_prepare(self, tracked: Tracked, out_dir) -> None:
        job = tracked.job
        poll = self.poll_s or POLL_S[self.kind]
        try:
            while True:
                if self.kind == "slurm":
                    job.watcher.update()
                state = self._state(tracked)
                ended = self._result(job) if state == "ended" else None
                if ended is not None:
                    break
                if not self.wait:
                    raise JobsSubmitted(f"data preparation job {job.job_id} {state}; run the same command again to "
                                        f"attach to it and submit the runs' jobs once the data is ready")
                if state != tracked.shown:
                    say(f"data: preparation job {job.job_id} {state}")
                    tracked.shown = state
                time.sleep(poll)
        except KeyboardInterrupt:
            self._interrupted({"prepare": tracked}, "the same command run again submits it again")
            raise Interrupted() from None
        outcome, value = ended
        path = prepare_record_path(out_dir)
        record = read_json_object(path, "data-preparation record")
        if outcome == "success":
            write_json_atomic(path, {**record, "outcome": "done"})
            took = value["finished"] - value["started"] if isinstance(value, dict) and "started" in value \
                else time.time() - tracked.submitted
            say(f"data: preparation job {job.job_id} done in {duration(took)}")
            return
        reason = value if outcome == "lost" else _error_line(str(value))
        write_json_atomic(path, {**record, "outcome": f"failed: {reason}"})
        raise RecipeError(f"data preparation failed in job {job.job_id}: {reason}; log: {job.paths.stdout}")

    def _interrupted(self, tracked: Dict[str, Tracked],
                     after_cancel: str = "their runs resume from their checkpoint_last.pt when the same command "
                                         "runs again") -> None:
        if not tracked:
            return
        ids = ", ".join(str(t.job.job_id) for t in tracked.values())
        cancel = self.cancel_on_interrupt
        if cancel is None and sys.stdin.isatty():
            try:
                cancel = input(f"\ninterrupted: cancel the {len(tracked)} job(s) still queued or running "
                               f"({ids})? [y/N] ").strip().lower() in ("y", "yes")
            except (EOFError, KeyboardInterrupt):
                cancel = False
        if cancel:
            for item in tracked.values():
                self._cancel(item.job)
            say(f"interrupted: cancelled job(s) {ids}; {after_cancel}")
        else:
            say(f"interrupted: job(s) {ids} left queued or running; run the same command again to attach to them "
                f"(--cancel-on-interrupt cancels them instead)")

    def _cancel(self, job) -> None:
        if self.kind == "slurm":
            job.cancel(check=False)
            return
        pid = int(job.job_id)
        for target in [pid, *_child_pids(pid)]:  # the controller, or the shell running setup lines and it
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 30
        while _local_job_alive(job) and time.time() < deadline:
            time.sleep(0.2)


@contextlib.contextmanager
def _detached():
    """While submitting: a submitit-local job's controller (a child process) inherits SIGINT
    ignored, so that a Ctrl-C at this terminal does not reach it, and /dev/null for its standard
    streams, so that it keeps no pipe of this process open (`... --no-wait | tee` would wait for
    the jobs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDWR)
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        yield
    finally:
        for fd, copy in zip((0, 1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)
        signal.signal(signal.SIGINT, ignored)


def _failure_reason(run: RunPlan, trace: str) -> str:
    """Why a job failed: the FAILED file its run left, else the last line of its traceback."""
    try:
        reason = (run.run_dir / FAILED_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        reason = ""
    return reason or _last_line(trace)


def _last_line(trace: str) -> str:
    """The last line of a job's traceback (its exception)."""
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "the job failed"


def _error_line(trace: str) -> str:
    """The last line of a traceback without the exception's name."""
    return re.sub(r"^(\w+\.)*\w+(Error|Exception): ", "", _last_line(trace))


def live_prepare_job(out_dir) -> Optional[dict]:
    """The data-preparation job recorded in OUT/prepare/job.json if it has no recorded end."""
    path = prepare_record_path(out_dir)
    if not path.exists():
        return None
    record = read_json_object(path, "data-preparation record")
    return None if "outcome" in record else record


def refuse_live_prepare_job(out_dir) -> None:
    """Refuses to go on while a data-preparation job without a recorded end may still be writing
    the data-bin, unless it is the caller's to attach to (SubmititLauncher.follow_prepare_job)."""
    record = live_prepare_job(out_dir)
    if record is not None:
        launcher = record.get("launcher", "slurm")
        raise UserError(f"{prepare_record_path(out_dir)}: {launcher} job {record.get('id', '?')} preparing the data "
                        f"may still be running; run the same command with --launcher {launcher} and [data] launcher "
                        f"= \"job\" to attach to it")


def _mtime(path: Path) -> Optional[int]:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _child_pids(pid: int) -> List[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _local_job_alive(job) -> bool:
    """Whether a submitit-local job's controller (its job id is the controller's pid) still runs:
    the process this pipeline started, or one whose command line names the job's folder."""
    process = getattr(job, "_process", None)
    if process is not None:
        return process.poll() is None
    pid = int(job.job_id)
    if not pid_running(pid):
        return False
    try:  # the pid may have been reused; with setup lines the controller runs under a shell (sh -c)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return False
    return not zombie and str(job.paths.folder) in cmdline


def make_launcher(args, recipe: Recipe, overrides: Dict[str, object]):
    """The launcher that --launcher names, with the recipe as its jobs train it (multi-GPU runs)."""
    from labo_fairseq.experiment.runner import LocalLauncher

    if args.launcher == "pool":
        return recipe, LocalLauncher(args.jobs, args.progress, args.verbose)
    settings = job_settings(recipe, overrides)
    check_job_settings(args.launcher, recipe, overrides, settings)
    in_flight = args.jobs if args.launcher == "submitit-local" else int(settings["array_parallelism"])
    cancel = True if args.cancel_on_interrupt else None
    return distributed_recipe(recipe, settings), SubmititLauncher(args.launcher, settings, in_flight,
                                                                  wait=not args.no_wait, cancel_on_interrupt=cancel,
                                                                  progress_interval=args.progress)
