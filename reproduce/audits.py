"""Is a model's robustness real? An audit of any model: the paper's attacks beside attacks built not to
trust its gradients, and a verdict with its reasons.

    from reproduce import audit
    result = audit(model, images, labels, eps=8 / 255)   # any nn.Module mapping images in [0, 1] to logits
    result.flagged, result.reasons                       # one sentence per rule that fired
    result.write("audit/")                               # audit.json, audit.md and the figures

Cross-entropy PGD can overstate robustness when a model hides its gradients: a saturated or scaled
softmax, a non-differentiable input transform, shattered gradients. The audit runs Table I's attacks at
`eps` and the masking report's (CW-PGD-20, APGD-DLR, targeted APGD, the gradient-free Square), PGD against
eps to the end of the range, against its number of steps and against the attacker's logit scale, counts
the images whose CE input gradient is zero and, given a `surrogate`, transfers 20PGD from it. A model is
flagged when one of these rules fires:

- an attack on a scale-invariant loss (CW margin, DLR) beats CE-PGD-20 beyond chance;
- the gradient-free Square attack, or transfer from the surrogate, breaks images that every gradient
  attack leaves right, beyond chance;
- most test images have a zero CE input gradient;
- CE-PGD accuracy does not fall with eps as it must (it rises, or stays above 10% at eps 128/255).

"Beyond chance" is McNemar's exact test on the images one attack breaks and the other leaves right
(one-sided p < 0.025) with a gap of at least MIN_GAP points: the masking report's rule
(`masking.flags` calls the same functions). Every attack is seeded by `evaluation.column_seed`.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import binomtest

from .attacks import EPS, AttackSpec, attack_mode, input_gradient
from .config import Profile, get_profile
from .devices import resolve_device
from .evaluation import (
    FOREIGN_KEY,
    ORDER_TOLERANCE,
    cached_eps_curve,
    cached_value,
    check_logits,
    column_seed,
    eps_curve,
    score_columns,
    transfer_correct,
)
from .loader import DeviceLoader
from .protocol import ITERATION_SWEEP, LOGIT_SCALES, MASKING_COLUMNS, PGD20_COLUMN, TABLE1, PGD20x20
from .stats import wilson_interval

# A CE input gradient whose largest entry is below this counts as zero: at float32 a saturated softmax
# (a true-class probability of exactly 1) gives exactly zero, a working one gives 1e-9 or more.
ZERO_GRADIENT = 1e-12
SIGNIFICANCE = 0.025  # one-sided McNemar: a paired 95% interval of the difference that excludes zero
MIN_GAP = 5.0  # points: a sound model often loses 1-3 points to an attack stronger than PGD-20; masking, more
MOST = 50.0  # percent of images with a zero CE gradient above which CE attacks mostly cannot move
EPS_END_MAX = 10.0  # percent: PGD accuracy at eps 128/255 above this has not fallen as it must
SCALE_INVARIANT = ("pgd20_cw", "apgd_dlr", "apgd_t")
TITLES = {"clean": "Clean", "fgsm": "FGSM", "bim7": "BIM (7)", "pgd7": "PGD (7)", "pgd20": "CE-PGD-20",
          "pgd20x20": "20PGD (20)", "mim40": "MIM (40)", "aa": "AutoAttack", "pgd20_cw": "CW-PGD-20",
          "apgd_dlr": "APGD-DLR", "apgd_t": "APGD-T", "square": "Square", "transfer": "transfer 20PGD",
          "worst": "worst case"}


def zero_gradient_share(model, images, labels, batch_size: int = 250) -> float:
    """The share (percent) of images whose CE input gradient is zero (every entry below ZERO_GRADIENT),
    at the clean image, in eval mode."""
    device = next(model.parameters()).device
    zero = 0
    with attack_mode(model):
        for x, y in DeviceLoader(images, labels, batch_size, device=device):
            grad = input_gradient(model, x, y)
            zero += int((grad.flatten(1).abs().amax(1) < ZERO_GRADIENT).sum())
    return 100.0 * zero / max(len(labels), 1)


def zero_dlr_gradient_share(columns: dict) -> float:
    """The share (percent) of images on which AutoAttack's own zero-gradient check (pyautoattack's
    `check_zero_gradients`, at the starting point of APGD on DLR) fired, the larger of APGD-DLR's and
    APGD-T's; NaN where neither ran or their caches predate the check."""
    shares = [100.0 * columns[c]["zero_dlr_gradient"] / max(columns[c]["n"], 1) for c in ("apgd_dlr", "apgd_t")
              if c in columns and columns[c].get("zero_dlr_gradient") is not None]
    return max(shares) if shares else float("nan")


