"""Figures: one plotting style, scatter panels of embeddings, and seaborn for the statistical ones
(heatmaps, curves with interval bands, training curves faceted by defence). Drawing only: what is drawn
is computed elsewhere (geometry.py, curves.py, tables.py).

Every function takes what to draw and a path, writes a PNG and returns the matplotlib figure.
Figures from the smoke profile, or with budgets changed from a profile's, carry a stamp saying so (`stamp`).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titlesize": 11, "axes.labelsize": 10,
                     "legend.fontsize": 8, "font.size": 9})
CLASS_COLORS = plt.get_cmap("tab10")


def stamp(fig, profile) -> None:
    """Say on the figure what ran where it is not the paper's protocol at its budgets: the smoke profile,
    and any budget changed from the profile's (`profile` is a config.Profile or a profile's name)."""
    from .config import Profile, budget_text

    name = profile.name if isinstance(profile, Profile) else profile
    lines = ["smoke profile: pipeline check, not the paper's numbers"] if name == "smoke" else []
    if isinstance(profile, Profile) and budget_text(profile):
        lines.append(f"budgets changed from the {name} profile: {budget_text(profile)}")
    if lines:  # top-left corner: clear of the suptitle (centred) and of the legends (bottom)
        fig.text(0.005, 0.995, "\n".join(lines), ha="left", va="top", fontsize=7, color="firebrick", alpha=0.8)


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


def scatter_panels(panels: dict, class_names, path=None, ncols: int | None = None, profile=None,
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
            profile=None, ax=None, vmin=None, vmax=None, cbar: bool = True, mark=None, mark_label: str = ""):
    """Annotated heatmap of a DataFrame (seaborn); missing cells are shown as '-' on grey. `cbar`: draw the
    colour bar (panels on one scale share one); `mark`: a (row, column) of `df` outlined in red, with
    `mark_label` under the axes saying what it is."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(1.1 * len(df.columns) + 2.2, 0.55 * len(df) + 1.6))
    else:
        fig = ax.figure
    values = df.astype(float)
    sns.heatmap(values, ax=ax, mask=values.isna(), annot=True, fmt=".1f", annot_kws={"fontsize": 8},
                cmap="viridis", vmin=vmin, vmax=vmax, cbar=cbar, cbar_kws={"label": cbar_label, "shrink": 0.85})
    if mark is not None and mark[0] in df.index and mark[1] in df.columns:
        i, j = list(df.index).index(mark[0]), list(df.columns).index(mark[1])
        ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
        if mark_label:
            ax.text(0, -0.18, mark_label, transform=ax.transAxes, color="red", fontsize=8, va="top")
    ax.set_facecolor("lightgrey")
    for i, j in zip(*np.nonzero(values.isna().to_numpy())):
        ax.text(j + 0.5, i + 0.5, "-", ha="center", va="center", fontsize=8)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    if own:
        fig.tight_layout()
        stamp(fig, profile)
    return save(fig, path) if own else fig


def table4_heatmap(ours, paper, path=None, title: str = "", profile=None):
    """Table IV as a heatmap: margins m as rows and scales s as columns, both as numbers, and the paper's
    most robust (m, s) outlined in red (`ours` and `paper` as tables.wide and Table.paper give them)."""
    def numbers(df):
        return df.rename(columns=lambda c: f"{float(str(c).lstrip('s')):g}", index=lambda r: f"{float(r):.2f}")

    ours, paper = numbers(ours), numbers(paper.astype(float))
    best = paper.stack().idxmax()
    return heatmap(ours, path, title, xlabel="scale s", ylabel="margin m", cbar_label="PGD-7 accuracy (%)",
                   profile=profile, mark=best,
                   mark_label=f"red box: the paper's most robust cell, (m, s) = ({best[0]}, {best[1]}) at "
                              f"{paper.loc[best]:.2f}%")


def training_curves(metrics: dict, path=None, profile=None):
    """Training objective and validation accuracy per epoch, a column per defence and a line per loss:
    {"<loss>-<defence>": [metric records of one seed, ...]}. With several seeds a line is their mean and
    the band one standard deviation (seaborn computes both from the seeds' values)."""
    rows = [{"loss": label.rsplit("-", 1)[0], "defence": label.rsplit("-", 1)[-1], "seed": seed,
             "epoch": r["epoch"], "training objective": r.get("train_loss", np.nan),
             "clean validation accuracy (%)": r.get("val_acc", np.nan)}
            for label, runs in metrics.items() for seed, records in enumerate(runs) for r in records]
    long = pd.DataFrame(rows).melt(id_vars=["loss", "defence", "seed", "epoch"], var_name="metric")
    with sns.axes_style("whitegrid"):
        grid = sns.relplot(long, x="epoch", y="value", hue="loss", row="metric", col="defence", kind="line",
                           errorbar="sd", marker="o", markersize=4, height=2.8, aspect=1.25,
                           facet_kws={"sharey": "row", "margin_titles": True})
    grid.set_titles(col_template="{col_name}", row_template="")
    for (metric, _), ax in grid.axes_dict.items():
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == "training objective":
            ax.set_yscale("log")
    grid.figure.suptitle("Training (AT / ALP: the objective on the adversarial batch)", y=1.02)
    stamp(grid.figure, profile)
    return save(grid.figure, path)


