"""Runs the planned runs. A launcher takes the runs and says how each ended (Launcher); the one
here (LocalLauncher) runs them on this machine, up to --jobs at once in a thread pool, each run's
training and evaluation a child process. Another launcher (a cluster's scheduler) replaces it by
running execute_run for each run wherever it likes and returning the same record."""
import concurrent.futures
import glob
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence

from labo_fairseq.errors import UserError
from labo_fairseq.experiment.children import ChildProcesses, Interrupted
from labo_fairseq.experiment.console import duration, say
from labo_fairseq.experiment.execute import execute_run
from labo_fairseq.experiment.progress import ProgressReporter, finished_line, resume_note
from labo_fairseq.experiment.recipe import Recipe
from labo_fairseq.experiment.records import clear_failure, record_failure, recorded_jobs
from labo_fairseq.experiment.runs import RunPlan


class Launcher(Protocol):
    """Runs `runs` (each with execute_run) and returns {run name: {"status", "started",
    "finished"}} for every one: status "done", "skipped", "interrupted" or "failed: WHY" (a failed
    run leaves its reason in <run>/FAILED and does not stop the others), started and finished in
    seconds since the epoch. Raises Interrupted when stopped; the runs stay resumable."""

    def __call__(self, recipe: Recipe, runs: Sequence[RunPlan], subsets: Sequence[str]) -> Dict[str, dict]: ...

    def describe(self, count: int) -> str:
        """How `count` runs will run, for the console (e.g. "2 at a time")."""


@dataclass
class LocalLauncher:
    """Runs on this machine, up to `jobs` at once, sharing the visible GPUs round-robin; with
    `progress_interval` > 0, a status line that often while runs train."""
    jobs: int = 1
    progress_interval: float = 0.0
    verbose: bool = False

    def __call__(self, recipe: Recipe, runs: Sequence[RunPlan], subsets: Sequence[str]) -> Dict[str, dict]:
        refuse_runs_with_live_jobs(runs)
        return run_all(recipe, runs, subsets, max(1, min(self.jobs, len(runs))), self.progress_interval,
                       self.verbose)

    def describe(self, count: int) -> str:
        return f"{min(self.jobs, count)} at a time"


def refuse_runs_with_live_jobs(runs: Sequence[RunPlan]) -> None:
    """A run whose last submitit job has no recorded outcome may still be training elsewhere: the
    pool must not train it a second time into the same directory."""
    for run in runs:
        jobs = recorded_jobs(run)
        if jobs and "outcome" not in jobs[-1]:
            job = jobs[-1]
            launcher = job.get("launcher", "slurm")
            raise UserError(f"{run.run_dir} has {launcher} job {job.get('id', '?')} that may still be running; "
                            f"run the same command with --launcher {launcher} to attach to it (it records how "
                            f"the job ended), or remove that directory to train the run here")


def gpu_driver_present() -> bool:
    """Whether this machine shows an NVIDIA or AMD GPU driver (its device files), read without torch."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/proc/driver/nvidia/gpus") \
        or os.path.exists("/dev/kfd")


def gpu_slots(jobs: int) -> List[Optional[str]]:
    """CUDA_VISIBLE_DEVICES value for each of `jobs` worker slots: round-robin over the visible
    GPUs when there are several, else None (inherit the environment)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    elif not gpu_driver_present():  # no GPU: no need to import torch (seconds) to count them
        devices = []
    else:
        try:
            import torch
            devices = [str(i) for i in range(torch.cuda.device_count())]
        except ImportError:
            devices = []
    if len(devices) < 2:
        return [None] * jobs
    return [devices[i % len(devices)] for i in range(jobs)]


def run_all(recipe: Recipe, runs: Sequence[RunPlan], subsets: Sequence[str], jobs: int,
            progress_interval: float = 0.0, verbose: bool = False) -> Dict[str, dict]:
    """Runs `runs`, up to `jobs` at once; returns {run name: {"status", "started", "finished"}}.
    With `progress_interval` > 0, a status line that often while runs train (ProgressReporter);
    `verbose`: the console shows all of a streamed child's output (see ChildProcesses)."""
    children = ChildProcesses(verbose)
    reporter = ProgressReporter(recipe, runs, children, progress_interval)
    results: Dict[str, dict] = {}
    slots = gpu_slots(jobs)
    free = list(range(jobs))
    lock = threading.Lock()
    stream = jobs == 1
    counter = iter(range(1, len(runs) + 1))

    def work(run: RunPlan) -> None:
        with lock:
            slot = free.pop(0)
        env = None if slots[slot] is None else {"CUDA_VISIBLE_DEVICES": slots[slot]}
        started = time.time()
        entry = {"started": started}
        try:
            if children.stopping.is_set():  # interrupted before this run started: do not announce it
                raise Interrupted()
            with lock:
                reporter.started += 1
                reporter.started_names.add(run.name)
            if stream:
                say(f"run {run.name}")
            entry["status"] = execute_run(recipe, run, subsets, children, stream, env)
            clear_failure(run)
        except Interrupted:
            entry["status"] = "interrupted"
        except Exception as error:  # noqa: BLE001  one run's failure must not stop the others
            entry["status"] = f"failed: {error}" if isinstance(error, (UserError, RuntimeError, ValueError, OSError)) \
                else f"failed: {type(error).__name__}: {error}"
            record_failure(run, error)
        finally:
            entry["finished"] = time.time()
            with lock:
                free.append(slot)
                results[run.name] = entry
                reporter.finished += entry.get("status") != "interrupted"
                if entry.get("status") != "interrupted" and not children.stopping.is_set():
                    where = "" if slots[slot] is None else f" on GPU {slots[slot]}"
                    took = duration(entry["finished"] - started)
                    line = finished_line(run, entry.get("status", "failed"), took, where)
                    say(f"[{next(counter)}/{len(runs)}] {run.name} {line}")

    interrupted = []

    def on_signal(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, on_signal)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    futures: List[concurrent.futures.Future] = []
    try:
        with reporter:
            futures = [pool.submit(work, run) for run in runs]
            for future in futures:
                future.result()
    except (KeyboardInterrupt, Interrupted):
        interrupted.append(True)
        children.stopping.set()  # first: no run starts or reports after the line below
        for future in futures:
            future.cancel()
        say("interrupted: stopping every child process (runs stay resumable)")
        training = children.training_runs()
        children.stop_all()
        for run in training:
            say(resume_note(run))
    finally:
        pool.shutdown(wait=True)
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        raise Interrupted()
    return results
