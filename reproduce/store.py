"""Where runs live: one directory per experiment, atomic writes, verified checkpoints.

A run directory holds config.json, last.pt / best.pt (each with a .sha256 beside it),
metrics.jsonl (one line per epoch), result.json (written once training ends) and eval/*.json.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch

DEFAULT_ROOT = Path(os.environ.get("REPRODUCE_RUNS", "runs"))


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupted."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def append_jsonl(path: Path, record: dict) -> None:
    """Rewrite the whole file atomically: metrics files are small and must never end mid-line."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(path: Path, state: dict) -> None:
    """Save with a SHA-256 sidecar so a corrupted file is caught before it is loaded."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(Path(str(path) + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint after checking its digest; tensors only (weights_only=True), never code."""
    path = Path(path)
    digest_path = Path(str(path) + ".sha256")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if not digest_path.exists():
        raise CheckpointError(f"checkpoint {path} has no {digest_path.name}; cannot verify it")
    expected = digest_path.read_text().strip()
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated (SHA-256 mismatch); delete the run directory "
            f"{path.parent} to retrain it"
        )
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # a file that matches its digest but still fails is reported the same way
        raise CheckpointError(f"checkpoint {path} could not be loaded: {e}") from e


class RunStore:
    """Maps an experiment to its directory and tells what is already there."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT

    def run_dir(self, experiment) -> Path:
        return self.root / experiment.run_name

    def result(self, experiment) -> dict | None:
        """The result.json of a run that ended (finished or diverged), else None."""
        path = self.run_dir(experiment) / "result.json"
        return read_json(path) if path.exists() else None

    def is_done(self, experiment) -> bool:
        return self.result(experiment) is not None

    def metrics(self, experiment) -> list[dict]:
        return read_jsonl(self.run_dir(experiment) / "metrics.jsonl")

    def eval_path(self, experiment, name: str) -> Path:
        return self.run_dir(experiment) / "eval" / f"{name}.json"
