"""The paper's tables from our runs, each beside the paper's published numbers.

A table is computed as cells (row, column, seed, accuracy, test images; white-box cells also carry the
any-iterate score): `summarise` gives each cell's mean, spread over seeds and 95% interval (Wilson with
one seed: test sampling only; with several, one that covers the seeds' spread too), `wide` the table
as the paper prints it. Every table
is written as CSV (means), a CSV of intervals, and Markdown (ours ± interval / paper, cell by cell).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .attacks import AttackSpec
from .config import PROTOCOL_VERSION, get_profile
from .evaluation import black_box, black_box_checks, evaluate_white_box, read_cache
from .grid import SURROGATE_SEED_OFFSET, seeds, surrogate_experiments, table1_experiments, table4_experiments
from .protocol import SURROGATES, TABLE1, TABLE4, TABLES, autoattack_note
from .stats import seed_interval
from .store import RunStore, write_checked_json
from .training import load_trained


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


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, column): the mean and standard deviation over seeds (models that did not
    train left out), how many seeds and test images, the 95% interval (stats.seed_interval: Wilson for
    one seed, which covers test sampling only; with several seeds it covers their spread too) and, where
    measured, the mean any-iterate score. Rows and columns keep their order."""
    if "any_iterate" not in cells:
        cells = cells.assign(any_iterate=float("nan"))
    g = cells.groupby(["row", "column"], sort=False)
    out = g.agg(mean=("accuracy", "mean"), sd=("accuracy", "std"), seeds=("accuracy", "count"),
                n_images=("n", "first"), any_iterate=("any_iterate", "mean")).reset_index()
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
                        notes: list[str] = (), index_name: str = "", titles: dict | None = None) -> str:
    """One Markdown table: each cell 'ours ±half-width / paper'. On CIFAR-10 the difference follows, and
    is marked when the paper's number lies inside our 95% interval; on another dataset a difference
    would compare two datasets, so it is left out. A column the paper does not have shows '-' for it."""
    titles = titles or {}
    same_data = dataset == "cifar10"
    several = bool((summary["seeds"] > 1).any())
    spread = ", sd: the standard deviation over seeds" if several else ""
    interval = "the 95% interval over seeds and test images" if several else "the 95% Wilson interval"
    header = (f"Each cell: ours on {dataset} ± half {interval}{spread} / the paper's number"
              + (" (ours minus paper; 'in CI' when the paper's number lies inside our interval)." if same_data
                 else " on CIFAR-10 (another dataset: no difference is shown)."))
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
            text = f"{ours} / {_fmt(p)}"
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


def write_table(cells: pd.DataFrame, name: str, out_dir: Path, dataset: str, title: str | None = None,
                notes: list[str] = (), file_stem: str | None = None, index_name: str | None = None) -> str:
    """Write <stem>.csv (the mean of each cell, as the paper's table), <stem>_intervals.csv (mean, sd,
    seeds, test images, 95% interval and the paper's number, a line per cell), <stem>_seeds.csv (with
    several seeds: each seed's accuracy, a line per cell and seed) and <stem>.md; return the Markdown.
    Title, file stem and index name default to the table's definition in protocol.py."""
    table = TABLES[name]
    title, index_name = title or table.title, table.index_name if index_name is None else index_name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = file_stem or table.file_stem
    wide(cells, index_name=index_name).to_csv(out_dir / f"{stem}.csv", float_format="%.2f")
    summary = summarise(cells)
    paper = paper_table(name)
    summary["paper"] = [paper.loc[r, c] if r in paper.index and c in paper.columns else None
                        for r, c in zip(summary["row"], summary["column"])]
    if summary["any_iterate"].isna().all():
        summary = summary.drop(columns="any_iterate")
    if summary["seeds"].max() > 1:
        cells.rename(columns={"row": index_name or "row"}).to_csv(out_dir / f"{stem}_seeds.csv", index=False,
                                                                  float_format="%.2f")
    summary.rename(columns={"row": index_name or "row"}).to_csv(out_dir / f"{stem}_intervals.csv", index=False,
                                                                float_format="%.2f")
    md = comparison_markdown(summary, paper, dataset, title, notes, index_name,
                             {k: table.title_of(k) for k in table.keys})
    (out_dir / f"{stem}.md").write_text(md)
    return md


def _seed_prefix(exp, profile) -> str:
    return f"seed {exp.seed}: " if profile.seeds > 1 else ""


def table1(profile_name, dataset: str, data, store: RunStore, device=None, progress: bool = True,
           objectives: str = "authors", scoring: str = "final"):
    """Table I: 15 models x the columns of protocol.TABLE1, for every seed, with each model's sanity
    flags. Each (model, column) is cached: a new column is computed alone. Cells hold the `scoring`
    ("final": the authors' scoring of the last iterate; "any_iterate": broken at the first misclassified
    iterate) and the any-iterate score beside it.

    Returns (cells, {label: flags}); `wide(cells)` is the table as the paper prints it."""
    profile = get_profile(profile_name)
    x, y = data.test_images(profile.test_limit)
    specs, columns = TABLE1.specs(profile), TABLE1.keys
    records, flags = [], {}
    for exp in table1_experiments(profile, dataset, objectives=objectives):
        found = flags.setdefault(exp.label, [])
        result = store.result(exp)
        if result is None or result["status"] != "finished":
            records += [cell(exp.label, c, exp.seed, None, len(y)) for c in columns]
            found.append(_seed_prefix(exp, profile) + ("not trained" if result is None else "diverged"))
            continue
        model = load_trained(exp, store, device)
        ev = evaluate_white_box(exp, model, x, y, specs, store, progress=progress, scoring=scoring)
        records += [cell(exp.label, c, exp.seed, ev["row"][c], len(y), ev["row_any_iterate"][c]) for c in columns]
        found += [_seed_prefix(exp, profile) + f for f in ev["flags"]]
    return pd.DataFrame(records), flags