def worst_case(columns: dict) -> torch.Tensor:
    """Per image, right under every attack: the AND of each column's any-iterate bits. A column measured
    on the first k images only (Square) counts for those k."""
    n = max(len(c["correct_any_iterate"]) for c in columns.values())
    right = torch.ones(n, dtype=torch.bool)
    for c in columns.values():
        bits = c["correct_any_iterate"]
        right[:len(bits)] &= bits
    return right


def discordant(reference: torch.Tensor, other: torch.Tensor) -> tuple[int, int]:
    """(images `other` breaks that `reference` leaves right, images `reference` breaks that `other` leaves
    right), bools of "right" per image, on the images both scored (the first len(other))."""
    ref = reference[:len(other)]
    return int((ref & ~other).sum()), int((~ref & other).sum())


def beats(breaks: int, spares: int, n: int) -> tuple[bool, float, float]:
    """(whether an attack that breaks `breaks` images the reference leaves right and spares `spares` it
    breaks is stronger beyond chance, its gap in points on `n` images, McNemar's one-sided p)."""
    gap = 100.0 * (breaks - spares) / max(n, 1)
    p = binomtest(breaks, breaks + spares, 0.5, alternative="greater").pvalue if breaks else 1.0
    return gap >= MIN_GAP and p < SIGNIFICANCE, gap, p


def attack_flags(counts: dict, n_images: dict, against: str = "CE-PGD-20") -> list[str]:
    """The reasons to flag: each attack of `counts` ({column: (breaks, spares)}) that leaves at least
    MIN_GAP points fewer images right than the reference on the same `n_images[column]` images, beyond
    chance (`beats`)."""
    reasons = []
    for column, (breaks, spares) in counts.items():
        stronger, gap, p = beats(breaks, spares, n_images[column])
        if stronger:
            reasons.append(f"{TITLES.get(column, column)} {gap:.1f} points below {against} (breaks {breaks} images "
                           f"it leaves right, spares {spares}; p = {p:.2g})")
    return reasons


def compared(column: str, breaks: int, spares: int, n: int, against: str = "CE-PGD-20") -> str:
    """What the paired counts of an attack against the reference say, in words: within chance, or beyond
    chance but under the MIN_GAP floor (or above it: then `attack_flags` flags it)."""
    stronger, gap, p = beats(breaks, spares, n)
    where = f"{abs(gap):.1f} points {'below' if gap >= 0 else 'above'} {against} ({breaks} to {spares} images"
    if p >= SIGNIFICANCE:
        return f"{TITLES.get(column, column)} {where}: within chance)"
    floor = "at or above" if stronger else "under"
    return f"{TITLES.get(column, column)} {where}, p = {p:.1g}: beyond chance, {floor} the {MIN_GAP:g}-point floor)"


