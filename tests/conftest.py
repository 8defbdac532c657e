"""Shared fixtures: small datasets written in the real on-disk formats, and tiny experiments."""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core), each worker computes with its share of
    the cores, and so do the kernels and processes it starts: two torch processes each at full width
    spin against each other and run many times slower."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)

# The longest files (seconds of one worker in a `make test` of 0.7.2, `pytest --durations=0`, summed per file),
# handed to the workers first, the longest first, so that no worker is left alone with a long file at the end.
# `make test` passes --no-loadscope-reorder, without which xdist hands out the files with the most tests first,
# and these, with few tests each, came last.
LONGEST_FIRST = ("test_notebooks_e2e.py",  # 211 s
                 "test_gpu_check.py",  # 115 s
                 "test_attacks_torchattacks.py",  # 112 s
                 "test_losses_training.py",  # 92 s
                 "test_one_number.py",  # 90 s
                 "test_crash_at_every_write.py",  # 84 s
                 "test_audit.py",  # 65 s
                 "test_runner_parallel.py", "test_store_training.py", "test_masking.py", "test_executors.py")  # 50-62 s


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


FASHION = Path("/usr/share/datasets/fashion-mnist")
# The device of the device-side tests (the loader's gathers, a training run, every attack against
# torchattacks): the CPU here and in CI; scripts/gpu_check.sh sets REPRODUCE_TEST_DEVICE=cuda.
DEVICE = os.environ.get("REPRODUCE_TEST_DEVICE", "cpu")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")


def write_cifar10(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    """CIFAR-10's python layout: five pickled training batches, a test batch and batches.meta.

    Images carry a class-dependent colour so that a network can learn them in a few steps.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        base = (np.arange(10)[:, None] * np.array([25, 80, 140]) % 255)[labels]  # (n, 3) colour per class
        images = base[:, :, None, None] + rng.integers(-40, 40, (n, 3, 32, 32))
        flat = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3 * 32 * 32)
        return {"data": flat, "labels": labels.tolist(), "batch_label": "x", "filenames": ["f"] * n}

    sizes = [n_train // 5] * 5
    sizes[-1] += n_train - sum(sizes)
    for i, n in enumerate(sizes, 1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def write_idx(root: Path, folder: str = "MNIST", n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """MNIST's IDX layout (big-endian magic numbers and sizes) in torchvision's raw/ folder."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 20).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


@pytest.fixture
def float64():
    """Float64 by default for the test, so hand-written references match to round-off."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar10(tmp_path / "data")


@pytest.fixture(scope="session")
def fashion():
    """Debian's Fashion-MNIST, loaded once for the whole session."""
    if not FASHION.is_dir() and "REPRODUCE_DATA" not in os.environ:
        pytest.skip("apt-get install dataset-fashion-mnist")
    from reproduce.data import load_dataset

    return load_dataset("fashion-mnist", Path(os.environ.get("REPRODUCE_DATA", "data")), test_limit=2000)


@pytest.fixture(scope="session")
def fashion_model(fashion, tmp_path_factory):
    """A smoke ResNet-18 trained for one epoch on Fashion-MNIST (about ten seconds on 2 cores)."""
    from reproduce.config import make_experiment
    from reproduce.store import RunStore
    from reproduce.training import train

    exp = make_experiment("SM", "UM", "smoke", "fashion-mnist", epochs=1)
    return train(exp, RunStore(tmp_path_factory.mktemp("runs")), data=fashion, device=DEVICE, progress=False).model
