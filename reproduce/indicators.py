"""Signs that an evaluation failed, each computed as its source computes it, for the audit's verdict.

Three sources, each indicator naming its own (file and line, or checklist item) in `SOURCES`:

- Pintor et al., "Indicators of Attack Failure" (NeurIPS 2022; pralab/IndicatorsOfAttackFailure at 874c661,
  `src/indicators/indicators.py`): silent success, incomplete optimisation, transfer failure, unavailable
  gradients, unstable predictions, unconstrained attack failure. The source computes each on one sample;
  here each is the share of test images (percent) on which the per-sample indicator is 1 (unstable
  predictions: the mean of its per-sample metric).
- AutoAttack's own checks (fra31/auto-attack at a392200, `autoattack/checks.py`): randomised outputs,
  probability outputs, gradients computed at inference, zero DLR gradients, Square beating the others.
- Carlini et al., "On Evaluating Adversarial Robustness" (2019), the checks a program can run: a single step
  beating the iterative attack, doubling the steps still helping, restarts helping, random noise of the
  budget beating the gradients, a step-size sweep.

Every indicator is {"value", "threshold", "fired", "source", "kind"}; `kind` says what a fired indicator
means for the verdict (`audits.verdict`): "masking" signals come in independent families (FAMILIES), and
the audit calls a model masked only where two families agree; "incomplete" signals say that the attack
did not converge, so a stronger attack gives the number to quote.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

from .attacks import attack, attack_mode
from .loader import DeviceLoader

PINTOR = "pralab/IndicatorsOfAttackFailure@874c661 src/indicators/indicators.py"
AUTOATTACK = "fra31/auto-attack@a392200 autoattack/checks.py"
CARLINI = "Carlini et al. 2019, On Evaluating Adversarial Robustness"
SOURCES = {
    "silent success": f"{PINTOR}:122 silent_success_indicator",
    "incomplete optimisation": f"{PINTOR}:169 incomplete_optimization_indicator",
    "transfer failure": f"{PINTOR}:185 transfer_failure_indicator",
    "unavailable gradients": f"{PINTOR}:66 unavailable_gradients_indicator",
    "unstable predictions": f"{PINTOR}:80 unstable_predictions_indicator",
    "unconstrained attack failure": f"{PINTOR}:195 unconstrained_attack_failure_indicator",
    "randomised outputs": f"{AUTOATTACK}:18 check_randomized",
    "probability outputs": f"{AUTOATTACK}:44 check_range_output",
    "gradients at inference": f"{AUTOATTACK}:95 check_dynamic",
    "zero DLR gradients": f"{AUTOATTACK}:60 check_zero_gradients",
    "Square beats the others": f"{AUTOATTACK}:73 check_square_sr",
    "single step beats iterative": f"{CARLINI}, checklist: iterative attacks should beat single-step ones",
    "doubling the steps helps": f"{CARLINI}, checklist: run the attack until it converges",
    "restarts help": f"{CARLINI}, checklist: random restarts",
    "noise beats gradients": f"{CARLINI}, checklist: random noise should not beat gradient attacks",
    "step size sweep helps": f"{CARLINI}, checklist: try several step sizes",
    "gradient-free beats gradients": "this audit (v1): Square and transfer against every gradient attack, paired",
    "scale-invariant loss beats CE": "this audit (v1): CW-PGD-20, APGD-DLR and APGD-T against CE-PGD-20, paired",
    "CE-PGD rises with eps": f"{CARLINI}, checklist: accuracy must fall as the budget grows",
}
# Independent kinds of evidence of masking: the model's own behaviour, its gradients, attacks that need no
# (or less) gradient winning, and an unbounded attack failing. Two families must agree to call it masked.
FAMILIES = {
    "randomised outputs": "the model", "probability outputs": "the model", "gradients at inference": "the model",
    "unavailable gradients": "gradients", "unstable predictions": "gradients",
    "gradient-free beats gradients": "weaker attacks win", "noise beats gradients": "weaker attacks win",
    "single step beats iterative": "weaker attacks win",
    "unconstrained attack failure": "unbounded attack fails", "CE-PGD rises with eps": "unbounded attack fails",
}
UNSTABLE = 0.2  # unstable predictions: the source returns the metric without a threshold; ours, see docs/audit.md
RANDOM_ALPHA = 1e-4  # check_randomized's alpha: the largest L2 distance of normalised outputs between passes
PROBABILITY_ALPHA = 1e-5  # check_range_output's alpha
SQUARE_ALPHA = 0.2  # check_square_sr's alpha, 0.002 of accuracy, in points


def indicator(name: str, value, threshold, fired: bool, why: str) -> dict:
    """One indicator as audit.json keeps it."""
    value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    return {"value": value, "threshold": threshold, "fired": bool(fired), "source": SOURCES[name],
            "kind": "masking" if name in FAMILIES else "incomplete", "why": why}


def _batches(model, images, labels, batch_size: int):
    """Float batches on the model's device, in order (uint8 images scaled to [0, 1])."""
    return DeviceLoader(images, labels, batch_size, device=next(model.parameters()).device)


