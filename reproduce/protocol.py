"""Every table, defined once, as data: its columns (key, title, attack), where the paper's numbers live,
and what one evaluation costs.

tables.py computes the tables from these definitions, the notebooks take their attacks from here, and
bench.plan prices them. A new column is one `Column` in a table below (and its attack in attacks.py):
evaluations are cached per (model, column), so only the new column is computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

import pandas as pd

from .attacks import EPS, STEP, AttackSpec
from .config import Profile
from .losses import PAPER_LOSSES


@dataclass(frozen=True)
class Column:
    key: str  # the column's name in our CSVs (and in the paper's, when `in_paper`)
    title: str  # as the Markdown table prints it
    attack: Callable[[Profile], AttackSpec | None]  # None: clean images
    in_paper: bool = True  # False: the paper has no such column ("-" for the paper)

    def spec(self, profile: Profile) -> AttackSpec | None:
        return self.attack(profile)


def _pgd(steps: int, restarts: Callable[[Profile], int] = lambda p: 1, label: str = ""):
    return lambda p: AttackSpec("pgd", eps=EPS, step=STEP, steps=steps, random_start=True, restarts=restarts(p),
                                label=label)


CLEAN = Column("clean", "Clean", lambda p: None)
FGSM = Column("fgsm", "FGSM", lambda p: AttackSpec("fgsm", eps=EPS, step=EPS, label="fgsm"))
PGD7 = Column("pgd7", "PGD (7)", _pgd(7, label="pgd7"))
PGD20x20 = Column("pgd20x20", "20PGD (20)", _pgd(20, lambda p: p.restarts, "pgd20x20"))
AUTOATTACK = Column("aa", "AA", lambda p: AttackSpec("autoattack", eps=EPS, version=p.autoattack,
                                                     steps=p.autoattack_steps, label="aa"), in_paper=False)

WHITE_BOX_COLUMNS = (
    CLEAN,
    FGSM,
    Column("bim7", "BIM (7)", lambda p: AttackSpec("bim", eps=EPS, step=STEP, steps=7, label="bim7")),
    PGD7,
    Column("pgd20", "PGD (20)", _pgd(20, label="pgd20")),
    PGD20x20,
    Column("mim40", "MIM (40)", lambda p: AttackSpec("mim", eps=EPS, step=STEP, steps=p.mim_steps, label="mim40")),
    AUTOATTACK,
)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    file_stem: str
    index_name: str
    paper_file: str
    columns: tuple  # white-box tables: Columns; black-box tables: surrogate names
    attack: Column | None = None  # black-box tables and Table IV: the one attack of every cell

    def specs(self, profile: Profile) -> list[AttackSpec]:
        """The attacks of a white-box table's columns, clean left out."""
        return [s for s in (c.spec(profile) for c in self.columns) if s is not None]

    @property
    def keys(self) -> list[str]:
        return [c.key if isinstance(c, Column) else c for c in self.columns]

    def title_of(self, key: str) -> str:
        return next((c.title for c in self.columns if isinstance(c, Column) and c.key == key), key)

    def paper(self) -> pd.DataFrame:
        """The paper's published numbers (CIFAR-10), indexed like our table; columns the paper does not
        have are absent (shown as '-')."""
        with resources.files("reproduce").joinpath("paper", self.paper_file).open() as f:
            df = pd.read_csv(f)
        if self.name == "table4":
            df["m"] = df["m"].map(lambda m: f"{m:.2f}")
            return df.set_index("m")
        in_paper = [c.key for c in self.columns if isinstance(c, Column) and c.in_paper] or list(self.columns)
        return df.set_index(df.columns[0])[in_paper]


SURROGATES = tuple(f"surrogate_{loss}" for loss in PAPER_LOSSES)

TABLE1 = Table("table1", "Table I: white-box accuracy (%)", "table1_white_box", "model", "table1_white_box.csv",
               WHITE_BOX_COLUMNS)
TABLE2 = Table("table2", "Table II: black-box FGSM accuracy (%)", "table2_black_box_fgsm", "target",
               "table2_black_box_fgsm.csv", SURROGATES, attack=FGSM)
TABLE3 = Table("table3", "Table III: black-box 20PGD accuracy (%)", "table3_black_box_20pgd", "target",
               "table3_black_box_20pgd.csv", SURROGATES, attack=PGD20x20)
TABLE4 = Table("table4", "Table IV: AAML-AT accuracy under PGD-7 (%)", "table4_aaml_sweep", "m",
               "table4_aaml_at_sweep.csv", ("s2", "s4", "s6", "s8"), attack=PGD7)
TABLES = {t.name: t for t in (TABLE1, TABLE2, TABLE3, TABLE4)}

# The ABCL appendix grids (B and C): clean and three attacks on each cell.
APPENDIX_COLUMNS = (CLEAN, FGSM, WHITE_BOX_COLUMNS[2], PGD7)

# Robustness against PGD iterations: PGD-k at eps 8/255 as k grows (the eps curve is the sanity
# check's, evaluation.EPS_SWEEP).
ITERATION_SWEEP = (1, 2, 5, 10, 20, 50, 100)


def autoattack_note(profile: Profile) -> str:
    """Which AutoAttack the AA column ran, for the table's notes."""
    if profile.autoattack == "standard":
        return ("AA: AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; L-inf, eps 8/255) through "
                "torchattacks, whose APGD takes 10 steps.")
    return (f"AA: a reduced AutoAttack for this profile, APGD-CE then APGD-DLR ({profile.autoattack_steps} steps "
            "each; L-inf, eps 8/255) through torchattacks. The paper has no AA column ('-').")


def passes(spec: AttackSpec | None) -> float:
    """Forward-backward passes per test image an attack costs, roughly (for bench.plan). Restarts
    attack only the survivors (about two full runs); AutoAttack's attacks run on the survivors of
    the ones before: its standard version (torchattacks: 10 APGD steps) is priced as APGD-CE plus nine
    targeted runs of APGD-T and FAB-T on a fifth of the images, and Square's 5000 queries on a tenth."""
    if spec is None:
        return 1
    if spec.name == "autoattack":
        return 2 * spec.steps if spec.version == "apgd" else 10 + 0.2 * 9 * (10 + 10) + 0.1 * 5000
    return spec.steps * (1 if spec.restarts == 1 else 2)
