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

import os
from dataclasses import asdict
from pathlib import Path

import torch

from .config import Experiment
from .store import (
    WEIGHTS,
    atomic_write_text,
    load_checkpoint,
    read_checked_json,
    read_weights,
    sha256_of,
    write_weights,
)


def experiment_of(folder: Path) -> Experiment:
    """The experiment a run folder (config.json) or an export folder (experiment.json) holds."""
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "experiment.json").exists():
        raise ValueError(f"{folder} holds both a run (config.json) and an export (experiment.json): one was written "
                         "into the other's folder; keep the run and move the export out")
    for name in ("config.json", "experiment.json"):
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
    if (folder / "config.json").exists() and not (folder / "result.json").exists():
        raise FileNotFoundError(f"{folder} has not finished training (no result.json): wait for it, or resume it "
                                f"with the command that started it (python -m reproduce train --loss "
                                f"{experiment.loss} --defense {experiment.defense} ...)")
    model = build_model(experiment, *_shape(folder))
    if (folder / WEIGHTS).exists():
        state = read_weights(folder, key=experiment.key)
    elif (folder / "best.pt").exists():
        state = load_checkpoint(folder / "best.pt", key=experiment.key)["model"]
    else:
        raise FileNotFoundError(f"{folder} holds no kept weights (model.safetensors or best.pt): it has not "
                                "finished training")
    load_weights(model, state, folder / WEIGHTS)
    return model.to(resolve_device(device)).eval()


def _kind(t: torch.Tensor) -> str:
    return "bool" if t.dtype == torch.bool else "float" if t.is_floating_point() else "int"


def load_weights(model: torch.nn.Module, state: dict, path) -> None:
    """`state` into `model`, refusing what load_state_dict would take in silence: a tensor whose kind
    (floating point, integer, boolean) is not the parameter's (int64 weights would be cast to float)."""
    own = model.state_dict()
    wrong = [f"{k} ({v.dtype}, the network's is {own[k].dtype})" for k, v in state.items()
             if k in own and isinstance(v, torch.Tensor) and _kind(v) != _kind(own[k])]
    if wrong:
        raise ValueError(f"{path} holds tensors of another kind than the network's: {', '.join(wrong[:3])}"
                         + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "") + "; save the weights as trained")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the network: {str(e).strip().splitlines()[0][:300]}") from None


def load_model(what: str | Path, *, profile=None, dataset: str | None = None, seed: int = 0,
               objectives: str = "authors", runs_dir=None, device=None, **overrides) -> torch.nn.Module:
    """A trained model, ready to attack: `what` is a run or export folder (its own dataset and profile),
    or a table label ("AAML-AT", "ArcFace-AT") looked up in the store (runs/ of the checkout unless
    `runs_dir`) for `profile` (a name or a config.Profile with its budgets), `dataset` (None: $DATASET,
    else cifar10) and `seed`; `overrides` are the
    experiment's other settings (e.g. loss_params={"s": 4.0, "m": 0.25} for a Table IV model, or
    epochs=1 for a run trained with changed budgets). When the exact run is missing, the error names
    the runs of that label the store does have (`list_models`)."""
    if Path(what).is_dir():
        return load_folder(what, device)
    from .config import parse_label
    from .context import start

    try:
        loss, defense = parse_label(what)
    except ValueError as e:
        raise ValueError(f"{what!r} is neither a folder nor a table label such as 'AAML-AT' (LOSS-DEFENSE): {e}") \
            from None
    run = start(profile, dataset, objectives=objectives, device=device, runs_dir=runs_dir, quiet=True)
    experiment = run.experiment(loss, defense, seed, **overrides)
    if not run.finished(experiment):
        near = [m for m in list_models(run.store.root)
                if m["label"] == experiment.label and m["status"] == "finished"]
        found = "".join(f"\n  {m['folder']} ({m['dataset']}, {m['profile']}, seed {m['seed']}"
                        + "".join(f", {m[k]}" for k in ("budgets", "loss_params") if m[k]) + ")" for m in near)
        hint = (f"; the store has {len(near)} other {experiment.label} run(s): load one by its folder, or pass its "
                f"budgets (e.g. epochs=1){found}" if near else
                f"; train it with python -m reproduce train --loss {loss} --defense {defense} --profile "
                f"{run.profile.name} --dataset {run.dataset}")
        raise FileNotFoundError(f"{experiment.label} ({run.profile.name}, {run.dataset}, seed {seed}) is not trained "
                                f"in {run.store.root} (looked for {run.store.run_dir(experiment).name}){hint}")
    return run.model(experiment)


