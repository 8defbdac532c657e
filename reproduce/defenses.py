"""Defences as objects in one registry, as losses are: each says how a batch's training objective is
computed, how its PGD crafts (the loss it ascends, its start, batch-norm's mode), what it costs per image
(`plan`), which epoch a run keeps, its parameters with their defaults, and the names it answers to. A new
defence is one `register(Defense(...))` (tests/test_defenses_registry.py trains, prices and names one);
the paper's tables keep their own tuple (`protocol.PAPER_DEFENSES`), so they do not grow.

Every defence crafts with the experiment's budget (the paper's PGD-7 at 8/255, step 2/255), so that
defences differ in their objective; TRADES and MART keep their reference code's start (0.001 * N(0, 1),
unclipped) and eval-mode batch-norm while crafting. Their references' own budgets (10 steps of 0.007 at
0.031) are `attack_steps=10, attack_step=0.007, attack_eps=0.031`.

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

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .attacks import AttackSpec, attack

ALP_WEIGHT = 0.5
OBJECTIVES = ("authors", "paper")
# Which logits the PGD that crafts AT / ALP examples ascends: the training logits (with an angular
# loss's margin, as the authors' PGD did, the model being in train mode) or the prediction logits.
CRAFT_LOGITS = ("training", "prediction")


@dataclass(frozen=True)
class Defense:
    """A training defence.

    objective(model, x, x_adv, y, objectives, **params) -> (training objective, logits that score the
    batch); x_adv is None when the defence crafts nothing; `params` are the experiment's defence
    parameters, `params` here giving their defaults. `crafting_loss`: the loss its PGD ascends (an
    attacks.ATTACK_LOSSES name); `start`: its random start (attacks.STARTS; "gaussian" is taken unclipped);
    `craft_bn_mode`: batch-norm's mode while crafting. `passes_per_image`: forward-backward passes per
    training image (a clean step is 1; PGD-7 crafting adds 7), what `plan` prices. `readings`: the
    `objectives` it has ("authors" only for the paper's AT and ALP, which the authors' code defines per
    loss). `keep`: the epoch a run keeps ("" for the paper's rules: `softmax_keep` for SM under the authors'
    reading, the last epoch for their other losses, else the best clean validation epoch)."""

    name: str
    objective: Callable
    crafts: bool = True
    crafting_loss: str = "ce"
    start: str = "uniform"
    craft_bn_mode: str = "train"
    passes_per_image: int = 8
    readings: tuple = ("authors", "paper")
    keep: str = ""
    softmax_keep: str = "best_pgd7_val"
    params: dict = field(default_factory=dict)
    aliases: tuple = ()
    summary: str = ""

    def resolve_params(self, given: dict) -> tuple:
        """Every parameter written out, defaults included, as sorted (name, value) pairs in the default's
        type; an unknown name is an error that lists the known ones."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ValueError(f"defence {self.name} has no parameter {unknown}; its parameters: "
                             f"{dict(self.params) or 'none'}")
        resolved = []
        for name, default in sorted(self.params.items()):
            value = given.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"defence {self.name} parameter {name}={value!r}: expected a finite number >= 0")
            resolved.append((name, type(default)(value)))
        return tuple(resolved)


DEFENSES: dict[str, Defense] = {}


def register(defense: Defense) -> Defense:
    """Add a defence to the registry (its name and aliases must be new); returns it."""
    taken = {d.lower() for d in DEFENSES} | {a for d in DEFENSES.values() for a in d.aliases}
    clash = [n for n in (defense.name.lower(), *defense.aliases) if n in taken]
    if clash:
        raise ValueError(f"defence names already taken: {clash}")
    if "-" in defense.name:
        raise ValueError(f"a defence's name has no hyphen (a table label is LOSS-DEFENSE); got {defense.name!r}")
    DEFENSES[defense.name] = defense
    return defense


def defense_name(name: str) -> str:
    """A registered defence's name, given as such (any case) or by an alias ("plain", "PGD-AT",
    "logit-pairing")."""
    if name in DEFENSES:
        return name
    folded = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    found = {d.lower(): d for d in DEFENSES}.get(folded) or \
        next((d.name for d in DEFENSES.values() if folded in d.aliases), None)
    if found is None:
        aliases = ", ".join(f"{a}={d.name}" for d in DEFENSES.values() for a in d.aliases)
        raise ValueError(f"unknown defense {name!r}; choose one of {list(DEFENSES)} (also accepted: {aliases})")
    return found


def crafting_spec(experiment) -> AttackSpec:
    """PGD with random start that crafts the training examples (PGD-7, 8/255, 2/255 by default) on the
    defence's crafting loss; under the authors' objectives its start is not clipped into [0, 1], as in
    their code."""
    defense = DEFENSES[defense_name(experiment.defense)]
    return AttackSpec("pgd", eps=experiment.attack_eps, step=experiment.attack_step,
                      steps=experiment.attack_steps, random_start=True,
                      clip_start=experiment.objectives != "authors" and defense.start == "uniform",
                      loss=defense.crafting_loss, start=defense.start)


def logit_pairing(clean_logits, adv_logits):
    """Mean over the batch and classes of the squared difference of the two logit sets."""
    return F.mse_loss(clean_logits, adv_logits)


