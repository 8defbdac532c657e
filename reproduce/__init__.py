"""Reproduction of 'Learning Discriminative Features for Adversarial Robustness' (Hosler et al.)."""
from .attacks import AttackSpec, attack, table1_specs
from .config import PROFILES, Experiment, get_profile, make_experiment
from .data import DatasetMissing, load_dataset
from .losses import LOSSES, make_loss
from .models import Classifier, ResNet18, SmallCNN, build_model
from .store import CheckpointError, RunStore
from .training import train

__all__ = ["AttackSpec", "attack", "table1_specs", "PROFILES", "Experiment", "get_profile", "make_experiment",
           "DatasetMissing", "load_dataset", "LOSSES", "make_loss", "Classifier", "ResNet18", "SmallCNN",
           "build_model", "CheckpointError", "RunStore", "train"]
