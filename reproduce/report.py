"""What the notebooks call: output folders, the manifest, and each figure of the paper.

Outputs of a run go to figures/<dataset>-<profile>/ so runs of different profiles or datasets never
overwrite each other.
"""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from . import figures
from .abcl import PLANE_EPOCHS, PLANE_SETTINGS, plane_experiment
from .attacks import AttackSpec
from .config import get_profile, make_experiment
from .data import DatasetMissing, load_dataset
from .evaluation import evaluate_columns, evaluate_white_box
from .grid import table1_experiments, train_all
from .losses import PAPER_LOSSES
from .protocol import ITERATION_SWEEP, TABLE1
from .stats import seed_interval
from .store import RunStore, write_json
from .training import load_trained


def output_dir(dataset: str, profile, root: str | Path = "figures", objectives: str = "authors") -> Path:
    """figures/<dataset>-<profile>/, with a -paper-objectives suffix for the paper's reading of AT / ALP."""
    suffix = "" if objectives == "authors" else f"-{objectives}-objectives"
    out = Path(root) / f"{dataset}-{get_profile(profile).name}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def update_manifest(out_dir: Path, **fields) -> dict:
    """Merge fields into manifest.json (dicts are merged one level deep)."""
    path = Path(out_dir) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(manifest.get(k), dict):
            manifest[k].update(v)
        else:
            manifest[k] = v
    write_json(path, manifest)
    return manifest


def record_experiments(out_dir: Path, experiments, store: RunStore) -> None:
    entries = {}
    for e in experiments:
        result = store.result(e)
        entries[e.run_name] = {"label": e.label, "key": e.key, "loss_params": dict(e.loss_params),
                               "seed": e.seed, "objectives": e.objectives,
                               "status": result["status"] if result else "missing"}
    update_manifest(out_dir, experiments=entries)


def small_dataset(data_root=None, prefer: str = "mnist") -> str:
    """MNIST when its files are there, else Fashion-MNIST (works offline with Debian's package)."""
    try:
        load_dataset(prefer, data_root, download=False)
        return prefer
    except DatasetMissing:
        return "fashion-mnist"


# ------------------------------------------------------------------ figures of the paper

def fig_training_curves(profile, dataset: str, store: RunStore, out_dir: Path, objectives: str = "authors"):
    metrics = {}
    for e in table1_experiments(profile, dataset, objectives=objectives):
        metrics.setdefault(e.label, []).append(store.metrics(e))  # one list of epochs per seed
    return figures.training_curves(metrics, Path(out_dir) / "fig_training_curves.png", get_profile(profile).name)


def _subsample(data, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_test), generator=g)[:n]
    return data.x_test[idx], data.y_test[idx]


def _um(loss, profile, dataset, store, device):
    return load_trained(make_experiment(loss, "UM", profile, dataset), store, device)


def fig1_tsne(profile, dataset: str, data, store: RunStore, out_dir: Path, n_points: int = 1000,
              device=None, eps: float = 8 / 255):
    """t-SNE of the embedding of random test images, SM vs AAML (UM), clean vs FGSM; coloured by true class."""
    x, y = _subsample(data, n_points)
    fgsm = AttackSpec("fgsm", eps=eps, step=eps)
    panels = {}
    for loss in ("SM", "AAML"):
        model = _um(loss, profile, dataset, store, device)
        for name, spec in (("clean", None), ("FGSM", fgsm)):
            emb, _ = figures.embeddings(model, x, y, spec)
            panels[f"{loss}-UM, {name}"] = (figures.tsne(emb), y.numpy())
    return figures.scatter_panels(panels, data.classes, Path(out_dir) / "fig1_tsne_sm_vs_aaml.png", ncols=2,
                                  profile=get_profile(profile).name, colour_title="true class",
                                  suptitle=f"t-SNE of the embedding, {len(y)} test images (eps {eps * 255:.0f}/255)")


def fig2_tsne_airplane(profile, dataset: str, data, store: RunStore, out_dir: Path, class_index: int = 0,
                       device=None, eps: float = 8 / 255):
    """t-SNE of the embeddings of FGSM images whose true class is `class_index` (airplane on CIFAR-10),
    one panel per loss, coloured by the predicted class."""
    mask = data.y_test == class_index
    x, y = data.x_test[mask], data.y_test[mask]
    fgsm = AttackSpec("fgsm", eps=eps, step=eps)
    panels = {}
    for loss in PAPER_LOSSES:
        emb, pred = figures.embeddings(_um(loss, profile, dataset, store, device), x, y, fgsm)
        still_right = 100 * (pred == class_index).mean()
        panels[f"{loss}-UM ({still_right:.0f}% still {data.classes[class_index]})"] = (figures.tsne(emb), pred)
    return figures.scatter_panels(panels, data.classes, Path(out_dir) / "fig2_tsne_airplane_fgsm.png", ncols=5,
                                  profile=get_profile(profile).name, colour_title="predicted class",
                                  suptitle=f"FGSM images of true class '{data.classes[class_index]}' "
                                           f"({len(y)} test images), coloured by prediction")


