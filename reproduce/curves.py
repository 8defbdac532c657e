"""Curves of the Table I models: training (objective and validation accuracy per epoch), accuracy against
eps, and accuracy against the number of PGD steps; each written as CSV and drawn."""
from __future__ import annotations

import pandas as pd

from . import figures
from .attacks import AttackSpec
from .evaluation import accuracies, evaluate_white_box, score_columns
from .protocol import ITERATION_SWEEP, TABLE1, table1_experiments
from .tables import summarise


def fig_training_curves(run):
    """Training objective and validation accuracy per epoch of every Table I model."""
    metrics = {}
    for e in table1_experiments(run):
        metrics.setdefault(e.label, []).append(run.store.metrics(e))  # one list of epochs per seed
    return figures.training_curves(metrics, run.out_dir / "fig_training_curves.png", run.profile)


def _with_intervals(points: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean accuracy over seeds per `keys`, with its 95% interval (tables.summarise)."""
    out = summarise(points, keys).drop(columns="sd")
    return out.rename(columns={"mean": "accuracy", "n_images": "n"})


def robustness_curves(run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy against eps for every Table I model (PGD-7 scaled to eps: the sanity check's curve), and
    against the number of PGD steps at eps 8/255 for the UM and AT models of SM and AAML. Writes
    curve_eps.csv / .png and curve_iterations.csv / .png; returns the two tables."""
    x, y = run.test_images()
    iteration_specs = [AttackSpec("pgd", steps=k, label=f"pgd{k}") for k in ITERATION_SWEEP]
    eps_rows, step_rows = [], []
    for exp in table1_experiments(run):
        if not run.finished(exp):
            continue
        model = run.model(exp)
        curve = evaluate_white_box(exp, model, x, y, TABLE1.specs(run.profile), run.store,
                                   progress=run.progress)["eps_curve"]
        base = dict(model=exp.label, loss=exp.loss, defense=exp.defense, seed=exp.seed, n=len(y))
        eps_rows += [dict(base, eps=round(float(e) * 255, 1), accuracy=a) for e, a in curve.items()]
        if exp.loss in ("SM", "AAML") and exp.defense in ("UM", "AT"):
            row = accuracies(score_columns(model, x, y, iteration_specs, experiment=exp, store=run.store,
                                           progress=run.progress))
            step_rows += [dict(base, steps=s.steps, accuracy=row[s.column]) for s in iteration_specs]
    out, name = run.out_dir, run.profile
    eps = _with_intervals(pd.DataFrame(eps_rows), ["model", "loss", "defense", "eps"])
    steps = _with_intervals(pd.DataFrame(step_rows), ["model", "loss", "defense", "steps"])
    eps.to_csv(out / "curve_eps.csv", index=False, float_format="%.2f")
    steps.to_csv(out / "curve_iterations.csv", index=False, float_format="%.2f")
    figures.curve_panels(eps, "eps", "defense", "loss", out / "fig_curve_eps.png", x_label="eps (x 1/255)",
                         profile=name, title=f"PGD-7 accuracy against eps ({run.dataset}; band: 95% interval)")
    figures.curve_panels(steps, "steps", "defense", "loss", out / "fig_curve_iterations.png", log_x=True,
                         x_label="PGD steps (eps 8/255, step 2/255)", profile=name,
                         title=f"Accuracy against PGD steps ({run.dataset}; band: 95% interval)")
    return eps, steps
