"""`python -m reproduce run`: execute the notebooks in order, headless, through papermill.

On a CPU two notebooks run at once by default (notebooks_at_once says why). At the first failure no
further notebook starts, and the failing notebook, its cell and the error are named. Everything a notebook
trains or evaluates is cached in the run store, so a second run continues where the first stopped.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .config import budget_text, changed_budgets, default_dataset, default_profile
from .context import REPO, start
from .data import check_dataset
from .devices import environment
from .report import git_commit, now, update_manifest

NOTEBOOKS = ("01_losses.ipynb", "02_training.ipynb", "03_white_box.ipynb", "04_black_box.ipynb",
             "05_hyperparameter_sweeps.ipynb", "06_appendix_ablations.ipynb", "07_beyond_the_paper.ipynb")
# What a notebook reads that an earlier one writes: 03 evaluates 02's models and 04 reads 02's surrogates
# and 03's Table I; 07 shares four of 02's models. Other notebooks share models and columns only through
# the store, whose claim locks let one process train a model or score a column while another waits for it:
# 05 uses 02's AAML-AT, 06 one of 01's planes, and 07 the columns and masking attacks of the four shared
# models, which 03 scores too (07 runs beside 03 and fills the core 03's single-process steps leave idle).
NEEDS = {"03_white_box.ipynb": ("02_training.ipynb",),
         "04_black_box.ipynb": ("02_training.ipynb", "03_white_box.ipynb"),
         "07_beyond_the_paper.ipynb": ("02_training.ipynb",)}
LAST = "07_beyond_the_paper.ipynb"


class NotebookLog:
    """A file-like stream for papermill: each line a notebook prints (the model it trains, each epoch,
    each attack column it computes) reaches the terminal as it comes, tagged with the notebook."""

    def __init__(self, tag: str, stream=None):
        self.tag, self.stream, self.pending = tag, stream or sys.stdout, ""

    def write(self, text: str) -> None:
        lines = (self.pending + text.replace("\r", "\n")).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if line.strip():
                self.stream.write(f"  [{self.tag}] {line}\n")
        self.stream.flush()

    def flush(self) -> None:
        pass


def ipc_kernel_manager():
    """A kernel manager whose kernels talk over local sockets (IPC), not TCP: nothing listens on a port,
    and ipykernel has no "running over TCP without encryption" warning to print. The sockets are files
    in the temporary folder, removed when the kernel shuts down."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode, default

    # The asynchronous manager, as papermill's own default: with the synchronous one, nbclient's check that the
    # kernel is alive never answers, and a kernel that dies (a crash in native code) leaves the run waiting.
    class IPCKernelManager(AsyncKernelManager):
        transport = Unicode("ipc")

        @default("ip")
        def _ip_default(self):
            return os.path.join(tempfile.gettempdir(), f"reproduce-kernel-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


def notebooks_at_once(device, parallel: int | None = None, threads: int | None = None) -> tuple[int, int | None]:
    """How many notebooks run at once, and at how many CPU threads each (None: the kernel's default).

    On a CPU the default is two, each with half of the caller's threads: on 2 cores a smoke-profile
    training runs 1.1x faster at two threads than at one, while two one-thread kernels side by side each
    keep about 93% of one's speed (docs/BENCHMARKS.md), so two at once do nearly twice the work. On a GPU
    the default is one: a second notebook would share the GPU, a gain nobody has measured. The thread count
    decides float sums on a CPU, so every kernel runs at the same one, and the numbers do not depend on
    which notebook trained a model the other also needs."""
    import torch

    available = torch.get_num_threads()
    on_cpu = str(device or "cpu").startswith("cpu")
    if parallel is None:
        parallel = max(1, min(2, available // (threads or 1))) if on_cpu else 1
    if parallel < 1:
        raise ValueError(f"--parallel {parallel}: give 1 or more notebooks at once")
    if threads is None and parallel > 1 and on_cpu:
        threads = max(1, available // parallel)
    cores = os.cpu_count() or 1
    if on_cpu and parallel > 1 and parallel * threads > cores:
        raise ValueError(f"--parallel {parallel} at {threads} thread(s) each asks for {parallel * threads} threads "
                         f"on {cores} cores: threads beyond the cores wait on each other and make every kernel many "
                         f"times slower; lower --threads or --parallel")
    return parallel, threads


def execute_notebook(name: str, notebooks_dir: Path, executed_dir: Path, params: dict, quiet: bool,
                     threads: int | None) -> dict:
    """Run one notebook through papermill (in this process or a pool's); the outcome as a dict: `ok`, and
    where it failed, the cell and the error. The kernel starts with `threads` CPU threads."""
    import papermill
    from nbclient.exceptions import DeadKernelError

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernel inherits it
    began = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebooks_dir / name), str(executed_dir / name), parameters=params,
                                   kernel_name="python3", progress_bar=False, cwd=str(notebooks_dir),
                                   coalesce_streams=True,  # a finished bar's carriage returns collapse
                                   kernel_manager_class=ipc_kernel_manager(),
                                   stdout_file=None if quiet else NotebookLog(name.split("_")[0]))
    except papermill.PapermillExecutionError as e:
        return {"ok": False, "cell": e.exec_count or e.cell_index, "cell_index": e.cell_index,
                "error": f"{e.ename}: {e.evalue}", "seconds": time.perf_counter() - began}
    except DeadKernelError:
        return {"ok": False, "cell": None, "cell_index": None, "seconds": time.perf_counter() - began,
                "error": "the kernel died (a crash in native code, or out of memory); the executed notebook "
                         "shows the cell it was running"}
    return {"ok": True, "seconds": time.perf_counter() - began}


def run_notebooks(profile: str | None = None, dataset: str | None = None, *, device: str | None = None,
                  runs_dir=None, data_dir=None, figures_dir=None, notebooks_dir: str | Path | None = None,
                  only: list[str] | None = None, profile_overrides: dict | None = None, objectives: str = "authors",
                  quiet: bool = False, parallel: int | None = None, threads: int | None = None) -> int:
    """Run the notebooks; `profile_overrides` changes budgets of the profile (e.g. {"epochs": 1});
    `objectives` chooses the AT / ALP objectives ("authors", the default, or "paper"). Unless `quiet`,
    what each notebook prints is shown as it runs. Folders default to runs/, data/ and figures/ of the
    checkout. `parallel` notebooks run at once, each kernel at `threads` CPU threads (notebooks_at_once
    gives the defaults); a notebook starts once those it reads (NEEDS) have finished."""
    unknown = [o for o in only or [] if not any(o in (n, n.split("_")[0]) for n in NOTEBOOKS)]
    if unknown:
        print(f"error: no notebook {', '.join(map(repr, unknown))}; name them by number, e.g. --only 03 04 "
              f"(they are {', '.join(n.split('_')[0] for n in NOTEBOOKS)})")
        return 2
    if not profile:
        profile, why = default_profile()
        print(f"profile: {profile} ({why})")
    dataset = dataset or default_dataset()
    try:  # an unknown profile, budget, dataset or objectives fails here, not in a notebook
        run = start(profile, dataset, objectives=objectives, device=device, runs_dir=runs_dir, data_dir=data_dir,
                    figures_dir=figures_dir, budgets=profile_overrides, quiet=True)
        check_dataset(dataset, run.data_root)  # in seconds, before any notebook starts
        parallel, threads = notebooks_at_once(run.device, parallel, threads)
    except (ValueError, RuntimeError, OSError) as e:  # data.DatasetMissing is a RuntimeError
        print(f"error: {e}")
        return 2
    runs_dir, data_dir, figures_dir = (Path(p).resolve() for p in (run.store.root, run.data_root, run.figures_root))
    notebooks_dir = Path(notebooks_dir or REPO / "notebooks")
    executed_dir = runs_dir / "notebooks" / run.name
    executed_dir.mkdir(parents=True, exist_ok=True)
    out = run.out_dir
    if changed_budgets(run.profile):
        print(f"budgets changed from the {profile} profile ({budget_text(run.profile)}): outputs go to {out}")
    names = [n for n in NOTEBOOKS if not only or n in only or n.split("_")[0] in only]
    parallel = min(parallel, len(names))
    if parallel > 1:
        print(f"{parallel} notebooks at once, {threads} CPU thread(s) each (--parallel 1 for one at a time)")
    update_manifest(out, profile=profile, dataset=dataset, objectives=objectives, commit=git_commit(),
                    budgets=changed_budgets(run.profile), device=run.device,
                    environment=_environment(run.device, threads), notebooks_at_once=parallel,
                    start_time=now(), end_time=None)
    params = dict(profile=profile, dataset=dataset, device=run.device, runs_dir=str(runs_dir),
                  data_dir=str(data_dir), figures_dir=str(figures_dir), profile_overrides=profile_overrides or {},
                  objectives=objectives)
    with_workers = {n for needs in NEEDS.values() for n in needs} | {LAST}

    def arguments(name):
        # A notebook others wait for (02, 03) trains or evaluates its grid with `parallel` worker processes
        # (executors.py: bitwise what one process gives), so it also takes the cores the notebook beside it
        # leaves idle and the ones after it start sooner; so does the last one (07), which runs beside 03's
        # end and then beside a short 04.
        mine = dict(params, executor="local", workers=parallel) if parallel > 1 and name in with_workers else params
        return name, notebooks_dir, executed_dir, mine, quiet, threads

    total_start = time.perf_counter()
    failed = _schedule(names, parallel, arguments)
    if failed:
        name, outcome = failed
        print(f"FAILED: {name}, cell {outcome['cell']}: {outcome['error']}\n"
              f"The executed notebook, with the traceback, is {executed_dir / name}. "
              "Fix the cause and run again: finished work is kept.")
        update_manifest(out, failed={"notebook": name, "cell": outcome["cell_index"], "error": outcome["error"]})
        return 1
    update_manifest(out, end_time=now(), failed=None, wall_seconds=round(time.perf_counter() - total_start, 1))
    print(f"all notebooks ran in {time.perf_counter() - total_start:.0f} s; tables and figures in {out}; "
          f"executed notebooks in {executed_dir}")
    return 0


def _schedule(names: list[str], parallel: int, arguments) -> tuple[str, dict] | None:
    """Run the notebooks `names`, `parallel` at a time (in this process when 1), each starting once a slot
    is free and the notebooks it NEEDS have finished, in the order given. After a failure no notebook
    starts; those running finish (their work is kept). Returns the first failure, (name, outcome), or None."""
    number = {name: i for i, name in enumerate(names, 1)}

    def started(name):
        print(f"[{number[name]}/{len(names)}] {name} ...", flush=True)

    def ended(name, outcome):
        if outcome["ok"]:
            print(f"[{number[name]}/{len(names)}] {name} done in {outcome['seconds']:.0f} s", flush=True)

    if parallel == 1:
        for name in names:
            started(name)
            outcome = execute_notebook(*arguments(name))
            ended(name, outcome)
            if not outcome["ok"]:
                return name, outcome
        return None

    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    waiting, running, done, failure = list(names), {}, set(), None
    # spawn: a fresh interpreter for each pool process (forking a process that has loaded torch is unsafe)
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            ready = [n for n in waiting if set(NEEDS.get(n, ())) & set(names) <= done]
            while failure is None and ready and len(running) < parallel:
                name = ready.pop(0)
                waiting.remove(name)
                started(name)
                running[pool.submit(execute_notebook, *arguments(name))] = name
            if not running:
                break  # a failure left the rest waiting
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as e:  # the pool process died (killed, out of memory)
                    outcome = {"ok": False, "cell": None, "cell_index": None, "error": f"{type(e).__name__}: {e}"}
                ended(name, outcome)
                if outcome["ok"]:
                    done.add(name)
                elif failure is None:
                    failure = name, outcome
                    if running:
                        print(f"{name} failed; no notebook starts now, and {', '.join(running.values())} "
                              "finishes first (Ctrl-C stops it; finished work is kept)", flush=True)
    return failure


def _environment(device, threads: int | None) -> dict:
    """The manifest's environment, at the thread count the kernels compute with."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return environment(device)
    finally:
        torch.set_num_threads(previous)
