"""MMC and PCL against their reference code on the same inputs. The reference lines are written out below:
P2333/Max-Mahalanobis-Training (kernel_paras/craft_MMcenters.m, the centres; train.py `MMLDA_layer` with
use_ball=True and `dot_loss`, Keras averaging the per-example loss over the batch; TensorFlow spelled in
torch) and aamir-mustafa/pcl-adversarial-defense (proximity.py `Proximity.forward`,
contrastive_proximity.py `Con_Proximity.forward`, whose uint8 index is a mask; pcl_training.py's total
loss and its four optimisers' step, on one feature layer; `.cuda()` dropped)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproduce.config import make_experiment
from reproduce.defenses import DEFENSES, crafting_spec, defense_loss
from reproduce.losses import make_loss
from reproduce.models import build_model
from reproduce.training import make_optimizer


def craft_mm_centres(L, D, mean_var):  # craft_MMcenters.m, its 1-based indices moved to 0-based
    mean_logits = np.zeros((L, D))
    mean_logits[0, 0] = 1
    for k in range(1, L):
        for j in range(k):
            mean_logits[k, j] = -(1 / (L - 1) + np.dot(mean_logits[k, :], mean_logits[j, :])) / mean_logits[j, j]
        mean_logits[k, k] = np.sqrt(np.abs(1 - np.linalg.norm(mean_logits[k, :]) ** 2))
    return mean_logits * mean_var


def mmlda_layer(x, means, num_class):  # train.py, use_ball=True
    x_expand = x.unsqueeze(1).repeat(1, num_class, 1)
    mean_expand = means.unsqueeze(0)
    logits = -torch.sum(torch.square(x_expand - mean_expand), dim=-1)
    return logits


def dot_loss(y_true, y_pred):  # train.py; Keras then averages over the batch
    return -torch.sum(y_pred * y_true, dim=-1)


def proximity(x, labels, centers, num_classes):  # proximity.py
    batch_size = x.size(0)
    distmat = torch.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, num_classes) + \
        torch.pow(centers, 2).sum(dim=1, keepdim=True).expand(num_classes, batch_size).t()
    distmat = torch.addmm(distmat, x, centers.t(), beta=1, alpha=-2)
    classes = torch.arange(num_classes).long()
    labels = labels.unsqueeze(1).expand(batch_size, num_classes)
    mask = labels.eq(classes.expand(batch_size, num_classes))
    dist = []
    for i in range(batch_size):
        value = distmat[i][mask[i]]
        value = value.clamp(min=1e-12, max=1e+12)
        dist.append(value)
    dist = torch.cat(dist)
    return dist.mean()


def con_proximity(x, labels, centers, num_classes):  # contrastive_proximity.py
    batch_size = x.size(0)
    distmat = torch.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, num_classes) + \
        torch.pow(centers, 2).sum(dim=1, keepdim=True).expand(num_classes, batch_size).t()
    distmat = torch.addmm(distmat, x, centers.t(), beta=1, alpha=-2)
    classes = torch.arange(num_classes).long()
    labels = labels.unsqueeze(1).expand(batch_size, num_classes)
    mask = labels.eq(classes.expand(batch_size, num_classes))
    dist = []
    for i in range(batch_size):
        k = mask[i].clone().to(dtype=torch.int8)
        k = -1 * k + 1
        kk = k.clone().to(dtype=torch.bool)  # the reference's uint8 index, which torch reads as this mask
        value = distmat[i][kk]
        value = value.clamp(min=1e-12, max=1e+12)
        dist.append(value)
    dist = torch.cat(dist)
    return dist.mean()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("classes,dim", [(10, 256), (10, 10), (4, 7)])
def test_mmc_centres_are_the_reference_script_s(classes, dim):
    from reproduce.losses import max_mahalanobis_centres

    ours = max_mahalanobis_centres(classes, dim, 10.0).double()
    assert torch.allclose(ours, torch.from_numpy(craft_mm_centres(classes, dim, 10.0)), atol=1e-5)
    # what the construction is for: equal norms, equal pairwise angles (cos = -1/(L-1))
    gram = ours @ ours.t()
    assert torch.allclose(gram.diagonal(), torch.full((classes,), 100.0), rtol=1e-5)
    off = gram[~torch.eye(classes, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -100.0 / (classes - 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("float64")
def test_mmc_logits_and_objective_are_the_reference_s():
    loss = make_loss("MMC", 12, 10, feature_dim=16, mean_var=10.0).double()
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(20, 12, generator=g, dtype=torch.float64), torch.arange(20) % 10
    objective, logits = loss(f, y)
    z = loss.head(f)
    means = torch.from_numpy(craft_mm_centres(10, 16, 10.0))
    ref_logits = mmlda_layer(z, means, 10)
    ref = dot_loss(F.one_hot(y, 10).double(), ref_logits).mean()
    assert torch.allclose(logits, ref_logits, rtol=1e-6) and torch.allclose(objective, ref, rtol=1e-6)
    assert torch.equal(logits.argmax(1), (z[:, None] - means[None]).norm(dim=-1).argmin(1))  # nearest centre
    # the centres are fixed: a buffer that moves with the weights, not a parameter
    assert "centres" in dict(loss.named_buffers()) and all("centre" not in n for n, _ in loss.named_parameters())


def test_mmc_refuses_fewer_features_than_classes():
    with pytest.raises(ValueError, match="MMC needs feature_dim >= the number of classes"):
        make_loss("MMC", 12, 10, feature_dim=8)
    with pytest.raises(ValueError, match="mean_var=0.0: must be above 0"):
        make_loss("MMC", 12, 10, mean_var=0)


@pytest.mark.usefixtures("float64")
def test_pcl_objective_is_the_reference_s():
    loss = make_loss("PCL", 12, 5, softmax_share=0.0).double().eval()  # the PCL stage; eval: no centre placing
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(20, 12, generator=g, dtype=torch.float64), torch.arange(20) % 5
    objective, logits = loss(f, y)
    ref = (F.cross_entropy(loss.head(f), y) + 1.0 * proximity(f, y, loss.prox_centres, 5)
           - 1e-4 * con_proximity(f, y, loss.conprox_centres, 5))
    assert torch.allclose(objective, ref, rtol=1e-9) and torch.equal(logits, loss.head(f))
    # two sets of centres, each learned: the proximity pulls f towards one, the contrast pushes it from the other
    assert not torch.equal(loss.prox_centres, loss.conprox_centres)


def test_one_pcl_training_step_is_the_reference_s():
    """The reference steps the network with SGD (momentum 0.9, weight decay), and each centre set with its
    own plain SGD on its gradient divided by the term's weight; ours is one optimiser with parameter
    groups. After one step every parameter is the same."""
    exp = make_experiment("PCL", "UM", "smoke", "cifar10", width=4, lr=0.01, weight_decay=1e-4,
                          loss_params={"softmax_share": 0.0})
    model = build_model(exp, 3, 10)
    model.criterion.placed.fill_(True)  # the centres' starting point is the next test's
    theirs = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.arange(8) % 10

    optimizer = make_optimizer(model, exp)
    optimizer.zero_grad()
    model.loss(x, y)[0].backward()
    optimizer.step()

    crit = theirs.criterion
    network = [p for n, p in theirs.named_parameters() if "centres" not in n]
    optimizer_model = torch.optim.SGD(network, lr=0.01, weight_decay=1e-04, momentum=0.9)
    optimizer_prox = torch.optim.SGD([crit.prox_centres], lr=0.5)
    optimizer_conprox = torch.optim.SGD([crit.conprox_centres], lr=0.0001)
    feats = theirs.embed(x)
    outputs = crit.head(feats)
    loss_xent = nn.CrossEntropyLoss()(outputs, y)
    loss_prox = proximity(feats, y, crit.prox_centres, 10) * 1.0
    loss_conprox = con_proximity(feats, y, crit.conprox_centres, 10) * 0.0001
    loss = loss_xent + loss_prox - loss_conprox
    optimizer_model.zero_grad()
    optimizer_prox.zero_grad()
    optimizer_conprox.zero_grad()
    loss.backward()
    optimizer_model.step()
    for param in [crit.prox_centres]:
        param.grad.data *= (1. / 1.0)
    optimizer_prox.step()
    for param in [crit.conprox_centres]:
        param.grad.data *= (1. / 0.0001)
    optimizer_conprox.step()

    for (name, ours), ref in zip(model.named_parameters(), theirs.parameters()):
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-7), name
    moved = (model.criterion.conprox_centres - build_model(exp, 3, 10).criterion.conprox_centres).abs()
    assert moved.max() > 0  # the contrast's centres moved, at the reference's rate


def test_pcl_starts_with_softmax_and_places_each_centre_at_its_class_mean():
    """The reference fine-tunes a softmax network: the first softmax_share of the epochs train CE alone;
    then each class's two centres start at its mean feature in the first batch that holds it, once."""
    loss = make_loss("PCL", 6, 4)
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(10, 6, generator=g), torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    before = loss.prox_centres.detach().clone()
    loss.set_epoch(1, 4)  # epoch 2 of 4: the softmax stage
    objective, logits = loss(f, y)
    assert torch.allclose(objective, F.cross_entropy(loss.head(f), y)) and torch.equal(loss.prox_centres, before)
    loss.set_epoch(2, 4)  # epoch 3 of 4: the whole objective
    loss(f, y)
    for k in range(3):
        assert torch.allclose(loss.prox_centres[k], f[y == k].mean(0), atol=1e-6)
        assert torch.allclose(loss.conprox_centres[k], f[y == k].mean(0), atol=1e-6)
    assert torch.equal(loss.prox_centres[3], before[3])  # class 3 not seen yet: not placed
    assert loss.placed.tolist() == [True, True, True, False]
    objective, _ = loss(f + 1, y)  # placed once: a later batch does not move them
    assert torch.allclose(loss.prox_centres[0], f[y == 0].mean(0), atol=1e-6)
    ref = (F.cross_entropy(loss.head(f + 1), y) + proximity(f + 1, y, loss.prox_centres, 4)
           - 1e-4 * con_proximity(f + 1, y, loss.conprox_centres, 4))
    assert torch.allclose(objective, ref, rtol=1e-5)
    state = loss.state_dict()
    assert state["placed"].tolist() == [True, True, True, False]  # saved with the weights: a resumed run knows


@pytest.mark.parametrize("loss", ["MMC", "PCL"])
@pytest.mark.parametrize("defense", sorted(DEFENSES))
def test_trains_under_every_defence(loss, defense):
    exp = make_experiment(loss, defense, "smoke", "cifar10", width=4, attack_steps=2, objectives="paper")
    model = build_model(exp, 3, 10).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16, generator=g), torch.arange(8) % 10
    spec = crafting_spec(exp) if DEFENSES[exp.defense].crafts else None
    objective, logits = defense_loss(model, x, y, exp.defense, spec, exp.craft_bn_mode, exp.objectives,
                                     exp.craft_logits, exp.defense_params)
    objective.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(objective) and logits.shape == (8, 10)
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
