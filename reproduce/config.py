"""Profiles and experiments as data.

A profile scales budgets (width, epochs, images, restarts), never the protocol (eps, steps, losses).
An experiment is a frozen dataclass; the hash of its fields names its run directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass

from .defenses import CRAFT_LOGITS, DEFENSES, OBJECTIVES, defense_name


@dataclass(frozen=True)
class Profile:
    name: str
    width: int  # base channels of the ResNet (64 in the paper)
    epochs: int
    batch_size: int
    lr: float
    schedule: str  # "onecycle" for short runs, "plateau" for the paper's schedule
    train_limit: int | None  # images used for training (None: the whole 45k split)
    adv_train_limit: int | None  # images for AT / ALP training, each ~8x the cost of a clean step
    adv_batch_size: int | None  # AT / ALP batch (None: batch_size); small batches give more steps per image
    val_limit: int | None
    test_limit: int | None  # test images every evaluation uses
    restarts: int  # restarts of the 20PGD column
    mim_steps: int = 40
    tsne_points: int = 1000
    sweep_epochs: int | None = None  # epochs of Table IV's 20 AAML-AT models (None: `epochs`, as Table I's)
    grid_epochs: int | None = None  # epochs of the appendix's B and C grids, 27 UM models (None: `epochs`)
    seeds: int = 1  # each table model is trained this many times (seeds 0, 1, ...); tables show mean and spread
    autoattack: str = "standard"  # Table I's AA column: "standard" AutoAttack, or "apgd" (APGD-CE + APGD-DLR)
    autoattack_steps: int = 100  # APGD steps of the "apgd" version
    apgd_steps: int = 100  # the masking report's APGD-DLR and APGD-T (AutoAttack's budget)
    apgd_targets: int = 9  # APGD-T's target classes
    square_queries: int = 5000  # the masking report's Square attack ...
    square_images: int = 1000  # ... on this many test images (it needs a forward pass per query)
    # torch.compile of the network for training and attacks: a speed lever, not a budget. It enters no
    # hash (compiled and eager runs give the same numbers up to float rounding) and falls back to eager
    # when compilation fails.
    compile: bool = False


PROFILES = {
    # Every notebook on 2 CPU cores in minutes. Thin network, a slice of the data, few restarts; the
    # sweeps (Table IV, appendix B and C: 47 models) at half of Table I's epochs.
    "smoke": Profile("smoke", width=16, epochs=4, batch_size=128, lr=0.2, schedule="onecycle",
                     train_limit=10000, adv_train_limit=1500, adv_batch_size=32, val_limit=500, test_limit=300,
                     restarts=3, sweep_epochs=2, grid_epochs=2,
                     mim_steps=40, tsne_points=300, autoattack="apgd", autoattack_steps=20,
                     apgd_steps=20, apgd_targets=3, square_queries=300, square_images=100),
    # Full ResNet-18 and full data, short one-cycle schedules: every table on one H200 in about two hours.
    # Its speed levers (README, "The quick profile's two hours"): torch.compile; Table IV's sweep at a third
    # of Table I's epochs; the masking report's APGD-T on 3 target classes and Square at 1000 queries.
    # Table I's attacks (standard AutoAttack, 20 restarts, all 10,000 test images) are the paper's.
    "quick": Profile("quick", width=64, epochs=30, batch_size=512, lr=0.2, schedule="onecycle",
                     train_limit=None, adv_train_limit=None, adv_batch_size=None, val_limit=None, test_limit=None,
                     restarts=20, sweep_epochs=10, apgd_targets=3, square_queries=1000, compile=True),
    # The paper's network on a free Colab GPU (a T4): notebooks 01-03 in about an hour. Short schedules,
    # a third of the data for AT / ALP, 1000 test images, 5 restarts, the reduced AutoAttack.
    "colab": Profile("colab", width=64, epochs=8, batch_size=256, lr=0.2, schedule="onecycle",
                     train_limit=None, adv_train_limit=15000, adv_batch_size=128, val_limit=2000, test_limit=1000,
                     restarts=5, tsne_points=1000, autoattack="apgd", autoattack_steps=50,
                     apgd_steps=50, apgd_targets=3, square_queries=1000, square_images=200),
    # The paper's schedule: plateau scheduler on the training loss, up to 1000 epochs.
    "paper": Profile("paper", width=64, epochs=1000, batch_size=256, lr=0.1, schedule="plateau",
                     train_limit=None, adv_train_limit=None, adv_batch_size=None, val_limit=None, test_limit=None,
                     restarts=20),
}


def default_profile() -> tuple[str, str]:
    """The profile to use when none is named, and why: PROFILE from the environment, else colab in
    Colab with a GPU, quick with CUDA and smoke without. The one place this rule lives."""
    name = os.environ.get("PROFILE")
    if name:
        return name, "PROFILE is set"
    import torch

    if not torch.cuda.is_available():
        return "smoke", "no CUDA device was found; set PROFILE=smoke|colab|quick|paper to choose"
    if "google.colab" in sys.modules:
        return "colab", "a Colab GPU"
    return "quick", "CUDA is available"


def default_dataset() -> str:
    """The dataset to use when none is named: DATASET from the environment (as `make` reads it), else
    cifar10. Every command, notebook and `start` follows this rule."""
    return os.environ.get("DATASET") or "cifar10"


# The budgets that are words, and the words they take (checked with the others, before any work).
PROFILE_CHOICES = {"schedule": ("onecycle", "plateau", "constant"), "autoattack": ("standard", "apgd")}


def get_profile(name: str | Profile | None = None, /, **overrides) -> Profile:
    """A profile by name (or as given), with some budgets overridden, e.g. get_profile("smoke", epochs=1)."""
    if isinstance(name, Profile):
        return dataclasses.replace(name, **overrides) if overrides else name
    name = name or default_profile()[0]
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    profile = PROFILES[name]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
    if unknown:
        raise ValueError(f"unknown profile fields {sorted(unknown)}; the budgets (type: each profile's value):\n"
                         + profile_help())
    for k, v in overrides.items():
        if k == "name":
            raise ValueError(f"profile field name={v!r}: choose the profile itself ({' | '.join(PROFILES)}), "
                             "then change its budgets")
        if v is None:
            continue
        current = getattr(profile, k)
        expected = (int, float) if isinstance(current, float) else int if current is None else type(current)
        if isinstance(current, bool):
            if not isinstance(v, bool):
                raise ValueError(f"profile field {k}={v!r}: expected true or false")
            continue
        if isinstance(v, bool) or not isinstance(v, expected):
            kind = "int" if current is None else type(current).__name__
            raise ValueError(f"profile field {k}={v!r}: expected {kind} like {current!r}")
        if isinstance(v, (int, float)) and not (math.isfinite(v) and v > 0):
            raise ValueError(f"profile field {k}={v!r}: must be above 0")
        if k in PROFILE_CHOICES and v not in PROFILE_CHOICES[k]:
            raise ValueError(f"profile field {k}={v!r}: choose one of {list(PROFILE_CHOICES[k])}")
    return dataclasses.replace(profile, **{k: v for k, v in overrides.items() if v is not None})


# Profile fields that are not budgets: a speed lever that changes no number.
NOT_BUDGETS = ("name", "compile")


def changed_budgets(profile: Profile) -> dict:
    """{field: value} of the budgets where `profile` differs from the named profile it started from."""
    base = PROFILES.get(profile.name)
    if base is None:
        return {}
    return {f.name: getattr(profile, f.name) for f in dataclasses.fields(Profile)
            if f.name not in NOT_BUDGETS and getattr(profile, f.name) != getattr(base, f.name)}


def budget_text(profile: Profile) -> str:
    """The changed budgets in words, e.g. "epochs=1, train_limit=512" ("" when none changed)."""
    return ", ".join(f"{k}={v}" for k, v in changed_budgets(profile).items())


def budget_digest(profile: Profile) -> str:
    """Eight hex digits naming a set of changed budgets (the output folder of such a run)."""
    text = json.dumps(changed_budgets(profile), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def profile_help() -> str:
    """Every budget of a profile with its type and each named profile's value (the --budget help)."""
    lines = []
    for f in dataclasses.fields(Profile):
        if f.name == "name":
            continue
        values = ", ".join(f"{n} {getattr(p, f.name)}" for n, p in PROFILES.items())
        kind = {"int | None": "int or none", "str": "word", "bool": "true/false"}.get(str(f.type), str(f.type))
        choices = f" ({' | '.join(PROFILE_CHOICES[f.name])})" if f.name in PROFILE_CHOICES else ""
        lines.append(f"  {f.name} ({kind}{choices}): {values}")
    return "\n".join(lines)


