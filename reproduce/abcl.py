"""The ablations of the ABCL appendix (A to D). The HT-SCE and AB losses are reconstructions: see
losses.HypersphereLoss and the README for which choices are guesses and which parameter sets each.

Each function takes the run context first, trains what it needs (the store caches it), writes its figure
and a CSV of every number behind it into the run's output folder, and returns the numbers. Notebook 01's
2-d embedding figure is here too: it trains the same small CNN.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from . import figures
from .attacks import AttackSpec
from .evaluation import accuracies, score_columns
from .geometry import embeddings, sample, tsne
from .losses import loss_recipe
from .protocol import APPENDIX_COLUMNS
from .stats import wilson_interval
from .training import train_all

# MNIST strengths are not given in the appendix: the usual MNIST L-inf budget, and an L2 budget
# of the same visual order.
MNIST_BIM = AttackSpec("bim", eps=0.3, step=0.03, steps=10, label="BIM L-inf (eps 0.3)")
MNIST_FGSM_L2 = AttackSpec("fgsm", eps=2.0, step=2.0, norm="l2", label="FGSM L2 (eps 2.0)")


def small_cnn_experiment(run, loss, embedding_dim, loss_params=None, epochs=None, **overrides):
    """The small CNN of the 2-d and 10-d figures: SGD at 0.05 without augmentation, or the loss's recipe."""
    settings = dict({} if loss_recipe(loss) else {"lr": 0.05}, augment=False, **overrides)
    return run.experiment(loss, "UM", model="smallcnn", embedding_dim=embedding_dim, loss_params=loss_params,
                          epochs=epochs or min(run.profile.epochs, 10), **settings)


# In two dimensions ten classes leave 36 degrees each: a cosine margin of 0.2 does not fit, and SGD
# leaves the fixed-scale cosine heads near chance. These settings train every panel (README: the 2-d
# figure); they are the plane's, not the paper's.
PLANE_EPOCHS = 8
# The plane's eight panels: the paper's five losses and the ABCL appendix's three (MMC and PCL, beyond the
# paper, are left out: their centres are fixed or learned in the embedding, not drawn in the plane's way).
PLANE_LOSSES = ("SM", "ConL", "TL", "CenL", "AAML", "CosFace", "HT-SCE", "HT-SCE+AB")
PLANE_SETTINGS = {
    "CosFace": dict(loss_params={"s": 4.0, "m": 0.05}, optimizer="adam", lr=3e-3),
    "HT-SCE": dict(loss_params={"s": 4.0, "m": 0.05}, optimizer="adam", lr=3e-3),
    "HT-SCE+AB": dict(loss_params={"s": 4.0, "m": 0.05}, optimizer="adam", lr=1e-3),
}


def plane_experiment(run, loss, train_limit: int | None = 10000, epochs: int = PLANE_EPOCHS, **loss_params):
    """The small CNN with a 2-d embedding, trained under `loss` with the plane's settings (notebook 01's
    figure, Appendix A); `loss_params` override the plane's."""
    settings = dict(PLANE_SETTINGS.get(loss, {}))
    params = dict(settings.pop("loss_params", {}), **loss_params)
    return small_cnn_experiment(run, loss, 2, params or None, epochs=epochs, train_limit=train_limit, **settings)


def fig_losses_2d(run, losses, epochs: int = PLANE_EPOCHS, train_limit: int | None = 10000, n_points: int = 2000):
    """Train the small CNN with a 2-d embedding under each loss and plot the test embeddings; each panel
    names the settings that differ from the loss's defaults. Returns the figure and {loss: accuracy}."""
    exps = [plane_experiment(run, loss, train_limit, epochs) for loss in losses]
    runs = train_all(run, exps)
    x, y = sample(run.data.x_test, run.data.y_test, n_points)
    panels, accuracy = {}, {}
    for exp, trained in runs.items():
        if trained.model is None:
            continue
        emb, pred = embeddings(trained.model, x, y)
        accuracy[exp.loss] = round(float(100 * (pred == y.numpy()).mean()), 2)
        settings = ", ".join([f"{k}={v:g}" for k, v in exp.changed_params.items()] +
                             ([f"{exp.optimizer} lr {exp.lr:g}"] if exp.loss in PLANE_SETTINGS else []))
        panels[f"{exp.loss} ({accuracy[exp.loss]:.0f}% test acc.)" + (f"\n{settings}" if settings else "")] = \
            (emb, y.numpy())
    fig = figures.scatter_panels(panels, run.data.classes, run.out_dir / "fig_losses_2d_embeddings.png", ncols=4,
                                 profile=run.profile,
                                 suptitle=f"2-d embeddings of {run.dataset} test images, one per loss "
                                          f"({epochs} epochs)")
    return fig, accuracy


