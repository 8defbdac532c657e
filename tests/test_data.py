import time

import numpy as np
import pytest
import torch
from conftest import DEVICE, needs_fashion, write_cifar10, write_idx
from torchvision.transforms import v2

from reproduce.data import DatasetMissing, load_dataset
from reproduce.loader import (
    PADDING,
    DeviceLoader,
    augment,
    augment_padded,
    crop_and_flip_gather,
    crop_and_flip_windows,
    draw_augmentation,
    erase,
)


def test_cifar10_pickle_layout_loads_with_split(tmp_path):
    root = write_cifar10(tmp_path, n_train=500, n_test=120)
    data = load_dataset("cifar10", root, val_size=5000)
    assert data.x_train.shape == (450, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert len(data.x_val) == 50 and len(data.x_test) == 120
    assert data.classes[0] == "airplane" and data.num_classes == 10
    # the split is a fixed permutation: same seed, same split; train and validation are disjoint
    again = load_dataset("cifar10", root, val_size=5000)
    assert torch.equal(again.x_val, data.x_val)
    train_rows = {bytes(x.numpy()) for x in data.x_train}
    assert not any(bytes(x.numpy()) in train_rows for x in data.x_val)


def test_cifar10_pixels_match_the_pickle(tmp_path):
    import pickle

    root = write_cifar10(tmp_path, n_train=100, n_test=30)
    batch = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes())
    data = load_dataset("cifar10", root)
    first = batch["data"][0].reshape(3, 32, 32)
    assert np.array_equal(data.x_test[0].numpy(), first)
    assert data.y_test[0].item() == batch["labels"][0]


def test_mnist_idx_layout_loads(tmp_path):
    root = write_idx(tmp_path, "MNIST", n_train=300, n_test=50)
    data = load_dataset("mnist", root, test_limit=40)
    assert data.x_train.shape == (270, 1, 28, 28) and data.channels == 1
    assert len(data.x_test) == 40


def test_missing_dataset_fails_fast_with_the_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetMissing) as err:
        load_dataset("cifar10", tmp_path / "empty", download=False)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "cifar-10-batches-py" in message and "DATASET=fashion-mnist" in message
    assert "dataset-fashion-mnist" in message


def test_unknown_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


@needs_fashion
def test_debian_fashion_mnist_is_wired_in_readable_by_others_and_said(tmp_path, capsys):
    import os
    import stat

    old = os.umask(0o022)
    try:
        data = load_dataset("fashion-mnist", tmp_path)
    finally:
        os.umask(old)
    assert len(data.x_train) == 55000 and len(data.x_val) == 5000 and len(data.x_test) == 10000
    copied = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o644  # a shared data folder: others can train on it
    assert data.classes[-1] == "Ankle boot"
    assert "using Debian's copy" in capsys.readouterr().out