def defense_loss(model, x, y, defense: str, spec: AttackSpec | None = None, craft_bn_mode: str = "train",
                 objectives: str = "authors", craft_logits: str = "training", params=()):
    """The training objective of one batch under a defence, and the logits that score it
    (adversarial prediction logits for AT and ALP). The examples are crafted on `craft_logits`:
    "training" (the logits of the training CE: AAML's margin logits, as the authors did) or
    "prediction" (s * cos(theta) for AAML; the same logits for the other paper losses). `params`: the
    defence's parameters ((name, value) pairs; its defaults where absent)."""
    chosen = DEFENSES[defense_name(defense)]
    params = dict(chosen.resolve_params(dict(params)))
    if not chosen.crafts:
        return chosen.objective(model, x, None, y, objectives, **params)
    if objectives not in OBJECTIVES:
        raise ValueError(f"unknown objectives {objectives!r}; choose one of {list(OBJECTIVES)}")
    if craft_logits not in CRAFT_LOGITS:
        raise ValueError(f"unknown craft_logits {craft_logits!r}; choose one of {list(CRAFT_LOGITS)}")
    spec = spec or AttackSpec("pgd", steps=7, loss=chosen.crafting_loss, start=chosen.start,
                              clip_start=chosen.start == "uniform")
    x_adv = attack(model, x, y, spec, train_mode=craft_bn_mode == "train",
                   check_range=False,  # loader batches: no sync per step
                   logits_of=model.training_logits if craft_logits == "training" else None)
    return chosen.objective(model, x, x_adv, y, objectives, **params)


def _clean(model, x, x_adv, y, objectives):
    return model.loss(x, y)


def _adversarial_training(model, x, x_adv, y, objectives):
    if objectives == "authors":
        loss, _, _, adv_logits = model.adversarial_objective(x, x_adv, y, pairing=False)
        return loss, adv_logits
    return model.loss(x_adv, y)


def _logit_pairing(model, x, x_adv, y, objectives):
    if objectives == "authors":
        loss, adv_pair, clean_pair, adv_logits = model.adversarial_objective(x, x_adv, y, pairing=True)
        return loss + ALP_WEIGHT * logit_pairing(clean_pair, adv_pair), adv_logits
    adv_loss, adv_logits = model.loss(x_adv, y)
    clean_loss, clean_logits = model.loss(x, y)
    return clean_loss + adv_loss + ALP_WEIGHT * logit_pairing(clean_logits, adv_logits), adv_logits


UM = register(Defense("UM", _clean, crafts=False, passes_per_image=1, softmax_keep="best_clean_val",
                      aliases=("plain", "none", "undefended", "standard"), summary="clean images only"))
AT = register(Defense("AT", _adversarial_training, passes_per_image=8,  # PGD-7 crafting + the step
                      aliases=("pgd-at", "adversarial-training", "madry"),
                      summary="PGD-7 adversarial training (Madry et al.)"))
ALP = register(Defense("ALP", _logit_pairing, passes_per_image=9,  # + the clean pass
                       aliases=("logit-pairing", "adversarial-logit-pairing"),
                       summary="adversarial logit pairing (Kannan et al.)"))


def _trades(model, x, x_adv, y, objectives, beta):
    """TRADES (Zhang et al. 2019; yaodongyu/TRADES trades.py): the loss's own objective on the clean batch
    (CE for SM) + beta * KL(clean prediction || adversarial prediction), summed and divided by the batch,
    on the prediction logits; the KL's target keeps its gradient, as in the reference."""
    clean_objective, clean_logits = model.loss(x, y)
    adv_logits = model(x_adv)
    robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="sum") / len(x)
    return clean_objective + beta * robust, adv_logits


def _mart(model, x, x_adv, y, objectives, beta):
    """MART (Wang et al. 2020; YisenWang/MART mart.py): the loss's own objective on the adversarial batch
    (CE for SM) + the boosting term -log(1.0001 - p_adv(most likely other class)), + beta * the KL of the
    adversarial from the clean prediction weighted by 1 - p_clean(true class), summed and divided by the
    batch; probabilities from the prediction logits, the constants the reference's."""
    clean_logits = model(x)
    adv_objective, adv_logits = model.loss(x_adv, y)
    adv_probs = F.softmax(adv_logits, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    boost = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), other)
    clean_probs = F.softmax(clean_logits, dim=1)
    true_probs = clean_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), clean_probs, reduction="none").sum(1)
    return adv_objective + boost + beta * (kl * (1.0000001 - true_probs)).sum() / len(x), adv_logits


# Crafting: PGD-7 on the KL (TRADES) or CE (MART) + the step on the clean and adversarial batches.
TRADES = register(Defense("TRADES", _trades, crafting_loss="kl", start="gaussian", craft_bn_mode="eval",
                          passes_per_image=10, readings=("paper",), keep="last", params={"beta": 6.0},
                          summary="TRADES (Zhang et al. 2019), beta 6 as in its CIFAR-10 script"))
MART = register(Defense("MART", _mart, start="gaussian", craft_bn_mode="eval", passes_per_image=9,
                        readings=("paper",), keep="last", params={"beta": 5.0},
                        summary="MART (Wang et al. 2020), beta 5 as in its ResNet-18 script"))
