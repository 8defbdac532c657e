"""`python -m reproduce plan`: what a profile computes, priced from the definitions of the tables.

Cost model: one image pass is the forward and backward pass of one image, what one clean training step
or one attack step costs per image; AT costs (1 + crafting steps) passes per training image, ALP
(2 + steps); an attack costs protocol.passes(spec) per test image. Measured rates (`bench --json` on the
target device) turn passes into device seconds, and the speed levers measured there divide them: with a
profile that compiles, the bench's compiled-vs-eager ratios (training, attacks); with the grid trained by
several workers on one GPU, `fill.json` of scripts/gpu_check.sh (one process against the workers).
"""
from __future__ import annotations

import math

from . import protocol
from .abcl import SCALE_SWEEP_LOSSES
from .defenses import DEFENSES
from .evaluation import EPS_SWEEP
from .protocol import APPENDIX_COLUMNS, CLEAN, ITERATION_SWEEP, TABLES, Table, passes

TRAIN_IMAGES = {"cifar10": 45_000, "fashion-mnist": 55_000, "mnist": 55_000}
TEST_IMAGES = 10_000


def _training_passes(run, exp) -> float:
    n_train = TRAIN_IMAGES[run.dataset]
    return min(n_train, exp.train_limit or n_train) * exp.epochs * DEFENSES[exp.defense].passes_per_image


def _evaluation_rows(run, table: Table, n_test: int, evaluated: set) -> list[dict]:
    """What evaluating one table costs: its attacks on each model (white-box; clean is always measured,
    and Table I's eps curve is its PGD-7 at each eps), or its attack crafted in full on each surrogate,
    every restart (transfer tables, as Table III scores them). A column an earlier table computed on the
    same model (`evaluated`: (model key, column key) pairs, added to here) costs nothing again: it is cached."""
    if table.surrogates is not None:
        specs = [c.spec(run.profile) for c in table.attacks]
        surrogates = table.surrogates(run)
        crafting = sum(s.steps * s.restarts for s in specs)
        return [{"what": f"{table.name}: craft {table.attack.key} on {len(surrogates)} surrogates",
                 "group": table.name, "notebook": table.notebook, "passes": len(surrogates) * n_test * crafting}]
    columns = {c.key: passes(c.spec(run.profile)) for c in (CLEAN, *table.attacks)}
    if table.checks:
        columns["eps_curve"] = 7 * len(EPS_SWEEP)
    cost = {}
    for e in table.models(run):
        new = [k for k in columns if (e.key, k) not in evaluated]
        evaluated.update((e.key, k) for k in new)
        if new:
            cost[e] = sum(columns[k] for k in new)
    if table.checks:  # a row per model: the evaluation the table's notebook waits on longest
        return [{"what": f"evaluate {e.label} ({table.name} + eps curve)", "group": table.name,
                 "notebook": table.notebook, "passes": n_test * c} for e, c in cost.items()]
    return [{"what": f"{table.name}: evaluate {len(cost)} models", "group": table.name,
             "notebook": table.notebook, "passes": n_test * sum(cost.values())}] if cost else []


def _masking_rows(run, n_test: int) -> list[dict]:
    """The masking report's attacks on every Table I model (Square on its first images), the zero-gradient
    pass, the eps curve's end, the geometry's FGSM and PGD-20, and the logit-scale sweep (CE-PGD-20 at
    each T but 1, whose column is Table I's) on the SM and AAML models; then the report on the models of
    the table beyond the paper that Table I does not have (no geometry)."""
    prof, models = run.profile, protocol.TABLE1.models(run)
    per_model = 1 + 1 + 20  # zero gradient; the geometry's FGSM and PGD-20
    for column in (*protocol.MASKING_COLUMNS, protocol.EPS_END):
        spec = column.spec(prof)
        per_model += passes(spec) * (min(n_test, spec.images) / n_test if spec.images else 1)
    swept = [e for e in models if e.loss in protocol.SCALE_SWEEP_MODELS]
    shared = {e.key for e in models}
    beyond = [e for e in protocol.BEYOND.models(run) if e.key not in shared]
    return [{"what": f"masking report and geometry, {len(models)} models", "group": "masking", "notebook": "03",
             "passes": len(models) * n_test * per_model},
            {"what": f"beyond: masking report, {len(beyond)} models", "group": "beyond", "notebook": "07",
             "passes": len(beyond) * n_test * (per_model - 20)},
            {"what": f"logit-scale sweep, {len(swept)} models", "group": "masking", "notebook": "03",
             "passes": len(swept) * n_test * 20 * (len(protocol.LOGIT_SCALES) - 1)}]