def _share(bits: torch.Tensor) -> float:
    return 100.0 * bits.float().mean().item() if len(bits) else 0.0


# ---- Pintor et al. ----

def silent_success(columns: dict, names) -> tuple[float, torch.Tensor]:
    """(share, bits): images that an iterate of one of the attacks `names` misclassified but whose final
    iterate is right (the source: an adversarial point in the path, the attack's output not adversarial)."""
    silent = torch.zeros(0, dtype=torch.bool)
    for name in names:
        c = columns[name]
        bits = c["correct"] & ~c["correct_any_iterate"]
        silent = bits if len(silent) == 0 else silent | F.pad(bits, (0, len(silent) - len(bits)))
    return _share(silent), silent


def incomplete_optimisation(model, images, labels, spec, batch_size: int = 250) -> float:
    """Share of images whose attack loss was still improving at the end: the source rescales the loss along
    the iterations to [0, 1], keeps its running best, and fires when its last ten values span more than
    0.05. Here the loss is CE at each iterate of `spec` (one restart), per image."""
    fired = []
    for x, y in _batches(model, images, labels, batch_size):
        trace = []

        def logits_of(xi, yi, trace=trace):
            logits = model(xi)
            trace.append(F.cross_entropy(logits.float(), yi, reduction="none").detach())
            return logits

        x_adv = attack(model, x, y, replace(spec, restarts=1), logits_of=logits_of)
        with torch.no_grad(), attack_mode(model):
            logits_of(x_adv, y)  # the final iterate's loss ends the path
        loss = -torch.stack(trace, 1).cpu()  # the attacker minimises -CE, as the source's loss decreases
        low, high = loss.amin(1, keepdim=True), loss.amax(1, keepdim=True)
        span = torch.where(high > low, high - low, torch.ones_like(high))
        rescaled = torch.where(high > low, (loss - low) / span, torch.zeros_like(loss))
        best = torch.cummin(rescaled, 1).values
        last = best[:, -min(10, best.shape[1]):]
        fired.append((last.amax(1) - last.amin(1)) > 0.05)
    return _share(torch.cat(fired))


def transfer_failure(surrogate_right: torch.Tensor, model_right: torch.Tensor) -> float:
    """Share of images whose transferred adversarial image fools the surrogate it was crafted on but not the
    model (the source: the label the surrogate gives differs from the model's)."""
    return _share(~surrogate_right & model_right)


def unavailable_gradients(model, images, labels, batch_size: int = 250) -> tuple[bool, float]:
    """(the graph is interrupted, share of images with an all-zero CE input gradient at the predicted label):
    the source's two metrics (`interrupted_computational_graph_metric`, `zero_gradients_metric`, L0 norm 0)."""
    zero = 0
    with attack_mode(model):
        for x, _ in _batches(model, images, labels, batch_size):
            x = x.detach().requires_grad_(True)
            logits = model(x).float()
            try:
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1), reduction="sum"), x)
            except RuntimeError:  # no path from the input to the output
                return True, 100.0
            zero += int((grad.flatten(1) == 0).all(1).sum())
    return False, 100.0 * zero / max(len(labels), 1)