def feature_norm(run, scale: float = 4.0, n_points: int = 2000) -> pd.DataFrame:
    """Appendix A: CosFace with 2-d features, the scale left to the feature norm (free) or fixed to s.
    Errors should gather near the origin when the norm is free."""
    variants = {"free norm (scale = ||f||)": None, f"fixed norm (scale s = {scale:g})": scale}
    exps = {name: plane_experiment(run, "CosFace", run.profile.train_limit, s=s) for name, s in variants.items()}
    runs = train_all(run, list(exps.values()))
    data = run.data
    panels, marks, rows = {}, {}, []
    for name, exp in exps.items():
        model = runs[exp].model
        for part, (x, y) in (("train", sample(data.x_train, data.y_train, n_points)),
                             ("test", sample(data.x_test, data.y_test, n_points))):
            emb, pred = embeddings(model, x, y)
            wrong = pred != y.numpy()
            norms = np.linalg.norm(emb, axis=1)
            rows.append({"model": name, "part": part, "accuracy": 100 * (1 - wrong.mean()),
                         "mean_norm_correct": norms[~wrong].mean() if (~wrong).any() else np.nan,
                         "mean_norm_misclassified": norms[wrong].mean() if wrong.any() else np.nan})
            r = rows[-1]
            title = (f"{name}, {part}\n|f| correct {r['mean_norm_correct']:.2f}, "
                     f"wrong {r['mean_norm_misclassified']:.2f}")
            panels[title], marks[title] = (emb, y.numpy()), wrong
    df = pd.DataFrame(rows)
    df.to_csv(run.out_dir / "appendix_a_feature_norm.csv", index=False, float_format="%.4f")
    figures.scatter_panels(panels, data.classes, run.out_dir / "appendix_a_feature_norm.png", ncols=2,
                           profile=run.profile, mark=marks,
                           suptitle=f"Appendix A: 2-d CosFace features on {run.dataset} (crosses: misclassified)")
    return df


COLUMNS = [c.key for c in APPENDIX_COLUMNS]


def column_title(run, key: str) -> str:
    """An appendix column as a panel title: the attack, its steps and eps ("PGD (7), eps 8/255")."""
    column = next(c for c in APPENDIX_COLUMNS if c.key == key)
    spec = column.spec(run.profile)
    return column.title if spec is None else f"{column.title}, eps {spec.eps * 255:g}/255"


def recipes(profile) -> dict:
    """The training recipes tried for HT-SCE+AB at (k1, k2) = (512, 64): {name: experiment overrides}.
    The last is the one `HypersphereLoss.RECIPE` and `intra_moves_weights=False` make the default."""
    lr = profile.lr
    moves = {"intra_moves_weights": True}
    return {
        f"SGD, lr {lr:g}, L_I moves the class weights": dict(optimizer="sgd", lr=lr, loss_params=moves),
        f"SGD, lr {lr:g}": dict(optimizer="sgd", lr=lr, loss_params={}),
        f"SGD, lr {lr:g} / k1": dict(optimizer="sgd", lr=lr / 512, loss_params={}),
        "Adam, lr 0.001, L_I moves the class weights": dict(optimizer="adam", lr=1e-3, loss_params=moves),
        "Adam, lr 0.001 (the default recipe)": dict(optimizer="adam", lr=1e-3, loss_params={}),
    }


def recipe_search(run) -> pd.DataFrame:
    """HT-SCE+AB (512, 64) under each recipe of `recipes`: clean and attacked accuracy, and the two AB
    terms' state at the end (L_O near 1 means the class weights collapsed onto one direction)."""
    exps = {(name,): run.experiment("HT-SCE+AB", "UM", **settings) for name, settings in recipes(run.profile).items()}
    df = _evaluate_grid(run, exps, ("recipe",))
    df["inter_class_max_cos"] = [_inter_term(run, exp) for exp in exps.values()]
    df.to_csv(run.out_dir / "appendix_recipe_search.csv", index=False, float_format="%.3f")
    return df


def _inter_term(run, exp):
    """L_O of a trained run: the mean over classes of the largest cosine to another class weight."""
    if not run.finished(exp):
        return np.nan
    with torch.no_grad():
        return float(run.model(exp).criterion.inter_term())