def test_a_users_own_gz_files_are_used_and_a_partial_set_is_named(tmp_path, capsys):
    """torchvision's download layout keeps the .gz files in raw/: they are the user's data, read as they
    are, never replaced by Debian's copy; a folder with some of the four files stops with what it found."""
    import gzip

    root = write_idx(tmp_path / "mine", "FashionMNIST", n_train=300, n_test=60, seed=3)
    raw = root / "FashionMNIST" / "raw"
    for f in list(raw.iterdir()):
        (raw / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    data = load_dataset("fashion-mnist", root)
    assert len(data.x_train) + len(data.x_val) == 300 and len(data.x_test) == 60  # the user's, not Debian's
    assert "Debian" not in capsys.readouterr().out
    expected = write_idx(tmp_path / "plain", "FashionMNIST", n_train=300, n_test=60, seed=3)
    assert torch.equal(load_dataset("fashion-mnist", expected).x_test, data.x_test)
    partial = write_idx(tmp_path / "partial", "FashionMNIST", n_train=30, n_test=10)
    (partial / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetMissing, match="holds train-images-idx3-ubyte.* but not t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", partial)


# ------------------------------------------------------------------ batched augmentation

def _images(n=64, c=3, h=32, w=32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _padded(x):
    return torch.nn.functional.pad(x, (PADDING,) * 4)


def _reference_crop_flip(x, index, draws):
    """One image at a time, by slicing the padded image: the definition of crop-then-flip."""
    padded, (h, w) = _padded(x), x.shape[2:]
    out = []
    for k, i in enumerate(index.tolist()):
        dy, dx = draws.dy[k].item(), draws.dx[k].item()
        window = padded[i, :, dy:dy + h, dx:dx + w]
        out.append(window.flip(2) if draws.flip[k] else window)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_and_flip_paths_match_a_per_image_reference(dtype):
    x = (_images(40) * 255).to(dtype)
    index = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:25]  # a shuffled subset
    draws = draw_augmentation(25, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = _reference_crop_flip(x, index, draws)
    assert torch.equal(crop_and_flip_windows(_padded(x).numpy(), index, draws), expected)  # CPU path
    assert torch.equal(crop_and_flip_gather(_padded(x), index, draws), expected)  # GPU path, run on the CPU
    # picking images by index from the padded set is the same as augmenting the picked batch
    assert torch.equal(augment_padded(_padded(x), index, torch.Generator().manual_seed(2)),
                       augment(x[index], torch.Generator().manual_seed(2)))
    # the same pixels on the training device (a GPU under scripts/gpu_check.sh)
    assert torch.equal(crop_and_flip_gather(_padded(x).to(DEVICE), index, draws).cpu(), expected)
    assert torch.equal(augment_padded(_padded(x).to(DEVICE), index, torch.Generator().manual_seed(2)).cpu(),
                       augment(x[index], torch.Generator().manual_seed(2)))


def test_crop_matches_torchvision_windows():
    """Every output is a window of the padded image (or its mirror), as torchvision's RandomCrop gives."""
    x = _images(16)
    ours = augment(x, torch.Generator().manual_seed(1))
    theirs = torch.stack([v2.RandomCrop(32, padding=4)(img) for img in x])
    padded = _padded(x)
    for i in range(len(x)):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
        windows = torch.cat([windows, windows.flip(3)])
        kept = ours[i] != 0  # erasing zeroes a rectangle; the rest must be one window
        assert ((windows == ours[i]) | ~kept).flatten(1).all(1).any(), "not a window of the padded image"
        assert (windows == theirs[i]).flatten(1).all(1).any()  # the same property holds for torchvision


def test_crop_offsets_cover_the_whole_range():
    x = torch.zeros(2000, 1, 8, 8)
    x[:, :, 0, 0] = 1  # marker: its position after the crop reveals the offset (and the flip)
    draws = draw_augmentation(2000, 8, 8, generator=torch.Generator().manual_seed(0))
    out = crop_and_flip_windows(_padded(x).numpy(), torch.arange(2000), draws)
    positions = {tuple(p) for p in (out[:, 0] == 1).nonzero()[:, 1:].tolist()}
    # shifts 0..4 keep the marker visible; a flip mirrors its column
    assert positions == {(r, c) for r in range(5) for c in list(range(5)) + list(range(3, 8))}


def test_flip_is_a_flip_with_probability_one_half():
    x = _images(400)
    draws = draw_augmentation(400, 32, 32, generator=torch.Generator().manual_seed(0))
    draws.dy[:], draws.dx[:] = PADDING, PADDING  # no shift: only the flip acts
    out = crop_and_flip_windows(_padded(x).numpy(), torch.arange(400), draws)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert torch.equal(flipped, draws.flip) and torch.equal(same, ~draws.flip)
    assert 0.4 < flipped.float().mean() < 0.6


def test_erasing_matches_torchvision_statistics():
    draws = draw_augmentation(4000, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = erase(torch.ones(4000, 3, 32, 32), draws)
    torch.manual_seed(0)
    theirs = torch.stack([v2.RandomErasing(p=0.5, value=0)(img) for img in torch.ones(1000, 3, 32, 32)])
    for out in (ours, theirs):
        erased = (out == 0).all(1).float().mean((1, 2))  # fraction of the image erased, per example
        hit = erased > 0
        assert 0.45 < hit.float().mean() < 0.55
        assert erased[hit].min() >= 0.015 and erased[hit].max() <= 0.36
        assert set(out.unique().tolist()) <= {0.0, 1.0}
    mean_ours = (ours == 0).all(1).float().mean((1, 2))
    mean_theirs = (theirs == 0).all(1).float().mean((1, 2))
    assert abs(mean_ours[mean_ours > 0].mean() - mean_theirs[mean_theirs > 0].mean()) < 0.03


def test_augment_keeps_shape_and_range():
    x = _images(32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_loader_is_deterministic_per_epoch_and_covers_the_data():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(100)
    loader = DeviceLoader(images, labels, 32, shuffle=True, augment=True, seed=3)
    loader.set_epoch(2)
    a = list(loader)
    loader.set_epoch(2)
    b = list(loader)
    loader.set_epoch(3)
    c = list(loader)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    seen = torch.cat([y for _, y in DeviceLoader(images, labels, 32)])
    assert torch.equal(seen, labels)  # evaluation order, every example once
    assert all(x.dtype == torch.float32 and x.max() <= 1 for x, _ in a)


@pytest.mark.parametrize("drop_last", [False, True])
def test_augmented_batches_keep_each_image_with_its_label(drop_last):
    n = 250
    images = (torch.arange(n) + 1).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    labels = torch.arange(n)  # image i is filled with the value i + 1 (zero is padding and erasing)
    loader = DeviceLoader(images, labels, 32, shuffle=True, augment=True, drop_last=drop_last)
    loader.CHUNK = 64  # several chunks, and a last chunk that is not full
    batches = list(loader)
    assert len(batches) == len(loader) == (7 if drop_last else 8)
    seen = torch.cat([y for _, y in batches])
    assert len(seen.unique()) == len(seen) == (7 * 32 if drop_last else n)
    for x, y in batches:
        values = (x * 255).round()
        own = (y + 1).float().view(-1, 1, 1, 1)
        assert ((values == own) | (values == 0)).all()
        assert (values == own).flatten(1).any(1).all()  # a window keeps >= 12 x 12 pixels, erasing takes <= 85


class _RunsCode:
    """A pickle that would create a folder when loaded with a plain pickle.load."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.makedirs, (self.path,)


def test_cifar_files_are_read_without_running_code_and_a_bad_one_is_named(tmp_path):
    import pickle

    from reproduce.data import DatasetCorrupt, load_dataset

    root = write_cifar10(tmp_path / "data", n_train=50, n_test=20)
    folder = root / "cifar-10-batches-py"
    assert load_dataset("cifar10", root).classes[0] == "airplane"
    marker = tmp_path / "code_ran"
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": _RunsCode(str(marker))}))
    with pytest.raises(DatasetCorrupt, match="batches.meta"):
        load_dataset("cifar10", root)
    assert not marker.exists()
    write_cifar10(tmp_path / "data", n_train=50, n_test=20)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DatasetCorrupt, match="data_batch_3"):
        load_dataset("cifar10", root)
