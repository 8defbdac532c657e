"""Where runs live: one directory per experiment, atomic writes, verified files.

A run directory holds config.json, last.pt / best.pt, metrics.jsonl (one line per epoch), result.json
(written once training ends), the kept weights as model.safetensors with their SHA-256 beside them, and
eval/*.json. Every file is written to a temporary file and renamed, so
a kill leaves the old file or the new one, never half of one. Each file carries the SHA-256 of its
content (a checkpoint in its first line, a JSON file inside it, metrics.jsonl on every line): a file and
its digest are one write, so they cannot disagree after a kill, and a damaged or edited file is caught
and named when it is read. Each also carries the experiment's key, which the reader checks, so a file
copied from another run is caught like a damaged one. A folder or a symbolic link where a file belongs
is named, never followed. No NaN is ever written: non-finite numbers become null.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from .data import new_file_mode

DEFAULT_ROOT = Path(os.environ.get("REPRODUCE_RUNS", "runs"))


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupted."""


class StoreError(RuntimeError):
    """A file of the store is damaged or was edited; the message names it and what to do."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half.
    The file gets the mode the user's umask gives, as open() would (mkstemp's own is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, new_file_mode())
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


def finite(obj):
    """obj with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def _dumps(obj, **kw) -> str:
    return json.dumps(finite(obj), sort_keys=True, default=str, allow_nan=False, **kw)


def _digest(obj) -> str:
    return hashlib.sha256(_dumps(obj).encode()).hexdigest()


def write_json(path: Path, obj) -> None:
    """A JSON file for people (the manifest): no digest."""
    atomic_write_text(path, _dumps(obj, indent=2) + "\n")


def check_file(path: Path) -> None:
    """What the store keeps at `path` must be a regular file (or nothing yet): a symbolic link or a folder
    in its place is named, never followed."""
    path = Path(path)
    if path.is_symlink():
        raise StoreError(f"{path} is a symbolic link, not a file the store wrote; remove it and run again")
    if path.exists() and not path.is_file():
        raise StoreError(f"{path} is a folder (or another non-file) where the store keeps a file; remove it and "
                         "run again")


def read_json(path: Path):
    path = Path(path)
    check_file(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}); delete it and run again to rewrite it") from None


def write_checked_json(path: Path, obj: dict) -> None:
    """A JSON object of the store, with the SHA-256 of its content in the same file."""
    atomic_write_text(path, _dumps(dict(finite(obj), sha256=_digest(obj)), indent=2) + "\n")


def read_checked_json(path: Path) -> dict:
    """A JSON object written by write_checked_json; a damaged or edited file raises StoreError with its path."""
    obj = read_json(path)
    digest = obj.pop("sha256", None) if isinstance(obj, dict) else None
    if digest != _digest(obj):
        raise StoreError(f"{path} was edited or damaged (its SHA-256 does not match); delete it and run again "
                         "to rewrite it")
    return obj


def _line(record: dict) -> str:
    return _dumps(dict(finite(record), sha256=_digest(record))) + "\n"


def append_jsonl(path: Path, record: dict) -> None:
    """Add a line, with the SHA-256 of its content, rewriting the whole file atomically: metrics files
    are small and must never end mid-line."""
    path = Path(path)
    check_file(path)
    old = path.read_text() if path.exists() else ""
    atomic_write_text(path, old + _line(record))


def read_jsonl(path: Path, key: str | None = None) -> list[dict]:
    """The records of a file written by append_jsonl; a damaged or edited line, or (with `key`) a line of
    another experiment's run, raises StoreError with the path and what to do."""
    path = Path(path)
    check_file(path)
    if not path.exists():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fix = f"delete the run directory {path.parent} to retrain it"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise StoreError(f"{path}, line {i}, is not valid JSON ({e}); {fix}") from None
        digest = record.pop("sha256", None) if isinstance(record, dict) else None
        if digest != _digest(record):
            raise StoreError(f"{path}, line {i}, was edited or damaged (its SHA-256 does not match); {fix}")
        if key is not None and record.get("key") != key:
            raise StoreError(f"{path}, line {i}, belongs to experiment {record.get('key')}, not {key} (a file "
                             f"copied from another run); {fix}")
        records.append(record)
    return records


def keep_epochs(path: Path, last_epoch: int) -> None:
    """Cut metrics.jsonl back to the epochs a checkpoint holds (a kill may have left a later one)."""
    records = read_jsonl(path)
    kept = [r for r in records if r.get("epoch", 0) <= last_epoch]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(_line(r) for r in kept))