def list_models(runs_dir=None) -> list[dict]:
    """Every run of the store (runs/ of the checkout unless `runs_dir`), a dict each: label, dataset,
    profile, the budgets and loss parameters that differ from the profile's, seed, status (finished,
    diverged, or unfinished), the kept epoch's clean validation accuracy, and the folder."""
    from .context import default_folder

    root = Path(runs_dir or default_folder("runs"))
    if root.exists() and not root.is_dir():
        raise ValueError(f"the run store {root} is a file, not a folder: give --runs (or REPRODUCE_RUNS) a folder")
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise ValueError(f"the run store {root} cannot be read (permission denied): fix its permissions or give "
                         "another --runs")
    models = []
    for config in sorted(root.glob("*/config.json")):
        folder = config.parent
        try:
            experiment = experiment_of(folder)
            result = read_checked_json(folder / "result.json") if (folder / "result.json").exists() else None
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
            models.append(dict(label="?", dataset="?", profile="?", budgets="", loss_params="", seed=None,
                               status=f"unreadable ({e})", val_acc=None, folder=str(folder)))
            continue
        words = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
        status, val_acc = "unfinished", None
        if result is not None:
            status = result.get("status") if isinstance(result.get("status"), str) else \
                "unreadable (result.json has no status)"
            val_acc = result.get("kept_val_acc")
            if not isinstance(val_acc, (int, float)) or isinstance(val_acc, bool):
                val_acc = None
        models.append(dict(label=experiment.label, dataset=experiment.dataset, profile=experiment.profile,
                           budgets=words(experiment.differences()), loss_params=words(experiment.changed_params),
                           seed=experiment.seed, status=status, val_acc=val_acc, folder=str(folder)))
    return models


def format_models(models: list[dict]) -> str:
    """The store as a table for the terminal (python -m reproduce models)."""
    if not models:
        return "no runs"
    head = ("label", "dataset", "profile", "seed", "status", "val acc", "budgets / loss parameters", "folder")
    rows = [(m["label"], m["dataset"], m["profile"], str(m["seed"]), m["status"],
             "-" if m["val_acc"] is None else f"{m['val_acc']:.2f}",
             "; ".join(x for x in (m["budgets"], m["loss_params"]) if x) or "-", m["folder"]) for m in models]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head) - 1)]
    return "\n".join("  ".join(f"{c:{w}s}" for c, w in zip(r, widths)) + "  " + r[-1] for r in [head] + rows)


