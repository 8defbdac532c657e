"""`python -m reproduce run`: execute the notebooks in order, headless, through papermill.

Stops at the first failure and names the notebook, the cell and the error. Everything a notebook
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
             "05_hyperparameter_sweeps.ipynb", "06_appendix_ablations.ipynb")


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
    from jupyter_client.manager import KernelManager
    from traitlets import Unicode, default

    class IPCKernelManager(KernelManager):
        transport = Unicode("ipc")

        @default("ip")
        def _ip_default(self):
            return os.path.join(tempfile.gettempdir(), f"reproduce-kernel-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


def run_notebooks(profile: str | None = None, dataset: str | None = None, *, device: str | None = None,
                  runs_dir=None, data_dir=None, figures_dir=None, notebooks_dir: str | Path | None = None,
                  only: list[str] | None = None, profile_overrides: dict | None = None, objectives: str = "authors",
                  quiet: bool = False) -> int:
    """Run the notebooks; `profile_overrides` changes budgets of the profile (e.g. {"epochs": 1});
    `objectives` chooses the AT / ALP objectives ("authors", the default, or "paper"). Unless `quiet`,
    what each notebook prints is shown as it runs. Folders default to runs/, data/ and figures/ of the
    checkout."""
    import papermill

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
    update_manifest(out, profile=profile, dataset=dataset, objectives=objectives, commit=git_commit(),
                    budgets=changed_budgets(run.profile), device=run.device, environment=environment(run.device),
                    start_time=now(), end_time=None)
    params = dict(profile=profile, dataset=dataset, device=run.device, runs_dir=str(runs_dir),
                  data_dir=str(data_dir), figures_dir=str(figures_dir), profile_overrides=profile_overrides or {},
                  objectives=objectives)
    names = [n for n in NOTEBOOKS if not only or n in only or n.split("_")[0] in only]
    total_start = time.perf_counter()
    for i, name in enumerate(names, 1):
        began = time.perf_counter()
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        try:
            papermill.execute_notebook(str(notebooks_dir / name), str(executed_dir / name), parameters=params,
                                       kernel_name="python3", progress_bar=False, cwd=str(notebooks_dir),
                                       coalesce_streams=True,  # a finished bar's carriage returns collapse
                                       kernel_manager_class=ipc_kernel_manager(),
                                       stdout_file=None if quiet else NotebookLog(name.split("_")[0]))
        except papermill.PapermillExecutionError as e:
            print(f"FAILED: {name}, cell {e.exec_count or e.cell_index}: {e.ename}: {e.evalue}\n"
                  f"The executed notebook, with the traceback, is {executed_dir / name}. "
                  "Fix the cause and run again: finished work is kept.")
            update_manifest(out, failed={"notebook": name, "cell": e.cell_index, "error": f"{e.ename}: {e.evalue}"})
            return 1
        print(f"[{i}/{len(names)}] {name} done in {time.perf_counter() - began:.0f} s", flush=True)
    update_manifest(out, end_time=now(), failed=None, wall_seconds=round(time.perf_counter() - total_start, 1))
    print(f"all notebooks ran in {time.perf_counter() - total_start:.0f} s; tables and figures in {out}; "
          f"executed notebooks in {executed_dir}")
    return 0
