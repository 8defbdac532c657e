"""Datasets on disk: CIFAR-10, MNIST and Fashion-MNIST read into uint8 tensors, and the shuffled
train / validation / test split every run uses (the batch loader is loader.py)."""
from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = Path(os.environ.get("REPRODUCE_DATA", "data"))
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
OFFLINE_HINT = (
    "On a machine without internet, Fashion-MNIST works offline: `sudo apt-get install "
    "dataset-fashion-mnist`, then choose it: `--dataset fashion-mnist` on any command, `dataset=\"fashion-mnist\"` "
    "in a notebook's parameters, or DATASET=fashion-mnist in the environment, which every command, notebook and "
    "`make` target reads (e.g. `DATASET=fashion-mnist PROFILE=smoke make reproduce`)."
)

CLASS_NAMES = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
}
DATASETS = tuple(CLASS_NAMES)


class DatasetMissing(RuntimeError):
    """The dataset is not on disk and could not be downloaded."""


@dataclass
class DataSplit:
    """uint8 images (N, C, H, W) and int64 labels for train / validation / test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list

    def limit(self, train: int | None = None, val: int | None = None, test: int | None = None) -> "DataSplit":
        """The first images of each part (the split is already shuffled); None keeps a part whole."""
        return DataSplit(self.name, self.x_train[:train], self.y_train[:train], self.x_val[:val], self.y_val[:val],
                         self.x_test[:test], self.y_test[:test], self.classes)

    def test_images(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `limit` test images and labels: every evaluation of a profile uses these, so the
        caches of tables, curves and appendix grids agree."""
        return self.x_test[:limit], self.y_test[:limit]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]


def _expected_files(name: str, root: Path) -> str:
    if name == "cifar10":
        return f"{root}/cifar-10-batches-py/ (data_batch_1..5, test_batch; the python version of CIFAR-10)"
    folder = "MNIST" if name == "mnist" else "FashionMNIST"
    return f"{root}/{folder}/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-... )"


