"""Defences as one function: (model, images, labels) -> (training objective, logits).

UM trains on clean images. AT and ALP come in two readings (`objectives`):
- "paper", as the paper's text describes them: AT is the model's own objective on PGD-7 images only;
  ALP is L(x) + L(x_adv) + 0.5 * mean squared difference of the clean and adversarial logits.
- "authors", as the authors' code computed the published numbers, per loss (the loss object's
  `adversarial_objective`): SM trains on CE(x_adv) alone (ALP too: no clean CE); CenL and AAML on the
  clean plus the adversarial objective; ConL and TL pair adversarial anchors with clean partners.
  ALP adds 0.5 * the mean squared difference of the logits each loss pairs (AAML: margin logits).
  Their PGD starts from an unclipped random point and ascends the training logits (AAML: the margin
  logits), with batch-norm in train mode.
"""
from __future__ import annotations

import torch.nn.functional as F

from .attacks import AttackSpec, attack
from .config import CRAFT_LOGITS

ALP_WEIGHT = 0.5


def crafting_spec(experiment) -> AttackSpec:
    """PGD with random start that crafts the training examples (PGD-7, 8/255, 2/255 by default); under
    the authors' objectives its start is not clipped into [0, 1], as in their code."""
    return AttackSpec("pgd", eps=experiment.attack_eps, step=experiment.attack_step,
                      steps=experiment.attack_steps, random_start=True,
                      clip_start=experiment.objectives != "authors")


def logit_pairing(clean_logits, adv_logits):
    """Mean over the batch and classes of the squared difference of the two logit sets."""
    return F.mse_loss(clean_logits, adv_logits)


def defense_loss(model, x, y, defense: str, spec: AttackSpec | None = None, craft_bn_mode: str = "train",
                 objectives: str = "authors", craft_logits: str = "training"):
    """The training objective of one batch under a defence, and the logits that score it
    (adversarial prediction logits for AT and ALP). The examples are crafted on `craft_logits`:
    "training" (the logits of the training CE: AAML's margin logits, as the authors did) or
    "prediction" (s * cos(theta) for AAML; the same logits for the other paper losses)."""
    if defense == "UM":
        return model.loss(x, y)
    if defense not in ("AT", "ALP"):
        raise ValueError(f"unknown defense {defense!r}; choose UM, AT or ALP")
    if objectives not in ("authors", "paper"):
        raise ValueError(f"unknown objectives {objectives!r}; choose authors or paper")
    if craft_logits not in CRAFT_LOGITS:
        raise ValueError(f"unknown craft_logits {craft_logits!r}; choose one of {list(CRAFT_LOGITS)}")
    x_adv = attack(model, x, y, spec or AttackSpec("pgd", steps=7, random_start=True),
                   train_mode=craft_bn_mode == "train", check_range=False,  # loader batches: no sync per step
                   logits_of=model.training_logits if craft_logits == "training" else None)
    if objectives == "authors":
        loss, adv_pair, clean_pair, adv_logits = model.adversarial_objective(x, x_adv, y, pairing=defense == "ALP")
        if defense == "ALP":
            loss = loss + ALP_WEIGHT * logit_pairing(clean_pair, adv_pair)
        return loss, adv_logits
    adv_loss, adv_logits = model.loss(x_adv, y)
    if defense == "AT":
        return adv_loss, adv_logits
    clean_loss, clean_logits = model.loss(x, y)
    return clean_loss + adv_loss + ALP_WEIGHT * logit_pairing(clean_logits, adv_logits), adv_logits
