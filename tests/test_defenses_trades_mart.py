"""TRADES and MART against their reference code on the same inputs: the reference functions' lines are
written out below (yaodongyu/TRADES trades.py `trades_loss`, YisenWang/MART mart.py `mart_loss`, the
L-inf branch; on the CPU, `.cuda()` dropped; TRADES's `nn.KLDivLoss(size_average=False)` spelled as its
equal `reduction="sum"`), and the registered defences give the same adversarial images, objective and
parameter gradients for SM, the crafting budget passed to both."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproduce.attacks import attack
from reproduce.config import make_experiment
from reproduce.defenses import crafting_spec, defense_loss
from reproduce.models import build_model
from reproduce.protocol import PAPER_LOSSES


def trades_reference(model, x_natural, y, step_size, epsilon, perturb_steps, beta):
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x_natural)
    # generate adversarial example
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                   F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                    F.softmax(model(x_natural), dim=1))
    loss = loss_natural + beta * loss_robust
    return loss, x_adv


def mart_reference(model, x_natural, y, step_size, epsilon, perturb_steps, beta):
    kl = nn.KLDivLoss(reduction='none')
    model.eval()
    batch_size = len(x_natural)
    # generate adversarial example
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    loss = loss_adv + float(beta) * loss_robust
    return loss, x_adv


REFERENCES = {"TRADES": (trades_reference, 6.0), "MART": (mart_reference, 5.0)}


def _gradients(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("defense", sorted(REFERENCES))
@pytest.mark.parametrize("budget", ["grid", "reference"])
def test_the_defence_is_its_reference_code(defense, budget):
    reference, beta = REFERENCES[defense]
    own = {"attack_eps": 0.031, "attack_step": 0.007, "attack_steps": 10} if budget == "reference" else {}
    exp = make_experiment("SM", defense, "smoke", "cifar10", width=4, **own)
    assert dict(exp.defense_params) == {"beta": beta}  # the reference training script's default
    assert exp.craft_bn_mode == "eval" and exp.keep == "last" and exp.objectives == "paper"
    torch.manual_seed(0)
    model = build_model(exp, 3, 10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    spec = crafting_spec(exp)

    # three copies: each training-mode forward moves batch-norm's running statistics, which crafting reads
    theirs, mine, crafter = (copy.deepcopy(model).train() for _ in range(3))
    torch.manual_seed(2)
    ref_loss, ref_adv = reference(theirs, x, y, exp.attack_step, exp.attack_eps, exp.attack_steps, beta)
    ref_grads = _gradients(theirs, ref_loss)
    torch.manual_seed(2)
    ours_adv = attack(crafter, x, y, spec, train_mode=False, check_range=False)
    torch.manual_seed(2)
    ours_loss, _ = defense_loss(mine, x, y, defense, spec, exp.craft_bn_mode, exp.objectives, exp.craft_logits,
                                exp.defense_params)
    assert torch.equal(ours_adv, ref_adv)
    assert (ours_adv - x).abs().max() <= exp.attack_eps + 1e-6 and 0 <= ours_adv.min() and ours_adv.max() <= 1
    assert torch.allclose(ours_loss, ref_loss, rtol=1e-5, atol=1e-6), (ours_loss.item(), ref_loss.item())
    ours_grads = _gradients(mine, ours_loss)
    assert len(ours_grads) == len(ref_grads)
    worst = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours_grads, ref_grads))
    assert worst < 1e-4, worst
    assert mine.training and crafter.training  # crafting in eval mode hands the model back in train mode


@pytest.mark.parametrize("defense", sorted(REFERENCES))
def test_every_paper_loss_trains_under_the_defence(defense):
    """For a loss that is not softmax the clean (TRADES) or adversarial (MART) objective is the loss's own,
    and the KL compares the prediction logits: a finite objective and gradient for each of the five."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.arange(16) % 4  # pairs and triplets in the batch
    for loss in PAPER_LOSSES:
        exp = make_experiment(loss, defense, "smoke", "cifar10", width=4, attack_steps=2)
        model = build_model(exp, 3, 10).train()
        objective, logits = defense_loss(model, x, y, defense, crafting_spec(exp), exp.craft_bn_mode,
                                         exp.objectives, exp.craft_logits, exp.defense_params)
        grads = _gradients(model, objective)
        assert torch.isfinite(objective) and logits.shape == (16, 10), loss
        assert all(torch.isfinite(gr).all() for gr in grads) and any(gr.abs().sum() > 0 for gr in grads), loss


def test_a_defence_parameter_is_checked_and_keyed(tmp_path, cifar_root, capsys):
    from reproduce.cli import main

    base = make_experiment("AAML", "TRADES", "smoke", "cifar10")
    assert make_experiment("AAML", "TRADES", "smoke", "cifar10", defense_params={"beta": 6}).key == base.key
    assert make_experiment("AAML", "TRADES", "smoke", "cifar10", defense_params={"beta": 1.0}).key != base.key
    known = r"its parameters: \{'beta': 6.0\}"
    with pytest.raises(ValueError, match=rf"defence TRADES has no parameter \['gamma'\]; {known}"):
        make_experiment("SM", "TRADES", "smoke", "cifar10", defense_params={"gamma": 1.0})
    with pytest.raises(ValueError, match="has no parameter"):
        make_experiment("SM", "AT", "smoke", "cifar10", defense_params={"beta": 1.0})
    for bad in ("six", float("nan"), -1.0, True):
        with pytest.raises(ValueError, match=r"TRADES parameter beta=.*: expected a finite number >= 0"):
            make_experiment("SM", "TRADES", "smoke", "cifar10", defense_params={"beta": bad})
    rc = main(["train", "--defense", "TRADES", "--defense-param", "gamma=1", "--profile", "smoke", "--dataset",
               "cifar10", "--runs", str(tmp_path / "runs"), "--data", str(cifar_root)])
    printed = capsys.readouterr()
    assert rc == 2 and "no parameter ['gamma']" in printed.out + printed.err
    assert len((printed.out + printed.err).strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
