"""White-box attacks as plain functions of (model, images, labels, spec) on whole batches.

Every attack maximises a loss of the model's prediction logits (cross-entropy unless the spec names
another: the CW margin for the PGD family; CE or DLR for APGD), works on images in [0, 1],
projects each iterate onto the eps-ball of its norm and clips it to [0, 1]. The model is put in
eval mode for the attack (unless `train_mode=True`, which adversarial training uses) and left in the
mode it was found; gradients are taken with respect to the images only, so the model's parameters
never receive a .grad.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .devices import eager

EPS = 8 / 255
STEP = 2 / 255


ITERATIVE = ("bim", "pgd", "mim", "apgd", "apgd-t", "square")  # need steps= (square: its queries)
# The losses each attack can ascend; the first is its default. "cw": the margin max_{j != y} z_j - z_y
# (Carlini-Wagner's, unclamped); "dlr": the margin over the spread of the top logits (scale-free); "kl":
# the KL divergence of the prediction from the model's prediction on the clean image (TRADES's crafting).
ATTACK_LOSSES = {"fgsm": ("ce", "cw"), "bim": ("ce", "cw"), "pgd": ("ce", "cw", "kl"), "mim": ("ce", "cw"),
                 "apgd": ("ce", "dlr"), "apgd-t": ("dlr",), "square": ("margin",), "autoattack": ("ensemble",)}
GRADIENT_ATTACKS = ("fgsm", "bim", "pgd", "mim")  # ours: the ones that take logit_scale and logits_of
# PGD's random start: uniform in the eps-ball (Madry et al.), or 0.001 * N(0, 1) (TRADES's and MART's code)
STARTS = ("uniform", "gaussian")
GAUSSIAN_START = 0.001


@dataclass(frozen=True)
class AttackSpec:
    """One column of a table: which attack, under which norm, how strong.

    Iterative attacks (bim, pgd, mim) need their number of steps: a one-step "PGD" would overstate
    robustness without a word. PGD starts at a random point of the eps-ball unless told otherwise,
    BIM never does. "autoattack" runs the reference AutoAttack: `version="standard"` (APGD-CE, APGD-T,
    FAB-T, Square) or "apgd" (APGD-CE then APGD-DLR, `steps` each: a cheaper budget for small profiles).
    "apgd" (loss ce or dlr), "apgd-t" (targeted DLR over the `targets` most likely other classes) and
    "square" (gradient-free, `steps` queries) run the reference code's single attacks.

    `loss` picks what the attack ascends (ATTACK_LOSSES); `logit_scale` multiplies the logits before
    the loss (an attacker's temperature: a robust model does not care); `images` attacks only the first
    N test images of an evaluation (the budget of a costly attack such as Square). `start` is PGD's random
    start (STARTS): "gaussian" is TRADES's and MART's 0.001 * N(0, 1), taken unclipped.
    """

    name: str  # fgsm | bim | pgd | mim | autoattack | apgd | apgd-t | square
    eps: float = EPS
    step: float = STEP
    steps: int | None = None  # required for bim, pgd, mim; fgsm takes one step of size eps
    random_start: bool | None = None  # None: True for pgd, False otherwise
    restarts: int = 1
    momentum: float = 0.9  # MIM only
    norm: str = "linf"  # linf | l2 (l2: FGSM only)
    label: str = ""
    version: str = "standard"  # autoattack only: standard | apgd
    clip_start: bool = True  # PGD: clip the random start into [0, 1] (the authors' PGD did not)
    loss: str | None = None  # None: the attack's default, ATTACK_LOSSES[name][0]
    logit_scale: float = 1.0  # fgsm / bim / pgd / mim: the loss is taken of logit_scale * logits
    targets: int = 9  # apgd-t: the most likely other classes it targets in turn
    images: int | None = None  # evaluate on the first N test images only (None: all)
    start: str = "uniform"  # pgd: STARTS

    def __post_init__(self):
        if self.name not in ATTACKS:
            raise ValueError(f"unknown attack {self.name!r}; choose one of {sorted(ATTACKS)}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}; choose linf or l2")
        if self.norm == "l2" and self.name != "fgsm":
            raise ValueError("only FGSM is defined under the L2 norm here")
        if self.version not in ("standard", "apgd"):
            raise ValueError(f"unknown AutoAttack version {self.version!r}; choose standard or apgd")
        if self.steps is None:
            if self.name in ITERATIVE:
                raise ValueError(f"AttackSpec({self.name!r}) needs steps=, e.g. steps=7 or steps=20 as in the "
                                 f"paper's Table I (protocol.WHITE_BOX_COLUMNS holds every column of it)")
            object.__setattr__(self, "steps", 100 if self.name == "autoattack" else 1)
        if self.random_start is None:
            object.__setattr__(self, "random_start", self.name == "pgd")
        losses = ATTACK_LOSSES[self.name]
        if self.loss is None:
            object.__setattr__(self, "loss", losses[0])
        if self.loss not in losses:
            raise ValueError(f"AttackSpec({self.name!r}) cannot ascend loss={self.loss!r}; "
                             f"choose one of {list(losses)}")
        if self.name not in GRADIENT_ATTACKS and self.logit_scale != 1.0:
            raise ValueError(f"logit_scale applies to {list(GRADIENT_ATTACKS)}, not {self.name!r}")
        if self.name in ("apgd", "apgd-t", "square") and (self.norm != "linf" or self.restarts != 1):
            raise ValueError(f"AttackSpec({self.name!r}) runs once under the L-inf norm (norm='linf', restarts=1)")
        if self.images is not None:
            object.__setattr__(self, "images", _checked("images", self.images, 1, math.inf, True))
        for name in ("random_start", "clip_start"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AttackSpec {name}={getattr(self, name)!r}: expected True or False")
        if not isinstance(self.label, str):
            raise ValueError(f"AttackSpec label={self.label!r}: expected a string")
        eps_high = 1.0 if self.norm == "linf" else math.inf  # L-inf: images live in [0, 1]
        for name, low, high, whole in (("eps", 0.0, eps_high, False), ("step", 0.0, math.inf, False),
                                       ("momentum", 0.0, math.inf, False), ("steps", 1, math.inf, True),
                                       ("restarts", 1, math.inf, True), ("targets", 1, math.inf, True),
                                       ("logit_scale", 0.0, math.inf, False)):
            object.__setattr__(self, name, _checked(name, getattr(self, name), low, high, whole))
        if self.logit_scale == 0:
            raise ValueError("AttackSpec logit_scale=0: must be above 0 (it multiplies the logits)")
        if self.start not in STARTS:
            raise ValueError(f"AttackSpec start={self.start!r}: choose one of {list(STARTS)}")
        if self.loss == "kl" and self.restarts != 1:
            raise ValueError("AttackSpec loss='kl' crafts training examples: restarts=1 (a restart keeps what "
                             "breaks the label, and KL ascends away from the clean prediction instead)")

    @property
    def column(self) -> str:
        return self.label or self.name

    def identity(self) -> dict:
        """The fields that decide this attack's numbers, for cache names. Fields added after the first
        caches (loss, logit_scale, targets, images) appear only where they differ from their defaults,
        so caches of the attacks that existed before them stay valid."""
        fields = asdict(self)
        defaults = {"loss": ATTACK_LOSSES[self.name][0], "logit_scale": 1.0, "targets": 9, "images": None,
                    "start": "uniform"}
        return {k: v for k, v in fields.items() if k not in defaults or v != defaults[k]}


def _checked(name: str, value, low: float, high: float, whole: bool):
    """A field of an AttackSpec as a finite number in [low, high] (an int where it counts), or an error
    that names it: a NaN step or eps would leave the images unattacked and overstate robustness."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"AttackSpec {name}={value!r}: expected a finite number")
    if whole and value != int(value):
        raise ValueError(f"AttackSpec {name}={value!r}: expected a whole number (it counts {name})")
    if not low <= value <= high:
        bound = f"at least {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ValueError(f"AttackSpec {name}={value!r}: must be {bound}"
                         + (" (L-inf eps: images live in [0, 1])" if name == "eps" else ""))
    return int(value) if whole else value


