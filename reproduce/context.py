"""One reproduction run as one object: the profile, the dataset, the AT / ALP objectives, the store, the
device and the folders, built once from a notebook's parameters or the command line (`start`) and
passed first to every function that needs more than one of them.

    run = start("smoke", "fashion-mnist")
    cells, flags = tables.compute(run, TABLE1)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .config import (
    OBJECTIVES,
    Profile,
    budget_digest,
    budget_text,
    changed_budgets,
    default_dataset,
    default_profile,
    get_profile,
    make_experiment,
)
from .data import DATASETS, DatasetMissing, DataSplit, load_dataset, training_set_id
from .store import RunStore

REPO = Path(__file__).resolve().parent.parent
# runs/, data/ and figures/ of the checkout when the package runs from one (whatever the working
# directory: a notebook runs in notebooks/, papermill wherever it was called), else of the working directory
_IN_CHECKOUT = (REPO / "notebooks").is_dir() and (REPO / "pyproject.toml").is_file()


def default_folder(name: str) -> Path:
    """$REPRODUCE_<NAME> when set, else <name>/ of the checkout (or of the working directory)."""
    env = os.environ.get(f"REPRODUCE_{name.upper()}")
    if env:
        return Path(env)
    return REPO / name if _IN_CHECKOUT else Path(name)


@dataclass(frozen=True)
class Run:
    """Where and how one run of the reproduction computes. Every field has a default: `Run()` is the
    default profile on $DATASET (else CIFAR-10) with the authors' objectives, runs/ and data/ of the checkout."""

    profile: Profile | str | None = None  # a Profile (a name or None is resolved: config.default_profile)
    dataset: str | None = None  # None: $DATASET, else cifar10 (config.default_dataset)
    objectives: str = "authors"  # AT / ALP objectives: the authors' code or the paper's text
    store: RunStore = field(default_factory=lambda: RunStore(default_folder("runs")))
    device: str | None = None  # None: cuda when available
    data_root: Path | None = None  # None: data/ of the checkout
    figures_root: Path | None = None  # None: figures/ of the checkout
    progress: bool = True
    output: Path | None = None  # the output folder itself (None: out_dir's rule)

    def __post_init__(self):
        if not isinstance(self.profile, Profile):
            object.__setattr__(self, "profile", get_profile(self.profile))
        object.__setattr__(self, "dataset", self.dataset or default_dataset())
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.objectives not in OBJECTIVES:
            raise ValueError(f"unknown objectives {self.objectives!r}; choose one of {list(OBJECTIVES)}")
        object.__setattr__(self, "data_root", Path(self.data_root or default_folder("data")))
        object.__setattr__(self, "figures_root", Path(self.figures_root or default_folder("figures")))

    @property
    def name(self) -> str:
        """<dataset>-<profile>, then -budgets-<digest> when budgets were changed (config.budget_digest) and
        -paper-objectives for the paper's reading of AT / ALP: the name of the run's output folder."""
        budgets = f"-budgets-{budget_digest(self.profile)}" if changed_budgets(self.profile) else ""
        objectives = "" if self.objectives == "authors" else f"-{self.objectives}-objectives"
        return f"{self.dataset}-{self.profile.name}{budgets}{objectives}"

    def _out_path(self) -> Path:
        return Path(self.output or self.figures_root / self.name)

    @property
    def out_dir(self) -> Path:
        """figures/<run name>/ (`name`), so runs of different profiles, datasets or budgets never overwrite
        each other's outputs; created on use."""
        out = self._out_path()
        out.mkdir(parents=True, exist_ok=True)
        return out

    @cached_property
    def data(self) -> DataSplit:
        """The dataset, loaded once per run."""
        return load_dataset(self.dataset, self.data_root)

    def test_images(self):
        """The profile's test images and labels: every evaluation of the run scores these."""
        return self.data.test_images(self.profile.test_limit)

    @cached_property
    def train_data(self) -> str:
        """The identity of the training set in data_root ("" for the dataset's official files:
        data.training_set_id), or "" where there is no data to read (nothing can train then)."""
        try:
            return training_set_id(self.dataset, self.data_root, self.data)
        except DatasetMissing:
            return ""

    def experiment(self, loss: str, defense: str = "UM", seed: int = 0, **overrides):
        """An experiment of this run's profile, dataset and objectives (config.make_experiment), bound to
        the training set in data_root where it is not the dataset's official one (`train_data`)."""
        overrides.setdefault("train_data", self.train_data)
        overrides.setdefault("objectives", self.objectives)
        return make_experiment(loss, defense, self.profile, self.dataset, seed, **overrides)

    def finished(self, experiment) -> bool:
        return self.store.is_finished(experiment)

    def model(self, experiment):
        """The model a finished run kept, on this run's device."""
        from .training import load_trained

        return load_trained(experiment, self.store, self.device, compile=self.profile.compile)

    def quiet(self) -> "Run":
        """The same run without progress bars or training logs (for figures whose models take seconds)."""
        return dataclasses.replace(self, progress=False)

    def on(self, dataset: str) -> "Run":
        """The same run on another dataset, writing into the same output folder (the small-CNN figures
        use MNIST or Fashion-MNIST beside the main dataset's tables)."""
        return dataclasses.replace(self, dataset=dataset, output=self._out_path())


def _check_folder(flag: str, folder) -> None:
    """A folder given for the runs, the data or the figures must be one, or not exist yet."""
    if folder is None:
        return
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder: point {flag} at a folder (it is created if missing)")


def start(profile: str | None = None, dataset: str | None = None, *, objectives: str = "authors",
          device: str | None = None, runs_dir=None, data_dir=None, figures_dir=None, budgets: dict | None = None,
          progress: bool = True, quiet: bool = False) -> Run:
    """The run context of a notebook or a command: the profile (None: config.default_profile, whose
    reason is printed) with its `budgets` changed, the dataset (None: $DATASET, else cifar10), and the
    folders (None: runs/, data/ and figures/ of the checkout). Prints one line saying what runs where,
    unless `quiet`."""
    from .devices import resolve_device

    name, why = (profile, "") if profile else default_profile()
    dataset = dataset or default_dataset()
    for flag, folder in (("--runs", runs_dir), ("--data", data_dir), ("--figures", figures_dir)):
        _check_folder(flag, folder)
    run = Run(get_profile(name, **(budgets or {})), dataset, objectives,
              RunStore(runs_dir or default_folder("runs")), str(resolve_device(device)), data_dir, figures_dir,
              progress)
    if not quiet:
        budgets = f" with {budget_text(run.profile)}" if changed_budgets(run.profile) else ""
        print(f"profile {run.profile.name}{f' ({why})' if why else ''}{budgets}, dataset {dataset}, {objectives} "
              f"objectives, on {run.device}; runs in {run.store.root}, outputs in {run.out_dir}")
    return run
