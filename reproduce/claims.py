"""Which of the paper's claims hold on a run: sentences computed from the tables, with their numbers.

Each claim is a set of comparisons between cells. A comparison that goes the paper's way is *clear*
when the two cells' 95% intervals do not overlap and a *hint* otherwise. With several seeds the
intervals cover the spread between training runs as well as test sampling (tables.summarise); with one
seed they cover test sampling only, and the verdicts say so. `markdown` writes the verdicts as the cell
after each table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .protocol import PAPER_LOSSES, SURROGATES
from .tables import summarise

DISCRIMINATIVE = [loss for loss in PAPER_LOSSES if loss != "SM"]


@dataclass
class Claim:
    text: str  # the paper's claim, in a few words
    holds: int  # comparisons that went the paper's way
    clear: int  # ... of which with intervals that do not overlap
    total: int  # comparisons made
    evidence: str  # the numbers
    seeds: int = 1  # training runs behind each cell (1: the intervals cover test sampling only)
    against: int = 0  # comparisons that went against the paper with intervals that do not overlap
    intervals: bool = True  # False: a claim about means (over targets or surrogates) with no interval

    @property
    def verdict(self) -> str:
        """"holds" (" clearly" when every comparison is clear), "holds in k of n", "does not hold", or
        "undecided" when no comparison, for or against, is clear beyond its interval."""
        if self.total == 0:
            return "not measured"
        if self.intervals and self.clear == 0 and self.against == 0:
            return "undecided"
        if self.holds == self.total:
            return "holds" + (" clearly" if self.clear == self.total else "")
        return "does not hold" if self.holds == 0 else f"holds in {self.holds} of {self.total}"

    @property
    def counts(self) -> str:
        """The comparisons behind the verdict: how many went the paper's way and how many were clear."""
        if not self.total:
            return ""
        if not self.intervals:
            return "means only, no interval"
        way = f"{self.holds} of {self.total} the paper's way, " if self.verdict == "undecided" else ""
        return way + f"{self.clear} of {self.total} clear" + (f", {self.against} clearly against" if self.against
                                                              else "")


class Cells:
    """The summary of a table's cells, looked up by (row, column)."""

    def __init__(self, cells: pd.DataFrame):
        self.s = summarise(cells).set_index(["row", "column"])
        self.seeds = int(self.s["seeds"].max()) if len(self.s) else 1

    def stamp(self, claims: list) -> list:
        for claim in claims:
            claim.seeds = self.seeds
        return claims

    def has(self, row, column) -> bool:
        return (row, column) in self.s.index and not pd.isna(self.s.loc[(row, column), "mean"])

    def mean(self, row, column) -> float:
        return float(self.s.loc[(row, column), "mean"])

    def above(self, a, b) -> tuple[bool, bool, bool]:
        """(cell a above cell b; clearly: a's interval lies above b's; clearly not: b's lies above a's).
        a, b: (row, column)."""
        (sa, sb) = (self.s.loc[a], self.s.loc[b])
        return sa["mean"] > sb["mean"], sa["ci_low"] > sb["ci_high"], sb["ci_low"] > sa["ci_high"]


def _tally(text, results, evidence) -> Claim:
    """A claim from its comparisons, each (went the paper's way, clearly so, clearly against it)."""
    return Claim(text, sum(r[0] for r in results), sum(r[0] and r[1] for r in results), len(results), evidence,
                 against=sum(bool(r[2]) for r in results))


