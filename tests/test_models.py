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
        sizes[pool] = net.layers(net.pool(net.stem(x))).shape[-1]
    assert sizes == {True: 2, False: 4}


def test_resnet_full_width_matches_torchvision_parameter_count():
    import torchvision

    ours = sum(p.numel() for p in ResNet18(3, 64, max_pool=True).parameters())
    tv = torchvision.models.resnet18(num_classes=10)
    # torchvision's stem is 7x7x3x64; ours is 3x3; its fc head (512*10+10) belongs to our loss.
    tv_count = sum(p.numel() for p in tv.parameters()) - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - (512 * 10 + 10)
    assert ours == tv_count


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