def eps_curve_flags(curve: dict, clean: float) -> list[str]:
    """Reasons from PGD accuracy against eps ({eps as text: accuracy}): it must not rise, and must fall
    below EPS_END_MAX by the end of the range."""
    values = list(curve.values())
    reasons = []
    if any(b > a + ORDER_TOLERANCE for a, b in zip(values, values[1:])):
        reasons.append("CE-PGD accuracy rises with eps (" + " -> ".join(f"{v:.1f}" for v in values) + ")")
    if values[-1] > EPS_END_MAX:
        reasons.append(f"CE-PGD accuracy stays at {values[-1]:.1f}% at eps {float(list(curve)[-1]) * 255:.0f}/255 "
                       f"(clean {clean:.1f}%): it does not fall as it must")
    return reasons


def at_eps(spec: AttackSpec | None, eps: float) -> AttackSpec | None:
    """A spec of Table I or the masking report (built for eps 8/255) at `eps`, its step in proportion."""
    if spec is None or eps == spec.eps:
        return spec
    step = spec.step * eps / spec.eps if spec.step else spec.step
    return replace(spec, eps=eps, step=step)


@dataclass
class Audit:
    """What `audit` found: the verdict, one sentence per rule that fired, the number of test images, eps,
    each attack's accuracy with its 95% Wilson interval, and each check with its verdict, numbers and
    curves."""

    flagged: bool
    reasons: list
    n: int
    eps: float
    columns: dict  # {column: {"accuracy", "low", "high", "n"}}
    per_check: dict  # {check: {"verdict": "flag" | "pass" | "not run", "why": sentence, ...numbers}}
    curves: dict = field(default_factory=dict)  # {"eps" | "steps" | "logit_scale": {x: accuracy}}
    titles: dict = field(default_factory=dict)  # column titles as the profile ran them (20PGD's restarts)

    def title(self, column: str) -> str:
        return self.titles.get(column) or TITLES.get(column, column)

    def to_json(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        verdict = "**FLAGGED**: its robustness under CE attacks is not real" if self.flagged else \
            "not flagged: no rule fired"
        lines = [f"### Robustness audit: {verdict}", "",
                 f"{self.n} test images, L-inf eps {self.eps * 255:g}/255; ± is half the 95% Wilson interval.", "",
                 "| attack | accuracy (%) | 95% interval | images |", "|---|---|---|---|"]
        for name, c in self.columns.items():
            lines.append(f"| {self.title(name)} | {c['accuracy']:.2f} | [{c['low']:.1f}, {c['high']:.1f}] | "
                         f"{c['n']} |")
        lines += ["", "| check | verdict | why |", "|---|---|---|"]
        lines += [f"| {name} | {c['verdict']} | {c['why']} |" for name, c in self.per_check.items()]
        if self.reasons:
            lines += ["", "Reasons:"] + [f"- {r}" for r in self.reasons]
        return "\n".join(lines) + "\n"

    def write(self, out_dir, profile=None) -> Path:
        """audit.json, audit.md and the figures (accuracy per attack, against eps, PGD steps and the
        attacker's logit scale) in `out_dir`."""
        from . import figures
        from .store import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.json").unlink(missing_ok=True)  # a kill before the end leaves no audit.json of another audit
        atomic_write_text(out / "audit.md", self.markdown())
        summary = pd.DataFrame([{"row": "model", "column": k, "mean": c["accuracy"], "ci_low": c["low"],
                                 "ci_high": c["high"]} for k, c in self.columns.items() if k != "clean"])
        figures.masking_report(summary, {c: self.title(c) for c in self.columns}, out / "audit_attacks.png",
                               profile=profile,
                               flagged=["model"] if self.flagged else [],
                               title=f"Accuracy under each attack (eps {self.eps * 255:g}/255, {self.n} images)")
        labels = {"eps": ("eps (x 1/255)", False), "steps": ("PGD steps", True),
                  "logit_scale": ("attacker's logit scale T (CE of T x logits)", True)}
        for name, curve in self.curves.items():
            rows = [dict(x=float(k) * (255 if name == "eps" else 1), accuracy=v, panel="CE-PGD", line="model",
                         ci_low=wilson_interval(v, self.n)[0], ci_high=wilson_interval(v, self.n)[1])
                    for k, v in curve.items()]
            x_label, log_x = labels[name]
            figures.curve_panels(pd.DataFrame(rows), "x", "panel", "line", out / f"audit_{name}.png",
                                 x_label=x_label, log_x=log_x, profile=profile,
                                 title=f"CE-PGD accuracy against {x_label.split(' (')[0]} (band: 95% interval)")
        # last, what programs read: present only beside the Markdown and figures of the same audit
        atomic_write_text(out / "audit.json", json.dumps(self.to_json(), indent=2, default=float) + "\n")
        return out


def audit(model, images, labels, eps: float = EPS, *, profile: Profile | str = "smoke", surrogate=None,
          device=None, experiment=None, store=None, key: str = FOREIGN_KEY, progress: bool = False,
          iterations=ITERATION_SWEEP) -> Audit:
    """Audit `model` (any torch.nn.Module mapping images in [0, 1] to logits; evaluated in float32, in eval
    mode, on `device`) on `images` (uint8 or float, any number of channels) and `labels`, at L-inf `eps`.
    `profile` sets the budgets (restarts, steps, queries; `smoke` by default); `surrogate`, a model whose
    20PGD images are transferred; `iterations`, the PGD steps of the curve against steps. Every attack is
    seeded by `evaluation.column_seed` from `key` (or the `experiment`'s key); with `experiment` and
    `store` the store's caches are read and filled."""
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1] (images live in [0, 1]); got {eps}")
    images, labels = check_inputs(images, labels)
    profile = get_profile(profile)
    device = resolve_device(device)
    model = _float32(_module(model, "model")).to(device).eval()
    classes = check_logits(model, images, int(labels.max()) + 1)
    if surrogate is not None:  # checked now, not after the whole audit
        surrogate = _float32(_module(surrogate, "surrogate")).to(device).eval()
        try:
            check_logits(surrogate, images, classes)
        except ValueError as e:
            raise ValueError(f"the surrogate: {e}") from None
    key = experiment.key if experiment is not None else key
    cached = dict(experiment=experiment, store=store) if eps == EPS else {}  # the caches hold eps 8/255 only
    gradient_specs = [at_eps(s, eps) for s in TABLE1.specs(profile)]
    masking_specs = [at_eps(c.spec(profile), eps) for c in MASKING_COLUMNS]
    masking_specs = [replace(s, targets=min(s.targets, classes - 1)) if s.name == "apgd-t" else s
                     for s in masking_specs]
    specs = [s for s in gradient_specs + masking_specs if classes >= _classes_needed(s)]
    skipped = [s.column for s in gradient_specs + masking_specs if classes < _classes_needed(s)]
    scores = score_columns(model, images, labels, specs, key=key, progress=progress, **cached)
    n = len(labels)
    gradient = {k: v for k, v in scores.items() if k not in ("clean", "square")}
    per_check, reasons = {}, []

    # 1. attacks on a scale-invariant loss against CE-PGD-20
    invariant = [c for c in SCALE_INVARIANT if c in scores]
    counts = {c: discordant(scores["pgd20"]["correct"], scores[c]["correct"]) for c in invariant}
    found = attack_flags(counts, {c: scores[c]["n"] for c in invariant})
    not_run = f" ({', '.join(TITLES[c] for c in skipped)} not run: too few classes for DLR)" if skipped else ""
    per_check["scale-invariant loss beats CE"] = _check(
        found, "; ".join(compared(c, *counts[c], scores[c]["n"]) for c in invariant) + not_run, counts=counts)
    # 2. gradient-free and transfer attacks against every gradient attack, image by image
    worst_gradient = worst_case(gradient)
    free = {"square": scores["square"]["correct_any_iterate"]}
    if surrogate is not None:
        torch.manual_seed(column_seed(key, "transfer"))
        spec = at_eps(next(s for s in TABLE1.specs(profile) if s.column == "pgd20x20"), eps)
        free["transfer"] = transfer_correct(surrogate, {"model": model}, images, labels, spec)["model"]
    counts = {c: discordant(worst_gradient, right) for c, right in free.items()}
    found = attack_flags(counts, {c: len(free[c]) for c in free}, against="every gradient attack")
    per_check["gradient-free or transfer beats the gradient attacks"] = _check(
        found, ("Square and transfer break" if surrogate is not None else "Square breaks") + " no more images than the "
        "gradient attacks, beyond chance" + ("" if surrogate is not None else " (no surrogate: transfer not run)"),
        counts=counts)
    # 3. zero gradients
    count = lambda: zero_gradient_share(model, images, labels)  # noqa: E731
    share = cached_value(store, experiment, images, "zero_gradient", count) if cached.get("store") else count()
    per_check["zero CE gradients"] = _check(
        [f"{share:.1f}% of test images have a zero CE input gradient: CE attacks cannot move them"] if share > MOST
        else [], f"{share:.1f}% of test images have a zero CE input gradient (flagged above {MOST:g}%)", share=share)
    dlr = zero_dlr_gradient_share(scores)
    per_check["zero DLR gradients (AutoAttack's check; information)"] = {
        "verdict": "info", "share": dlr,
        "why": "not measured (no DLR attack ran)" if dlr != dlr else
        f"AutoAttack's own check found a zero DLR input gradient on {dlr:.1f}% of test images at the start of "
        "APGD-DLR or APGD-T (DLR is flat where the true class is not among the logits it compares)"}
    messages = sorted({m for v in scores.values() for m in v.get("messages", [])})
    if messages:
        per_check["AutoAttack's other checks (information)"] = {"verdict": "info", "why": " / ".join(messages)}
    # 4. CE-PGD against eps, steps and the attacker's logit scale: each point seeded as a column, read from
    # the store's caches where it has them, so notebook 03's curves and the audit give one number
    base20 = PGD20_COLUMN.spec(profile)
    curves = {"eps": (cached_eps_curve(experiment, model, images, labels, store) if store is not None and
                      experiment is not None else eps_curve(model, images, labels, key=key))}
    for name, points in (("steps", {str(k): replace(at_eps(base20, eps), steps=k, label=f"pgd{k}")
                                    for k in iterations}),
                         ("logit_scale", {f"{t:g}": at_eps(base20, eps) if t == 1.0 else
                                          replace(at_eps(base20, eps), logit_scale=t, label=f"pgd20_T{t:g}")
                                          for t in LOGIT_SCALES})):
        curves[name] = _curve(model, images, labels, key, points, specs, scores, cached)
    found = eps_curve_flags(curves["eps"], scores["clean"]["final"])
    per_check["CE-PGD falls with eps"] = _check(found, "CE-PGD accuracy falls with eps, to "
                                                       f"{list(curves['eps'].values())[-1]:.1f}% at 128/255")
    t = curves["logit_scale"]
    bounds = {s: wilson_interval(v, n) for s, v in t.items()}
    depends = min(b[1] for b in bounds.values()) < max(b[0] for b in bounds.values())
    per_check["logit scale (information)"] = {
        "verdict": "info", "why": ("CE-PGD-20 accuracy depends on the attacker's logit scale (" if depends else
                                   "CE-PGD-20 accuracy is the same at every logit scale (")
        + ", ".join(f"T={s}: {v:.1f}" for s, v in t.items()) + "); not a rule: a confident model's CE saturates "
        "at a large T"}
    for check in per_check.values():
        reasons += check.pop("reasons", [])

    columns = {k: _interval(v["final"], v["n"]) for k, v in scores.items()}
    if "transfer" in free:
        columns["transfer"] = _interval(100.0 * free["transfer"].float().mean().item(), n)
    every = worst_case({**scores, **{c: {"correct_any_iterate": right} for c, right in free.items()}})
    columns["worst"] = _interval(100.0 * every.float().mean().item(), n)
    return Audit(bool(reasons), reasons, n, eps, columns, per_check, curves,
                 titles={"pgd20x20": PGD20x20.title_at(profile)})


