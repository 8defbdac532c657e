"""Models whose audit answer is known: a small network trained in seconds on synthetic images, plain and
behind each way a model hides its gradients, for `python -m reproduce audit --self-test` and the audit's
validation table (scripts/validate_audit.py).

Each control names the indicator that must fire on it (the one that names its fault) and whether it masks;
the plain network, and the same network at a tiny logit scale (an honest model whose softmax is merely
flat), must fire none.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZE, CLASSES = 16, 10


def synthetic_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` grey 16x16 images of ten classes, each a fixed random pattern at low contrast under noise, so
    that an undefended network is right on most clean images and wrong on most at eps 8/255."""
    g = torch.Generator().manual_seed(1234)
    patterns = torch.rand(CLASSES, 1, SIZE, SIZE, generator=g) - 0.5
    g.manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = 0.5 + 0.2 * patterns[y] + 0.05 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return x.clamp(0, 1), y


class KWinners(nn.Module):
    """k-winners-take-all (Xiao et al. 2020): per image, the largest `share` of the activations pass, the
    rest are set to zero; a discontinuous activation whose gradients shatter."""

    def __init__(self, share: float = 0.1):
        super().__init__()
        self.share = share

    def forward(self, z):
        flat = z.flatten(1)
        k = max(1, int(self.share * flat.shape[1]))
        threshold = flat.topk(k, dim=1).values[:, -1:]
        return (flat * (flat >= threshold)).view_as(z)


def small_cnn(activation=nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), activation(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), activation(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, CLASSES))


def train_small(activation=nn.ReLU, n: int = 3000, epochs: int = 3, seed: int = 0) -> nn.Module:
    """The small CNN trained with Adam on `synthetic_data` (a few seconds on a CPU)."""
    torch.manual_seed(seed)
    model = small_cnn(activation)
    x, y = synthetic_data(n, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in torch.randperm(n).split(64):
            optimiser.zero_grad()
            F.cross_entropy(model(x[i]), y[i]).backward()
            optimiser.step()
    return model.eval()


class Behind(nn.Module):
    """A network behind an input transform, or with its outputs transformed."""

    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        if self.kind == "binarised":  # input quantisation: round() has a zero gradient everywhere
            return self.net(torch.round(x))
        if self.kind == "saturated":  # logits so large that the softmax saturates: CE's gradient is zero
            return self.net(x) * 1e4
        if self.kind == "blocked":  # a preprocessing that passes no gradient (x * 0 keeps the graph)
            return self.net(x * 0 + x.detach())
        if self.kind == "shattered":  # a gradient that points nowhere
            return self.net((x + 0.03 * torch.sin(3000 * x)).clamp(0, 1))
        if self.kind == "noisy":  # randomness at inference
            return self.net((x + 0.1 * torch.randn_like(x)).clamp(0, 1))
        if self.kind == "probabilities":  # a softmax on the outputs
            return F.softmax(self.net(x), dim=1)
        if self.kind == "tiny scale":  # an honest model with a flat softmax
            return self.net(x) * 0.01
        if self.kind == "denoised":  # a gradient step on the input at inference (a dynamic defence)
            with torch.enable_grad():
                z = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.net(z).logsumexp(1).sum(), z)
            return self.net((x + 0.01 * g.sign()).clamp(0, 1))
        raise ValueError(f"unknown control {self.kind!r}")


@dataclass(frozen=True)
class Control:
    name: str
    expected: str | None  # the indicator that names its fault (None: an honest model, none may fire)
    masked: bool  # the answer the verdict must give: masked, or not


CONTROLS = (
    Control("plain", None, False),
    Control("tiny scale", None, False),
    Control("binarised", "unavailable gradients", True),
    Control("saturated", "unavailable gradients", True),
    Control("blocked", "unavailable gradients", True),
    Control("shattered", "unstable predictions", True),
    Control("noisy", "randomised outputs", True),
    Control("probabilities", "probability outputs", False),
    Control("k-winners", "unstable predictions", False),
    Control("denoised", "gradients at inference", False),
)


def build(name: str, plain: nn.Module, kwta: nn.Module | None = None) -> nn.Module:
    """The control `name` around the trained `plain` network (k-winners: its own network, trained so)."""
    if name == "plain":
        return plain
    if name == "k-winners":
        return kwta if kwta is not None else train_small(KWinners)
    return Behind(plain, name).eval()


def self_test(n: int = 200, profile=None, progress: bool = False) -> list[dict]:
    """Audit every control on `n` synthetic test images: a row per control with its verdict, the indicators
    that fired, and whether the answer is the known one (the expected indicator fired, or, for an honest
    model, none; masked exactly where it masks). `profile`: the audit's budgets (small by default)."""
    from .audits import audit
    from .config import get_profile

    profile = profile or get_profile("smoke", restarts=2, mim_steps=10, autoattack_steps=10, apgd_steps=10,
                                     apgd_targets=2, square_queries=200, square_images=100)
    plain, kwta = train_small(), train_small(KWinners)
    x, y = synthetic_data(n, seed=2)
    rows = []
    for control in CONTROLS:
        result = audit(build(control.name, plain, kwta), x, y, profile=profile, key=control.name,
                       iterations=(5, 10, 20), noise_draws=20, unstable_draws=20)
        fired = [k for k, i in result.indicators.items() if i["fired"]]
        named = (not fired) if control.expected is None else control.expected in fired
        rows.append({"control": control.name, "expected": control.expected or "none", "fired": fired,
                     "verdict": result.verdict, "masked": control.masked,
                     "right": named and (result.verdict == "masked") == control.masked,
                     "clean": result.columns["clean"]["accuracy"], "pgd20": result.columns["pgd20"]["accuracy"],
                     "worst": result.columns["worst"]["accuracy"]})
        if progress:
            print(f"{control.name}: {result.verdict}; fired: {', '.join(fired) or 'none'}", flush=True)
    return rows


def self_test_markdown(rows: list[dict]) -> str:
    lines = ["| control | must fire | fired | verdict | clean | CE-PGD-20 | worst | known answer |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['control']} | {r['expected']} | {', '.join(r['fired']) or 'none'} | {r['verdict']} | "
              f"{r['clean']:.1f} | {r['pgd20']:.1f} | {r['worst']:.1f} | {'yes' if r['right'] else '**no**'} |"
              for r in rows]
    return "\n".join(lines)