def fig_losses_2d(dataset: str, profile, store: RunStore, out_dir: Path, losses, epochs: int = PLANE_EPOCHS,
                  train_limit: int | None = 10000, n_points: int = 2000, device=None, data_root=None):
    """Train the small CNN with a 2-d embedding under each loss and plot the test embeddings; each panel
    names the settings that differ from the loss's defaults."""
    exps = [plane_experiment(loss, profile, dataset, train_limit, epochs) for loss in losses]
    runs = train_all(exps, store, device=device, data_root=data_root)
    data = load_dataset(dataset, data_root)
    x, y = _subsample(data, n_points)
    panels, accuracy = {}, {}
    for exp, run in runs.items():
        if run.model is None:
            continue
        emb, pred = figures.embeddings(run.model, x, y)
        accuracy[exp.loss] = float(100 * (pred == y.numpy()).mean())
        settings = ", ".join([f"{k}={v:g}" for k, v in exp.changed_params.items()] +
                             ([f"{exp.optimizer} lr {exp.lr:g}"] if exp.loss in PLANE_SETTINGS else []))
        panels[f"{exp.loss} ({accuracy[exp.loss]:.0f}% test acc.)" + (f"\n{settings}" if settings else "")] = \
            (emb, y.numpy())
    fig = figures.scatter_panels(panels, data.classes, Path(out_dir) / "fig_losses_2d_embeddings.png", ncols=4,
                                 profile=get_profile(profile).name,
                                 suptitle=f"2-d embeddings of {dataset} test images, one per loss "
                                          f"({epochs} epochs)")
    return fig, accuracy


def _with_intervals(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean accuracy over seeds per `keys`, with its 95% interval (stats.seed_interval)."""
    g = df.groupby(keys, sort=False)
    out = g.agg(accuracy=("accuracy", "mean"), seeds=("accuracy", "count"), n=("n", "first")).reset_index()
    bounds = [seed_interval(list(group["accuracy"]), int(group["n"].iloc[0])) for _, group in g]
    out["ci_low"], out["ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return out


def robustness_curves(profile, dataset: str, data, store: RunStore, out_dir: Path, device=None,
                      objectives: str = "authors", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy against eps for every Table I model (PGD-7 scaled to eps: the sanity check's curve), and
    against the number of PGD steps at eps 8/255 for the UM and AT models of SM and AAML. Writes
    curve_eps.csv / .png and curve_iterations.csv / .png; returns the two tables."""
    prof = get_profile(profile)
    x, y = data.test_images(prof.test_limit)
    iteration_specs = [AttackSpec("pgd", steps=k, label=f"pgd{k}") for k in ITERATION_SWEEP]
    eps_rows, step_rows = [], []
    for exp in table1_experiments(prof, dataset, objectives=objectives):
        result = store.result(exp)
        if result is None or result["status"] != "finished":
            continue
        model = load_trained(exp, store, device)
        curve = evaluate_white_box(exp, model, x, y, TABLE1.specs(prof), store, progress=progress)["eps_curve"]
        base = dict(model=exp.label, loss=exp.loss, defense=exp.defense, seed=exp.seed, n=len(y))
        eps_rows += [dict(base, eps=round(float(e) * 255, 1), accuracy=a) for e, a in curve.items()]
        if exp.loss in ("SM", "AAML") and exp.defense in ("UM", "AT"):
            row = evaluate_columns(exp, model, x, y, iteration_specs, store, progress=progress)
            step_rows += [dict(base, steps=s.steps, accuracy=row[s.column]) for s in iteration_specs]
    out_dir = Path(out_dir)
    eps = _with_intervals(pd.DataFrame(eps_rows), ["model", "loss", "defense", "eps"])
    steps = _with_intervals(pd.DataFrame(step_rows), ["model", "loss", "defense", "steps"])
    eps.to_csv(out_dir / "curve_eps.csv", index=False, float_format="%.2f")
    steps.to_csv(out_dir / "curve_iterations.csv", index=False, float_format="%.2f")
    figures.curve_panels(eps, "eps", "defense", "loss", out_dir / "fig_curve_eps.png", x_label="eps (x 1/255)",
                         profile=prof.name, title=f"PGD-7 accuracy against eps ({dataset}; band: 95% interval)")
    figures.curve_panels(steps, "steps", "defense", "loss", out_dir / "fig_curve_iterations.png", log_x=True,
                         x_label="PGD steps (eps 8/255, step 2/255)", profile=prof.name,
                         title=f"Accuracy against PGD steps ({dataset}; band: 95% interval)")
    return eps, steps