@torch.no_grad()
def unstable_predictions(model, images, labels, eps: float, draws: int = 100, batch_size: int = 250) -> float:
    """The source's metric, averaged over images: per image, the mean over `draws` uniform perturbations in
    [-eps/2, eps/2] of |CE(x + noise) - CE(x)| / |CE(x)| (|CE(x)| taken as 1 where it is 0), at most 1."""
    metrics = []
    with attack_mode(model):
        for x, y in _batches(model, images, labels, batch_size):
            reference = F.cross_entropy(model(x).float(), y, reduction="none")
            divide = reference.abs().clone()
            divide[divide == 0] = 1
            total = torch.zeros_like(reference)
            for _ in range(draws):
                noisy = x + (torch.rand_like(x) - 0.5) * eps
                total += (reference - F.cross_entropy(model(noisy).float(), y, reduction="none")).abs() / divide
            metrics.append((total / draws).clamp(max=1.0).cpu())
    return torch.cat(metrics).mean().item()


def unconstrained_attack_failure(clean_right: torch.Tensor, unbounded_right: torch.Tensor) -> float:
    """Share of the images the model classifies right whose unbounded attack leaves them right (the source:
    the attack with no bound must reach the adversarial region)."""
    return 100.0 * int((clean_right & unbounded_right).sum()) / max(int(clean_right.sum()), 1)


# ---- AutoAttack's checks ----

@torch.no_grad()
def randomised_outputs(model, x, y, passes: int = 5) -> float:
    """check_randomized: `passes` forward passes of the same images; the largest L2 distance between two
    passes' L2-normalised outputs (returned; the check fires above RANDOM_ALPHA), or inf where the number
    of images classified right changes between passes."""
    with attack_mode(model):
        outputs = [model(x).float() for _ in range(passes)]
    right = {int((o.argmax(1) == y).sum()) for o in outputs}
    normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outputs]
    largest = max((float((a - b).norm(dim=1).max()) for i, a in enumerate(normed) for b in normed[i + 1:]),
                  default=0.0)
    return float("inf") if len(right) > 1 else largest


@torch.no_grad()
def probability_outputs(model, x) -> bool:
    """check_range_output: every output in [0, 1] (within PROBABILITY_ALPHA) and each row summing to 1."""
    with attack_mode(model):
        out = model(x).float()
    return bool(out.max() < 1 + PROBABILITY_ALPHA and out.min() > -PROBABILITY_ALPHA
                and ((out.sum(-1) - 1).abs() < PROBABILITY_ALPHA).all())


def gradients_at_inference(model, x) -> int:
    """check_dynamic: the calls of torch's gradient functions (`grad`, `backward`, `_make_grads`) made by one
    forward pass, traced as the source traces them (a TorchScript model's own code is not traced)."""
    calls = {"grad": 0, "backward": 0, "_make_grads": 0}

    def trace(frame, event, arg):
        if event == "call" and frame.f_code.co_name in calls:
            calls[frame.f_code.co_name] += 1

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        with attack_mode(model):
            model(x)
    finally:
        sys.settrace(previous)
    return sum(calls.values())


# ---- Carlini et al.: random noise of the budget ----

@torch.no_grad()
def random_noise_right(model, images, labels, eps: float, draws: int, batch_size: int = 250) -> torch.Tensor:
    """Per image, right under every one of `draws` random corners of the L-inf ball (each pixel moved by
    +eps or -eps, clipped to [0, 1]): the budget's noise, many draws per image."""
    right = []
    with attack_mode(model):
        for x, y in _batches(model, images, labels, batch_size):
            alive = torch.ones(len(y), dtype=torch.bool, device=x.device)
            for _ in range(draws):
                corner = (x + eps * torch.sign(torch.rand_like(x) - 0.5)).clamp(0, 1)
                alive &= model(corner).argmax(1) == y
            right.append(alive.cpu())
    return torch.cat(right)