@contextlib.contextmanager
def attack_mode(model: nn.Module, train_mode: bool = False):
    """Eval mode (or train mode, for crafting training examples) during the attack, then restore."""
    was_training = model.training
    model.train(train_mode)
    try:
        yield
    finally:
        model.train(was_training)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example, the largest other logit minus the true class's: above 0 exactly when misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", logit_scale: float = 1.0) -> torch.Tensor:
    """The summed loss a gradient attack ascends: cross-entropy or the CW margin of logit_scale * logits;
    for "kl", `y` holds the clean prediction's probabilities (N, classes) and the loss is KL(clean || adv),
    summed (TRADES's nn.KLDivLoss(size_average=False))."""
    logits = logits.float() * logit_scale if logit_scale != 1.0 else logits.float()
    if loss == "cw":
        return margin(logits, y).sum()
    if loss == "kl":
        return F.kl_div(F.log_softmax(logits, dim=1), y, reduction="sum")
    return F.cross_entropy(logits, y, reduction="sum")


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, with_correct: bool = False,
                   logits_of=None, spec: AttackSpec | None = None):
    """d loss / d x (the spec's loss and logit scale; CE without a spec), without touching the
    parameters' .grad; optionally also which examples the model still classifies correctly at x (from
    the same forward pass, at no extra cost). `logits_of(x, y)` replaces model(x) as the logits whose loss
    is maximised (training: the margin logits)."""
    x = x.detach().requires_grad_(True)
    logits = (model(x) if logits_of is None else logits_of(x, y)).float()
    objective = (F.cross_entropy(logits, y, reduction="sum") if spec is None
                 else attack_loss(logits, y, spec.loss, spec.logit_scale))
    (grad,) = torch.autograd.grad(objective, x)
    labels = y if y.dim() == 1 else y.argmax(1)  # kl: "correct" is the clean prediction kept
    return (grad, logits.detach().argmax(1) == labels) if with_correct else grad