def check_inputs(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) as the audit takes them, or a ValueError that names what is wrong and the fix:
    images (N, C, H, W), uint8 or float in [0, 1] (float64 is taken as float32), labels one class index per
    image; numpy arrays and lists are converted."""
    try:
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"images and labels must be tensors, arrays or nested lists of numbers ({e})") from None
    if images.dim() != 4:
        raise ValueError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}: images without a "
                         "channel axis (N, H, W) are images[:, None]; one image is image[None]")
    if len(images) == 0:
        raise ValueError("no images to audit: give at least one (a few hundred for intervals that mean something)")
    if images.dtype not in (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"images must be uint8 (0-255) or float in [0, 1], got {images.dtype}")
    if torch.is_floating_point(images):
        images = images.float()
        if not (float(images.min()) >= 0 and float(images.max()) <= 1):  # NaN fails too
            raise ValueError(f"float images must lie in [0, 1], got [{float(images.min()):.3g}, "
                             f"{float(images.max()):.3g}]: audit the un-normalised images, normalise inside the model")
    if labels.dim() != 1 or torch.is_floating_point(labels) or labels.dtype == torch.bool or len(labels) != len(images):
        raise ValueError(f"labels must be one integer class index per image: got {tuple(labels.shape)} {labels.dtype} "
                         f"labels for {len(images)} images")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(labels.min())}")
    return images, labels.long()


def _module(model, what: str):
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"the {what} must be a torch.nn.Module (a TorchScript module too), got {type(model).__name__}")
    return model


def _classes_needed(spec: AttackSpec) -> int:
    """The classes an attack needs: DLR divides by the gap between the 1st and 3rd logits (3), targeted
    DLR by the 3rd and 4th (4); AutoAttack's standard version runs APGD-T, its reduced one APGD-DLR."""
    if spec.name == "apgd-t" or (spec.name == "autoattack" and spec.version == "standard"):
        return 4
    if (spec.name == "apgd" and spec.loss == "dlr") or spec.name == "autoattack":
        return 3
    return 2


