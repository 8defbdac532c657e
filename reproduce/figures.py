"""Figures: one plotting style, t-SNE of embeddings, heatmaps, training curves.

Every function takes what to draw and a path, writes a PNG and returns the matplotlib figure.
Figures from the smoke profile carry a stamp saying so.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .attacks import AttackSpec, attack  # noqa: E402
from .data import DeviceLoader  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titlesize": 11, "axes.labelsize": 10,
                     "legend.fontsize": 8, "font.size": 9})
CLASS_COLORS = plt.get_cmap("tab10")


def stamp(fig, profile: str | None) -> None:
    if profile == "smoke":
        # top-left corner: clear of the suptitle (centred) and of the legends (bottom)
        fig.text(0.005, 0.995, "smoke profile: pipeline check, not the paper's numbers", ha="left", va="top",
                 fontsize=7, color="firebrick", alpha=0.8)


def save(fig, path: Path | str | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    return fig


def class_legend(fig, class_names, title="class", ncol=None):
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=CLASS_COLORS(i % 10), label=n)
               for i, n in enumerate(class_names)]
    fig.legend(handles=handles, title=title, loc="lower center", ncol=ncol or min(len(class_names), 10),
               bbox_to_anchor=(0.5, -0.02), frameon=False)


@torch.no_grad()
def embeddings(model, images, labels, spec: AttackSpec | None = None, batch_size: int = 250):
    """(embedding, prediction) for each image, after an optional attack."""
    device = next(model.parameters()).device
    feats, preds = [], []
    for x, y in DeviceLoader(images, labels, batch_size, device=device):
        if spec is not None:
            with torch.enable_grad():
                x = attack(model, x, y, spec)
        model.eval()
        f = model.embed(x)
        feats.append(f.float().cpu())
        preds.append(model.criterion.logits(f.float()).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def tsne(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-d t-SNE (scikit-learn); perplexity shrinks for small sets so it stays valid."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def scatter_panels(panels: dict, class_names, path=None, ncols: int | None = None, profile: str | None = None,
                   suptitle: str | None = None, colour_title: str = "class", mark=None, point_size: float = 6):
    """One scatter per panel: {title: (xy (n, 2), colour index (n,))}; one shared class legend.
    `mark` maps a title to a boolean mask of points drawn as black crosses (e.g. misclassified)."""
    ncols = ncols or len(panels)
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 3.0 * nrows + 0.6), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, (xy, colour)) in zip(axes.flat, panels.items()):
        ax.scatter(xy[:, 0], xy[:, 1], c=[CLASS_COLORS(int(c) % 10) for c in colour], s=point_size, alpha=0.8,
                   linewidths=0)
        if mark and title in mark and mark[title].any():
            m = mark[title]
            ax.scatter(xy[m, 0], xy[m, 1], marker="x", c="black", s=10, linewidths=0.6, label="misclassified")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_title(title)
        ax.set_xticks([]), ax.set_yticks([])
    class_legend(fig, class_names, colour_title, ncol=min(len(class_names), 5 if ncols < 4 else 10))
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    stamp(fig, profile)
    return save(fig, path)


def heatmap(df, path=None, title: str = "", xlabel: str = "", ylabel: str = "", cbar_label: str = "accuracy (%)",
            profile: str | None = None, ax=None, vmin=None, vmax=None):
    """Annotated heatmap of a DataFrame; missing cells are shown as '-' on grey."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(1.1 * len(df.columns) + 2.2, 0.55 * len(df) + 1.6))
    else:
        fig = ax.figure
    values = df.to_numpy(dtype=float)
    masked = np.ma.masked_invalid(values)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightgrey")
    im = ax.imshow(masked, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(df.columns)), [str(c) for c in df.columns])
    ax.set_yticks(range(len(df.index)), [str(i) for i in df.index])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "-" if np.isnan(v) else f"{v:.1f}"
            colour = "black" if np.isnan(v) or im.norm(v) > 0.6 else "white"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar_label, shrink=0.85)
    if own:
        fig.tight_layout()
        stamp(fig, profile)
    return save(fig, path) if own else fig


def _mean_and_sd(runs: list, key: str):
    """Epochs and, per epoch, the mean and standard deviation of `key` over the runs that reached it."""
    epochs = sorted({r["epoch"] for records in runs for r in records})
    values = [[r.get(key, np.nan) for records in runs for r in records if r["epoch"] == e] for e in epochs]
    mean = np.array([np.nanmean(v) for v in values])
    sd = np.array([np.nanstd(v) if len(v) > 1 else 0.0 for v in values])
    return np.array(epochs), mean, sd


def training_curves(metrics: dict, path=None, profile: str | None = None):
    """Validation accuracy and training loss per epoch for each model: {label: [metric records of one
    seed, ...]}; with several seeds a line is their mean and the band one standard deviation."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"UM": "-", "AT": "--", "ALP": ":"}
    for i, (label, runs) in enumerate(metrics.items()):
        runs = [records for records in runs if records]
        if not runs:
            continue
        colour = CLASS_COLORS(i // 3 % 10)
        ls = styles.get(label.split("-")[-1], "-")
        for ax, key in ((ax_loss, "train_loss"), (ax_acc, "val_acc")):
            epochs, mean, sd = _mean_and_sd(runs, key)
            ax.plot(epochs, mean, ls, color=colour, label=label + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""))
            if len(runs) > 1:
                ax.fill_between(epochs, mean - sd, mean + sd, color=colour, alpha=0.15, linewidth=0)
    ax_loss.set(xlabel="epoch", ylabel="training objective", title="Training loss (adversarial batch for AT/ALP)")
    ax_acc.set(xlabel="epoch", ylabel="clean validation accuracy (%)", title="Validation accuracy")
    ax_loss.set_yscale("log")
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    stamp(fig, profile)
    return save(fig, path)


def curve_panels(df, x: str, panel: str, hue: str, path=None, x_label: str = "", title: str = "",
                 profile: str | None = None, log_x: bool = False):
    """Accuracy against a swept value from a long table (columns x, panel, hue, accuracy and, for a
    band, ci_low and ci_high): a panel per value of `panel`, a line per value of `hue`."""
    panels = list(dict.fromkeys(df[panel]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.4, 3.4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], panels):
        for i, (label, part) in enumerate(df[df[panel] == name].groupby(hue, sort=False)):
            part = part.sort_values(x)
            colour = CLASS_COLORS(i % 10)
            ax.plot(part[x], part["accuracy"], marker="o", markersize=3, color=colour, label=str(label))
            if "ci_low" in part:
                ax.fill_between(part[x], part["ci_low"], part["ci_high"], color=colour, alpha=0.15, linewidth=0)
        ax.set(xlabel=x_label or x, title=str(name), ylim=(0, 100))
        if log_x:  # log axis, ticks at the swept values written out
            ax.set_xscale("log")
            ticks = sorted(set(df[x]))
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.suptitle(title, y=1.06)  # above the smoke stamp of narrow figures
    fig.tight_layout()
    stamp(fig, profile)
    return save(fig, path)
