"""The record of a run's outputs: manifest.json in its output folder (profile, dataset, commit, device,
times, the experiments and their status, every table's sanity flags)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from .store import write_json


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def update_manifest(out_dir: Path, **fields) -> dict:
    """Merge fields into manifest.json (dicts are merged one level deep). Notebooks that run at once each
    merge into it, so the read-merge-write holds a lock: one kept in the temporary folder, named after the
    manifest's path, which leaves the output folder with outputs alone."""
    path = Path(out_dir) / "manifest.json"
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"reproduce-manifest-{digest}.lock")):
        manifest = json.loads(path.read_text()) if path.exists() else {}
        for k, v in fields.items():
            if isinstance(v, dict) and isinstance(manifest.get(k), dict):
                manifest[k].update(v)
            else:
                manifest[k] = v
        write_json(path, manifest)
    return manifest


def record_experiments(run, experiments) -> None:
    """Each experiment's run name, key, parameters and status, into the run's manifest."""
    entries = {}
    for e in experiments:
        result = run.store.result(e)
        entries[e.run_name] = {"label": e.label, "key": e.key, "loss_params": dict(e.loss_params),
                               "seed": e.seed, "objectives": e.objectives,
                               "status": result["status"] if result else "missing"}
    update_manifest(run.out_dir, experiments=entries)


def training_summary(runs: dict):
    """A line per trained run: its status, the validation accuracy of the kept epoch, epochs, which epoch
    was kept and why, training time and run directory (a DataFrame, as notebook 02 shows it)."""
    import pandas as pd

    return pd.DataFrame([{"model": e.label, "seed": e.seed, "status": r.result["status"],
                          "val. acc. (%)": r.result["kept_val_acc"], "epochs": r.result["epochs_run"],
                          "kept": r.result["kept_why"], "train time (s)": round(r.result["train_seconds"], 1),
                          "run": r.run_dir.name} for e, r in runs.items()])
