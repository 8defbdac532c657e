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

import os
from pathlib import Path

import torch

from .grid import train_all
from .store import RunStore
from .training import train

EXECUTORS = ("none", "local", "slurm")


def _share_cpu(device, workers_here: int) -> None:
    """CPU workers split the cores between them: more threads than cores makes every worker wait."""
    if device is None or str(device) == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers_here))


def _worker(experiments, store_root: str, device, data_root, offset: int, workers_here: int = 1) -> list[str]:
    """Train every experiment of the list that is not done or claimed; return the keys it trained."""
    _share_cpu(device, workers_here)
    store = RunStore(store_root)
    trained = []
    for exp in experiments[offset:] + experiments[:offset]:
        if store.is_done(exp):
            continue
        if train(exp, store, device=device, data_root=data_root, progress=False, wait_for_claim=False):
            trained.append(exp.key)
    return trained


def _eval_worker(experiments, store_root: str, device, data_root, dataset: str, profile, offset: int,
                 workers_here: int = 1) -> int:
    """Evaluate every Table I column of every finished model that no other worker has claimed; return how
    many models it visited."""
    from .data import load_dataset
    from .evaluation import evaluate_columns
    from .protocol import TABLE1
    from .training import load_trained

    _share_cpu(device, workers_here)
    store = RunStore(store_root)
    data = load_dataset(dataset, data_root, test_limit=profile.test_limit)
    visited = 0
    for exp in experiments[offset:] + experiments[:offset]:
        result = store.result(exp)
        if result is None or result["status"] != "finished":
            continue
        model = load_trained(exp, store, device)
        evaluate_columns(exp, model, data.x_test, data.y_test, TABLE1.specs(profile), store, progress=False,
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


def run_grid(experiments, store: RunStore, *, executor: str = "none", workers: int = 1, gpus=(),
             workers_per_gpu: int = 1, device=None, data_root=None, folder=None, slurm: dict | None = None,
             wait: bool = True, progress: bool = True):
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
        return train_all(experiments, store, device=device, data_root=data_root, progress=progress)
    data_root = None if data_root is None else str(Path(data_root).resolve())
    jobs = _submit(_worker, experiments, (data_root,), store, executor, workers, gpus, workers_per_gpu, device,
                   folder, slurm)
    if not wait:
        return jobs
    for job in jobs:
        job.result()  # raises with the worker's traceback if it failed
    return train_all(experiments, store, device=device, data_root=data_root, progress=progress)


def evaluate_grid(experiments, profile, dataset: str, store: RunStore, *, executor: str = "local", workers: int = 1,
                  gpus=(), workers_per_gpu: int = 1, device=None, data_root=None, folder=None,
                  slurm: dict | None = None) -> None:
    """Fill the per-(model, column) evaluation cache of Table I with many workers; the tables then read
    it (and compute whatever a dead worker left)."""
    from .config import get_profile

    if executor == "none":
        return
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    data_root = None if data_root is None else str(Path(data_root).resolve())
    jobs = _submit(_eval_worker, list(experiments), (data_root, dataset, get_profile(profile)), store, executor,
                   workers, gpus, workers_per_gpu, device, folder, slurm)
    for job in jobs:
        job.result()


def _submit(worker, experiments, args, store, executor, workers, gpus, workers_per_gpu, device, folder, slurm):
    """`workers` jobs of `worker(experiments, store root, device, *args, offset)`, local or on Slurm."""
    import submitit

    folder = Path(folder or store.root / "submitit")
    offsets = [i * len(experiments) // workers for i in range(workers)]
    root = str(Path(store.root).resolve())
    if executor == "local":
        devices = worker_devices(workers, gpus, workers_per_gpu, device)
        pool = submitit.LocalExecutor(folder=folder)
        pool.update_parameters(timeout_min=(slurm or {}).get("timeout_min", 7 * 24 * 60))
        return [pool.submit(worker, experiments, root, devices[i], *args, offsets[i], workers) for i in range(workers)]
    pool = submitit.AutoExecutor(folder=folder, cluster="slurm")
    pool.update_parameters(slurm_array_parallelism=workers, **(slurm or {}))
    n = len(offsets)
    columns = [[a] * n for a in args]
    return pool.map_array(worker, [experiments] * n, [root] * n, [device] * n, *columns, offsets)