def table1(cells: pd.DataFrame) -> list[Claim]:
    """Table I's claims (Section V of the paper) on our white-box cells."""
    c = Cells(cells)
    out = []
    for column, name in (("fgsm", "FGSM"), ("pgd20", "PGD-20")):
        pairs = [(f"{loss}-UM", column) for loss in DISCRIMINATIVE if c.has(f"{loss}-UM", column)]
        if c.has("SM-UM", column):
            results = [c.above(p, ("SM-UM", column)) for p in pairs]
            evidence = f"SM-UM {c.mean('SM-UM', column):.1f}%; " + ", ".join(
                f"{p[0]} {c.mean(*p):.1f}%" for p in pairs)
            out.append(_tally(f"Without a defence, each discriminative loss resists {name} better than softmax",
                              results, evidence))
    attacks = [col for col in ("fgsm", "bim7", "pgd7", "pgd20", "pgd20x20", "mim40") if c.has("SM-UM", col)]
    lowest, results = [], []
    for col in attacks:  # SM-UM against the lowest other model of the column
        others = [r for r in pd.unique(cells["row"]) if r != "SM-UM" and c.has(r, col)]
        low = min(others, key=lambda r: c.mean(r, col)) if others else "SM-UM"
        lowest.append((col, "SM-UM" if low == "SM-UM" or c.mean("SM-UM", col) <= c.mean(low, col) else low))
        if others:
            below, clearly, clearly_not = c.above((low, col), ("SM-UM", col))
            results.append((lowest[-1][1] == "SM-UM", clearly and lowest[-1][1] == "SM-UM", clearly_not))
    out.append(_tally("SM-UM is the most vulnerable model under every attack", results,
                      "lowest per column: " + ", ".join(f"{col} {r}" for col, r in lowest)))
    for defence in ("AT", "ALP"):
        robust, costly, evidence = [], [], []
        for loss in PAPER_LOSSES:
            d, u = f"{loss}-{defence}", f"{loss}-UM"
            if c.has(d, "pgd20") and c.has(u, "pgd20"):
                robust.append(c.above((d, "pgd20"), (u, "pgd20")))
                costly.append(c.above((u, "clean"), (d, "clean")))
                evidence.append(f"{loss} PGD-20 {c.mean(u, 'pgd20'):.1f} -> {c.mean(d, 'pgd20'):.1f}%, "
                                f"clean {c.mean(u, 'clean'):.1f} -> {c.mean(d, 'clean'):.1f}%")
        out.append(_tally(f"{defence} raises PGD-20 accuracy over UM for every loss", robust, "; ".join(evidence)))
        out.append(_tally(f"... at the cost of clean accuracy ({defence} below UM on clean images)", costly, ""))
    pairs = [loss for loss in PAPER_LOSSES if c.has(f"{loss}-ALP", "pgd20") and c.has(f"{loss}-AT", "pgd20")]
    out.append(_tally("ALP is more robust than AT under PGD-20 in most cases (the paper: all but AAML)",
                      [c.above((f"{loss}-ALP", "pgd20"), (f"{loss}-AT", "pgd20")) for loss in pairs],
                      ", ".join(f"{loss} {c.mean(f'{loss}-AT', 'pgd20'):.1f} (AT) / "
                                f"{c.mean(f'{loss}-ALP', 'pgd20'):.1f} (ALP)" for loss in pairs)))
    columns = [col for col in ["clean"] + attacks if c.has("AAML-AT", col) and c.has("AAML-ALP", col)]
    out.append(_tally("AAML-AT beats AAML-ALP in every column",
                      [c.above(("AAML-AT", col), ("AAML-ALP", col)) for col in columns],
                      ", ".join(f"{col} {c.mean('AAML-AT', col):.1f} / {c.mean('AAML-ALP', col):.1f}"
                                for col in columns)))
    return c.stamp(out)


