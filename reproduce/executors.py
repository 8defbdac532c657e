"""A grid trained, or evaluated, by many workers: processes on this machine, or a Slurm job array,
through submitit.

Every worker walks the whole list of experiments (or of (model, column) evaluations), each starting at
a different place, and does what no other worker has claimed (the claim locks of training.train and
evaluation.score_columns), skipping the rest. When the workers have ended, the calling process does
whatever is left (the share of a worker that died) and reads every result from the store; the store is
the only thing the workers share, so N workers leave the same run directories, metrics, weights and
table cells as one. On the CPU float sums depend on the thread count, so every local worker computes at
the thread count of the process that launched it (`--threads` sets it): on a CPU, workers then share its
cores and give the numbers of one process, not more speed; on GPUs they give the speed.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import torch

from .store import RunStore
from .training import train, train_all

EXECUTORS = ("none", "local", "slurm")


def _worker(run, experiments, offset: int, threads: int | None = None) -> list[str]:
    """Train every experiment of the list that is not done or claimed; return the keys it trained.
    `threads`: the CPU thread count of the process that launched it (float sums on the CPU depend on
    it, so every worker computes at the caller's count and N workers give what one process gives)."""
    if threads:
        torch.set_num_threads(threads)
    trained = []
    for exp in experiments[offset:] + experiments[:offset]:
        if run.store.is_done(exp):
            continue
        if train(exp, run.store, data=run.data_root, device=run.device, progress=False, wait_for_claim=False,
                 compile=run.profile.compile):
            trained.append(exp.key)
    return trained


def _eval_worker(run, experiments, offset: int, threads: int | None = None, specs=None) -> int:
    """Evaluate every column of `specs` (Table I's by default) of every finished model that no other worker
    has claimed; return how many models it visited."""
    from .evaluation import score_columns
    from .protocol import TABLE1

    specs = TABLE1.specs(run.profile) if specs is None else specs
    if threads:
        torch.set_num_threads(threads)
    x, y = run.test_images()
    visited = 0
    for exp in experiments[offset:] + experiments[:offset]:
        if not run.finished(exp):
            continue
        score_columns(run.model(exp), x, y, specs, experiment=exp, store=run.store, wait_for_claim=False)
        visited += 1
    return visited


def worker_devices(workers: int, gpus=(), workers_per_gpu: int = 1, device=None) -> list:
    """The device of each local worker: GPUs in turn, `workers_per_gpu` sharing each; else `device`."""
    if workers < 1 or workers_per_gpu < 1:
        raise ValueError(f"workers and workers_per_gpu must be at least 1; got {workers}, {workers_per_gpu}")
    if not gpus:
        return [device] * workers
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [g for g in gpus if not 0 <= g < available]
    if missing:
        raise ValueError(f"--gpus asks for GPU(s) {missing} but this machine has {available} CUDA device(s); "
                         f"leave --gpus out to run on {device or 'the default device'}")
    if workers > len(gpus) * workers_per_gpu:
        raise ValueError(f"{workers} workers do not fit on {len(gpus)} GPU(s) at {workers_per_gpu} per GPU; "
                         f"raise --workers-per-gpu or lower --workers")
    return [f"cuda:{gpus[i // workers_per_gpu]}" for i in range(workers)]


def run_grid(run, experiments, *, executor: str = "none", workers: int = 1, gpus=(), workers_per_gpu: int = 1,
             folder=None, slurm: dict | None = None, wait: bool = True):
    """Train a grid: in this process (executor "none"), in `workers` processes on this machine ("local";
    `gpus` lists the GPU indices to use) or as a Slurm job array of `workers` tasks ("slurm"; `slurm`
    holds submitit's slurm_* parameters, e.g. {"slurm_partition": "gpu", "timeout_min": 600,
    "gpus_per_node": 1}). Returns {experiment: TrainedRun}, or the submitit jobs when `wait` is False."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {list(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    experiments = list(experiments)
    if executor == "none" or all(run.store.is_done(e) for e in experiments):  # no worker for nothing to do
        return train_all(run, experiments)
    pending = [e for e in experiments if not run.store.is_done(e)]
    jobs = _submit(_worker, run, experiments, executor, workers, gpus, workers_per_gpu, folder, slurm)
    return finish_grid(run, experiments, jobs, pending) if wait else jobs


def finish_grid(run, experiments, jobs, pending=None) -> dict:
    """Wait for the workers, then train in this process whatever they left (the share of a worker that
    died: a killed process, a lost node) and return every run from the store. `pending`: the experiments
    that were not done when the jobs were submitted (each is said as it finishes); default all."""
    _wait(jobs, list(experiments if pending is None else pending), run.store.is_done)
    return train_all(run, experiments)


def _wait(jobs, pending=(), is_done=None, what: str = "trained", poll_s: float = 2.0) -> None:
    """Wait for every job, saying each of `pending` (what was not done when the jobs were submitted: a
    worker may finish one before the first look) as `is_done(experiment)` turns true, and, for a Slurm
    array, each change in how many of its tasks are pending, running or ended (the workers' own logs are
    in the submitit folder, not on this terminal). A worker that was killed, cancelled or timed out is
    reported, not raised: its claims were released with it, and the caller does what it left (resuming
    its runs from their checkpoints). A worker that raised is an error: its job id and the last lines of
    its log, once every job has ended."""
    from submitit.core.utils import FailedJobError

    pending = list(pending) if is_done else []
    total = len(pending)
    shown = ""
    while True:
        line, queued = slurm_task_states(jobs)
        # a Slurm task that left the queue has ended, with or without a result (submitit alone would wait
        # for a cancelled task forever where the cluster keeps no accounting)
        ended = all(job.done() if queued is None else str(job.job_id) not in queued for job in jobs)
        for exp in [e for e in pending if is_done(e)]:
            pending.remove(exp)
            print(f"{exp.label} seed {exp.seed}: {what} by a worker ({total - len(pending)}/{total})", flush=True)
        if line and line != shown:
            shown = line
            print(line, flush=True)
        if ended:
            break
        time.sleep(poll_s)
    failed = []
    for job in jobs:
        if not job.paths.result_pickle.exists():  # killed, cancelled, timed out: no result at all
            print(f"warning: worker {job.job_id} ended without finishing; this process does what it left. "
                  f"Its log: {job.paths.stderr}")
            continue
        try:
            job.result()
        except FailedJobError:
            failed.append(f"worker {job.job_id} failed; the last lines of {job.paths.stderr}:\n"
                          + _tail(job.paths.stderr))
    if failed:
        raise RuntimeError("\n".join(failed))


def _tail(path, lines: int = 12) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def slurm_task_states(jobs) -> tuple[str, set | None]:
    """(a line on a Slurm array's tasks: how many are pending and running, and how many have left the queue,
    ended; the ids of the tasks still queued), read from squeue, which every cluster has (submitit's own
    states need accounting, sacct, which a small cluster may lack); ("", None) for local workers."""
    import subprocess

    arrays = sorted({str(job.job_id).split("_")[0] for job in jobs if type(job).__name__ == "SlurmJob"})
    if not arrays:
        return "", None
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is not None and done.returncode != 0 and "Invalid job id" in done.stderr:
        done.stdout = ""  # the controller has forgotten the array: every task ended long ago
    elif done is None or done.returncode != 0:  # squeue unreachable this time: submitit's own view
        return "", None
    queued = dict(line.split() for line in done.stdout.splitlines() if len(line.split()) == 2)
    counts = {state: sum(1 for s in queued.values() if s == state) for state in ("PENDING", "RUNNING")}
    other = len(queued) - sum(counts.values())
    ended = sum(str(job.job_id) not in queued for job in jobs)
    return (f"Slurm array {', '.join(arrays)}: {counts['PENDING']} pending, {counts['RUNNING']} running"
            + (f", {other} requeued or completing" if other else "") + f", {ended} ended"), set(queued)


def evaluate_grid(run, experiments, *, executor: str = "local", workers: int = 1, gpus=(), workers_per_gpu: int = 1,
                  folder=None, slurm: dict | None = None, specs=None, what: str = "Table I's columns") -> None:
    """Fill the per-(model, column) evaluation cache with many workers: Table I's columns, or `specs`
    (named `what` in the lines that say each model done); the tables then read it (and compute whatever a
    dead worker left)."""
    if executor == "none":
        return
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    from .evaluation import uncached_columns
    from .protocol import TABLE1

    x, _ = run.test_images()
    specs = TABLE1.specs(run.profile) if specs is None else list(specs)
    pending = [e for e in experiments if run.finished(e) and uncached_columns(e, x, specs, run.store)]
    if not pending:
        return  # every column of every trained model is in the store: no worker for nothing to do
    worker = functools.partial(_eval_worker, specs=specs)
    jobs = _submit(worker, run, list(experiments), executor, workers, gpus, workers_per_gpu, folder, slurm)
    _wait(jobs, pending, lambda e: not uncached_columns(e, x, specs, run.store), f"{what} computed")


def _submit(worker, run, experiments, executor, workers, gpus, workers_per_gpu, folder, slurm):
    """`workers` jobs of `worker(run on the worker's device, experiments, offset, workers)`, local or on
    Slurm. The workers get the run with absolute folders and without its loaded data."""
    import submitit
    from submitit.core.utils import FailedJobError

    folder = Path(folder or run.store.root / "submitit")
    offsets = [i * len(experiments) // workers for i in range(workers)]

    def on(device):
        return dataclasses.replace(run, store=RunStore(Path(run.store.root).resolve()),
                                   data_root=Path(run.data_root).resolve(), device=device, progress=False)

    if executor == "local":
        devices = worker_devices(workers, gpus, workers_per_gpu, run.device)
        pool = submitit.LocalExecutor(folder=folder)
        pool.update_parameters(timeout_min=(slurm or {}).get("timeout_min", 7 * 24 * 60))
        threads = torch.get_num_threads()
        return [pool.submit(worker, on(devices[i]), experiments, offsets[i], threads) for i in range(workers)]
    pool = submitit.AutoExecutor(folder=folder, cluster="slurm")
    options = dict(slurm or {})
    pool.update_parameters(slurm_array_parallelism=workers, **options)
    n = len(offsets)
    # a task computes at the CPUs it was given (float sums on the CPU depend on the thread count);
    # without cpus_per_task, at torch's default on its node
    threads = options.get("cpus_per_task")
    try:
        jobs = pool.map_array(worker, [on(run.device)] * n, [experiments] * n, offsets, [threads] * n)
    except FailedJobError as e:  # sbatch refused the submission (a partition, a time or GPUs it has not)
        raise RuntimeError(f"Slurm refused the job array ({options or 'no options'}): "
                           + " ".join(str(e).split())[-300:]) from None
    array = str(jobs[0].job_id).split("_")[0]
    print(f"Slurm job array {array}: {n} tasks, at most {workers} at once; their logs: "
          f"{folder.resolve()}/{array}_<task>_0_log.out and .err", flush=True)
    return jobs