def _files_present(name: str, root: Path) -> bool:
    """Whether every file of the dataset's on-disk layout is there (read or not)."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        folder = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
        names = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    return all((folder / n).is_file() for n in names)


IDX_FILES = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]


def _decompress(gz: Path, target: Path) -> None:
    """`gz` uncompressed into `target`, under a temporary name of its own (two processes filling an empty
    folder never collide, and a killed copy never becomes the target), with the mode the umask gives."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, new_file_mode())
        with gzip.open(gz, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def new_file_mode() -> int:
    """The mode open() gives a new file under the user's umask (mkstemp's own 0600 would keep other users
    from a shared data folder or run)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _prepare_idx(name: str, root: Path) -> None:
    """Put an IDX dataset's files where torchvision reads them (uncompressed, in raw/): the user's own
    files first (uncompressed, or the .gz of torchvision's download layout); Debian's Fashion-MNIST only
    into a folder that holds none of the dataset's files, and said. A folder with some files but not all
    is an error that names what was found: mixing a user's files with another copy would train on neither."""
    raw = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    found = {f: raw / f if (raw / f).is_file() else raw / f"{f}.gz" if (raw / f"{f}.gz").is_file() else None
             for f in IDX_FILES}
    have = [f for f, path in found.items() if path is not None]
    if have and len(have) < len(IDX_FILES):
        raise DatasetMissing(f"{raw} holds {', '.join(found[f].name for f in have)} but not "
                             f"{', '.join(f for f in IDX_FILES if found[f] is None)} (or their .gz): add the missing "
                             "files, or empty the folder to use another copy")
    if have:
        for f, path in found.items():
            if path.suffix == ".gz":
                _decompress(path, raw / f)
        return
    if name != "fashion-mnist" or not DEBIAN_FASHION_MNIST.is_dir():
        return
    raw.mkdir(parents=True, exist_ok=True)
    print(f"{name}: no files in {raw}; using Debian's copy ({DEBIAN_FASHION_MNIST}), uncompressed there")
    for f in IDX_FILES:
        if (DEBIAN_FASHION_MNIST / f"{f}.gz").is_file():
            _decompress(DEBIAN_FASHION_MNIST / f"{f}.gz", raw / f)


class DatasetCorrupt(ValueError):
    """A dataset file that is there but cannot be read."""


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays, and nothing that could run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 file")


def read_cifar_pickle(path: Path) -> dict:
    """One file of CIFAR-10's python layout, read without executing code; a bad file is named."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as e:
        raise DatasetCorrupt(f"{path} is not a readable CIFAR-10 file ({type(e).__name__}: {e}); delete the "
                             f"cifar-10-batches-py folder and download CIFAR-10 again") from None


def _torchvision_dataset(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    class CIFAR10(tvd.CIFAR10):
        """torchvision's reader; files that are present are read even when their MD5 is not the
        official one (a subset, or the small files the tests write), downloads are still checked."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).exists() for f, _ in self.train_list + self.test_list)

        def __init__(self, root: str, train: bool, download: bool):
            # torchvision's reader, with every file read by `read_cifar_pickle` (no code runs)
            self.root, self.train = root, train
            if download:
                self.download()
            if not self._check_integrity():
                raise RuntimeError("CIFAR-10 files not found")
            folder = Path(root) / self.base_folder
            batches = [read_cifar_pickle(folder / name) for name, _ in (self.train_list if train else self.test_list)]
            self.data = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            self.targets = [label for b in batches for label in b["labels"]]
            self.classes = read_cifar_pickle(folder / self.meta["filename"])[self.meta["key"]]

        def download(self) -> None:
            if not self._check_integrity():
                super().download()

    cls = {"cifar10": CIFAR10, "mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
    return cls(str(root), train=train, download=download)


def _load_raw(name: str, root: Path, download: bool):
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    if root.exists() and not root.is_dir():
        raise DatasetMissing(f"the data folder {root} is a file; point --data (or REPRODUCE_DATA) at a folder")
    if name != "cifar10":
        _prepare_idx(name, root)
    try:
        return _torchvision_dataset(name, root, True, False), _torchvision_dataset(name, root, False, False)
    except DatasetCorrupt:
        raise
    except (AssertionError, ValueError, IndexError, EOFError, OverflowError) as e:  # present, but not readable
        raise DatasetCorrupt(f"the {name} files in {_expected_files(name, root)} cannot be read ({type(e).__name__}: "
                             f"{str(e)[:200] or 'a wrong magic number or a truncated file'}); replace them with the "
                             "original files") from None
    except (RuntimeError, FileNotFoundError) as e:
        if _files_present(name, root):  # there, but torch could not read them (e.g. a truncated file)
            raise DatasetCorrupt(f"the {name} files in {_expected_files(name, root)} cannot be read "
                                 f"({type(e).__name__}: {str(e)[:200]}); replace them with the original "
                                 "files") from None
        if not download:
            raise DatasetMissing(f"{name} not found. Put its files in {_expected_files(name, root)}. "
                                 + OFFLINE_HINT) from None
    # Not on disk: try a download, but give up in seconds when there is no network.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        return _torchvision_dataset(name, root, True, True), _torchvision_dataset(name, root, False, True)
    except Exception as e:
        raise DatasetMissing(
            f"{name} is not on disk and could not be downloaded ({type(e).__name__}: {e}). "
            f"Put its files in {_expected_files(name, root)}. " + OFFLINE_HINT) from None
    finally:
        socket.setdefaulttimeout(old)


def _to_tensors(ds):
    data = ds.data
    x = torch.as_tensor(np.asarray(data))
    if x.ndim == 3:  # MNIST-like (N, H, W)
        x = x.unsqueeze(1)
    else:  # CIFAR (N, H, W, C)
        x = x.permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x.contiguous(), y


def _check_parts(name: str, root: Path, *parts) -> None:
    """Images and labels that a run can use: as many labels as images, some of each, every label a class."""
    classes = len(CLASS_NAMES[name])
    for x, y, part in parts:
        where = f"the {name} {part} files in {_expected_files(name, root)}"
        if len(x) == 0 or len(y) == 0:
            raise DatasetCorrupt(f"{where} hold no images or no labels; replace them with the original files")
        if len(x) != len(y):
            raise DatasetCorrupt(f"{where} hold {len(x)} images but {len(y)} labels (a truncated file); replace "
                                 "them with the original files")
        if int(y.min()) < 0 or int(y.max()) >= classes:
            raise DatasetCorrupt(f"{where} hold labels from {int(y.min())} to {int(y.max())}, outside the "
                                 f"{classes} classes 0-{classes - 1}; replace them with the original files")


# The official training files, by MD5: CIFAR-10's python batches and MNIST's .gz as torchvision lists them
# (and checks on download), Fashion-MNIST's uncompressed IDX files as Zalando publishes them (Debian's
# `dataset-fashion-mnist` holds these bytes, recompressed).
OFFICIAL_TRAINING_FILES = {
    "fashion-mnist": {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                      "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9"},
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432"},
    "cifar10": {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb"},
}


def _md5(path: Path) -> str:
    """The file's MD5, read once per version of the file (a run context asks on every copy it makes)."""
    stat = path.stat()
    return _md5_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _md5_of(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_set_id(name: str, root: Path | str | None, split: DataSplit) -> str:
    """"" for the dataset's official training files (OFFICIAL_TRAINING_FILES), else twelve hex digits of the
    SHA-256 of the training images and labels (the validation part included): what binds a run to the data
    it was trained on without moving the keys of runs on the standard data (config.Experiment.train_data)."""
    import hashlib

    root = Path(root or DEFAULT_ROOT)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else
                     ("MNIST" if name == "mnist" else "FashionMNIST") + "/raw")
    official = OFFICIAL_TRAINING_FILES.get(name, {})
    if official and all((folder / f).is_file() and _md5(folder / f) == md5 for f, md5 in official.items()):
        return ""
    digest = hashlib.sha256()
    for part in (split.x_train, split.y_train, split.x_val, split.y_val):
        digest.update(part.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def check_dataset(name: str, root: Path | str | None = None, download: bool = True) -> None:
    """Raise DatasetMissing within seconds if the dataset cannot be had."""
    _load_raw(name, Path(root or DEFAULT_ROOT), download)


def load_dataset(name: str = "cifar10", root: Path | str | None = None, *, val_size: int = 5000,
                 split_seed: int = 42, train_limit: int | None = None, val_limit: int | None = None,
                 test_limit: int | None = None, download: bool = True) -> DataSplit:
    """The train/validation split is a fixed permutation (seed 42): 45k/5k on CIFAR-10.

    Limits take the first images of each part (after the permutation), for small profiles.
    """
    root = Path(root or DEFAULT_ROOT)
    train_ds, test_ds = _load_raw(name, root, download)
    x, y = _to_tensors(train_ds)
    x_test, y_test = _to_tensors(test_ds)
    _check_parts(name, root, (x, y, "training"), (x_test, y_test, "test"))
    val_size = min(val_size, len(x) // 10)  # tiny test datasets keep a tenth for validation
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    split = DataSplit(name, x[train_idx], y[train_idx], x[val_idx], y[val_idx], x_test, y_test, CLASS_NAMES[name])
    return split.limit(train_limit, val_limit, test_limit)


# ---------------------------------------------------------------- batched augmentation
#


def small_dataset(root: Path | str | None = None, prefer: str = "mnist") -> str:
    """MNIST when its files are there, else Fashion-MNIST (which works offline with Debian's package):
    the dataset of the small-CNN figures."""
    try:
        load_dataset(prefer, root, download=False)
        return prefer
    except DatasetMissing:
        return "fashion-mnist"