def black_box(cells: pd.DataFrame, attack: str) -> list[Claim]:
    """Claims of Tables II / III (targets as rows, surrogates as columns)."""
    wide = summarise(cells).pivot(index="row", columns="column", values="mean").reindex(pd.unique(cells["row"]))
    surrogates = [s for s in SURROGATES if s in wide.columns and wide[s].notna().any()]
    if not surrogates:
        return []
    means = wide[surrogates].mean()
    discriminative = means.drop(index="surrogate_SM", errors="ignore")
    name = lambda s: s.removeprefix("surrogate_")  # noqa: E731
    ranked = ", ".join(f"{name(s)} {v:.1f}%" for s, v in means.sort_values().items())
    out = [Claim(f"{attack}: among the discriminative surrogates, ConL's images transfer best (the lowest mean "
                 "accuracy) and AAML's worst", int(discriminative.idxmin() == "surrogate_ConL")
                 + int(discriminative.idxmax() == "surrogate_AAML"), 0, 2,
                 f"mean target accuracy per surrogate: {ranked}", intervals=False)]
    c = Cells(cells)
    results, evidence = [], []
    for target in wide.index:
        own = f"surrogate_{target.split('-')[0]}"
        if own not in surrogates or not c.has(target, own):
            continue
        others = [s for s in surrogates if s != own and c.has(target, s)]
        best_other = min(others, key=lambda s: c.mean(target, s))
        # the claim: matching the target's loss does not make the attack stronger than the best other
        results.append((c.mean(target, own) >= c.mean(target, best_other),
                        c.above((target, own), (target, best_other))[1],
                        c.above((target, best_other), (target, own))[1]))
        evidence.append(f"{target} {c.mean(target, own):.1f} (own) / {c.mean(target, best_other):.1f}")
    out.append(_tally(f"{attack}: a surrogate of the target's own loss is no stronger than the best other surrogate",
                      results, "; ".join(evidence)))
    defended = [r for r in wide.index if not r.endswith("-UM")]
    undefended = [r for r in wide.index if r.endswith("-UM")]
    if defended and undefended:
        row_means = wide[surrogates].mean(axis=1)
        out.append(Claim(f"{attack}: every defended model resists transfer better than every undefended one",
                         int(row_means[defended].min() > row_means[undefended].max()), 0, 1,
                         f"defended {row_means[defended].min():.1f}-{row_means[defended].max():.1f}%, undefended "
                         f"{row_means[undefended].min():.1f}-{row_means[undefended].max():.1f}% (mean over "
                         "surrogates)", intervals=False))
    return c.stamp(out)


def table4(cells: pd.DataFrame) -> list[Claim]:
    """Table IV: the paper's best cell, m = 0.2 and s = 2."""
    c = Cells(cells)
    trained = [(r, col) for r, col in c.s.index if c.has(r, col)]
    if not trained or not c.has("0.20", "s2"):
        return [Claim("(m, s) = (0.2, 2) is the most robust AAML-AT under PGD-7", 0, 0, 0,
                      "the (0.2, 2) model did not train" if trained else "no model trained")]
    ranked = sorted(trained, key=lambda k: c.mean(*k), reverse=True)
    best, paper_best, clear, inside = ranked[0], ("0.20", "s2"), False, True
    if best == paper_best:
        clear = len(ranked) == 1 or c.above(paper_best, ranked[1])[1]
        evidence = f"(0.2, 2) {c.mean(*paper_best):.1f}%, the highest of {len(ranked)} trained cells"
    else:
        inside = c.s.loc[paper_best, "ci_high"] >= c.mean(*best)
        evidence = (f"(0.2, 2) {c.mean(*paper_best):.1f}%; the best is (m {best[0]}, s {best[1][1:]}) "
                    f"{c.mean(*best):.1f}%, {'inside' if inside else 'outside'} the interval of (0.2, 2)")
    against = best != paper_best and not inside
    return c.stamp([Claim("(m, s) = (0.2, 2) is the most robust AAML-AT under PGD-7", int(best == paper_best),
                          int(best == paper_best and clear), 1, evidence, against=int(against))])