def k1k2_grid(run, k1_values=(0, 64, 512), k2_values=(0, 8, 64), defense="UM") -> pd.DataFrame:
    """Appendix B: HT-SCE+AB over a grid of (k1, k2), every cell with the same recipe, clean and under
    each attack; a heatmap per attack."""
    exps = {(k1, k2): k1k2_experiment(run, k1, k2, defense) for k1 in k1_values for k2 in k2_values}
    df = _evaluate_grid(run, exps, ("k1", "k2"))
    df.to_csv(run.out_dir / "appendix_b_k1k2_grid.csv", index=False, float_format="%.2f")
    fig, axes = figures.plt.subplots(1, len(COLUMNS), figsize=(3.6 * len(COLUMNS) + 1.0, 3.6))
    for ax, col in zip(axes, COLUMNS):  # one scale, 0-100%, so one colour bar (the last panel's) serves all
        pivot = df.pivot(index="k1", columns="k2", values=col)
        figures.heatmap(pivot, ax=ax, title=column_title(run, col), xlabel="k2 (weight of L_O)",
                        ylabel="k1 (weight of L_I)" if ax is axes[0] else "", vmin=0, vmax=100,
                        cbar=ax is axes[-1])
    fig.suptitle(f"Appendix B: HT-SCE+AB ({defense}) accuracy (%) on {run.dataset}, {len(run.test_images()[1])} "
                 f"test images, {exps[(k1_values[0], k2_values[0])].epochs} epochs; (0, 0) is plain HT-SCE")
    fig.tight_layout()
    figures.stamp(fig, run.profile)
    figures.save(fig, run.out_dir / "appendix_b_k1k2_grid.png")
    return df


def k1k2_experiment(run, k1, k2, defense="UM"):
    """Appendix B's cell (k1, k2). At (0, 0) the AB terms weigh nothing and the loss is plain HT-SCE, with
    the same recipe and initialisation: that cell is the HT-SCE run Appendix C's sweep trains at its
    default scale, trained once for both."""
    if k1 == k2 == 0:
        return grid_experiment(run, "HT-SCE", defense)
    return grid_experiment(run, "HT-SCE+AB", defense, {"k1": float(k1), "k2": float(k2)})


def grid_experiment(run, loss, defense="UM", loss_params=None):
    """A model of Appendix B's or C's grid: the paper's objectives, at the profile's `grid_epochs` (the
    grids compare their cells at one budget, which may be below Table I's)."""
    epochs = {"epochs": run.profile.grid_epochs} if run.profile.grid_epochs else {}
    return dataclasses.replace(run, objectives="paper").experiment(loss, defense, loss_params=loss_params, **epochs)


SCALE_SWEEP_LOSSES = {"HT-SCE": ("HT-SCE", {}), "HT-SCE+AB (512, 64)": ("HT-SCE+AB", {})}


def scale_sweep(run, scales=tuple(range(1, 11)), losses=None, defense="UM") -> pd.DataFrame:
    """Appendix C: accuracy against the scale s, for plain HT-SCE and HT-SCE+AB: a panel per column
    (clean and each attack), a line per loss."""
    exps = {(name, s): grid_experiment(run, loss, defense, dict(params, s=float(s)))
            for name, (loss, params) in (losses or SCALE_SWEEP_LOSSES).items() for s in scales}
    df = _evaluate_grid(run, exps, ("loss", "s"))
    df.to_csv(run.out_dir / "appendix_c_scale_sweep.csv", index=False, float_format="%.2f")
    long = df.melt(id_vars=["loss", "s"], value_vars=COLUMNS, var_name="column", value_name="accuracy")
    n = len(run.test_images()[1])
    bounds = [wilson_interval(a, n) for a in long["accuracy"]]
    long = long.assign(ci_low=[b[0] for b in bounds], ci_high=[b[1] for b in bounds],
                       column=[column_title(run, c) for c in long["column"]])
    figures.curve_panels(long, "s", "column", "loss", run.out_dir / "appendix_c_scale_sweep.png",
                         x_label="scale s", profile=run.profile,
                         title=f"Appendix C: accuracy (%) against the scale s ({defense}, {run.dataset}, {n} test "
                               f"images, {next(iter(exps.values())).epochs} epochs; band: 95% Wilson interval)")
    return df