def parse_label(label: str) -> tuple[str, str]:
    """(loss, defense) of a table label such as "AAML-AT" or "ArcFace-AT" (the defence follows the last
    hyphen, so "HT-SCE-UM" works)."""
    from .losses import loss_name

    loss, sep, defense = str(label).rpartition("-")
    if not sep or not loss:
        raise ValueError(f"{label!r} is not a table label such as 'AAML-AT' (LOSS-DEFENSE)")
    return loss_name(loss), defense_name(defense)
OPTIMIZERS = ("sgd", "adam")
MAX_EPOCHS = 5000  # five times the paper's cap: more is a typo, not a schedule
# Bumped whenever a definition that decides a number changes (an objective, an attack, the split):
# it enters every run hash and every evaluation cache, so nothing stale is ever served.
PROTOCOL_VERSION = 5  # 5: the authors' norm terms, crafting logits, scoring and checkpoint rule
# Which epoch's weights a run keeps: the best clean validation accuracy, the best PGD-7 validation
# accuracy, or the last epoch.
KEEP_RULES = ("best_clean_val", "best_pgd7_val", "last")


# The Experiment fields of 0.4.0, when the keys of stored runs were fixed: each is always in the hash. A
# field added since enters it only where it differs from its default, so adding one (with a default that
# keeps the old behaviour) moves no existing key (tests/test_store_binding.py checks the committed manifests).
KEYED_FIELDS_0_4 = ("dataset", "loss", "defense", "seed", "profile", "model", "width", "max_pool", "embedding_dim",
                    "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                    "plateau_patience", "train_limit", "val_limit", "loss_params", "attack_eps", "attack_step",
                    "attack_steps", "craft_bn_mode", "augment", "objectives", "craft_logits", "keep")


