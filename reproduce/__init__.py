"""Reproduction of 'Learning Discriminative Features for Adversarial Robustness' (Hosler et al.).

    from reproduce import start, tables, TABLE1
    run = start("smoke", "fashion-mnist")        # the run context: profile, dataset, store, device, folders
    cells, flags = tables.compute(run, TABLE1)   # Table I from the store (train first: notebook 02)
    model = load_model("AAML-AT", profile="smoke", dataset="fashion-mnist")  # a trained model
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("discriminative-robustness")
except PackageNotFoundError:  # a checkout on the path, not installed
    __version__ = "0+checkout"

from . import tables
from .attacks import AttackSpec, attack
from .config import PROFILES, Experiment, get_profile, make_experiment
from .context import Run, start
from .data import DatasetMissing, load_dataset
from .export import load_model
from .losses import LOSSES, make_loss
from .models import Classifier, ResNet18, SmallCNN, build_model
from .protocol import TABLE1, TABLE2, TABLE3, TABLE4, TABLES
from .store import CheckpointError, RunStore
from .training import train

__all__ = ["AttackSpec", "attack", "PROFILES", "Experiment", "get_profile", "make_experiment", "Run", "start",
           "DatasetMissing", "load_dataset", "LOSSES", "make_loss", "Classifier", "ResNet18", "SmallCNN",
           "build_model", "TABLE1", "TABLE2", "TABLE3", "TABLE4", "TABLES", "CheckpointError", "RunStore",
           "train", "tables", "load_model", "__version__"]