def table1_notes(flags: dict, profile_name, scoring: str = "final") -> list[str]:
    notes = []
    for label, fl in flags.items():
        for f in fl:
            notes.append(f"CHECK FAILED for {label}: {f}. Failed orderings or accuracy that does not fall with eps "
                         "are the usual signs of gradient masking (ALP is known for it).")
    if not notes:
        notes.append("All sanity checks passed: eps = 0 equals clean, no attack above clean, PGD-20 <= PGD-7 and "
                     "20PGD <= PGD-20 (each within 1 point), AutoAttack at or below every other attack and not far "
                     "below PGD-20, and PGD accuracy falls below 10% as eps grows.")
    notes.append(SCORING_NOTES[scoring])
    notes.append(autoattack_note(get_profile(profile_name)))
    if get_profile(profile_name).name == "smoke":
        notes.append("SMOKE PROFILE: thin network, a slice of the data, few epochs. These numbers test the pipeline; "
                     "they do not reproduce the paper.")
    return notes


SCORING_NOTES = {
    "final": "Attacks are scored at their final iterate, as the authors' test.py scored them (20PGD: an image counts "
             "when every restart's final iterate is classified right). `table1_white_box_intervals.csv` also gives "
             "the any-iterate score (broken at the first misclassified iterate), never above it.",
    "any_iterate": "Attacks are scored at every iterate (an image is broken at its first misclassified iterate): "
                   "the worst case, lower than the authors' scoring of the final iterate.",
}


def _bb_cache_path(store: RunStore, targets, surrogates, spec: AttackSpec, x) -> Path:
    payload = json.dumps({"t": [e.key for e in targets], "s": [e.key for e in surrogates], "spec": asdict(spec),
                          "x": [list(x.shape), int(x.float().sum())], "protocol": PROTOCOL_VERSION}, sort_keys=True)
    return store.root / "tables" / f"black_box-{hashlib.sha256(payload.encode()).hexdigest()[:12]}.json"


def black_box_table(profile_name, dataset: str, data, store: RunStore, spec: AttackSpec | str, device=None,
                    white: dict | None = None, progress: bool = True, objectives: str = "authors"):
    """Tables II / III: the 15 Table I models as targets of the 5 UM surrogates' adversarial images,
    each seed's targets attacked through the same seed's surrogates. `spec` is the attack, or the name
    of the table ("table2", "table3") whose attack protocol.py defines.

    `white` (target label -> white-box accuracy of the same attack) enables the white <= black check.
    Returns (cells, flags)."""
    profile = get_profile(profile_name)
    if isinstance(spec, str):
        spec = TABLES[spec].attack.spec(profile)
    x, y = data.test_images(profile.test_limit)
    all_targets = table1_experiments(profile, dataset, objectives=objectives)
    all_surrogates = surrogate_experiments(profile, dataset)
    records = []
    for seed in seeds(profile):
        targets = [e for e in all_targets if e.seed == seed and _finished(store, e)]
        surrogates = [e for e in all_surrogates if e.seed == SURROGATE_SEED_OFFSET + seed and _finished(store, e)]
        path = _bb_cache_path(store, targets, surrogates, spec, x)
        matrix = read_cache(path)
        if matrix is None:
            matrix = black_box({f"surrogate_{e.loss}": load_trained(e, store, device) for e in surrogates},
                               {e.label: load_trained(e, store, device) for e in targets}, x, y, spec,
                               progress=progress)
            write_checked_json(path, matrix)
        for e in all_targets:
            if e.seed == seed:
                records += [cell(e.label, c, seed, matrix.get(e.label, {}).get(c), len(y)) for c in SURROGATES]
    cells = pd.DataFrame(records)
    means = wide(cells)
    matrix = {t: {s: v for s, v in row.items() if not pd.isna(v)} for t, row in means.iterrows()}
    return cells, black_box_checks(matrix, white or {})


def _finished(store, exp) -> bool:
    result = store.result(exp)
    return result is not None and result["status"] == "finished"


def table4(profile_name, dataset: str, data, store: RunStore, device=None, chance: float = 10.0,
           objectives: str = "authors", scoring: str = "final"):
    """Table IV: PGD-7 accuracy of AAML-AT over margins (rows) and scales (columns), every seed; NaN ('-')
    where the run diverged or ended at chance accuracy (untrainable). Returns cells."""
    profile = get_profile(profile_name)
    x, y = data.test_images(profile.test_limit)
    spec = TABLE4.attack.spec(profile)
    records = []
    for exp in table4_experiments(profile, dataset, objectives=objectives):
        m, s = exp.params["m"], exp.params["s"]
        result = store.result(exp)
        acc = None
        if result is not None and result["status"] == "finished" and result["kept_val_acc"] > chance * 1.2:
            ev = evaluate_white_box(exp, load_trained(exp, store, device), x, y, [spec], store, progress=False,
                                    with_checks=False, scoring=scoring)
            acc = ev["row"]["pgd7"]
        records.append(cell(f"{m:.2f}", f"s{int(s)}", exp.seed, acc, len(y)))
    return pd.DataFrame(records)
