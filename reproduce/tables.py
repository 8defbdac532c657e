"""The paper's tables from our runs, each beside the paper's published numbers.

A table is computed as cells (row, column, seed, accuracy, test images; white-box cells also carry the
any-iterate score): `summarise` gives each cell's mean, spread over seeds and 95% interval (Wilson with
one seed: test sampling only; with several, one that covers the seeds' spread too), `wide` the table
as the paper prints it. Every table
is written as CSV (means), a CSV of intervals, and Markdown (ours ± interval / paper, cell by cell).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import budget_text, changed_budgets
from .evaluation import black_box, black_box_checks, cache_identity, cache_name, evaluate_white_box, read_cache
from .protocol import AUTOATTACK, PAPER_RESTARTS, SURROGATE_SEED_OFFSET, TABLES, PGD20x20, Table, autoattack_note
from .report import update_manifest
from .stats import seed_interval
from .store import write_checked_json


def paper_table(name: str) -> pd.DataFrame:
    """The paper's published numbers (CIFAR-10) of a table, indexed like ours."""
    return TABLES[name].paper()


def _fmt(v) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.2f}"


# ---------------------------------------------------------------- cells: one accuracy per row, column and seed

def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def cell(row: str, column: str, seed: int, accuracy, n: int, any_iterate=None) -> dict:
    """One measured accuracy (percent; NaN for a model that did not train) on n test images; for a
    white-box attack also its any-iterate score (broken at the first misclassified iterate)."""
    return {"row": row, "column": column, "seed": seed, "accuracy": _nan(accuracy), "n": int(n),
            "any_iterate": _nan(any_iterate)}