def build_architecture(spec: str) -> torch.nn.Module:
    """The network named by `spec`, "package.module:callable" (e.g. "torchvision.models:resnet18" or
    "my_models:Net"): the callable is called with no arguments. This imports and runs that module's code,
    which the user names by giving it."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--architecture {spec!r}: give it as package.module:callable, e.g. my_models:Net")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--architecture {spec!r}: {e}") from None
    try:
        model = factory()
    except TypeError as e:  # a class or function that needs arguments
        raise ValueError(f"--architecture {spec!r}: calling {name}() failed ({e}); name a callable that builds "
                         f"the network with no arguments, e.g. a function in your module that returns {name}(...)") \
            from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--architecture {spec!r} made a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_module(path, device=None, *, architecture: str | None = None, trust_pickle: bool = False) -> torch.nn.Module:
    """Any model a user gives, read without running code from the file unless `trust_pickle`:

    - a run or export folder of ours;
    - a TorchScript file (torch.jit.save);
    - weights alone, as safetensors or as a state dict saved with torch.save, loaded into the network that
      `architecture` names ("package.module:callable", `build_architecture`): tensors only
      (torch.load(weights_only=True)), so the file cannot run code;
    - a whole pickled module (torch.save(model)) only with `trust_pickle=True`: unpickling runs whatever
      code the file holds, so it is refused by default, and said when it is done."""
    from .devices import resolve_device

    path = Path(path)
    if path.is_dir():
        return load_folder(path, device)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: give a run or export folder, a TorchScript file, or weights "
                                "with --architecture")
    device = resolve_device(device)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: give a TorchScript file, weights with --architecture, or a folder")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as e:
            raise ValueError(f"{path} is not a safetensors file ({e})") from None
        return _with_weights(path, state, architecture, device)
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError):
        pass  # not TorchScript
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # anything the safe reader refuses: a pickled module, or not a torch file at all
        if not trust_pickle:
            raise ValueError(f"{path} is neither TorchScript nor weights that load without running code ({str(e)[:120]}"
                             "). If it is a whole module you saved yourself (torch.save(model)), loading it runs "
                             "code from the file: pass --trust-pickle (trust_pickle=True) to do so, or save it as "
                             "TorchScript (torch.jit.script(model).save(path)) or as weights "
                             "(torch.save(model.state_dict(), path)) with --architecture") from None
        print(f"unpickling {path} (--trust-pickle): this runs the code the file holds", flush=True)
        try:
            model = torch.load(path, map_location=device, weights_only=False)
        except Exception as e:
            raise ValueError(f"{path} could not be unpickled: {e}") from None
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module") from None
        return model.to(device).eval()
    if isinstance(state, torch.nn.Module):  # possible only for modules of torch's own allow-list
        return state.to(device).eval()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors nor a module")
    return _with_weights(path, state, architecture, device)


def _with_weights(path, state: dict, architecture: str | None, device) -> torch.nn.Module:
    if architecture is None:
        raise ValueError(f"{path} holds weights alone: name the network they belong to with --architecture "
                         "package.module:callable (architecture=...)")
    model = build_architecture(architecture)
    try:
        load_weights(model, state, path)
    except ValueError as e:
        raise ValueError(f"{e} ({architecture})") from None
    return model.to(device).eval()


def table1_row(run, model: torch.nn.Module, experiment: Experiment | None = None, store=None) -> dict:
    """{column: {"accuracy", "low", "high", "any_iterate"}} for every Table I column of the run's
    profile, on its test images, in the table's order. Every column is seeded by
    `evaluation.column_seed` from the experiment's key (FOREIGN_KEY for a module of no experiment), so
    one model gets one row whichever path computes it; with `store` (the run's store) the store's
    caches are read and filled, as the tables do."""
    from .evaluation import check_logits, score_columns
    from .protocol import TABLE1
    from .stats import wilson_interval

    x, y = run.test_images()
    model = model.to(run.device).eval()
    check_logits(model, x, run.data.num_classes)
    scores = score_columns(model, x, y, TABLE1.specs(run.profile), experiment=experiment, store=store,
                           progress=run.progress)
    row = {}
    for column, key in zip(TABLE1.attacks, scores):
        low, high = wilson_interval(scores[key]["final"], scores[key]["n"])
        row[column.key] = {"accuracy": round(scores[key]["final"], 2), "low": round(low, 2), "high": round(high, 2),
                           "any_iterate": round(scores[key]["any_iterate"], 2), "n": scores[key]["n"]}
    return row


def format_row(row: dict, n: int, profile=None) -> str:
    """The row as a small table, in Table I's column order, each column under its title (with the
    profile's restarts where the profile is given)."""
    from .protocol import TABLE1

    order = [k for k in TABLE1.keys if k in row] + [k for k in row if k not in TABLE1.keys]
    titles = {k: TABLE1.title_of(k, profile) for k in order}
    width = max(len(t) for t in titles.values())
    lines = [f"{'column':{width}s} {'key':9s} {'accuracy':>9s}  95% interval ({n} test images)"]
    lines += [f"{titles[k]:{width}s} {k:9s} {row[k]['accuracy']:8.2f}%  [{row[k]['low']:.2f}, {row[k]['high']:.2f}]"
              + (f"  on {row[k]['n']} images" if row[k].get("n", n) != n else "") for k in order]
    return "\n".join(lines)


def export(run_dir, out_dir, run=None, data_dir=None) -> Path:
    """Write `out_dir`: model.safetensors and its digest, experiment.json, table1_row.json (every Table I
    column on the profile's test images, read from the store's caches where they are, computed and
    cached where they are not, as the table would) and MODEL_CARD.md. `run` (the run context) defaults
    to the run's own profile and dataset, with the data in `data_dir` (default: data/ of the checkout).
    The target may not be inside the store nor a folder that holds a run."""
    from .context import Run
    from .evaluation import uncached_columns
    from .protocol import TABLE1
    from .store import RunStore, write_checked_json

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    experiment = experiment_of(run_dir)
    store = RunStore(run_dir.resolve().parent)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file: give a new or existing folder outside the run store")
    check_out_folder(out_dir, "the export folder")
    if (out_dir / "experiment.json").exists():
        other = read_checked_json(out_dir / "experiment.json")
        if other.get("key") != experiment.key:
            raise ValueError(f"{out_dir} holds the export of another model ({other.get('experiment', {}).get('loss')}-"
                             f"{other.get('experiment', {}).get('defense')}, key {other.get('key')}): export to a new "
                             "folder, or delete that one first")
    if out_dir.resolve().is_relative_to(store.root) or store.root.is_relative_to(out_dir.resolve()):
        raise ValueError(f"{out_dir} is inside the run store {store.root} (or holds it): export to a folder "
                         "outside it, so no run's files are overwritten")
    if any((out_dir / name).exists() for name in ("config.json", "result.json", "last.pt", "best.pt")):
        raise ValueError(f"{out_dir} holds a run of the store: export to a new folder")
    result = read_checked_json(run_dir / "result.json") if (run_dir / "result.json").exists() else None
    if result is None or result["status"] != "finished":
        state = "no result.json" if result is None else result["status"]
        raise ValueError(f"{run_dir} has not finished training ({state})")
    run = run or Run(experiment.profile, experiment.dataset, experiment.objectives, data_root=data_dir,
                     progress=False)
    model = load_folder(run_dir, run.device)
    x, y = run.test_images()
    missing = uncached_columns(experiment, x, TABLE1.specs(run.profile), store)
    print(f"{experiment.label}: every Table I column from the store's caches ({run_dir.name}/eval)" if not missing
          else f"{experiment.label}: {', '.join(missing)} not in the store's caches; computing and caching them")
    row = table1_row(run, model, experiment, store)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_weights(model, out_dir, experiment)
    write_checked_json(out_dir / "experiment.json", {"experiment": asdict(experiment), "key": experiment.key,
                                                     "in_channels": result["in_channels"],
                                                     "num_classes": result["num_classes"]})
    write_checked_json(out_dir / "table1_row.json", {"label": experiment.label, "key": experiment.key,
                                                     "test_images": len(y), "row": row})
    atomic_write_text(out_dir / "MODEL_CARD.md", model_card(experiment, result, row, len(y),
                                                            sha256_of(out_dir / WEIGHTS), run.profile))
    return out_dir


def check_out_folder(folder, what: str) -> None:
    """A folder a command will write (created if missing) must be writable: checked before any compute, so
    an hour of attacks is not lost to a path under a file or a read-only folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file: give a folder")
    existing = next(p for p in [folder, *folder.parents] if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise ValueError(f"{what} {folder} lies under {existing}, which is a file: give a folder elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder} cannot be written ({existing} is read-only for this user): give "
                         "another folder")


def model_card(experiment: Experiment, result: dict, row: dict, n: int, digest: str, profile=None) -> str:
    from .protocol import TABLE1

    columns = " | ".join(TABLE1.title_of(k, profile) for k in row)
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
