"""Every table, defined once, as data: its columns, the experiments behind its cells, where the paper's
numbers live, and what one evaluation costs.

A table is one `Table` in TABLES: tables.py computes any table from its definition, plan.py prices it,
the command line offers it and the notebooks show it. A new Table I column is one `Column` in
WHITE_BOX_COLUMNS (with its attack in attacks.py); a new table is one `Table` added to TABLES.
Evaluations are cached per (model, column), so only what is new is computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

import pandas as pd

from .attacks import EPS, PGD7, STEP, AttackSpec
from .config import Profile
from .evaluation import EPS_SWEEP, curve_point
from .losses import PAPER_LOSSES


@dataclass(frozen=True)
class Column:
    key: str  # the column's name in our CSVs (and in the paper's, when `in_paper`)
    title: str  # as the Markdown table prints it
    attack: Callable[[Profile], AttackSpec | None]  # None: clean images
    in_paper: bool = True  # False: the paper has no such column ("-" for the paper)

    def spec(self, profile: Profile) -> AttackSpec | None:
        return self.attack(profile)

    def title_at(self, profile: Profile | None) -> str:
        """The title, saying the profile's restarts where they differ from the paper's 20 (20PGD)."""
        spec = self.spec(profile) if profile is not None else None
        if spec is not None and spec.restarts > 1 and spec.restarts != PAPER_RESTARTS:
            return f"{self.title[:-1]}; {spec.restarts} restarts)"
        return self.title


def _pgd(steps: int, restarts: Callable[[Profile], int] = lambda p: 1, label: str = ""):
    return lambda p: AttackSpec("pgd", eps=EPS, step=STEP, steps=steps, random_start=True, restarts=restarts(p),
                                label=label)


PAPER_RESTARTS = 20  # the paper's 20PGD: PGD-20 from 20 random starts
CLEAN = Column("clean", "Clean", lambda p: None)
FGSM = Column("fgsm", "FGSM", lambda p: AttackSpec("fgsm", eps=EPS, step=EPS, label="fgsm"))
BIM7 = Column("bim7", "BIM (7)", lambda p: AttackSpec("bim", eps=EPS, step=STEP, steps=7, label="bim7"))
PGD7_COLUMN = Column("pgd7", "PGD (7)", lambda p: PGD7)
PGD20_COLUMN = Column("pgd20", "PGD (20)", _pgd(20, label="pgd20"))
PGD20x20 = Column("pgd20x20", "20PGD (20)", _pgd(20, lambda p: p.restarts, "pgd20x20"))
AUTOATTACK = Column("aa", "AA", lambda p: AttackSpec("autoattack", eps=EPS, version=p.autoattack,
                                                     steps=p.autoattack_steps, label="aa"), in_paper=False)

WHITE_BOX_COLUMNS = (
    CLEAN,
    FGSM,
    BIM7,
    PGD7_COLUMN,
    PGD20_COLUMN,
    PGD20x20,
    Column("mim40", "MIM (40)", lambda p: AttackSpec("mim", eps=EPS, step=STEP, steps=p.mim_steps, label="mim40")),
    AUTOATTACK,
)

# The masking report's attacks, built for the heads rather than for cross-entropy (masking.py): PGD-20 on
# the CW margin, APGD on DLR, targeted APGD, and the gradient-free Square on the first test images.
PGD20_CW = Column("pgd20_cw", "PGD-20 (CW)", lambda p: AttackSpec("pgd", eps=EPS, step=STEP, steps=20, loss="cw",
                                                                 label="pgd20_cw"), in_paper=False)
APGD_DLR = Column("apgd_dlr", "APGD-DLR", lambda p: AttackSpec("apgd", eps=EPS, steps=p.apgd_steps, loss="dlr",
                                                               label="apgd_dlr"), in_paper=False)
APGD_T = Column("apgd_t", "APGD-T", lambda p: AttackSpec("apgd-t", eps=EPS, steps=p.apgd_steps,
                                                         targets=p.apgd_targets, label="apgd_t"), in_paper=False)
SQUARE = Column("square", "Square", lambda p: AttackSpec("square", eps=EPS, steps=p.square_queries,
                                                         images=p.square_images, label="square"), in_paper=False)
MASKING_COLUMNS = (PGD20_CW, APGD_DLR, APGD_T, SQUARE)
# The eps curve's last point (PGD-7 at eps 128/255, seeded as the curve seeds it: the same number), a
# column of its own so that a table without the curve (the one beyond the paper) pays for one point only.
EPS_END = Column("eps_end", "PGD-7 at eps 128/255", lambda p: curve_point(EPS_SWEEP[-1]), in_paper=False)
# The attacker's temperatures of the logit-scale sweep: CE-PGD-20 on logit_scale * logits.
LOGIT_SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)
SCALE_SWEEP_MODELS = ("SM", "AAML")  # the losses whose Table I models it attacks: AAML's cosine head, SM beside it

# The ABCL appendix grids (B and C): clean and three attacks on each cell.
APPENDIX_COLUMNS = (CLEAN, FGSM, BIM7, PGD7_COLUMN)

# Robustness against PGD iterations: PGD-k at eps 8/255 as k grows (the eps curve is the sanity
# check's, evaluation.EPS_SWEEP).
ITERATION_SWEEP = (1, 2, 5, 10, 20, 50, 100)


# ---------------------------------------------------------------- the experiments behind the tables

# The paper's three defences: the rows of Tables I-III (a defence registered beyond them joins no paper table).
PAPER_DEFENSES = ("UM", "AT", "ALP")
# Surrogates come from other seeds than the targets they attack: target seed i, surrogate seed 1000 + i.
SURROGATE_SEED_OFFSET = 1000
TABLE4_MARGINS = (0.05, 0.10, 0.15, 0.20, 0.25)
TABLE4_SCALES = (2.0, 4.0, 6.0, 8.0)


def table1_experiments(run) -> list:
    """5 losses x UM / AT / ALP, in the paper's row order (SM-UM, SM-AT, SM-ALP, ConL-UM, ...), once
    per seed of the profile (seed 0 first)."""
    return [run.experiment(loss, defense, seed) for seed in range(run.profile.seeds)
            for loss in PAPER_LOSSES for defense in PAPER_DEFENSES]


def surrogate_experiments(run) -> list:
    """The five UM models, one per loss, that craft the black-box attacks (Tables II and III), once per
    seed; the surrogates of target seed i have seed SURROGATE_SEED_OFFSET + i."""
    return [run.experiment(loss, "UM", SURROGATE_SEED_OFFSET + seed) for seed in range(run.profile.seeds)
            for loss in PAPER_LOSSES]


def table4_experiments(run) -> list:
    """AAML-AT for every (m, s) of Table IV, margins as rows and scales as columns, once per seed, at the
    profile's `sweep_epochs` (when set, every cell at it: (0.2, 2) is then not Table I's AAML-AT)."""
    epochs = {"epochs": run.profile.sweep_epochs} if run.profile.sweep_epochs else {}
    return [run.experiment("AAML", "AT", seed, loss_params={"m": m, "s": s}, **epochs)
            for seed in range(run.profile.seeds) for m in TABLE4_MARGINS for s in TABLE4_SCALES]


# Beyond the paper: does the margin still help under the defences used today, and do the discriminative-feature
# defences of the same years (MMC, PCL) hold up? Four losses under four defences, Table I's columns.
BEYOND_LOSSES = ("SM", "AAML", "MMC", "PCL")
BEYOND_DEFENSES = ("UM", "AT", "TRADES", "MART")


def beyond_experiments(run) -> list:
    """BEYOND_LOSSES x BEYOND_DEFENSES, a loss's four rows together, once per seed. SM and AAML under UM and
    AT are Table I's runs (the same keys); MMC and PCL, which the authors' code never trained adversarially,
    take AT as the paper's text describes it (the loss's own objective on PGD-7 images)."""
    return [run.experiment(loss, defense, seed, **({} if loss in PAPER_LOSSES else {"objectives": "paper"}))
            for seed in range(run.profile.seeds) for loss in BEYOND_LOSSES for defense in BEYOND_DEFENSES]


@dataclass(frozen=True)
class Table:
    """One table of the paper (or of ours): what its cells are and where its numbers come from.

    A white-box table evaluates `columns` (Columns) on each of its `models`, a row per model; a table
    of one `attack` (Table IV) gives each model one cell, at (row_of, column_of); a transfer table
    (`surrogates` set) crafts `attack` on each surrogate and scores it on each model, a column per
    surrogate (`columns` are the surrogates' names)."""

    name: str  # the one key: TABLES, the command line, file names
    title: str
    file_stem: str
    index_name: str
    paper_file: str | None  # the paper's numbers in reproduce/paper/ (None: not in the paper)
    columns: tuple
    models: Callable  # run -> the experiments whose accuracy fills the cells
    attack: Column | None = None  # tables of one attack: the attack of every cell
    surrogates: Callable | None = None  # transfer tables: run -> the models that craft the attack
    row_of: Callable = lambda e: e.label  # the row an experiment fills
    column_of: Callable | None = None  # tables of one attack: the column an experiment fills
    checks: bool = False  # each model's sanity checks and eps curve (Table I's)
    blank_at_chance: bool = False  # a model that ended at chance shows '-' (untrainable, as the paper marks)
    notebook: str = "03"  # the notebook that computes and shows it
    trained_in: str = "02"  # the notebook that trains its models

    def experiments(self, run) -> list:
        """Every experiment the table needs trained (its models, then its surrogates), each once."""
        exps = self.models(run) + (self.surrogates(run) if self.surrogates else [])
        return list(dict.fromkeys(exps))

    @property
    def attacks(self) -> tuple:
        """The Columns evaluated on each model (white-box tables) or crafted on each surrogate."""
        return (self.attack,) if self.attack is not None else self.columns

    def specs(self, profile: Profile) -> list[AttackSpec]:
        """The attacks of the table's cells, clean left out."""
        return [s for s in (c.spec(profile) for c in self.attacks) if s is not None]

    @property
    def keys(self) -> list[str]:
        return [c.key if isinstance(c, Column) else c for c in self.columns]

    def title_of(self, key: str, profile: Profile | None = None) -> str:
        """A column's title; with `profile`, as that profile runs it (20PGD's restarts)."""
        return next((c.title_at(profile) for c in self.columns if isinstance(c, Column) and c.key == key), key)

    def paper(self) -> pd.DataFrame:
        """The paper's published numbers (CIFAR-10), indexed like our table (rows as text); columns the
        paper does not have are absent (shown as '-')."""
        if self.paper_file is None:
            return pd.DataFrame()
        with resources.files("reproduce").joinpath("paper", self.paper_file).open() as f:
            df = pd.read_csv(f, index_col=0, dtype=str)
        in_paper = [c.key if isinstance(c, Column) else c for c in self.columns
                    if not isinstance(c, Column) or c.in_paper]
        return df[[c for c in in_paper if c in df.columns]].astype(float)


SURROGATES = tuple(f"surrogate_{loss}" for loss in PAPER_LOSSES)

TABLE1 = Table("table1", "Table I: white-box accuracy (%)", "table1_white_box", "model", "table1_white_box.csv",
               WHITE_BOX_COLUMNS, table1_experiments, checks=True)
TABLE2 = Table("table2", "Table II: black-box FGSM accuracy (%)", "table2_black_box_fgsm", "target",
               "table2_black_box_fgsm.csv", SURROGATES, table1_experiments, attack=FGSM,
               surrogates=surrogate_experiments, notebook="04")
TABLE3 = Table("table3", "Table III: black-box 20PGD accuracy (%)", "table3_black_box_20pgd", "target",
               "table3_black_box_20pgd.csv", SURROGATES, table1_experiments, attack=PGD20x20,
               surrogates=surrogate_experiments, notebook="04")
TABLE4 = Table("table4", "Table IV: AAML-AT accuracy under PGD-7 (%)", "table4_aaml_sweep", "m",
               "table4_aaml_at_sweep.csv", tuple(f"s{s:g}" for s in TABLE4_SCALES), table4_experiments,
               attack=PGD7_COLUMN, row_of=lambda e: f"{e.params['m']:.2f}",
               column_of=lambda e: f"s{e.params['s']:g}", blank_at_chance=True, notebook="05", trained_in="05")
BEYOND = Table("beyond", "Beyond the paper: white-box accuracy (%) under today's defences", "beyond_white_box",
               "model", None, WHITE_BOX_COLUMNS, beyond_experiments, notebook="07", trained_in="07")
TABLES = {t.name: t for t in (TABLE1, TABLE2, TABLE3, TABLE4, BEYOND)}


def autoattack_note(profile: Profile) -> str:
    """Which AutoAttack the AA column ran, for the table's notes."""
    if profile.autoattack == "standard":
        return ("AA: AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square; 100 iterations, 5000 queries; "
                "L-inf, eps 8/255), the reference code (pyautoattack).")
    return (f"AA: a reduced AutoAttack for this profile, APGD-CE then APGD-DLR ({profile.autoattack_steps} steps "
            "each; L-inf, eps 8/255), the reference code (pyautoattack). The paper has no AA column ('-').")


def passes(spec: AttackSpec | None) -> float:
    """Forward-backward passes per test image an attack costs, roughly (for plan.py). Restarts
    attack only the survivors (about two full runs); AutoAttack's attacks run on the survivors of
    the ones before: its standard version (100 iterations each) is priced as APGD-CE plus nine targeted
    runs of APGD-T and FAB-T on a fifth of the images, and Square's 5000 queries on a tenth. A spec's
    `images` (Square's subset) is priced by the caller, which knows the test set's size."""
    if spec is None:
        return 1
    if spec.name == "autoattack":
        return 2 * spec.steps if spec.version == "apgd" else 100 + 0.2 * 9 * (100 + 100) + 0.1 * 5000
    if spec.name == "apgd-t":  # one run per target class
        return spec.steps * spec.targets
    if spec.name == "square":  # a forward pass (about a third of a forward-backward) per query
        return spec.steps / 3
    return spec.steps * (1 if spec.restarts == 1 else 2)

