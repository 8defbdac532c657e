"""Networks map images to an embedding f(x); the loss object owns the head that maps f(x) to logits.

`Classifier` joins the two so attacks and evaluation see one module: images in [0, 1] -> logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, conv1x1


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (its BasicBlock, layer names and initialisation) with a 3x3 stride-1 stem,
    for 32x32 (or 28x28) images, as the authors built it.

    `width` is the base channel count (64 in the paper; the embedding has 8 * width dimensions).
    torchvision's own ResNet class fixes the width at 64, and the thin smoke profile needs 16, so the
    four layers are assembled here from torchvision's blocks; at width 64 the state dict is torchvision's
    and loads into `torchvision.models.resnet18` with the same stem (tested).
    `max_pool` keeps the 3x3/2 max-pool after the stem, as the authors' code does.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, max_pool: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if max_pool else nn.Identity()
        cin = width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width], 1):
            stride = 1 if i == 1 else 2
            downsample = None
            if stride != 1 or cin != cout:
                downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride, downsample), BasicBlock(cout, cout)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = 8 * width
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, x):
        """The output of layer4 (before pooling)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.avgpool(self.feature_map(x)).flatten(1)  # post-ReLU average-pooled features


class SmallCNN(nn.Module):
    """AlexNet-style network for MNIST with a low-dimensional feature layer (10-d, or 2-d for plots)."""

    def __init__(self, in_channels: int = 1, embedding_dim: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, 256), nn.ReLU(inplace=True),
            nn.Linear(256, embedding_dim),  # no activation: the features may point anywhere
        )
        self.embedding_dim = embedding_dim

    def forward(self, x):
        return self.features(x)


class Classifier(nn.Module):
    """An embedding network plus a loss object that holds the head.

    forward(x) gives the prediction logits (what accuracy and every attack use);
    loss(x, y) gives (training objective, logits).
    """

    def __init__(self, embedder: nn.Module, criterion: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.criterion = criterion

    def embed(self, x):
        return self.embedder(x)

    def _in_float32(self, fn, f, *args):
        # Heads and losses run in float32 even under bf16 autocast: acos and normalisation need it.
        with torch.autocast(f.device.type, enabled=False):
            return fn(f.float(), *args)

    def forward(self, x):
        return self._in_float32(self.criterion.logits, self.embedder(x))

    def loss(self, x, y):
        return self._in_float32(self.criterion, self.embedder(x), y)

    def training_logits(self, x, y):
        """The logits the training cross-entropy sees (with an angular loss's margin in training mode):
        what the authors' PGD maximised when it crafted AT / ALP examples."""
        return self._in_float32(self.criterion.training_logits, self.embedder(x), y)

    def adversarial_objective(self, x, x_adv, y, pairing: bool = False):
        """The authors' AT objective of the loss (losses.Loss.adversarial_objective), with the clean and
        adversarial batches passed through the network separately (as in their code, each with its own
        batch statistics; the clean batch only where the loss's AT uses it or ALP pairs its logits).
        Returns (objective, adversarial pair logits, clean pair logits, adversarial prediction logits)."""
        from .losses import check_labels

        check_labels(y)
        f_clean = self.embedder(x) if pairing or self.criterion.AT_USES_CLEAN else None
        f_adv = self.embedder(x_adv)

        def terms(f_adv, f_clean, y):
            return (*self.criterion.adversarial_objective(f_clean, f_adv, y), self.criterion.logits(f_adv))

        return self._in_float32(terms, f_adv, None if f_clean is None else f_clean.float(), y)


def build_model(experiment, in_channels: int, num_classes: int) -> Classifier:
    """The network and loss an experiment names, freshly initialised from its seed."""
    from .losses import make_loss

    torch.manual_seed(experiment.seed)
    if experiment.model == "resnet18":
        embedder = ResNet18(in_channels, experiment.width, experiment.max_pool)
    elif experiment.model == "smallcnn":
        embedder = SmallCNN(in_channels, experiment.embedding_dim)
    else:
        raise ValueError(f"unknown model {experiment.model!r}; choose resnet18 or smallcnn")
    criterion = make_loss(experiment.loss, embedder.embedding_dim, num_classes, **experiment.params)
    model = Classifier(embedder, criterion)
    if experiment.model == "resnet18" and experiment.width < CHANNELS_LAST_MIN_WIDTH:
        return model
    # channels-last: faster convolutions on CUDA (with bf16) and on the CPU through oneDNN
    # (1.15-1.5x for training and attack steps on 2 cores)
    return model.to(memory_format=torch.channels_last)


# Below this width the ResNet stays in the default layout: on an AVX2 CPU at one thread, torch 2.14's backward
# of a channels-last 1x1 stride-2 convolution with 2 or 4 input channels (layer2's shortcut at width 2 or 4)
# corrupts the heap and kills the process ("free(): invalid next size"); 8 and more channels run
# (tests/test_models.py runs it in a child process).
CHANNELS_LAST_MIN_WIDTH = 8
