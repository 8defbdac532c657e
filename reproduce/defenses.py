"""Defences as one function: (model, images, labels) -> (training objective, logits).

UM trains on clean images, AT on PGD-7 images only, ALP on both plus a logit-pairing term.
They call the model's own loss, so they work with every loss in the registry.
"""
from __future__ import annotations

import torch.nn.functional as F

from .attacks import AttackSpec, attack

ALP_WEIGHT = 0.5


def crafting_spec(experiment) -> AttackSpec:
    """PGD with random start that crafts the training examples (PGD-7, 8/255, 2/255 by default)."""
    return AttackSpec("pgd", eps=experiment.attack_eps, step=experiment.attack_step,
                      steps=experiment.attack_steps, random_start=True)


def logit_pairing(clean_logits, adv_logits):
    """Mean over the batch and classes of the squared difference of the two logit sets."""
    return F.mse_loss(clean_logits, adv_logits)


def defense_loss(model, x, y, defense: str, spec: AttackSpec | None = None, craft_bn_mode: str = "train"):
    """The training objective of one batch under a defence, and the logits that score it
    (adversarial logits for AT and ALP)."""
    if defense == "UM":
        return model.loss(x, y)
    if defense not in ("AT", "ALP"):
        raise ValueError(f"unknown defense {defense!r}; choose UM, AT or ALP")
    x_adv = attack(model, x, y, spec or AttackSpec("pgd", steps=7, random_start=True),
                   train_mode=craft_bn_mode == "train")
    adv_loss, adv_logits = model.loss(x_adv, y)
    if defense == "AT":
        return adv_loss, adv_logits
    clean_loss, clean_logits = model.loss(x, y)
    return clean_loss + adv_loss + ALP_WEIGHT * logit_pairing(clean_logits, adv_logits), adv_logits
