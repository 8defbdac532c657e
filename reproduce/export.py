"""A trained model outside the run store: weights any PyTorch user can open, `load_model` in one line,
`export` (weights, experiment, Table I row, model card) and `evaluate` (every Table I column on one
model, ours or any `torch.nn.Module`).

    from reproduce import load_model
    model = load_model("AAML-AT", profile="smoke", dataset="fashion-mnist")   # by label, from runs/
    model = load_model("runs/fashion-mnist-smoke-AAML-AT-963f71ce02a5")        # or a run / export folder

Weights are written as safetensors (`model.safetensors`: tensors only, so opening one cannot run code;
`safetensors.torch.load_file` reads it without this package) with their SHA-256 beside them
(`model.safetensors.sha256`, in `sha256sum -c` format).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from .config import Experiment
from .store import CheckpointError, atomic_write_text, check_file, load_checkpoint, read_checked_json

WEIGHTS = "model.safetensors"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_weights(model: torch.nn.Module, folder: Path, experiment: Experiment) -> Path:
    """`folder`/model.safetensors (the state dict, on the CPU, with the experiment's key and label as
    metadata) and its digest beside it. Written to a temporary name and moved, so a kill leaves either
    the old pair or the new one."""
    from safetensors.torch import save_file

    folder = Path(folder)
    path = folder / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"key": experiment.key, "label": experiment.label,
                                         "experiment": json.dumps(asdict(experiment), default=str)})
    digest = _sha256(tmp)
    tmp.replace(path)
    atomic_write_text(folder / (WEIGHTS + ".sha256"), f"{digest}  {WEIGHTS}\n")
    return path


def read_weights(folder: Path, key: str | None = None) -> dict:
    """The state dict of `folder`/model.safetensors after checking its digest (and, with `key`, that it
    is that experiment's)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    check_file(path)
    digest_file = Path(folder) / (WEIGHTS + ".sha256")
    if not digest_file.exists():
        raise CheckpointError(f"{path} has no digest beside it ({digest_file.name}); export the run again")
    if digest_file.read_text().split()[0] != _sha256(path):
        raise CheckpointError(f"{path} does not match its SHA-256 ({digest_file.name}): damaged or edited")
    if key is not None:
        with safe_open(str(path), framework="pt") as f:
            found = (f.metadata() or {}).get("key")
        if found != key:
            raise CheckpointError(f"{path} belongs to experiment {found}, not {key}")
    return load_file(str(path))


def experiment_of(folder: Path) -> Experiment:
    """The experiment a run folder (config.json) or an export folder (experiment.json) holds."""
    folder = Path(folder)
    for name in ("experiment.json", "config.json"):
        if (folder / name).exists():
            saved = read_checked_json(folder / name)
            break
    else:
        raise FileNotFoundError(f"{folder} is neither a run folder (config.json) nor an export (experiment.json)")
    fields = dict(saved["experiment"])
    fields["loss_params"] = tuple(tuple(p) for p in fields.get("loss_params", ()))
    experiment = Experiment(**fields)
    if experiment.key != saved["key"]:
        raise ValueError(f"{folder}: its experiment has key {experiment.key}, the file says {saved['key']} "
                         "(written by another version of this package)")
    return experiment


def _shape(folder: Path) -> tuple[int, int]:
    """(in_channels, num_classes) of a run or an export."""
    for name in ("result.json", "experiment.json"):
        if (Path(folder) / name).exists():
            saved = read_checked_json(Path(folder) / name)
            return saved.get("in_channels", 3), saved.get("num_classes", 10)
    return 3, 10


def load_folder(folder, device=None) -> torch.nn.Module:
    """The model of a run folder (its kept weights) or of an export folder, in eval mode."""
    from .devices import resolve_device
    from .models import build_model

    folder = Path(folder)
    experiment = experiment_of(folder)
    model = build_model(experiment, *_shape(folder))
    if (folder / WEIGHTS).exists():
        state = read_weights(folder, key=experiment.key)
    elif (folder / "best.pt").exists():
        state = load_checkpoint(folder / "best.pt", key=experiment.key)["model"]
    else:
        raise FileNotFoundError(f"{folder} holds no kept weights (model.safetensors or best.pt): it has not "
                                "finished training")
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval()


def load_model(what: str | Path, *, profile: str | None = None, dataset: str = "cifar10", seed: int = 0,
               objectives: str = "authors", runs_dir=None, device=None, **overrides) -> torch.nn.Module:
    """A trained model, ready to attack: `what` is a run or export folder, or a table label ("AAML-AT")
    looked up in the store (runs/ of the checkout unless `runs_dir`) for `profile`, `dataset` and `seed`;
    `overrides` are the experiment's other settings (e.g. loss_params={"s": 4.0, "m": 0.25} for a
    Table IV model)."""
    if Path(what).is_dir():
        return load_folder(what, device)
    from .context import start

    if str(what).count("-") != 1:
        raise ValueError(f"{what!r} is neither a folder nor a table label such as 'AAML-AT' (LOSS-DEFENSE)")
    loss, defense = str(what).split("-")
    run = start(profile, dataset, objectives=objectives, device=device, runs_dir=runs_dir, quiet=True)
    experiment = run.experiment(loss, defense, seed, **overrides)
    if not run.finished(experiment):
        raise FileNotFoundError(f"{what} ({run.profile.name}, {dataset}, seed {seed}) is not trained in "
                                f"{run.store.root} (looked for {run.store.run_dir(experiment)}); train it with "
                                f"python -m reproduce train --loss {loss} --defense {defense} --profile "
                                f"{run.profile.name} --dataset {dataset}")
    return run.model(experiment)


def load_module(path, device=None) -> torch.nn.Module:
    """Any model a user gives: a folder of ours, a TorchScript file, or a file holding a whole pickled
    `torch.nn.Module` (torch.save(model)). Unpickling runs code from the file: give only your own."""
    from .devices import resolve_device

    path = Path(path)
    if path.is_dir():
        return load_folder(path, device)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: give a run or export folder, or a .pt file")
    device = resolve_device(device)
    try:
        model = torch.jit.load(str(path), map_location=device)
    except RuntimeError:
        model = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module (for a state dict, "
                         "build the model and load it first, then save the module: torch.save(model, path))")
    return model.to(device).eval()


def table1_row(run, model: torch.nn.Module, experiment: Experiment | None = None) -> dict:
    """{column: {"accuracy", "low", "high", "any_iterate"}} for every Table I column of the run's
    profile, on its test images. A model of ours (with `experiment`) uses and fills the store's
    caches, so a row the table computed is read back; any other module is attacked afresh."""
    from .evaluation import column_scores, robust_scores
    from .protocol import TABLE1
    from .stats import wilson_interval

    x, y = run.test_images()
    model = model.to(run.device).eval()
    specs = TABLE1.specs(run.profile)
    if experiment is not None:
        scores = column_scores(experiment, model, x, y, specs, run.store, progress=run.progress)
    else:
        torch.manual_seed(0)
        scores = {"clean" if s is None else s.column: robust_scores(model, x.to(run.device), y.to(run.device), s,
                                                                  progress=run.progress, desc=s and s.column)
                  for s in [None] + specs}
    row = {}
    for column, key in zip(TABLE1.attacks, scores):
        low, high = wilson_interval(scores[key]["final"], len(y))
        row[column.key] = {"accuracy": round(scores[key]["final"], 2), "low": round(low, 2), "high": round(high, 2),
                           "any_iterate": round(scores[key]["any_iterate"], 2)}
    return row


def format_row(row: dict, n: int) -> str:
    lines = [f"{'column':10s} {'accuracy':>9s}  95% interval ({n} test images)"]
    lines += [f"{k:10s} {v['accuracy']:8.2f}%  [{v['low']:.2f}, {v['high']:.2f}]" for k, v in row.items()]
    return "\n".join(lines)


def export(run_dir, out_dir, run=None, data_dir=None) -> Path:
    """Write `out_dir`: model.safetensors and its digest, experiment.json, table1_row.json (every Table I
    column, measured on the profile's test images, from the store's caches where they are) and
    MODEL_CARD.md. `run` (the run context) defaults to the run's own profile and dataset, with the data
    in `data_dir` (default: data/ of the checkout)."""
    from .context import Run
    from .store import write_checked_json

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    experiment = experiment_of(run_dir)
    if (out_dir.exists() and not out_dir.is_dir()) or run_dir.resolve() == out_dir.resolve():
        raise ValueError(f"{out_dir} must be a new or existing folder other than the run itself")
    result = read_checked_json(run_dir / "result.json") if (run_dir / "result.json").exists() else None
    if result is None or result["status"] != "finished":
        state = "no result.json" if result is None else result["status"]
        raise ValueError(f"{run_dir} has not finished training ({state})")
    run = run or Run(experiment.profile, experiment.dataset, experiment.objectives, data_root=data_dir,
                     progress=False)
    model = load_folder(run_dir, run.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_weights(model, out_dir, experiment)
    write_checked_json(out_dir / "experiment.json", {"experiment": asdict(experiment), "key": experiment.key,
                                                     "in_channels": result["in_channels"],
                                                     "num_classes": result["num_classes"]})
    row = table1_row(run, model, experiment)
    write_checked_json(out_dir / "table1_row.json", {"label": experiment.label, "key": experiment.key,
                                                     "test_images": len(run.test_images()[1]), "row": row})
    atomic_write_text(out_dir / "MODEL_CARD.md", model_card(experiment, result, row, len(run.test_images()[1]),
                                                            _sha256(out_dir / WEIGHTS)))
    return out_dir


def model_card(experiment: Experiment, result: dict, row: dict, n: int, digest: str) -> str:
    columns = " | ".join(row)
    values = " | ".join(f"{v['accuracy']:.2f} [{v['low']:.1f}, {v['high']:.1f}]" for v in row.values())
    params = ", ".join(f"{k}={v}" for k, v in experiment.loss_params) or "defaults"
    return f"""# {experiment.label} ({experiment.dataset}, profile {experiment.profile}, seed {experiment.seed})

A ResNet-18 ({experiment.model}, width {experiment.width}) trained with the {experiment.loss} loss ({params})
under the {experiment.defense} defence ({experiment.objectives} objectives), reproducing Hosler et al.,
"Learning Discriminative Features for Adversarial Robustness". Experiment key `{experiment.key}`.

Training: {result['epochs_run']} epochs, {experiment.optimizer} at lr {experiment.lr}, batch {experiment.batch_size};
kept epoch {result['kept_epoch']} ({result['kept_why']}), validation accuracy {result['kept_val_acc']:.2f}%;
{result['train_seconds']:.0f} s on {result.get('device', '?')}.

Table I row (accuracy %, 95% Wilson interval, {n} test images, L-inf eps 8/255):

| {columns} |
|{'---|' * len(row)}
| {values} |

Inputs: images in [0, 1], {result['in_channels']} channel(s); outputs: {result['num_classes']} logits.

    from reproduce import load_model
    model = load_model("path/to/this/folder")  # or safetensors.torch.load_file("model.safetensors")

`model.safetensors` SHA-256: `{digest}`.
"""