def speedups(run, rates: dict | None, fill: dict | None = None) -> tuple[dict, list[str]]:
    """How much faster than the bench's eager rate training and attacks run with the levers in use, and
    each lever in words: torch.compile (the profile's `compile`; the bench's `train_compile_speedup` and
    `pgd20_compile_speedup`, run with `bench --compile`), and several training workers on one GPU
    (`fill`: one_process_s / workers_s)."""
    train, attack, notes = 1.0, 1.0, []
    if run.profile.compile:
        measured = rates is not None and "train_compile_speedup" in rates
        if measured and str(rates.get("compiled", "compiled")).startswith("compiled"):
            train, attack = rates["train_compile_speedup"], rates["pgd20_compile_speedup"]
            compiling = rates.get("train_compile_seconds", 0) + rates.get("pgd20_compile_seconds", 0)
            notes.append(f"torch.compile: training x{train:.2f}, attacks x{attack:.2f} (measured by the bench; "
                         f"compile time {compiling:.0f} s per process)")
        else:
            notes.append("torch.compile: on in the profile, not priced (measure it: `bench --compile --json`)")
    else:
        notes.append("torch.compile: off in this profile")
    if fill:
        parallel = fill["one_process_s"] / max(fill["workers_s"], 1e-9)
        train *= parallel
        notes.append(f"{fill['models']} models at once ({fill.get('workers', 'local workers')}): training "
                     f"x{parallel:.2f} (fill.json; train with `--executor local` or the notebooks' executor)")
    else:
        notes.append("several models per GPU: not priced (scripts/gpu_check.sh measures it in fill.json)")
    prof = run.profile
    if prof.sweep_epochs and prof.sweep_epochs != prof.epochs:
        notes.append(f"Table IV's budget: its 20 models at {prof.sweep_epochs} epochs instead of {prof.epochs}")
    if prof.grid_epochs and prof.grid_epochs != prof.epochs:
        notes.append(f"the appendix grids' budget: their models at {prof.grid_epochs} epochs instead of {prof.epochs}")
    notes.append(f"batch size: {prof.batch_size} (the bench measures {rates.get('batch_size', '?')})"
                 if rates else f"batch size: {prof.batch_size}")
    return {"train": train, "attack": attack}, notes


def plan(run, rates: dict | None = None, fill: dict | None = None) -> tuple[list[dict], float | None]:
    """Every experiment and evaluation the run's profile computes, with its cost in image passes and,
    given measured rates, in device seconds: the tables of protocol.TABLES from their definitions, the
    robustness curves against PGD steps and the appendix grids. `rates` is the JSON of `bench` on the
    target device; its `um_epoch_img_s` (image passes per second) must be measured at the profile's
    width, else the estimate would be off by the ratio of the two networks' costs; `fill` is the
    fill.json of scripts/gpu_check.sh (training by several workers on one GPU; see `speedups`). Returns
    the rows and the total seconds (None without rates)."""
    prof = run.profile
    rate = None
    if rates is not None:
        rate = rates.get("um_epoch_img_s") if isinstance(rates, dict) else None
        if rate is None:
            raise ValueError("the bench JSON has no um_epoch_img_s: write it with `python -m reproduce bench --json`")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"the bench JSON's um_epoch_img_s={rate!r} is not a rate (image passes per second, "
                             "above 0): write it again with `python -m reproduce bench --json`")
        if rates.get("model_width", prof.width) != prof.width:
            raise ValueError(f"the bench measured a width-{rates['model_width']} network but profile {prof.name} "
                             f"trains width {prof.width}: run `python -m reproduce bench --json` on the device the "
                             f"profile is meant for (a GPU bench measures width 64)")
    n_test = min(TEST_IMAGES, prof.test_limit or TEST_IMAGES)
    rows, seen = [], set()
    for table in TABLES.values():
        for e in table.experiments(run):
            if e.key not in seen:
                seen.add(e.key)
                epochs = f" {e.epochs} epochs" if e.epochs != prof.epochs else ""
                rows.append({"what": f"train {e.label} {e.changed_params or ''}".strip() + epochs, "group": table.name,
                             "notebook": table.trained_in, "passes": _training_passes(run, e), "kind": "train"})
    evaluated = set()
    for table in TABLES.values():
        rows += _evaluation_rows(run, table, n_test, evaluated)
    rows += _masking_rows(run, n_test)
    rows.append({"what": "robustness against PGD iterations, 4 models", "group": "curves", "notebook": "03",
                 "passes": prof.seeds * 4 * n_test * sum(ITERATION_SWEEP)})
    # (k1, k2) grid and scale sweep (two cells shared), the recipe search: UM ResNets
    grids, recipes = 9 + 10 * len(SCALE_SWEEP_LOSSES) - 2, 5
    appendix = grids + recipes
    n_train = min(TRAIN_IMAGES[run.dataset], prof.train_limit or TRAIN_IMAGES[run.dataset])
    per_cell = sum(passes(c.spec(prof)) for c in APPENDIX_COLUMNS)
    rows.append({"what": f"appendix B/C: {appendix} UM models, training", "group": "appendix", "notebook": "06",
                 "passes": (grids * (prof.grid_epochs or prof.epochs) + recipes * prof.epochs) * n_train,
                 "kind": "train"})
    rows.append({"what": f"appendix B/C: {appendix} UM models, evaluation", "group": "appendix", "notebook": "06",
                 "passes": appendix * n_test * per_cell})
    faster, _ = speedups(run, rates, fill)
    for r in rows:
        r.setdefault("kind", "attack")
        r["seconds"] = r["passes"] / rate / faster[r["kind"]] if rate else None
    return rows, (sum(r["seconds"] for r in rows) if rate else None)
