import time

import numpy as np
import pytest
import torch
from conftest import needs_fashion, write_cifar10, write_idx
from torchvision.transforms import v2

from reproduce.data import DatasetMissing, DeviceLoader, augment, load_dataset, random_crop, random_erasing, random_flip


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
def test_debian_fashion_mnist_is_wired_in(tmp_path):
    data = load_dataset("fashion-mnist", tmp_path)
    assert len(data.x_train) == 55000 and len(data.x_val) == 5000 and len(data.x_test) == 10000
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    assert data.classes[-1] == "Ankle boot"


# ------------------------------------------------------------------ batched augmentation

def _images(n=64, c=3, h=32, w=32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _all_windows(padded_img, h, w):
    """Every h x w window of one padded image, as a tensor of windows."""
    return padded_img.unfold(1, h, 1).unfold(2, w, 1).permute(1, 2, 0, 3, 4).reshape(-1, padded_img.shape[0], h, w)


def test_crop_matches_torchvision_and_stays_inside_padded_image():
    x = _images(16)
    ours = random_crop(x, 4, torch.Generator().manual_seed(1))
    theirs = torch.stack([v2.RandomCrop(32, padding=4)(img) for img in x])
    assert ours.shape == theirs.shape == x.shape
    padded = torch.nn.functional.pad(x, (4,) * 4)
    for i in range(len(x)):
        windows = _all_windows(padded[i], 32, 32)
        assert (windows == ours[i]).flatten(1).all(1).any(), "crop is not a window of the padded image"
        assert (windows == theirs[i]).flatten(1).all(1).any()  # the same property holds for torchvision


def test_crop_offsets_cover_the_whole_range():
    x = torch.zeros(2000, 1, 8, 8)
    x[:, :, 0, 0] = 1  # marker: its position after the crop reveals the offset
    out = random_crop(x, 4, torch.Generator().manual_seed(0))
    positions = {tuple(p) for p in (out[:, 0] == 1).nonzero()[:, 1:].tolist()}
    assert positions == {(r, c) for r in range(5) for c in range(5)}  # marker visible for shifts 0..4


def test_flip_is_a_flip_with_probability_one_half():
    x = _images(400)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 0.4 < flipped.float().mean() < 0.6


def test_erasing_matches_torchvision_statistics():
    x = torch.ones(4000, 3, 32, 32)
    ours = random_erasing(x, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = torch.stack([v2.RandomErasing(p=0.5, value=0)(img) for img in x[:1000]])
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


def test_cpu_and_gpu_crop_paths_agree():
    from reproduce.data import _crop_by_gather, _crop_by_slices

    x = torch.nn.functional.pad(_images(50), (4,) * 4)
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (50,), generator=g), torch.randint(0, 9, (50,), generator=g)
    assert torch.equal(_crop_by_slices(x, dy, dx, 32, 32), _crop_by_gather(x, dy, dx, 32, 32))