def claims(grid_b: pd.DataFrame, sweep_c: pd.DataFrame, n_images: int | None = None) -> list[str]:
    """Which of the appendix's claims hold on this run, as sentences computed from the numbers (with
    `n_images`, the size of a cell's 95% interval, below which differences are noise)."""
    lines = []
    b = grid_b.dropna(subset=["clean"]).set_index(["k1", "k2"])
    if (0, 0) in b.index and len(b) > 1:
        others = b.drop(index=(0, 0))["clean"]
        plain = b.loc[(0, 0), "clean"]
        worst = others.min()
        verdict = "holds" if plain < worst else "does not hold"
        lines.append(f"Appendix B: (0, 0) is the weakest cell on clean images: {verdict} here (plain HT-SCE "
                     f"{plain:.1f}%, the other cells {worst:.1f}% to {others.max():.1f}%).")
        if (512, 64) in b.index:
            best = b["pgd7"].idxmax()
            lines.append(f"Appendix B: (512, 64) reaches {b.loc[(512, 64), 'clean']:.1f}% clean and "
                         f"{b.loc[(512, 64), 'pgd7']:.1f}% under PGD-7; the most robust cell under PGD-7 is "
                         f"({best[0]:g}, {best[1]:g}) ({b.loc[best, 'pgd7']:.1f}%).")
    for name, part in sweep_c.dropna(subset=["clean"]).groupby("loss", sort=False):
        part = part.set_index("s")
        best_s = part["clean"].idxmax()
        past8 = part.loc[part.index > 8, "clean"]
        drop = "" if past8.empty else (f"; past s = 8 the clean accuracy is {past8.mean():.1f}% on average, "
                                       f"{'below' if past8.mean() < part['clean'].max() - 1 else 'close to'} "
                                       f"the best")
        lines.append(f"Appendix C, {name}: the best clean accuracy is at s = {best_s:g} "
                     f"({part.loc[best_s, 'clean']:.1f}%; the appendix reports s = 4-5){drop}.")
    if n_images and len(b):
        low, high = wilson_interval(float(b["clean"].mean()), n_images)
        lines.append(f"Each cell is measured on {n_images} test images: its 95% interval is about "
                     f"±{(high - low) / 2:.1f} points at these accuracies, so smaller differences are noise.")
    return lines


def _evaluate_grid(run, exps: dict, key_names) -> pd.DataFrame:
    """Train {key: experiment} and evaluate each on the appendix's columns: a row per key."""
    runs = train_all(run, list(exps.values()))
    x, y = run.test_images()
    specs = [s for s in (c.spec(run.profile) for c in APPENDIX_COLUMNS) if s is not None]
    rows = []
    for key, exp in exps.items():
        trained = runs[exp]
        row = dict(zip(key_names, key))
        if trained.model is None:
            row.update({c: np.nan for c in COLUMNS}, status="diverged")
        else:
            scores = score_columns(trained.model, x, y, specs, experiment=exp, store=run.store, progress=run.progress)
            row.update(accuracies(scores), status="finished")
        rows.append(row)
    return pd.DataFrame(rows)


def tsne_grid(run, n_points: int = 1000) -> pd.DataFrame:
    """Appendix D: t-SNE of 10-d small-CNN features, rows SCE / CosFace / HT-SCE+AB, columns train, test,
    BIM (L-inf) and FGSM (L2) adversarial test images, coloured by true class."""
    rows = {"SCE": "SM", "CosFace": "CosFace", "HT-SCE+AB": "HT-SCE+AB"}
    exps = {name: small_cnn_experiment(run, loss, 10) for name, loss in rows.items()}
    runs = train_all(run, list(exps.values()))
    data = run.data
    train_xy = sample(data.x_train, data.y_train, n_points)
    test_xy = sample(data.x_test, data.y_test, n_points)
    columns = (("train", train_xy, None), ("test", test_xy, None), (MNIST_BIM.label, test_xy, MNIST_BIM),
               (MNIST_FGSM_L2.label, test_xy, MNIST_FGSM_L2))
    panels, records = {}, []
    for name, exp in exps.items():
        model = runs[exp].model
        for col, (x, y), spec in columns:
            emb, pred = embeddings(model, x, y, spec)
            acc = 100 * (pred == y.numpy()).mean()
            panels[f"{name}: {col}\n(accuracy {acc:.0f}%)"] = (tsne(emb), y.numpy())
            records.append({"loss": name, "images": col, "accuracy": acc})
    df = pd.DataFrame(records)
    df.to_csv(run.out_dir / "appendix_d_tsne_mnist.csv", index=False, float_format="%.2f")
    figures.scatter_panels(panels, data.classes, run.out_dir / "appendix_d_tsne_mnist.png", ncols=4,
                           profile=run.profile, colour_title="true class",
                           suptitle=f"Appendix D: t-SNE of 10-d features on {run.dataset}")
    return df
