"""Datasets and a loader that lives on the training device.

Images are kept as one uint8 tensor (N, C, H, W) on the device; each batch is converted to float in
[0, 1] and augmented as a whole (random crop with 4-pixel padding, horizontal flip, random
erasing), so no per-image Python or PIL work happens during training.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import socket
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
            tmp = target.with_suffix(".tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.rename(target)


def _torchvision_dataset(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    class CIFAR10(tvd.CIFAR10):
        """torchvision's reader; files that are present are read even when their MD5 is not the
        official one (a subset, or the small files the tests write), downloads are still checked."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.exists():
                raise RuntimeError(f"{path} not found")
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]

        def download(self) -> None:
            if not self._check_integrity():
                super().download()

    cls = {"cifar10": CIFAR10, "mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
    return cls(str(root), train=train, download=download)


def _load_raw(name: str, root: Path, download: bool):
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
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

def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad every image by `padding` and cut a random window of the original size from each."""
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    padded = F.pad(x, (padding,) * 4)
    if x.device.type == "cpu":
        return _crop_by_slices(padded, dy, dx, h, w)
    return _crop_by_gather(padded, dy.to(x.device), dx.to(x.device), h, w)


def _crop_by_gather(padded, dy, dx, h, w):
    """Rows, then columns, with one gather each: no host-device synchronisation (GPU)."""
    n, c, _, wp = padded.shape
    rows = (dy[:, None] + torch.arange(h, device=padded.device)).view(n, 1, h, 1).expand(n, c, h, wp)
    cols = (dx[:, None] + torch.arange(w, device=padded.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def _crop_by_slices(padded, dy, dx, h, w):
    """CPU: sort the batch by offset, copy each group's window as one block, restore the order.
    Several times faster than a gather on the CPU."""
    n, c, _, _ = padded.shape
    key = dy * 1000 + dx
    order = key.argsort()
    grouped = padded.index_select(0, order)
    out = padded.new_empty(n, c, h, w)
    start = 0
    for k, count in zip(*(t.tolist() for t in key[order].unique_consecutive(return_counts=True))):
        oy, ox = divmod(k, 1000)
        out[start:start + count] = grouped[start:start + count, :, oy:oy + h, ox:ox + w]
        start += count
    return out.index_select(0, order.argsort())


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_erasing(x: torch.Tensor, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3),
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision's RandomErasing (value 0) drawn for the whole batch at once.

    torchvision retries up to ten times when the box does not fit; here the box is clipped to the
    image instead, which keeps the same distribution of positions without a Python loop.
    """
    n, _, h, w = x.shape
    apply = torch.rand(n, generator=generator) < p
    area = h * w * torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    dev = x.device
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= top.to(dev)[:, None]) & (rows < (top + eh).to(dev)[:, None])
    in_cols = (cols >= left.to(dev)[:, None]) & (cols < (left + ew).to(dev)[:, None])
    box = in_rows[:, :, None] & in_cols[:, None, :] & apply.to(dev)[:, None, None]
    return x.masked_fill(box[:, None], 0.0)


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The training augmentation of the protocol, on a uint8 or float batch (erasing writes zeros)."""
    return random_erasing(random_flip(random_crop(x, 4, generator), generator), generator=generator)


class DeviceLoader:
    """Batches from tensors that stay on one device; shuffling and augmentation seeded per epoch.

    The same (seed, epoch) always gives the same batches, which is what makes a resumed run end with
    the same numbers as an uninterrupted one.
    """

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

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.images)
        order = torch.randperm(n, generator=gen).to(self.device) if self.shuffle else None
        for i in range(len(self)):
            idx = slice(i * self.batch_size, (i + 1) * self.batch_size)
            sel = order[idx] if order is not None else idx
            x = self.images[sel]
            if self.augment:  # on uint8, before the conversion: a quarter of the memory traffic
                x = augment(x, gen)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
            yield x, self.labels[sel]
