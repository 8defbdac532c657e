import pytest
import torch

from reproduce.config import make_experiment
from reproduce.models import ResNet18, SmallCNN, build_model


@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_resnet_embedding_shape(channels, size):
    net = ResNet18(channels, width=8)
    assert net(torch.rand(2, channels, size, size)).shape == (2, 64)


def test_max_pool_option_halves_layer4():
    x = torch.rand(1, 3, 32, 32)
    sizes = {}
    for pool in (True, False):
        net = ResNet18(3, width=8, max_pool=pool)
        sizes[pool] = net.feature_map(x).shape[-1]
    assert sizes == {True: 2, False: 4}


def resnet18_parameter_count(c: int, w: int) -> int:
    """ResNet-18's parameters counted by hand: 3x3 convolutions, batch-norm pairs, 1x1 projections."""
    conv, bn = (lambda i, o, k=3: i * o * k * k), (lambda o: 2 * o)
    total = conv(c, w) + bn(w)  # the 3x3 stem
    cin = w
    for cout in (w, 2 * w, 4 * w, 8 * w):
        for _ in range(2):
            total += conv(cin, cout) + bn(cout) + conv(cout, cout) + bn(cout)
            if cin != cout:
                total += conv(cin, cout, 1) + bn(cout)
            cin = cout
    return total


@pytest.mark.parametrize("width", [4, 16, 64])
def test_resnet_parameter_count_matches_a_count_by_hand(width):
    assert sum(p.numel() for p in ResNet18(3, width).parameters()) == resnet18_parameter_count(3, width)


def test_resnet_full_width_is_torchvision_resnet18_with_a_3x3_stem():
    import torch.nn as nn
    import torchvision

    ours = ResNet18(3, 64).eval()
    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1, tv.fc = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    assert {k: v.shape for k, v in tv.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    tv.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(tv.eval()(x), ours(x), atol=1e-5)
    # the same initialisation: Kaiming-normal (fan out) convolutions, so equal spreads per layer
    tv_fresh = torchvision.models.resnet18()
    for name in ("layer1.0.conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.0.weight"):
        theirs, mine = tv_fresh.state_dict()[name].std(), ours.state_dict()[name].std()
        assert abs(mine / theirs - 1) < 0.05, name


def test_embedding_is_post_relu():
    net = ResNet18(3, width=8).eval()
    assert (net(torch.rand(4, 3, 32, 32)) >= 0).all()


def test_small_cnn_feature_size():
    assert SmallCNN(1, 2)(torch.rand(3, 1, 28, 28)).shape == (3, 2)


def test_build_model_is_seeded_and_heads_are_in_the_module():
    exp = make_experiment("CenL", "UM", "smoke", "cifar10", width=8)
    a, b = build_model(exp, 3, 10), build_model(exp, 3, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    names = dict(a.named_parameters())
    assert "criterion.centers" in names and "criterion.head.weight" in names
    assert a(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_thin_resnets_train_at_one_thread_without_corrupting_the_heap(width):
    """On an AVX2 CPU at one thread, torch 2.14's backward of a channels-last 1x1 stride-2 convolution with 2
    or 4 input channels corrupted the heap: the process died ("free(): invalid next size"), and a notebook
    kernel with it. Thin ResNets stay in the default layout; this runs their training steps in a child
    process, so a crash fails the test instead of the suite."""
    import subprocess
    import sys

    code = f"""
import torch
torch.set_num_threads(1)
from reproduce.config import make_experiment
from reproduce.models import build_model
model = build_model(make_experiment("SM", "UM", "smoke", "cifar10", width={width}), 3, 10)
x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
for _ in range(5):
    loss, _ = model.criterion(model.embedder(x), y)
    loss.backward()
print("trained")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-500:]
