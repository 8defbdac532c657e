"""A grid trained, or evaluated, by many workers: processes on this machine, or a Slurm job array,
through submitit.

Every worker walks the whole list of experiments (or of (model, column) evaluations), each starting at
a different place, and does what no other worker has claimed (the claim locks of training.train and
evaluation.evaluate_columns), skipping the rest. When the workers have ended, the calling process does
whatever is left (the share of a worker that died) and reads every result from the store; the store is
the only thing the workers share, so N workers leave the same run directories, metrics, weights and
table cells as one.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .store import RunStore
from .training import train

EXECUTORS = ("none", "local", "slurm")


def train_all(run, experiments) -> dict:
    """Train whatever is not in the store yet, in order, in this process; a diverged run is recorded
    and the grid goes on. Returns {experiment: TrainedRun}. Each dataset is loaded once; every
    experiment takes its own slice of it."""
    datasets, runs = {}, {}
    for i, exp in enumerate(experiments):
        done = run.store.is_done(exp)
        if run.progress:
            state = "in store" if done else "training"
            print(f"[{i + 1}/{len(experiments)}] {exp.label} {exp.changed_params or ''} seed {exp.seed} ({state}) "
                  f"-> {run.store.run_dir(exp)}")
        data = run.data_root
        if not done:
            if exp.dataset not in datasets:
                datasets[exp.dataset] = run.data if exp.dataset == run.dataset else run.on(exp.dataset).data
            data = datasets[exp.dataset]
        runs[exp] = train(exp, run.store, data=data, device=run.device, progress=run.progress)
    return runs


def _share_cpu(device, workers_here: int) -> None:
    """CPU workers split the cores between them: more threads than cores makes every worker wait."""
    if device is None or str(device) == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers_here))


def _worker(run, experiments, offset: int, workers_here: int = 1) -> list[str]:
    """Train every experiment of the list that is not done or claimed; return the keys it trained."""
    _share_cpu(run.device, workers_here)
    trained = []
    for exp in experiments[offset:] + experiments[:offset]:
        if run.store.is_done(exp):
            continue
        if train(exp, run.store, data=run.data_root, device=run.device, progress=False, wait_for_claim=False):
            trained.append(exp.key)
    return trained


def _eval_worker(run, experiments, offset: int, workers_here: int = 1) -> int:
    """Evaluate every Table I column of every finished model that no other worker has claimed; return how
    many models it visited."""
    from .evaluation import evaluate_columns
    from .protocol import TABLE1

    _share_cpu(run.device, workers_here)
    x, y = run.test_images()
    visited = 0
    for exp in experiments[offset:] + experiments[:offset]:
        if not run.finished(exp):
            continue
        evaluate_columns(exp, run.model(exp), x, y, TABLE1.specs(run.profile), run.store, progress=False,
                         wait_for_claim=False)
        visited += 1
    return visited


def worker_devices(workers: int, gpus=(), workers_per_gpu: int = 1, device=None) -> list:
    """The device of each local worker: GPUs in turn, `workers_per_gpu` sharing each; else `device`."""
    if workers < 1 or workers_per_gpu < 1:
        raise ValueError(f"workers and workers_per_gpu must be at least 1; got {workers}, {workers_per_gpu}")
    if not gpus:
        return [device] * workers
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
    if executor == "none":
        return train_all(run, experiments)
    jobs = _submit(_worker, run, experiments, executor, workers, gpus, workers_per_gpu, folder, slurm)
    if not wait:
        return jobs
    for job in jobs:
        job.result()  # raises with the worker's traceback if it failed
    return train_all(run, experiments)


def evaluate_grid(run, experiments, *, executor: str = "local", workers: int = 1, gpus=(), workers_per_gpu: int = 1,
                  folder=None, slurm: dict | None = None) -> None:
    """Fill the per-(model, column) evaluation cache of Table I with many workers; the tables then read
    it (and compute whatever a dead worker left)."""
    if executor == "none":
        return
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    for job in _submit(_eval_worker, run, list(experiments), executor, workers, gpus, workers_per_gpu, folder, slurm):
        job.result()


def _submit(worker, run, experiments, executor, workers, gpus, workers_per_gpu, folder, slurm):
    """`workers` jobs of `worker(run on the worker's device, experiments, offset, workers)`, local or on
    Slurm. The workers get the run with absolute folders and without its loaded data."""
    import submitit

    folder = Path(folder or run.store.root / "submitit")
    offsets = [i * len(experiments) // workers for i in range(workers)]

    def on(device):
        return dataclasses.replace(run, store=RunStore(Path(run.store.root).resolve()),
                                   data_root=Path(run.data_root).resolve(), device=device, progress=False)

    if executor == "local":
        devices = worker_devices(workers, gpus, workers_per_gpu, run.device)
        pool = submitit.LocalExecutor(folder=folder)
        pool.update_parameters(timeout_min=(slurm or {}).get("timeout_min", 7 * 24 * 60))
        return [pool.submit(worker, on(devices[i]), experiments, offsets[i], workers) for i in range(workers)]
    pool = submitit.AutoExecutor(folder=folder, cluster="slurm")
    pool.update_parameters(slurm_array_parallelism=workers, **(slurm or {}))
    n = len(offsets)
    return pool.map_array(worker, [on(run.device)] * n, [experiments] * n, offsets, [1] * n)  # a node each