def _float32(model):
    """The model in float32 (a copy when it was not), whatever it was trained in."""
    if all(p.dtype == torch.float32 for p in model.parameters()):
        return model
    return copy.deepcopy(model).float()


def _check(reasons: list, passed: str, **numbers) -> dict:
    numbers = {k: ({c: list(v) for c, v in n.items()} if isinstance(n, dict) else n) for k, n in numbers.items()}
    return {"verdict": "flag" if reasons else "pass", "why": "; ".join(reasons) if reasons else passed,
            "reasons": list(reasons), **numbers}


def _interval(accuracy: float, n: int) -> dict:
    low, high = wilson_interval(accuracy, n)
    return {"accuracy": round(accuracy, 2), "low": round(low, 2), "high": round(high, 2), "n": n}


def _identity(spec: AttackSpec) -> str:
    return json.dumps(spec.identity(), sort_keys=True, default=str)


def _curve(model, images, labels, key: str, points: dict, specs: list, scores: dict, cached: dict) -> dict:
    """{x: accuracy} of each point's spec, scored as a column (`score_columns`: seeded by its label, from
    the store's caches where `cached` names them); a point that is one of the audit's `specs` (PGD-20 at
    T = 1 and 20 steps, PGD-7) takes that column's number."""
    done = {_identity(s) for s in specs}
    todo = [s for s in points.values() if _identity(s) not in done]
    new = score_columns(model, images, labels, todo, key=key, **cached) if todo else {}
    return {x: (scores if _identity(s) in done else new)[s.column]["final"] for x, s in points.items()}
