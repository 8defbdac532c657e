"""Reproduction of 'Learning Discriminative Features for Adversarial Robustness' (Hosler et al.).

    from reproduce import start, tables, TABLE1
    run = start("smoke", "fashion-mnist")        # the run context: profile, dataset, store, device, folders
    cells, flags = tables.compute(run, TABLE1)   # Table I from the store (train first: notebook 02)
    model = load_model("AAML-AT", profile="smoke", dataset="fashion-mnist")  # a trained model

The names below are imported on first use, so `import reproduce.colab` (the notebooks' first cell, before
Colab has this package's requirements) needs nothing beyond the standard library.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("discriminative-robustness")
except PackageNotFoundError:  # a checkout on the path, not installed
    __version__ = "0+checkout"

# name -> the module that defines it
_EXPORTS = {
    "AttackSpec": "attacks", "attack": "attacks", "audit": "audits", "Audit": "audits",
    "PROFILES": "config", "Experiment": "config", "get_profile": "config", "make_experiment": "config",
    "Run": "context", "start": "context",
    "DatasetMissing": "data", "load_dataset": "data",
    "load_model": "export", "list_models": "export",
    "LOSSES": "losses", "make_loss": "losses",
    "Classifier": "models", "ResNet18": "models", "SmallCNN": "models", "build_model": "models",
    "TABLE1": "protocol", "TABLE2": "protocol", "TABLE3": "protocol", "TABLE4": "protocol", "TABLES": "protocol",
    "CheckpointError": "store", "RunStore": "store",
    "train": "training",
}
__all__ = [*_EXPORTS, "tables", "__version__"]


def __getattr__(name: str):
    if name == "tables":
        return import_module(".tables", __name__)
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'reproduce' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
