"""The experiment grid as data: which models each table needs, and one call that trains the missing ones."""
from __future__ import annotations

from .config import DEFENSES, Profile, get_profile, make_experiment
from .data import load_dataset
from .losses import PAPER_LOSSES
from .store import RunStore
from .training import train

# Surrogates come from other seeds than the targets they attack: target seed i, surrogate seed 1000 + i.
SURROGATE_SEED_OFFSET = 1000
TABLE4_MARGINS = (0.05, 0.10, 0.15, 0.20, 0.25)
TABLE4_SCALES = (2.0, 4.0, 6.0, 8.0)
TABLES = ("1", "2", "3", "4", "surrogates")


def seeds(profile: str | Profile | None = None) -> range:
    """The seeds every table model is trained with (the profile's `seeds` budget)."""
    return range(get_profile(profile).seeds)


def table1_experiments(profile: str | Profile | None = None, dataset: str = "cifar10", **kw):
    """5 losses x UM / AT / ALP, in the paper's row order (SM-UM, SM-AT, SM-ALP, ConL-UM, ...), once
    per seed (seed 0 first)."""
    return [make_experiment(loss, defense, profile, dataset, seed, **kw)
            for seed in seeds(profile) for loss in PAPER_LOSSES for defense in DEFENSES]


def surrogate_experiments(profile: str | Profile | None = None, dataset: str = "cifar10", **kw):
    """The five UM models, one per loss, that craft the black-box attacks (Tables II and III), once per
    seed; the surrogates of target seed i have seed SURROGATE_SEED_OFFSET + i."""
    return [make_experiment(loss, "UM", profile, dataset, SURROGATE_SEED_OFFSET + seed, **kw)
            for seed in seeds(profile) for loss in PAPER_LOSSES]


def table4_experiments(profile: str | Profile | None = None, dataset: str = "cifar10", **kw):
    """AAML-AT for every (m, s) of Table IV, margins as rows and scales as columns, once per seed."""
    return [make_experiment("AAML", "AT", profile, dataset, seed, loss_params={"m": m, "s": s}, **kw)
            for seed in seeds(profile) for m in TABLE4_MARGINS for s in TABLE4_SCALES]


def experiments_for(table: str, profile: str | Profile | None = None, dataset: str = "cifar10", **kw) -> list:
    """The experiments a table needs: '1', '2' / '3' (targets and surrogates), '4', or 'surrogates'."""
    table = str(table)
    if table == "1":
        return table1_experiments(profile, dataset, **kw)
    if table in ("2", "3"):
        return table1_experiments(profile, dataset, **kw) + surrogate_experiments(profile, dataset, **kw)
    if table == "4":
        return table4_experiments(profile, dataset, **kw)
    if table == "surrogates":
        return surrogate_experiments(profile, dataset, **kw)
    raise ValueError(f"unknown table {table!r}; choose one of {list(TABLES)}")


def train_all(experiments, store: RunStore | None = None, *, device=None, data_root=None,
              progress: bool = True) -> dict:
    """Train whatever is not in the store yet, in order; a diverged run is recorded and the grid
    goes on. Returns {experiment: TrainedRun}. Each dataset is loaded once; every experiment takes
    its own slice of it."""
    store = store or RunStore()
    cache, runs = {}, {}
    for i, exp in enumerate(experiments):
        done = store.is_done(exp)
        if progress:
            state = "in store" if done else "training"
            print(f"[{i + 1}/{len(experiments)}] {exp.label} {exp.changed_params or ''} seed {exp.seed} ({state}) "
                  f"-> {store.run_dir(exp)}")
        data = None
        if not done:
            if exp.dataset not in cache:
                cache[exp.dataset] = load_dataset(exp.dataset, data_root)
            data = cache[exp.dataset]
        runs[exp] = train(exp, store, data=data, device=device, data_root=data_root, progress=progress)
    return runs

