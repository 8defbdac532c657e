"""Datasets and a loader that lives on the training device.

Images are kept as one uint8 tensor (N, C, H, W) on the device; augmentation (random crop with 4-pixel
padding, horizontal flip, random erasing) is drawn and applied to many images at once, and each batch
is converted to float in [0, 1], so no per-image Python or PIL work happens during training.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_ROOT = Path(os.environ.get("REPRODUCE_DATA", "data"))
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
OFFLINE_HINT = (
    "On a machine without internet, Fashion-MNIST works offline: `sudo apt-get install "
    "dataset-fashion-mnist`, then run with DATASET=fashion-mnist (e.g. `make reproduce "
    "DATASET=fashion-mnist PROFILE=smoke`)."
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


def _link_debian_fashion_mnist(root: Path) -> None:
    """Put Debian's Fashion-MNIST files where torchvision looks for them (uncompressed in raw/)."""
    raw = root / "FashionMNIST" / "raw"
    if not DEBIAN_FASHION_MNIST.is_dir():
        return
    raw.mkdir(parents=True, exist_ok=True)
    for gz in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
        target = raw / gz.name[:-3]
        if not target.exists():
            # a temporary name of its own: two processes filling an empty folder never collide, and a
            # killed copy never becomes the target
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{target.name}.")
            try:
                with gzip.open(gz, "rb") as src, os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)


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
    if name == "fashion-mnist":
        _link_debian_fashion_mnist(root)
    try:
        return _torchvision_dataset(name, root, True, False), _torchvision_dataset(name, root, False, False)
    except (RuntimeError, FileNotFoundError):
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
    val_size = min(val_size, len(x) // 10)  # tiny test datasets keep a tenth for validation
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    split = DataSplit(name, x[train_idx], y[train_idx], x[val_idx], y[val_idx], x_test, y_test, CLASS_NAMES[name])
    return split.limit(train_limit, val_limit, test_limit)


# ---------------------------------------------------------------- batched augmentation
#
# The protocol's augmentation (random crop with 4-pixel zero padding, horizontal flip, random erasing)
# is drawn for a whole chunk of images at once (`draw_augmentation`) and applied in one of two ways
# that give identical pixels for the same draws: gathers on a GPU (no host-device synchronisation),
# and on the CPU one fancy-indexing call into a sliding-window view of the padded images, which numpy
# runs as row copies (many times faster than torch's uint8 gathers there).

PADDING = 4


@dataclass
class AugmentationDraws:
    """Random parameters for n images, on the CPU: window offsets into the padded image (0..2p),
    flip flags, and the erasing rectangle (top, left, height, width; height 0 = not erased)."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    box: torch.Tensor


def draw_augmentation(n: int, h: int, w: int, generator: torch.Generator | None = None,
                      erase_p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> AugmentationDraws:
    """Erasing follows torchvision's RandomErasing (value 0), except that a rectangle which does not fit
    is clipped to the image instead of being redrawn up to ten times: no Python loop per image."""
    dy = torch.randint(0, 2 * PADDING + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * PADDING + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    apply = torch.rand(n, generator=generator) < erase_p
    area = h * w * torch.empty(n).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long() * apply
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    return AugmentationDraws(dy, dx, flip, torch.stack([top, left, eh, ew], 1))


def erase_mask(box: torch.Tensor, h: int, w: int, device=None) -> torch.Tensor:
    """(n, 1, h, w) bool, True inside each image's erasing rectangle."""
    top, left, eh, ew = box.to(device).unbind(1)
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def erase(x: torch.Tensor, draws: AugmentationDraws) -> torch.Tensor:
    """Zero each image's rectangle, in place (a multiply: far faster than masked_fill on uint8)."""
    keep = ~erase_mask(draws.box, x.shape[2], x.shape[3], x.device)
    return x.mul_(keep.to(x.dtype))


def crop_and_flip_gather(padded: torch.Tensor, index: torch.Tensor, draws: AugmentationDraws) -> torch.Tensor:
    """Windows of padded[index], flipped where drawn: rows, then columns, with one gather each.
    A flipped image reads its window's columns right to left."""
    _, c, hp, wp = padded.shape
    h, w = hp - 2 * PADDING, wp - 2 * PADDING
    dev = padded.device
    x = padded.index_select(0, index.to(dev))
    n = len(x)
    dy, dx, flip = draws.dy.to(dev), draws.dx.to(dev), draws.flip.to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, c, h, wp)
    col = torch.arange(w, device=dev)
    col = torch.where(flip[:, None], w - 1 - col, col)
    cols = (dx[:, None] + col).view(n, 1, 1, w).expand(n, c, h, w)
    return x.gather(2, rows).gather(3, cols)


def crop_and_flip_windows(padded: np.ndarray, index: torch.Tensor, draws: AugmentationDraws) -> torch.Tensor:
    """The same on the CPU: padded is a numpy array (N, C, H + 2p, W + 2p)."""
    h, w = padded.shape[2] - 2 * PADDING, padded.shape[3] - 2 * PADDING
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # a view, no copy
    windows = windows.transpose(0, 2, 3, 1, 4, 5)  # (N, dy, dx, C, h, w): one index per image picks its window
    x = windows[index.numpy(), draws.dy.numpy(), draws.dx.numpy()]  # (n, C, h, w), a new contiguous array
    flipped = draws.flip.numpy()
    x[flipped] = x[flipped, :, :, ::-1]
    return torch.from_numpy(x)


def augment_padded(padded: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None = None):
    """Augmented copies of images[index], given the images already zero-padded by PADDING."""
    h, w = padded.shape[2] - 2 * PADDING, padded.shape[3] - 2 * PADDING
    draws = draw_augmentation(len(index), h, w, generator=generator)
    if padded.device.type == "cpu":
        x = crop_and_flip_windows(padded.numpy(), index, draws)
    else:
        x = crop_and_flip_gather(padded, index, draws)
    return erase(x, draws)


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The training augmentation of the protocol on one batch (uint8 or float; erasing writes zeros)."""
    return augment_padded(F.pad(x, (PADDING,) * 4), torch.arange(len(x)), generator)


class DeviceLoader:
    """Batches from tensors that stay on one device; shuffling and augmentation seeded per epoch.

    The same (seed, epoch) always gives the same batches, which is what makes a resumed run end with
    the same numbers as an uninterrupted one. Augmentation is drawn and applied for chunks of about
    `CHUNK` images, so its fixed costs are paid once per chunk rather than per batch; for this the
    loader keeps one zero-padded copy of the images on the device (1.6x the images for CIFAR-10).
    """

    CHUNK = 1024

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                 drop_last: bool = False):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle, self.augment = shuffle, augment
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.epoch = 0
        self._padded = None

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n, bs = len(self.images), self.batch_size
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        chunk = max(1, self.CHUNK // bs) * bs
        for start in range(0, min(n, len(self) * bs), chunk):
            index = order[start:min(start + chunk, len(self) * bs, n)]
            if self.augment:  # on uint8, before the conversion: a quarter of the memory traffic
                if self._padded is None:
                    self._padded = F.pad(self.images, (PADDING,) * 4)
                x = augment_padded(self._padded, index, gen)
            elif self.shuffle:
                x = self.images[index.to(self.device)]
            else:
                x = self.images[start:start + len(index)]
            y = self.labels[index.to(self.device)]
            for b in range(0, len(index), bs):
                xb = x[b:b + bs]
                yield (xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()), y[b:b + bs]