def _line_with_band(x, *, data, color=None, label=None, **_):
    """One curve of a FacetGrid, with the interval band we computed (Wilson) when the data carries it."""
    data = data.sort_values(x)
    ax = plt.gca()
    ax.plot(data[x], data["accuracy"], marker="o", markersize=3, color=color, label=label)
    if "ci_low" in data:
        ax.fill_between(data[x], data["ci_low"], data["ci_high"], color=color, alpha=0.15, linewidth=0)


def curve_panels(df, x: str, panel: str, hue: str, path=None, x_label: str = "", title: str = "",
                 profile=None, log_x: bool = False):
    """Accuracy against a swept value from a long table (columns x, panel, hue, accuracy and, for a
    band, ci_low and ci_high): a panel per value of `panel`, a line per value of `hue`. The bands are
    the intervals in the table (seaborn's own would be bootstrapped from raw observations)."""
    df = df.assign(**{hue: df[hue].astype(str), panel: df[panel].astype(str)})
    with sns.axes_style("whitegrid"):
        grid = sns.FacetGrid(df, col=panel, hue=hue, height=3.3, aspect=1.05, ylim=(0, 100),
                             col_order=list(dict.fromkeys(df[panel])), hue_order=list(dict.fromkeys(df[hue])))
        grid.map_dataframe(_line_with_band, x)
    grid.set_titles("{col_name}")
    grid.set_axis_labels(x_label or x, "accuracy (%)")
    if log_x:  # log axis, ticks at the swept values written out
        ticks = sorted(set(df[x]))
        for ax in grid.axes.flat:
            ax.set_xscale("log")
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
    grid.add_legend(title=hue, loc="lower center", ncol=df[hue].nunique(), bbox_to_anchor=(0.5, -0.1))
    grid.figure.suptitle(title, y=1.06)  # above the smoke stamp of narrow figures
    stamp(grid.figure, profile)
    return save(grid.figure, path)


VERDICT_COLOURS = {"masked": "firebrick", "incomplete": "darkorange"}  # a sound model's name stays black


def masking_report(summary, titles: dict, path=None, profile=None, verdicts=None,
                   title: str = "Under attacks built for the heads (name in red: masked; orange: incomplete)"):
    """Each model's accuracy under each attack of the masking report, with its 95% interval: a row per
    model, a marker per attack (summary: row, column, mean, ci_low, ci_high). A model's name is coloured
    by its verdict ({model: "sound" | "incomplete" | "masked"})."""
    verdicts = verdicts or {}
    models = list(dict.fromkeys(summary["row"]))
    attacks = list(dict.fromkeys(summary["column"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(models) + 1.6))
    palette = sns.color_palette("colorblind", len(attacks))
    for k, (column, colour) in enumerate(zip(attacks, palette)):
        part = summary[summary["column"] == column].set_index("row").reindex(models)
        ys = np.arange(len(models)) + (k - (len(attacks) - 1) / 2) * 0.12
        ax.errorbar(part["mean"], ys, xerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]],
                    fmt="o" if column != "worst" else "D", markersize=4, color=colour, capsize=2, linewidth=1,
                    label=titles.get(column, column))
    ax.set_yticks(range(len(models)), models)
    for label in ax.get_yticklabels():
        label.set_color(VERDICT_COLOURS.get(verdicts.get(label.get_text()), "black"))
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%) with its 95% interval")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.25 / max(len(models), 1) * 4), ncol=3,
              frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    stamp(fig, profile)
    return save(fig, path)


def geometry_scatter(df, metrics: dict, y: str, path=None, profile=None, title: str = "", y_label: str = ""):
    """A panel per geometry metric ({column: axis label}) against `y` (an accuracy, labelled `y_label`), a
    point per model: colour the loss, marker the defence (seaborn)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    with sns.axes_style("whitegrid"):
        for ax, (column, label) in zip(axes.flat, metrics.items()):
            sns.scatterplot(df, x=column, y=y, hue="loss", style="defense", ax=ax, s=45,
                            legend=ax is axes.flat[-1])
            ax.set_xlabel(label), ax.set_ylabel(y_label or y)
            ax.grid(alpha=0.3)
    if axes.flat[-1].get_legend() is not None:
        sns.move_legend(axes.flat[-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.suptitle(title, y=1.03)
    fig.tight_layout()
    stamp(fig, profile)
    return save(fig, path)
