"""Did my run reproduce the reference? Two runs' tables, cell by cell, within or beyond the spread that
another training run would show.

    python -m reproduce compare figures/fashion-mnist-smoke results/fashion-mnist-smoke-seeds3
    python -m reproduce compare figures/fashion-mnist-smoke results/fashion-mnist-smoke \
        --spread results/fashion-mnist-smoke-seeds3
    python -m reproduce compare figures/cifar10-quick paper

Each table both folders hold (`<stem>_intervals.csv`, written with every table) is compared cell by cell.
A cell is *within* when the two means differ by no more than 1.96 s sqrt(1/k_mine + 1/k_reference), where s
is the cell's standard deviation between training seeds (from whichever side, or `--spread` folder, ran
several seeds; never below the test-sampling SD of the cell) and k each side's seeds. Where no seed spread
is known, a cell is within when the two 95% intervals overlap: test sampling only, which understates how
far a rerun moves a cell, and the verdict says so. Against `paper`, a cell is within when the paper's
number lies inside ours' 95% interval (the tables' `in CI`), on CIFAR-10 only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .protocol import TABLES

Z = 1.96  # two-sided 95%
PAPER = "paper"


@dataclass
class Comparison:
    cells: pd.DataFrame  # a line per cell: table, row, column, mine, reference, difference, allowed, within, rule
    mine: str
    reference: str
    spread: str  # where the seed spread came from, or "" (test sampling only)

    @property
    def verdict(self) -> str:
        n, beyond = len(self.cells), int((~self.cells["within"]).sum())
        if n == 0:
            return "no cell in common: nothing compared"
        some = " where it is known, else overlapping 95% intervals" if self.cells["rule"].nunique() > 1 else ""
        how = ("the paper's number inside ours' 95% interval" if self.reference == PAPER else
               f"the seed spread ({self.spread}){some}" if self.spread else
               "overlapping 95% intervals (test sampling only: no seed spread known, so a rerun's ordinary moves "
               "can show as beyond; give --spread a multi-seed run)")
        if beyond == 0:
            return f"REPRODUCED: all {n} cells within {how}."
        worst = self.cells.assign(excess=(self.cells["difference"].abs() / self.cells["allowed"]))
        worst = worst.sort_values("excess", ascending=False).iloc[0]
        return (f"{'NOT REPRODUCED' if beyond > 0.05 * n else 'REPRODUCED, with exceptions'}: {n - beyond} of {n} "
                f"cells within {how}; {beyond} beyond (the furthest: {worst['table']} {worst['row']} "
                f"{worst['column']}, {worst['difference']:+.2f} points, allowed ±{worst['allowed']:.2f}). "
                f"At 95%, about {max(1, round(0.05 * n))} of {n} cells fall beyond by chance.")

    def markdown(self) -> str:
        lines = [f"**{self.verdict}**", "", f"Mine: `{self.mine}`; reference: `{self.reference}`.", "",
                 "| table | row | column | mine | reference | difference | allowed | |", "|---" * 8 + "|"]
        for _, c in self.cells.iterrows():
            verdict = "within" if c["within"] else "**beyond**"
            lines.append(f"| {c['table']} | {c['row']} | {c['column']} | {c['mine']:.2f} | {c['reference']:.2f} | "
                         f"{c['difference']:+.2f} | ±{c['allowed']:.2f} | {verdict} |")
        lines += [""] + [f"- within ({rule}): {RULES[rule]}." for rule in pd.unique(self.cells["rule"])]
        return "\n".join(lines) + "\n"


RULES = {"spread": "|mine - reference| <= 1.96 s sqrt(1/k_mine + 1/k_reference), s the cell's SD between seeds "
                   "(at least its test-sampling SD), k the seeds on each side",
         "intervals": "the two 95% intervals overlap (test sampling only)",
         "paper": "the paper's number lies inside ours' 95% interval"}


def _intervals(folder: Path, stem: str) -> pd.DataFrame | None:
    path = folder / f"{stem}_intervals.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={0: str})
    df = df.rename(columns={df.columns[0]: "row"})
    df["row"] = df["row"].astype(str)
    return df.dropna(subset=["mean"]).set_index(["row", "column"])


def _check_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise ValueError(f"{what} {folder} is not a folder: give a run's tables folder (figures/<dataset>-<profile>, "
                         f"results/<...>){' or paper' if what == 'REFERENCE' else ''}")
    if not any(folder.glob("*_intervals.csv")):
        raise ValueError(f"{what} {folder} holds no table (no *_intervals.csv): give the folder a run wrote its "
                         "tables to")


def _dataset(folder: Path) -> str | None:
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None


def _sampling_sd(p: float, n: float) -> float:
    return 100.0 * math.sqrt(max(p / 100 * (1 - p / 100), 1e-4) / max(n, 1))


def compare(mine, reference, spread=None) -> Comparison:
    """Compare the tables of folder `mine` with folder `reference` (or "paper"); `spread`, a multi-seed run's
    folder whose per-cell SD between seeds stands for the spread where neither side has several seeds."""
    mine = Path(mine)
    _check_folder(mine, "MINE")
    to_paper = str(reference) == PAPER
    if not to_paper:
        reference = Path(reference)
        _check_folder(reference, "REFERENCE")
    elif _dataset(mine) not in (None, "cifar10"):
        raise ValueError(f"the paper's numbers are CIFAR-10's and {mine} is a {_dataset(mine)} run: a difference "
                         "across datasets means nothing (compare it with a reference run of the same dataset)")
    if spread is not None:
        _check_folder(Path(spread), "--spread")
    rows, sources = [], set()
    for table in TABLES.values():
        ours = _intervals(mine, table.file_stem)
        if ours is None:
            continue
        if to_paper:
            paper = table.paper()
            for (row, column), c in ours.iterrows():
                if row in paper.index and column in paper.columns and pd.notna(paper.loc[row, column]):
                    value = float(paper.loc[row, column])
                    rows.append(dict(table=table.name, row=row, column=column, mine=c["mean"], reference=value,
                                     difference=c["mean"] - value,
                                     allowed=max(c["mean"] - c["ci_low"], c["ci_high"] - c["mean"]),
                                     within=bool(c["ci_low"] <= value <= c["ci_high"]), rule="paper"))
            continue
        theirs = _intervals(reference, table.file_stem)
        if theirs is None:
            continue
        extra = _intervals(Path(spread), table.file_stem) if spread is not None else None
        for key in ours.index.intersection(theirs.index):
            a, b = ours.loc[key], theirs.loc[key]
            sds = [(s["sd"], s["seeds"], name) for s, name in ((b, "the reference's seeds"), (a, "mine's seeds"))
                   if s["seeds"] > 1 and pd.notna(s["sd"])]
            if not sds and extra is not None and key in extra.index and extra.loc[key, "seeds"] > 1:
                sds = [(extra.loc[key, "sd"], extra.loc[key, "seeds"], f"--spread {spread}")]
            if sds:
                sd, _, source = max(sds, key=lambda t: t[1])
                sd = max(sd, _sampling_sd(b["mean"], b["n_images"]))
                allowed = Z * sd * math.sqrt(1 / a["seeds"] + 1 / b["seeds"])
                within, rule = abs(a["mean"] - b["mean"]) <= allowed, "spread"
                sources.add(source)
            else:
                allowed = (a["ci_high"] - a["ci_low"] + b["ci_high"] - b["ci_low"]) / 2
                within, rule = a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"], "intervals"
            rows.append(dict(table=table.name, row=key[0], column=key[1], mine=a["mean"], reference=b["mean"],
                             difference=a["mean"] - b["mean"], allowed=allowed, within=bool(within), rule=rule))
    cells = pd.DataFrame(rows, columns=["table", "row", "column", "mine", "reference", "difference", "allowed",
                                        "within", "rule"])
    if cells.empty:
        raise ValueError(f"{mine} and {reference} have no table cell in common")
    mixed = cells["rule"].nunique() > 1
    if mixed:  # a seed spread for some tables only: say which rule each line used
        cells["column"] = [f"{c} ({r})" for c, r in zip(cells["column"], cells["rule"])]
    return Comparison(cells, str(mine), str(reference), ", ".join(sorted(sources)))


def write(comparison: Comparison, out) -> Path:
    """The comparison as Markdown at `out` (a file; its folder must exist)."""
    from .store import atomic_write_text

    out = Path(out)
    atomic_write_text(out, comparison.markdown())
    return out