def authors_keep_rule(loss: str, defense: str) -> str:
    """The authors' checkpoint rule: SM-UM the best clean validation epoch, SM-AT / SM-ALP the best PGD-7
    validation epoch (their softmax script validates on PGD-7 images), every other model its last epoch."""
    if loss != "SM":
        return "last"
    return DEFENSES[defense].softmax_keep


@dataclass(frozen=True)
class Experiment:
    """Everything that decides a trained model. Device and precision are not part of it."""

    dataset: str = "cifar10"
    loss: str = "SM"
    defense: str = "UM"
    seed: int = 0
    profile: str = "smoke"
    model: str = "resnet18"  # or "smallcnn"
    width: int = 64
    max_pool: bool = True  # the authors keep the stem max-pool (layer4 at 2x2)
    embedding_dim: int = 10  # smallcnn only
    epochs: int = 2
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (with momentum and weight decay) or "adam" (the ABCL losses' recipe)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    schedule: str = "onecycle"
    plateau_patience: int = 10
    train_limit: int | None = None
    val_limit: int | None = None
    loss_params: tuple = ()  # sorted (name, value) pairs, e.g. (("m", 0.2), ("s", 2.0))
    attack_eps: float = 8 / 255  # AT / ALP crafting
    attack_step: float = 2 / 255
    attack_steps: int = 7
    craft_bn_mode: str = ""  # batch-norm mode while crafting ("train" or "eval"; "": the defence's, authors: train)
    augment: bool = True
    objectives: str = "authors"  # AT / ALP objectives: "authors" (their code) or "paper" (its text)
    craft_logits: str = ""  # CRAFT_LOGITS; "": "training" under the authors' objectives, else "prediction"
    keep: str = ""  # KEEP_RULES; "": the authors' rule for the paper's losses (authors' objectives), else best clean
    # Fields added after 0.4.0 (not in KEYED_FIELDS_0_4): in the key only where they differ from their default.
    train_data: str = ""  # data.training_set_id: "" for the dataset's official training files
    defense_params: tuple = ()  # sorted (name, value) pairs of the defence's parameters, e.g. (("beta", 6.0),)

    def __post_init__(self):
        from .losses import PAPER_LOSSES, loss_name, resolve_loss_params

        object.__setattr__(self, "loss", loss_name(self.loss))  # "ArcFace" is AAML: one run, one hash
        object.__setattr__(self, "defense", defense_name(self.defense))
        if self.objectives not in OBJECTIVES:
            raise ValueError(f"unknown objectives {self.objectives!r}; choose one of {list(OBJECTIVES)}")
        defense = DEFENSES[self.defense]
        if not defense.crafts:
            # UM trains on clean images under either reading: one run serves both.
            object.__setattr__(self, "objectives", "authors")
        elif self.objectives not in defense.readings:  # TRADES, MART: their own objective, one reading
            object.__setattr__(self, "objectives", defense.readings[0])
        elif self.objectives == "authors" and self.loss not in PAPER_LOSSES:
            raise ValueError(f"the authors' code defines AT / ALP objectives for {list(PAPER_LOSSES)} only; "
                             f"train {self.loss}-{self.defense} with objectives='paper'")
        authors = self.objectives == "authors"
        # Written out, so the hash records what ran; UM crafts nothing, so one UM run serves every choice.
        craft = (self.craft_logits or ("training" if authors else "prediction")) if defense.crafts else "training"
        if craft not in CRAFT_LOGITS:
            raise ValueError(f"unknown craft_logits {self.craft_logits!r}; choose one of {list(CRAFT_LOGITS)}")
        object.__setattr__(self, "craft_logits", craft)
        keep = self.keep or defense.keep or (authors_keep_rule(self.loss, self.defense)
                                             if authors and self.loss in PAPER_LOSSES else "best_clean_val")
        if keep not in KEEP_RULES:
            raise ValueError(f"unknown keep rule {self.keep!r}; choose one of {list(KEEP_RULES)}")
        object.__setattr__(self, "keep", keep)
        # Every loss parameter written out, with the type of its default: s=4 and s=4.0 are one run,
        # and a changed default retrains instead of reusing.
        object.__setattr__(self, "loss_params", resolve_loss_params(self.loss, dict(self.loss_params)))
        object.__setattr__(self, "defense_params", defense.resolve_params(dict(self.defense_params)))
        object.__setattr__(self, "craft_bn_mode", self.craft_bn_mode or defense.craft_bn_mode)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        if self.schedule not in ("onecycle", "plateau", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.craft_bn_mode not in ("train", "eval"):
            raise ValueError("craft_bn_mode must be 'train' or 'eval'")
        if not 0 <= self.attack_eps <= 1:
            raise ValueError(f"attack_eps must be in [0, 1] (images live in [0, 1]); got {self.attack_eps}")
        if self.epochs < 1 or self.batch_size < 1 or self.width < 1:
            raise ValueError(f"epochs, batch_size and width must be at least 1; got epochs={self.epochs}, "
                             f"batch_size={self.batch_size}, width={self.width}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number above 0; got {self.lr}")
        if self.epochs > MAX_EPOCHS:
            passes = self.epochs * (self.train_limit or 45_000)
            raise ValueError(f"epochs={self.epochs}: about {passes:.2g} image passes for this one model; at most "
                             f"{MAX_EPOCHS} (the paper's schedule stops by 1000 epochs; `python -m reproduce plan` "
                             "prices a whole profile)")
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 image (or None for all of them); got {value}")

    @property
    def key(self) -> str:
        fields = dict(dataclasses.asdict(self), protocol=PROTOCOL_VERSION)
        for f in dataclasses.fields(self):  # a store outlives releases: old keys stay as they were
            if f.name not in KEYED_FIELDS_0_4 and fields[f.name] == f.default:
                del fields[f.name]
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """The paper's name of the model, e.g. AAML-AT."""
        return f"{self.loss}-{self.defense}"

    @property
    def run_name(self) -> str:
        model = "" if self.model == "resnet18" else f"{self.model}-"
        return f"{self.dataset}-{self.profile}-{model}{self.label}-{self.key}"

    @property
    def params(self) -> dict:
        return dict(self.loss_params)

    def differences(self) -> dict:
        """{field: value} where this experiment differs from what its profile, loss and defence give by
        default (its budgets changed by hand, e.g. {"epochs": 1, "train_limit": 512}); loss parameters
        are `changed_params`."""
        default = make_experiment(self.loss, self.defense, self.profile, self.dataset, self.seed,
                                  loss_params=dict(self.loss_params), objectives=self.objectives)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "loss_params" and getattr(self, f.name) != getattr(default, f.name)}

    @property
    def changed_params(self) -> dict:
        """The loss parameters that differ from the loss's defaults (for display)."""
        from .losses import loss_parameters

        defaults = loss_parameters(self.loss)
        return {k: v for k, v in self.loss_params if defaults.get(k) != v}


def make_experiment(loss: str = "SM", defense: str = "UM", profile: str | Profile | None = None,
                    dataset: str = "cifar10", seed: int = 0, loss_params: dict | None = None,
                    **overrides) -> Experiment:
    """An experiment with the profile's budgets; a loss's training recipe (losses.Loss.RECIPE) wins
    over the profile, and keyword overrides win over both."""
    from .losses import loss_name, loss_recipe, make_loss, resolve_loss_params

    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    loss, defense = loss_name(loss), defense_name(defense)
    loss_params = dict(resolve_loss_params(loss, dict(loss_params or {})))
    make_loss(loss, 4, 2, **loss_params)  # a loss that cannot be built fails now, not mid-run
    adversarial = DEFENSES[defense].crafts  # a defence that crafts gets the profile's adversarial budgets
    fields = dict(dataset=dataset, loss=loss, defense=defense, seed=seed, profile=prof.name,
                  width=prof.width, epochs=prof.epochs, lr=prof.lr, schedule=prof.schedule, val_limit=prof.val_limit,
                  batch_size=prof.adv_batch_size if adversarial and prof.adv_batch_size else prof.batch_size,
                  train_limit=prof.adv_train_limit if adversarial and prof.adv_train_limit else prof.train_limit,
                  loss_params=tuple(sorted(loss_params.items())))
    fields.update(loss_recipe(loss))
    fields.update(overrides)
    return Experiment(**fields)