def remove_temporary_files(folder: Path) -> None:
    """Delete what killed atomic writes left behind (".<name>.<random>" files)."""
    for tmp in Path(folder).glob(".*.*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


CHECKPOINT_HEADER = b"sha256:"


def save_checkpoint(path: Path, state: dict) -> None:
    """Save with the SHA-256 of the payload as the file's first line: one write, so a kill can never
    leave a checkpoint and its digest that disagree, and a corrupted file is caught before loading."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, CHECKPOINT_HEADER + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def load_checkpoint(path: Path, map_location="cpu", key: str | None = None) -> dict:
    """Load a checkpoint after checking its digest; tensors only (weights_only=True), never code. With
    `key`, the checkpoint must carry that experiment key (one copied from another run is refused)."""
    path = Path(path)
    check_file(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    header, _, data = raw.partition(b"\n")
    expected = header[len(CHECKPOINT_HEADER):].decode(errors="replace") if header.startswith(CHECKPOINT_HEADER) else ""
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated (SHA-256 mismatch); delete the run directory "
            f"{path.parent} to retrain it"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # a file that matches its digest but still fails is reported the same way
        raise CheckpointError(f"checkpoint {path} could not be loaded: {e}") from e
    if key is not None and state.get("key") != key:
        raise CheckpointError(f"checkpoint {path} belongs to experiment {state.get('key')}, not {key} (a file "
                              f"copied from another run, or written before checkpoints carried their key); delete "
                              f"the run directory {path.parent} to retrain it")
    return state


# ---------------------------------------------------------------- kept weights, for plain PyTorch users

WEIGHTS = "model.safetensors"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_weights(model: torch.nn.Module, folder: Path, experiment) -> Path:
    """`folder`/model.safetensors (the state dict, on the CPU, with the experiment, its key and label as
    metadata: `weights_metadata`) and its digest beside it. Written to a temporary name and moved, so a
    kill leaves either the old pair or the new one."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    folder = Path(folder)
    path = folder / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    # One metadata entry (safetensors keeps metadata in a hash map whose order varies between writes): the
    # same weights give the same bytes, so a digest identifies them.
    about = {"key": experiment.key, "label": experiment.label, "experiment": asdict(experiment)}
    save_file(state, str(tmp), metadata={"reproduce": json.dumps(about, sort_keys=True, default=str)})
    os.chmod(tmp, new_file_mode())  # as open() would: others may read a shared run's weights
    digest = sha256_of(tmp)
    tmp.replace(path)
    atomic_write_text(folder / (WEIGHTS + ".sha256"), f"{digest}  {WEIGHTS}\n")
    return path


def weights_metadata(path: Path) -> dict:
    """{"key", "label", "experiment"} that write_weights put in a model.safetensors ({} if none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "reproduce" in metadata:
        return json.loads(metadata["reproduce"])
    return {k: metadata[k] for k in ("key", "label") if k in metadata}  # written before 0.3.0


def read_weights(folder: Path, key: str | None = None) -> dict:
    """The state dict of `folder`/model.safetensors after checking its digest (and, with `key`, that it
    is that experiment's)."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    check_file(path)
    digest_file = Path(folder) / (WEIGHTS + ".sha256")
    if not digest_file.exists():
        raise CheckpointError(f"{path} has no digest beside it ({digest_file.name}); export the run again")
    recorded = digest_file.read_text().split()
    if not recorded:
        raise CheckpointError(f"{digest_file} is empty: it should hold the SHA-256 of {WEIGHTS}; export the run again")
    if recorded[0] != sha256_of(path):
        raise CheckpointError(f"{path} does not match its SHA-256 ({digest_file.name}): damaged or edited")
    from safetensors import SafetensorError

    try:
        if key is not None:
            found = weights_metadata(path).get("key")
            if found != key:
                raise CheckpointError(f"{path} belongs to experiment {found}, not {key}")
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:  # a malformed file whose digest was written to match
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: {str(e)[:160]}); "
                              "export the run again") from None


class RunStore:
    """Maps an experiment to its directory and tells what is already there."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT

    def run_dir(self, experiment) -> Path:
        return self.root / experiment.run_name

    def result(self, experiment) -> dict | None:
        """The result.json of a run that ended (finished or diverged), else None; one of another
        experiment's run raises StoreError."""
        path = self.run_dir(experiment) / "result.json"
        if not (path.exists() or path.is_symlink()):
            return None
        result = read_checked_json(path)
        if result.get("key") != experiment.key:
            raise StoreError(f"{path} belongs to experiment {result.get('key')}, not {experiment.key} (a file copied "
                             f"from another run); delete the run directory {path.parent} to retrain it")
        return result

    def is_done(self, experiment) -> bool:
        """Whether the run ended: finished, or diverged (then there is no model to evaluate)."""
        return self.result(experiment) is not None

    def is_finished(self, experiment) -> bool:
        """Whether the run finished training and kept a model."""
        result = self.result(experiment)
        return result is not None and result["status"] == "finished"

    def metrics(self, experiment) -> list[dict]:
        """The run's epochs, each line checked against its digest and the experiment's key."""
        return read_jsonl(self.run_dir(experiment) / "metrics.jsonl", key=experiment.key)

    def eval_path(self, experiment, name: str) -> Path:
        return self.run_dir(experiment) / "eval" / f"{name}.json"