def _per_example(t: torch.Tensor) -> tuple:
    return (-1,) + (1,) * (t.dim() - 1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Onto the eps-ball around x, then into [0, 1]."""
    if norm == "linf":  # min/max rather than x + clamp(delta): no round-off on pixels already inside
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).view(_per_example(x))
    return (x + delta * torch.clamp(eps / (norms + 1e-12), max=1.0)).clamp(0, 1)


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / (grad.flatten(1).norm(dim=1).view(_per_example(grad)) + 1e-12)


def fgsm(model, x, y, spec: AttackSpec, start=None, stop_when_broken: bool = False, record=None, logits_of=None):
    """One step of size eps along the gradient's sign (L-inf) or its direction (L2)."""
    grad, correct = input_gradient(model, x, y, with_correct=True, logits_of=logits_of, spec=spec)
    if record is not None:
        record |= ~correct
    return project(x + spec.eps * _ascent_direction(grad, spec.norm), x, spec.eps, spec.norm)


def random_start(x: torch.Tensor, spec: AttackSpec) -> torch.Tensor | None:
    """The start offset of a PGD run (None without random start): uniform in the eps-ball, or
    0.001 * N(0, 1) (spec.start "gaussian", TRADES's and MART's torch.randn)."""
    if not spec.random_start:
        return None
    if spec.start == "gaussian":
        return GAUSSIAN_START * torch.randn_like(x)
    return torch.empty_like(x).uniform_(-spec.eps, spec.eps)


def pgd(model, x, y, spec: AttackSpec, start: torch.Tensor | None = None, stop_when_broken: bool = False,
        record=None, logits_of=None):
    """Iterated signed-gradient steps, projected every step; BIM is the same without random start.
    `start` is the random start offset; drawn here when the spec asks for one and none is given. The
    start is clipped into [0, 1] unless `spec.clip_start` is False (then, as in the authors' PGD, the
    first gradient is taken at x + start as drawn, and the first step clips)."""
    if start is None:
        start = random_start(x, spec)
    if start is None:
        x_adv = x.clone()
    elif spec.clip_start:
        x_adv = project(x + start, x, spec.eps, spec.norm)
    else:  # the authors' first step, from a start outside [0, 1] that is therefore never itself scored
        grad = input_gradient(model, x + start, y, logits_of=logits_of, spec=spec)
        x_adv = project(x + start + spec.step * _ascent_direction(grad, spec.norm), x, spec.eps, spec.norm)
        return _iterate(model, x, y, x_adv, spec, stop_when_broken, lambda grad, _: grad, record, logits_of,
                        steps=spec.steps - 1)
    return _iterate(model, x, y, x_adv, spec, stop_when_broken, lambda grad, _: grad, record, logits_of)


def _iterate(model, x, y, x_adv, spec, stop_when_broken, direction, record=None, logits_of=None, steps=None):
    """The loop of the iterative attacks. `direction(grad, active)` turns the gradient of the active
    examples into the step direction (MIM keeps its momentum there). With `stop_when_broken`, an
    example leaves the loop at the first iterate the model gets wrong, which it keeps: the attack is
    never weaker and spends no more work on it. `record` (a bool per example) is set where an iterate
    before the last is misclassified; the forward pass of each gradient gives that at no extra cost."""
    active = None  # None: every example (no gather or scatter needed)
    for _ in range(spec.steps if steps is None else steps):
        xa, xs, ya = (x_adv, x, y) if active is None else (x_adv[active], x[active], y[active])
        grad, correct = input_gradient(model, xa, ya, with_correct=True, logits_of=logits_of, spec=spec)
        if record is not None:
            if active is None:
                record |= ~correct
            else:
                record[active] |= ~correct
        if stop_when_broken and not bool(correct.all()):
            keep = correct.nonzero().squeeze(1)
            active = keep if active is None else active[keep]
            xa, xs, grad = xa[keep], xs[keep], grad[keep]
            if len(active) == 0:
                break
        step = project(xa + spec.step * _ascent_direction(direction(grad, active), spec.norm), xs, spec.eps, spec.norm)
        if active is None:
            x_adv = step
        else:
            x_adv[active] = step
    return x_adv


def mim(model, x, y, spec: AttackSpec, start=None, stop_when_broken: bool = False, record=None, logits_of=None):
    """Momentum iterative method: the gradient is L1-normalised per example before it joins the
    momentum (the authors normalised over the whole batch, which couples the examples)."""
    momentum = torch.zeros_like(x)

    def direction(grad, active):
        g = grad / (grad.abs().flatten(1).sum(1).view(_per_example(grad)) + 1e-12)
        if active is None:
            momentum.mul_(spec.momentum).add_(g)
            return momentum
        momentum[active] = spec.momentum * momentum[active] + g
        return momentum[active]

    return _iterate(model, x, y, x.clone(), spec, stop_when_broken, direction, record, logits_of)


def autoattack(model, x, y, spec: AttackSpec, start=None, stop_when_broken: bool = False, record=None,
               logits_of=None):
    """AutoAttack through its reference code (Croce & Hein's, packaged as `pyautoattack`; not a rewrite):
    each attack runs on the examples the earlier ones did not break. `version="standard"` is the
    original's standard configuration (APGD-CE, APGD-T over 9 targets, FAB-T, Square with 5000 queries;
    100 iterations each); "apgd" is APGD-CE then APGD-DLR, `spec.steps` iterations each, one restart.
    Seeded, so a column is reproducible. It returns its final images only (`record` is left as it is),
    and always attacks the prediction logits."""
    from pyautoattack import AutoAttack, checks
    from pyautoattack.autopgd_base import APGDAttack

    # Its dynamic-defence check counts gradient calls in a module-level dict that it never resets: after one
    # model that takes a gradient in its forward (the audit's controls), every later model in the process
    # would be called "a dynamic defense". Each run counts its own model's calls (a version without the dict
    # has nothing to reset).
    counts = getattr(checks, "funcs", {})
    counts.update(dict.fromkeys(counts, 0))
    device = x.device
    if spec.version == "standard":
        atk = AutoAttack(model, norm="Linf", eps=spec.eps, version="standard", seed=0, device=device)
    else:
        atk = AutoAttack(model, norm="Linf", eps=spec.eps, version="custom", attacks=["apgd-ce", "apgd-dlr"],
                         seed=0, device=device)
        # built afresh, not edited: APGD derives its step-size checkpoints from n_iter when constructed
        atk.apgd = APGDAttack(model, n_restarts=1, n_iter=spec.steps, verbose=False, eps=spec.eps, norm="Linf",
                              eot_iter=1, rho=0.75, seed=0, device=device, logger=atk.logger)
    with eager(model):  # its checks trace Python calls (devices.eager)
        x_adv, _ = atk.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv


def reference(model, x, y, spec: AttackSpec, start=None, stop_when_broken: bool = False, record=None,
              logits_of=None):
    """One attack of AutoAttack's reference code (pyautoattack), seeded: APGD on CE or DLR, APGD-T on the
    targeted DLR over `spec.targets` classes, or Square with `spec.steps` queries. Each returns, per
    example, the adversarial image it found (or the clean one): it scores at every iterate, so `record`
    is left as it is. It attacks the prediction logits."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.square import SquareAttack

    common = dict(norm="Linf", eps=spec.eps, n_restarts=1, seed=0, device=x.device)
    if spec.name == "apgd":
        atk = APGDAttack(model, n_iter=spec.steps, loss=spec.loss, eot_iter=1, rho=0.75, **common)
    elif spec.name == "apgd-t":
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        atk = APGDAttack_targeted(model, n_iter=spec.steps, n_target_classes=min(spec.targets, classes - 1),
                                  eot_iter=1, rho=0.75, **common)
    else:
        atk = SquareAttack(model, n_queries=spec.steps, p_init=0.8, loss="margin", **common)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        return atk.perturb(x, y).detach()  # it seeds the global generator: keep the caller's draws


ATTACKS = {"fgsm": fgsm, "bim": pgd, "pgd": pgd, "mim": mim, "autoattack": autoattack, "apgd": reference,
           "apgd-t": reference, "square": reference}


def check_images(x: torch.Tensor, check_range: bool = True) -> None:
    """Attacks work on float images in [0, 1]; anything else is refused with the fix. The range check
    reads two numbers back from the device, so training (whose batches the loader made) skips it."""
    if x.dim() != 4:
        raise ValueError(f"attack images must be a batch (N, C, H, W), got shape {tuple(x.shape)}: one image is "
                         "x[None]; images without a channel axis (N, H, W) are x[:, None]")
    if not torch.is_floating_point(x):
        raise ValueError(f"attack images must be float in [0, 1], got dtype {x.dtype}: convert with x.float() / 255")
    if check_range and x.numel() and not (float(x.min()) >= 0 and float(x.max()) <= 1):  # NaN fails too
        raise ValueError(f"attack images must lie in [0, 1] (got [{float(x.min()):.3g}, {float(x.max()):.3g}]): "
                         "attack the un-normalised images and normalise inside the model")


def check_labels(x: torch.Tensor, y: torch.Tensor, check_range: bool = True) -> None:
    """One class index per image; negative labels (e.g. -100, which cross-entropy ignores) would leave
    their images unattacked. The sign check reads a number back from the device, as the range check."""
    if y.dim() != 1 or len(y) != len(x) or torch.is_floating_point(y):
        raise ValueError(f"attack labels must be one integer class index per image: got {tuple(y.shape)} "
                         f"{y.dtype} labels for {len(x)} images")
    if check_range and y.numel() and int(y.min()) < 0:
        raise ValueError(f"attack labels must be class indices >= 0; got {int(y.min())} (an ignored label "
                         "such as -100 would leave its image unattacked)")


def _single_run(model, x, y, spec, start=None, stop_when_broken=False, record=None, logits_of=None):
    return ATTACKS[spec.name](model, x, y, spec, start, stop_when_broken, record, logits_of)


@torch.no_grad()
def _correct(model, x, y):
    return model(x).argmax(1) == y


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *,
           train_mode: bool = False, stop_when_broken: bool = False, check_range: bool = True,
           logits_of=None, record: torch.Tensor | None = None) -> torch.Tensor:
    """Adversarial images for a batch: the final iterate of each example (as the authors scored their
    attacks). With restarts > 1, each restart attacks only the examples that every earlier restart
    failed to break at its final iterate (the answer is the same as attacking all of them every time,
    for a fraction of the work). Each restart draws its random start for the whole batch, so an example
    gets the same start as in `attack_all_restarts`.

    `stop_when_broken` (evaluation only, never training) keeps each example's first misclassified
    iterate and stops attacking it: the any-iterate worst case, at less cost.
    `check_range=False` (training) skips the [0, 1] check and its host-device sync.
    `logits_of(x, y)` replaces model(x) as the logits the attack ascends (training: the margin logits).
    `record` (bool, one per example) is set where any iterate before the final one is misclassified
    (`attack_scored` reads it)."""
    if not isinstance(spec, AttackSpec):
        raise TypeError(f"attack's spec must be an AttackSpec, got {type(spec).__name__} {spec!r}: e.g. "
                        "AttackSpec('pgd', steps=20), or a table column's (reproduce.protocol.PGD20_COLUMN.spec(p))")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"attack's images and labels must be torch tensors, got {type(x).__name__} and "
                        f"{type(y).__name__}: convert with torch.as_tensor")
    x, y = x.detach(), y.detach()  # eps = 0 runs the same code: the eps = 0 sanity check tests it
    check_images(x, check_range)
    check_labels(x, y, check_range)
    if spec.loss == "kl" and (stop_when_broken or logits_of is not None or spec.name != "pgd"):
        raise ValueError("loss='kl' (TRADES's crafting) runs PGD on the prediction logits, for training: "
                         "no stop_when_broken, no logits_of")
    with attack_mode(model, train_mode):
        if spec.loss == "kl":  # the clean prediction it ascends away from, in the attack's own mode
            with torch.no_grad():
                y = F.softmax(model(x).float(), dim=1)
        x_adv = _single_run(model, x, y, spec, None, stop_when_broken, record, logits_of)
        if spec.restarts == 1:
            return x_adv.detach()
        single = replace(spec, restarts=1)
        alive = _correct(model, x_adv, y)
        for _ in range(spec.restarts - 1):
            start = random_start(x, spec)
            idx = alive.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            part = None if record is None else torch.zeros(len(idx), dtype=torch.bool, device=x.device)
            candidate = _single_run(model, x[idx], y[idx], single, None if start is None else start[idx],
                                    stop_when_broken, part, logits_of)
            if record is not None:
                record[idx] |= part
            broken = ~_correct(model, candidate, y[idx])
            x_adv[idx[broken]] = candidate[broken]
            alive[idx[broken]] = False
        return x_adv.detach()


def attack_scored(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec):
    """(adversarial images, correct at the final iterate, correct at every iterate) for a batch, from
    one full run of the attack. The first is the authors' scoring (Table I's numbers); the second,
    never above it, counts an example as broken at its first misclassified iterate of any restart (the
    honest worst case)."""
    record = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    x_adv = attack(model, x, y, spec, record=record)
    with attack_mode(model):
        final = _correct(model, x_adv, y.detach())
    return x_adv, final, final & ~record


def attack_all_restarts(model, x, y, spec: AttackSpec, stop_when_broken: bool = False) -> torch.Tensor:
    """The reference for the survivors-only restarts: every restart on every example; an example
    is broken if any restart breaks it. Slow on purpose: used by tests and the benchmark."""
    x, y = x.detach(), y.detach()
    with attack_mode(model):
        single = replace(spec, restarts=1)
        x_adv = _single_run(model, x, y, single, stop_when_broken=stop_when_broken)
        alive = _correct(model, x_adv, y)
        for _ in range(spec.restarts - 1):
            candidate = _single_run(model, x, y, single, stop_when_broken=stop_when_broken)
            newly = alive & ~_correct(model, candidate, y)
            x_adv[newly] = candidate[newly]
            alive &= ~newly
        return x_adv.detach()


# Table I's PGD-7, also what validates AT / ALP models (the authors' softmax script) and the eps curve.
PGD7 = AttackSpec("pgd", eps=EPS, step=STEP, steps=7, random_start=True, label="pgd7")