def summarise(cells: pd.DataFrame, keys=("row", "column")) -> pd.DataFrame:
    """One line per `keys` (a table's (row, column), or a curve's points): the mean and standard
    deviation over seeds (models that did not train left out), how many seeds and test images, the 95%
    interval (stats.seed_interval: Wilson for one seed, which covers test sampling only; with several
    seeds it covers their spread too) and, where the cells carry it, the mean any-iterate score. Keys
    keep their order."""
    g = cells.groupby(list(keys), sort=False)
    aggregates = dict(mean=("accuracy", "mean"), sd=("accuracy", "std"), seeds=("accuracy", "count"),
                      n_images=("n", "first"))
    if "any_iterate" in cells:
        aggregates["any_iterate"] = ("any_iterate", "mean")
    out = g.agg(**aggregates).reset_index()
    bounds = [seed_interval(list(group["accuracy"]), int(group["n"].iloc[0])) for _, group in g]
    out["ci_low"], out["ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return out


def wide(cells: pd.DataFrame, index_name: str | None = None) -> pd.DataFrame:
    """The table as the paper prints it: the mean over seeds of each cell, rows and columns in order."""
    df = summarise(cells).pivot(index="row", columns="column", values="mean")
    df = df.reindex(index=pd.unique(cells["row"]), columns=pd.unique(cells["column"]))
    df.index.name, df.columns.name = index_name, None
    return df


def white_box_column(cells: pd.DataFrame, column: str) -> dict:
    """{model label: mean accuracy} of one Table I column (models that trained)."""
    return {label: v for label, v in wide(cells)[column].items() if not pd.isna(v)}


def comparison_markdown(summary: pd.DataFrame, paper: pd.DataFrame, dataset: str, title: str,
                        notes: list[str] = (), index_name: str = "", titles: dict | None = None,
                        in_paper: bool = True) -> str:
    """One Markdown table: each cell 'ours ±half-width / paper'. On CIFAR-10 the difference follows, and
    is marked when the paper's number lies inside our 95% interval; on another dataset a difference
    would compare two datasets, so it is left out. A column the paper does not have shows '-' for it;
    a table the paper does not have (`in_paper` False) shows ours alone."""
    titles = titles or {}
    same_data = dataset == "cifar10"
    several = bool((summary["seeds"] > 1).any())
    spread = ", sd: the standard deviation over seeds" if several else ""
    interval = "the 95% interval over seeds and test images" if several else "the 95% Wilson interval"
    header = (f"Each cell: ours on {dataset} ± half {interval}{spread} / the paper's number"
              + (" (ours minus paper; 'in CI' when the paper's number lies inside our interval)." if same_data
                 else " on CIFAR-10 (another dataset: no difference is shown)."))
    if not in_paper:
        header = f"Each cell: ours on {dataset} ± half {interval}{spread} (the paper has no such table)."
    rows = list(pd.unique(summary["row"]))
    cols = list(pd.unique(summary["column"]))
    lines = [f"### {title}", "", header, "",
             "| " + " | ".join([index_name] + [titles.get(c, c) for c in cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    by_cell = summary.set_index(["row", "column"])
    for r in rows:
        cells = []
        for c in cols:
            s = by_cell.loc[(r, c)]
            p = paper.loc[r, c] if r in paper.index and c in paper.columns else None
            ours = _fmt(s["mean"])
            if not pd.isna(s["mean"]):
                ours += f" ±{(s['ci_high'] - s['ci_low']) / 2:.2f}"
                if s["seeds"] > 1:
                    ours += f" sd {s['sd']:.2f}"
            text = f"{ours} / {_fmt(p)}" if in_paper else ours
            if same_data and not pd.isna(s["mean"]) and p is not None and not pd.isna(p):
                inside = s["ci_low"] <= p <= s["ci_high"]
                text += f" ({s['mean'] - p:+.2f}{', in CI' if inside else ''})"
            cells.append(text)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    n = sorted(set(summary["n_images"]))
    k = sorted(set(summary["seeds"]) - {0})  # 0: a cell no model of which trained
    lines += ["", f"- {', '.join(map(str, n))} test images per model, {'/'.join(map(str, k))} seed(s) per cell.",
              "- " + interval_note(several)]
    if notes:
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def interval_note(several_seeds: bool) -> str:
    """What the ± of a table covers, for its notes."""
    if several_seeds:
        return ("The ± covers both the spread between training runs (seeds) and test-set sampling: the seeds' "
                "mean ± a t quantile times the root of (seed variance / seeds + binomial variance of the test set), "
                "`stats.seed_interval`.")
    return ("The ± covers test-set sampling only (one training run per cell): it says nothing of how far another "
            "seed or another machine would move the cell, which at the smoke profile is often further.")


def write_table(cells: pd.DataFrame, table: Table | str, out_dir: Path, dataset: str, notes: list[str] = (),
                profile=None) -> str:
    """Write <stem>.csv (the mean of each cell, as the paper's table), <stem>_intervals.csv (mean, sd,
    seeds, test images, 95% interval and the paper's number, a line per cell), <stem>_seeds.csv (with
    several seeds: each seed's accuracy, a line per cell and seed) and <stem>.md; return the Markdown.
    `table` is a protocol.Table, or its name in TABLES; `profile` titles the columns as it ran them."""
    table = TABLES[table] if isinstance(table, str) else table
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem, index_name = table.file_stem, table.index_name
    wide(cells, index_name=index_name).to_csv(out_dir / f"{stem}.csv", float_format="%.2f")
    summary = summarise(cells)
    paper = table.paper()
    summary["paper"] = [paper.loc[r, c] if r in paper.index and c in paper.columns else None
                        for r, c in zip(summary["row"], summary["column"])]
    if "any_iterate" in summary and summary["any_iterate"].isna().all():
        summary = summary.drop(columns="any_iterate")
    if summary["seeds"].max() > 1:
        cells.rename(columns={"row": index_name}).to_csv(out_dir / f"{stem}_seeds.csv", index=False,
                                                         float_format="%.2f")
    summary.rename(columns={"row": index_name}).to_csv(out_dir / f"{stem}_intervals.csv", index=False,
                                                       float_format="%.2f")
    md = comparison_markdown(summary, paper, dataset, table.title, notes, index_name,
                             {k: table.title_of(k, profile) for k in table.keys}, in_paper=table.paper_file is not None)
    (out_dir / f"{stem}.md").write_text(md)
    return md


# ---------------------------------------------------------------- any table from its definition

def compute(run, table: Table, *, scoring: str = "final", white_box: pd.DataFrame | None = None):
    """The cells of `table` (protocol.Table) on this run's models, every seed, and its sanity flags.

    White-box tables: each (model, column) is cached, so a new column is computed alone; cells hold the
    `scoring` ("final": the authors' scoring of the last iterate; "any_iterate": broken at the first
    misclassified iterate) and the any-iterate score beside it; flags are {row: [flag]}. Transfer tables
    (Tables II / III): each seed's targets are attacked through the same seed's surrogates; with
    `white_box` (Table I's cells) the flags list every target that a transferred attack breaks more often
    than the white-box attack of the same name.

    Returns (cells, flags); `wide(cells)` is the table as the paper prints it."""
    if table.surrogates is not None:
        return _transfer_cells(run, table, white_box)
    return _white_box_cells(run, table, scoring)


def _seed_prefix(run, exp) -> str:
    return f"seed {exp.seed}: " if run.profile.seeds > 1 else ""


# The flags of a row without a model: not sanity checks, and never reported as masking.
UNTRAINED = ("not trained", "diverged", "ended at chance accuracy")


def _white_box_cells(run, table: Table, scoring: str):
    x, y = run.test_images()
    specs, records, flags = table.specs(run.profile), [], {}
    for exp in table.models(run):
        row = table.row_of(exp)
        columns = [table.column_of(exp)] if table.column_of else table.keys
        found = flags.setdefault(row, [])
        result = run.store.result(exp)
        trained = result is not None and result["status"] == "finished"
        if trained and table.blank_at_chance and result["kept_val_acc"] <= 1.2 * 100 / result["num_classes"]:
            trained, result = False, dict(result, status="ended at chance accuracy")
        if not trained:
            records += [cell(row, c, exp.seed, None, len(y)) for c in columns]
            found.append(_seed_prefix(run, exp) + ("not trained" if result is None else result["status"]))
            continue
        ev = evaluate_white_box(exp, run.model(exp), x, y, specs, run.store, progress=run.progress,
                                with_checks=table.checks, scoring=scoring)
        keys = [c.key for c in table.attacks]  # what was measured, in the table's columns
        records += [cell(row, c, exp.seed, ev["row"][k], ev["n_images"][k], ev["row_any_iterate"][k])
                    for c, k in zip(columns, keys[-len(columns):])]
        found += [_seed_prefix(run, exp) + f for f in ev["flags"]] if table.checks else []
    return pd.DataFrame(records), flags


def _transfer_cells(run, table: Table, white_box: pd.DataFrame | None):
    spec = table.attack.spec(run.profile)
    x, y = run.test_images()
    all_targets, all_surrogates = table.models(run), table.surrogates(run)
    records = []
    for seed in range(run.profile.seeds):
        targets = [e for e in all_targets if e.seed == seed and run.finished(e)]
        surrogates = [e for e in all_surrogates if e.seed == SURROGATE_SEED_OFFSET + seed and run.finished(e)]
        models = dict(targets=[e.key for e in targets], surrogates=[e.key for e in surrogates], spec=spec.identity())
        path = run.store.root / "tables" / (cache_name("black_box", x, **models) + ".json")
        identity = cache_identity(x, **models)
        cached = read_cache(path, identity)
        if cached is None:
            cached = dict(identity, matrix=black_box({f"surrogate_{e.loss}": run.model(e) for e in surrogates},
                                                     {e.label: run.model(e) for e in targets}, x, y, spec,
                                                     progress=run.progress))
            write_checked_json(path, cached)
        matrix = cached["matrix"]
        for e in all_targets:
            if e.seed == seed:
                records += [cell(e.label, c, seed, matrix.get(e.label, {}).get(c), len(y)) for c in table.keys]
    cells = pd.DataFrame(records)
    means = wide(cells)
    matrix = {t: {s: v for s, v in row.items() if not pd.isna(v)} for t, row in means.iterrows()}
    white = {} if white_box is None else white_box_column(white_box, table.attack.key)
    return cells, black_box_checks(matrix, white)


def notes(run, table: Table, flags, scoring: str = "final") -> list[str]:
    """The notes under a table: its sanity checks, how it was scored, and what the profile changes."""
    if table.surrogates is not None:
        return [f"POSSIBLE MASKING: {f}" for f in flags] or [
            "White-box accuracy <= black-box accuracy for every target and surrogate."]
    out, missing = [], []
    for label, fl in flags.items() if table.checks else ():
        for f in fl:
            if f.endswith(UNTRAINED):
                missing.append(f"{label} ({f})")
            else:
                out.append(f"CHECK FAILED for {label}: {f}. Failed orderings or accuracy that does not fall with "
                           "eps are the usual signs of gradient masking (ALP is known for it).")
    if missing:
        out.append(f"No model, so no cells ('-'): {', '.join(missing)}.")
    if table.checks and not out:
        out.append("All sanity checks passed: eps = 0 equals clean, no attack above clean, PGD-20 <= PGD-7 and "
                   "20PGD <= PGD-20 (each within 1 point), AutoAttack at or below every other attack and not far "
                   "below PGD-20, and PGD accuracy falls below 10% as eps grows.")
    if table.blank_at_chance:
        out.append('"-": the run diverged or ended at chance accuracy (untrainable).')
    if table.checks:
        out.append(SCORING_NOTES[scoring])
    if any(c is AUTOATTACK for c in table.attacks):
        out.append(autoattack_note(run.profile))
    prof = run.profile
    if any(c is PGD20x20 for c in table.attacks) and prof.restarts != PAPER_RESTARTS:
        out.append(f"20PGD: PGD-20 from {prof.restarts} random starts, the {prof.name} profile's restarts (the "
                   f"paper's: {PAPER_RESTARTS}).")
    if changed_budgets(prof):
        out.append(f"Budgets changed from the {prof.name} profile: {budget_text(prof)}.")
    if table.name == "table4" and prof.sweep_epochs and prof.sweep_epochs != prof.epochs:
        out.append(f"Every cell is a model trained for {prof.sweep_epochs} epochs (Table I's: {prof.epochs}; the "
                   f"profile's sweep_epochs), so (0.2, 2) is not Table I's AAML-AT.")
    if (table.checks or table.name == "beyond") and run.profile.name == "smoke":
        out.append("SMOKE PROFILE: thin network, a slice of the data, few epochs. These numbers test the pipeline; "
                   "they do not reproduce the paper.")
    return out


def write(run, table: Table, cells: pd.DataFrame, flags, scoring: str = "final") -> str:
    """Write the table with its notes into the run's output folder, record its sanity flags in the
    manifest, and return its Markdown."""
    update_manifest(run.out_dir, sanity_flags={table.name: flags})
    return write_table(cells, table, run.out_dir, run.dataset, notes=notes(run, table, flags, scoring),
                       profile=run.profile)


SCORING_NOTES = {
    "final": "Attacks are scored at their final iterate, as the authors' test.py scored them (20PGD: an image counts "
             "when every restart's final iterate is classified right). `table1_white_box_intervals.csv` also gives "
             "the any-iterate score (broken at the first misclassified iterate), never above it.",
    "any_iterate": "Attacks are scored at every iterate (an image is broken at its first misclassified iterate): "
                   "the worst case, lower than the authors' scoring of the final iterate.",
}