def beyond(cells: pd.DataFrame) -> list[Claim]:
    """The questions of the table beyond the paper (protocol.BEYOND), as claims on its cells: does AAML's
    margin still beat softmax under TRADES and under MART, and is MMC's and PCL's undefended robustness real?
    "Real" is asked of AutoAttack against CE-PGD-20: it holds where AA is not clearly below PGD-20 (a tie
    within the intervals is "undecided", not a pass) and fails where AA's interval lies below PGD-20's."""
    c = Cells(cells)
    out = []
    for defence in ("TRADES", "MART"):
        a, b = f"AAML-{defence}", f"SM-{defence}"
        columns = [col for col in ("pgd20", "aa") if c.has(a, col) and c.has(b, col)]
        out.append(_tally(f"Under {defence}, AAML is more robust than SM (PGD-20 and AutoAttack)",
                          [c.above((a, col), (b, col)) for col in columns],
                          ", ".join(f"{col} {c.mean(a, col):.1f} (AAML) / {c.mean(b, col):.1f} (SM)"
                                    for col in columns)))
    rows = [r for r in ("MMC-UM", "PCL-UM") if c.has(r, "pgd20") and c.has(r, "aa")]
    results = []
    for r in rows:
        _, _, below = c.above((r, "aa"), (r, "pgd20"))  # AA's interval below PGD-20's: the PGD number is not real
        results.append((not below, False, below))
    out.append(_tally("Without a defence, MMC's and PCL's PGD-20 accuracy survives AutoAttack (their robustness "
                      "is real)", results, "; ".join(f"{r} PGD-20 {c.mean(r, 'pgd20'):.1f}%, AA {c.mean(r, 'aa'):.1f}%"
                                                     for r in rows)))
    rows = [r for r in ("MMC-UM", "PCL-UM") if c.has(r, "aa") and c.has("SM-UM", "aa")]
    out.append(_tally("Without a defence, MMC and PCL resist AutoAttack better than softmax",
                      [c.above((r, "aa"), ("SM-UM", "aa")) for r in rows],
                      f"SM-UM {c.mean('SM-UM', 'aa'):.1f}%; " + ", ".join(f"{r} {c.mean(r, 'aa'):.1f}%" for r in rows)
                      if rows else ""))
    for defence in ("TRADES", "MART"):
        pairs = [loss for loss in ("SM", "AAML", "MMC", "PCL")
                 if c.has(f"{loss}-{defence}", "aa") and c.has(f"{loss}-AT", "aa")]
        out.append(_tally(f"{defence} is more robust than PGD-AT under AutoAttack, loss by loss",
                          [c.above((f"{loss}-{defence}", "aa"), (f"{loss}-AT", "aa")) for loss in pairs],
                          ", ".join(f"{loss} {c.mean(f'{loss}-AT', 'aa'):.1f} (AT) / "
                                    f"{c.mean(f'{loss}-{defence}', 'aa'):.1f} ({defence})" for loss in pairs)))
    return c.stamp(out)


def side_by_side(paper: list[Claim], worst: list[Claim], out_dir=None, name: str = "table1") -> str:
    """A table's claims under the paper's attacks and again under the per-example worst case
    (masking.worst_case_cells: every attack column replaced by it), a line per claim, as Markdown; also
    written to `claims_<name>_worst_case.md` in `out_dir` when given (`name`: table1 or beyond)."""
    whose, table = ("Table I's claims", "Table I") if name == "table1" else ("The claims", "the table")
    lines = [f"**{whose} under the paper's attacks and under the per-example worst case** (every attack "
             f"column replaced by the accuracy left after every attack of {table} and of the masking report)", "",
             "| claim | the paper's attacks | the worst case |", "|---|---|---|"]
    for a, b in zip(paper, worst):
        lines.append(f"| {a.text} | {a.verdict} | {b.verdict} |")
    survive = sum(a.verdict.startswith("holds") and b.verdict.startswith("holds") for a, b in zip(paper, worst))
    held = sum(a.verdict.startswith("holds") for a in paper)
    lines += ["", f"{survive} of the {held} claims that hold (at least in part) under the paper's attacks still "
              "hold under the worst case."]
    text = "\n".join(lines) + "\n"
    if out_dir is not None:
        Path(out_dir, f"claims_{name}_worst_case.md").write_text(text)
    return text


def markdown(claims: list[Claim], title: str = "Do the paper's claims hold on this run?") -> str:
    """The verdicts as a Markdown list, each with its numbers."""
    seeds = max((claim.seeds for claim in claims), default=1)
    covers = (f"intervals over {seeds} seeds: training spread and test sampling" if seeds > 1
              else "one seed: the intervals cover test sampling only, not the spread between training runs")
    lines = [f"**{title}** (a comparison is *clear* when the two 95% intervals do not overlap; {covers})", ""]
    for claim in claims:
        counts = f" ({claim.counts})" if claim.counts else ""
        lines.append(f"- {claim.text}: **{claim.verdict}**{counts}." + (f" {claim.evidence}." if claim.evidence
                                                                           else ""))
    return "\n".join(lines) + "\n"


def write(claims: list[Claim], out_dir, name: str, title: str = "Do the paper's claims hold on this run?") -> str:
    """The verdicts as Markdown, also written to `claims_<name>.md` beside the tables; returns the text."""
    text = markdown(claims, title)
    Path(out_dir, f"claims_{name}.md").write_text(text)
    return text
