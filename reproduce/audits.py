"""Is a model's robustness real? An audit of any model: the paper's attacks beside attacks built not to
trust its gradients, every known sign of a failed evaluation, and a verdict with its reasons.

    from reproduce import audit
    result = audit(model, images, labels, eps=8 / 255)   # any nn.Module mapping images in [0, 1] to logits
    result.verdict, result.summary                       # "sound", "incomplete" or "masked", in a sentence
    result.indicators                                    # every indicator: value, threshold, fired, source
    result.write("audit/")                               # audit.json, audit.md and the figures

Cross-entropy PGD can overstate robustness when a model hides its gradients: a saturated or scaled
softmax, a non-differentiable input transform, shattered gradients, randomness. The audit runs Table I's
attacks at `eps` and the masking report's (CW-PGD-20, APGD-DLR, targeted APGD, the gradient-free Square),
random noise of the budget, PGD-20 at other step sizes and with no bound, PGD against eps, its number of
steps and the attacker's logit scale and, given a `surrogate`, transfers 20PGD from it. From these it
computes the indicators of `reproduce.indicators` (Pintor et al.'s indicators of attack failure,
AutoAttack's checks, Carlini et al.'s checklist) and the paired comparisons below, and gives a verdict
(`verdict`): masked where masking indicators of two independent families agree, incomplete where any
indicator fired or the per-image worst case lies below CE-PGD-20 beyond chance (quote the worst case),
sound otherwise.

"Beyond chance" is McNemar's exact test on the images one attack breaks and the other leaves right
(one-sided p < 0.025), with a floor on the gap. The masking report gives each model the verdict of the
same code (`attack_indicators`, `verdict`) on what it measured. Every attack is seeded by
`evaluation.column_seed`.
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
    check_logits,
    column_seed,
    eps_curve,
    score_columns,
    transfer_correct,
)
from .indicators import (
    FAMILIES,
    RANDOM_ALPHA,
    SQUARE_ALPHA,
    UNSTABLE,
    gradients_at_inference,
    incomplete_optimisation,
    indicator,
    probability_outputs,
    random_noise_right,
    randomised_outputs,
    silent_success,
    transfer_failure,
    unavailable_gradients,
    unconstrained_attack_failure,
    unstable_predictions,
)
from .loader import DeviceLoader
from .protocol import LOGIT_SCALES, MASKING_COLUMNS, PGD20_COLUMN, TABLE1, PGD20x20
from .stats import wilson_interval

# A CE input gradient whose largest entry is below this counts as zero: at float32 a saturated softmax
# (a true-class probability of exactly 1) gives exactly zero, a working one gives 1e-9 or more.
ZERO_GRADIENT = 1e-12
SIGNIFICANCE = 0.025  # one-sided McNemar: a paired 95% interval of the difference that excludes zero
MIN_GAP = 5.0  # points: a sound model often loses 1-3 points to an attack stronger than PGD-20; masking, more
EPS_END_MAX = 10.0  # percent: PGD accuracy at eps 128/255 above this has not fallen as it must
PAIRED_GAP = 1.0  # points: the floor of the paired comparisons that say an attack did not converge
# Where the source fires on a single image, the audit fires on a share of them (points of the images it
# measures), so that one image of an honest model does not decide (docs/audit.md gives each threshold):
SILENT = 1.0  # silent success
INCOMPLETE = 10.0  # incomplete optimisation, of the images CE-PGD-20 leaves right
UNCONSTRAINED = 1.0  # unconstrained attack failure, of the images the model classifies right
ZERO_DLR = 1.0  # AutoAttack's zero DLR gradients
# Budgets of the checks the paper's attacks do not give (parameters of `audit`):
NOISE_DRAWS = 50  # random corners of the eps-ball per image
UNSTABLE_DRAWS = 100  # uniform draws per image for unstable predictions (the source's gamma)
STEP_SWEEP = (1 / 16, 1 / 2)  # PGD-20's step as a share of eps, beside Table I's 1/4
UNBOUNDED_STEP = 0.1  # PGD-20 with eps 1 (no bound in [0, 1]): its step
AA_CHECK_IMAGES = 250  # AutoAttack runs its checks on its first batch (bs = 250)
STEPS = (1, 2, 5, 10, 20, 40)  # the curve against PGD's steps; its last doubling, 20 to 40, is a check
SCALE_INVARIANT = ("pgd20_cw", "apgd_dlr", "apgd_t")
TITLES = {"clean": "Clean", "fgsm": "FGSM", "bim7": "BIM (7)", "pgd7": "PGD (7)", "pgd20": "CE-PGD-20",
          "pgd20x20": "20PGD (20)", "mim40": "MIM (40)", "aa": "AutoAttack", "pgd20_cw": "CW-PGD-20",
          "apgd_dlr": "APGD-DLR", "apgd_t": "APGD-T", "square": "Square", "transfer": "transfer 20PGD",
          "worst": "worst case", "noise": "random noise", "pgd20_step0.0625": "PGD-20 (step eps/16)",
          "pgd20_step0.5": "PGD-20 (step eps/2)"}


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


def beats(breaks: int, spares: int, n: int, floor: float = MIN_GAP) -> tuple[bool, float, float]:
    """(whether an attack that breaks `breaks` images the reference leaves right and spares `spares` it
    breaks is stronger beyond chance and by `floor` points or more, its gap in points on `n` images,
    McNemar's one-sided p)."""
    gap = _gap(breaks, spares, n)
    p = binomtest(breaks, breaks + spares, 0.5, alternative="greater").pvalue if breaks else 1.0
    return gap >= floor and p < SIGNIFICANCE, gap, p


def _gap(breaks: int, spares: int, n: int) -> float:
    return 100.0 * (breaks - spares) / max(n, 1)


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


def attack_indicators(scores: dict, gradient: list, iterative: list, free: dict,
                      not_run: str = "") -> tuple[dict, torch.Tensor]:
    """(indicators, the per-image worst case over `gradient`): every indicator that the attacks' own
    per-image scores give, one code for the audit and the masking report. `scores`: `score_columns`'
    per-example result, CE-PGD-20 ("pgd20") among it; `gradient`: its columns of gradient attacks;
    `iterative`: those of the CE attacks whose iterates the tables score (silent success); `free`: right per
    image under the gradient-free attacks, {"square": ... (its first images), "transfer": ... (optional)}.
    The indicators: scale-invariant losses against CE and gradient-free attacks against every gradient one
    (paired, the audit's v1 rules), silent success, AutoAttack's zero DLR gradients and Square beating the
    others, and Carlini et al.'s single step against the iterative attack and restarts."""
    found = {}
    invariant = [c for c in SCALE_INVARIANT if c in scores]
    counts = {c: discordant(scores["pgd20"]["correct"], scores[c]["correct"]) for c in invariant}
    reasons = attack_flags(counts, {c: scores[c]["n"] for c in invariant})
    found["scale-invariant loss beats CE"] = indicator(
        "scale-invariant loss beats CE", max([_gap(*counts[c], scores[c]["n"]) for c in invariant], default=0.0),
        f"{MIN_GAP:g} points, p < {SIGNIFICANCE}", bool(reasons),
        "; ".join(reasons or [compared(c, *counts[c], scores[c]["n"]) for c in invariant]) + not_run)
    worst_gradient = worst_case({c: scores[c] for c in gradient})
    counts = {c: discordant(worst_gradient, right) for c, right in free.items()}
    reasons = attack_flags(counts, {c: len(free[c]) for c in free}, against="every gradient attack")
    found["gradient-free beats gradients"] = indicator(
        "gradient-free beats gradients", max(_gap(*counts[c], len(free[c])) for c in free),
        f"{MIN_GAP:g} points, p < {SIGNIFICANCE}", bool(reasons), "; ".join(reasons) or (
            ("Square and transfer break" if "transfer" in free else "Square breaks") + " no more images than the "
            "gradient attacks, beyond chance" + ("" if "transfer" in free else " (no surrogate: transfer not run)")))
    silent, _ = silent_success(scores, iterative)
    found["silent success"] = indicator("silent success", silent, SILENT, silent > SILENT,
                                        f"{silent:.1f}% of images were misclassified at an iterate of a CE attack "
                                        "and right at its final one (the tables score the final iterate)")
    dlr = zero_dlr_gradient_share(scores)
    found["zero DLR gradients"] = indicator(
        "zero DLR gradients", dlr, ZERO_DLR, dlr == dlr and dlr > ZERO_DLR,
        "not measured (no DLR attack ran)" if dlr != dlr else
        f"AutoAttack's check found a zero DLR input gradient on {dlr:.1f}% of images (DLR is flat where the true "
        "class is not among the logits it compares)")
    square_n = len(free["square"])
    others = {c: 100.0 * scores[c]["correct"][:square_n].float().mean().item() for c in gradient}
    square = 100.0 * free["square"].float().mean().item()
    below = min(others.values()) - square
    found["Square beats the others"] = indicator(
        "Square beats the others", below, SQUARE_ALPHA, below > SQUARE_ALPHA,
        f"Square {square:.1f}% against the strongest other attack's {min(others.values()):.1f}% on its "
        f"{square_n} images")
    found["single step beats iterative"] = _paired("single step beats iterative", scores, ["fgsm"], MIN_GAP)
    found["restarts help"] = _paired("restarts help", scores, ["pgd20x20"], PAIRED_GAP)
    return found, worst_gradient


def unavailable_indicator(interrupted: bool, zero: float) -> dict:
    """Pintor et al.'s unavailable gradients from `indicators.unavailable_gradients`' two metrics."""
    return indicator("unavailable gradients", zero, "any image, or no graph", interrupted or zero > 0,
                     "the input gradient cannot be computed" if interrupted else
                     f"{zero:.1f}% of images have an all-zero CE input gradient at the predicted class")


def _paired(name: str, scores: dict, candidates: list, floor: float) -> dict:
    """The indicator `name`: the strongest of `candidates` against CE-PGD-20, image by image (`beats`)."""
    n = len(scores["pgd20"]["correct"])
    counts = {c: discordant(scores["pgd20"]["correct"], scores[c]["correct"]) for c in candidates}
    best = max(candidates, key=lambda c: _gap(*counts[c], n))
    stronger, gap, p = beats(*counts[best], n, floor)
    return indicator(name, gap, f"{floor:g} points, p < {SIGNIFICANCE}", stronger, compared(best, *counts[best], n))


def at_eps(spec: AttackSpec | None, eps: float) -> AttackSpec | None:
    """A spec of Table I or the masking report (built for eps 8/255) at `eps`, its step in proportion."""
    if spec is None or eps == spec.eps:
        return spec
    step = spec.step * eps / spec.eps if spec.step else spec.step
    return replace(spec, eps=eps, step=step)


@dataclass
class Audit:
    """What `audit` found: flagged (the verdict is not "sound"), one sentence per indicator that fired, the
    number of test images, eps, each attack's accuracy with its 95% Wilson interval, every indicator, the
    curves, and the verdict ("sound", "incomplete" or "masked") with its sentence."""

    flagged: bool
    reasons: list
    n: int
    eps: float
    columns: dict  # {column: {"accuracy", "low", "high", "n"}}
    indicators: dict  # {name: {"value", "threshold", "fired", "source", "kind", "why"}} (reproduce.indicators)
    curves: dict = field(default_factory=dict)  # {"eps" | "steps" | "logit_scale": {x: accuracy}}
    titles: dict = field(default_factory=dict)  # column titles as the profile ran them (20PGD's restarts)
    verdict: str = "sound"
    summary: str = ""

    def title(self, column: str) -> str:
        return self.titles.get(column) or TITLES.get(column, column)

    def to_json(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = [f"### Robustness audit: **{self.verdict}**", "", self.summary, "",
                 f"{self.n} test images, L-inf eps {self.eps * 255:g}/255; ± is half the 95% Wilson interval.", "",
                 "| attack | accuracy (%) | 95% interval | images |", "|---|---|---|---|"]
        for name, c in self.columns.items():
            lines.append(f"| {self.title(name)} | {c['accuracy']:.2f} | [{c['low']:.1f}, {c['high']:.1f}] | "
                         f"{c['n']} |")
        lines += ["", "| indicator | fired | value | threshold | what it saw | source |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} ({i['kind']}) | {'**yes**' if i['fired'] else 'no'} | {_number(i['value'])} | "
                  f"{i['threshold']} | {i['why']} | {i['source']} |" for name, i in self.indicators.items()]
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
                               verdicts={"model": self.verdict},
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
          iterations=STEPS, noise_draws: int = NOISE_DRAWS, unstable_draws: int = UNSTABLE_DRAWS) -> Audit:
    """Audit `model` (any torch.nn.Module mapping images in [0, 1] to logits; evaluated in float32, in eval
    mode, on `device`) on `images` (uint8 or float, any number of channels) and `labels`, at L-inf `eps`.
    `profile` sets the budgets (restarts, steps, queries; `smoke` by default; Square, random noise and
    unstable predictions run on its first `square_images` images); `surrogate`, a model whose 20PGD images
    are transferred; `iterations`, the PGD steps of the curve against steps; `noise_draws` random corners
    of the eps-ball per image; `unstable_draws` uniform draws per image for unstable predictions. Every
    attack is seeded by `evaluation.column_seed` from `key` (or the `experiment`'s key); with `experiment`
    and `store` the store's caches are read and filled."""
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
    base20 = at_eps(PGD20_COLUMN.spec(profile), eps)
    sweep = [replace(base20, step=eps * f, label=f"pgd20_step{f:g}") for f in STEP_SWEEP]
    unbounded = replace(base20, eps=1.0, step=UNBOUNDED_STEP, label="pgd20_unbounded")
    specs = [s for s in gradient_specs + masking_specs if classes >= _classes_needed(s)] + sweep + [unbounded]
    skipped = [s.column for s in gradient_specs + masking_specs if classes < _classes_needed(s)]
    scores = score_columns(model, images, labels, specs, key=key, progress=progress, per_example=True, **cached)
    n = len(labels)
    gradient = [k for k in scores if k in {s.column for s in gradient_specs + masking_specs}
                and k not in ("clean", "square")]
    m = min(n, profile.square_images or n)
    torch.manual_seed(column_seed(key, "noise"))
    noise = random_noise_right(model, images[:m], labels[:m], eps, noise_draws)
    free = {"square": scores["square"]["correct_any_iterate"]}
    if surrogate is not None:
        torch.manual_seed(column_seed(key, "transfer"))
        spec = next(s for s in gradient_specs if s.column == "pgd20x20")
        crafted = transfer_correct(surrogate, {"model": model, "surrogate": surrogate}, images, labels, spec)
        free["transfer"] = crafted["model"]
    iterative = [s.column for s in gradient_specs if s.name in ("bim", "pgd", "mim")]
    not_run = f" ({', '.join(TITLES[c] for c in skipped)} not run: too few classes for DLR)" if skipped else ""
    found, worst_gradient = attack_indicators(scores, gradient, iterative, free, not_run=not_run)

    # Pintor et al., from the model
    survivors = scores["pgd20"]["correct"].clone()
    torch.manual_seed(column_seed(key, "incomplete"))
    stuck = incomplete_optimisation(model, images[survivors], labels[survivors], base20) if survivors.any() else 0.0
    found["incomplete optimisation"] = indicator(
        "incomplete optimisation", stuck, INCOMPLETE, stuck > INCOMPLETE,
        f"CE-PGD-20's loss still improved over its last 10 steps on {stuck:.1f}% of the images it left right")
    if surrogate is not None:
        failed = transfer_failure(crafted["surrogate"], crafted["model"])
        found["transfer failure"] = indicator(
            "transfer failure", failed, None, False, f"{failed:.1f}% of the surrogate's 20PGD images fool it and not "
            "the model (information: a surrogate of another model, not the model's own approximation, fails so by "
            "design)")
    found["unavailable gradients"] = unavailable_indicator(*unavailable_gradients(model, images, labels))
    torch.manual_seed(column_seed(key, "unstable"))
    unstable = unstable_predictions(model, images[:m], labels[:m], eps, unstable_draws)
    found["unstable predictions"] = indicator(
        "unstable predictions", unstable, UNSTABLE, unstable > UNSTABLE,
        f"CE moves by {unstable:.2f} of itself, on average, under uniform noise of width eps ({unstable_draws} draws "
        f"on {m} images)")
    clean_right = scores["clean"]["correct"]
    failure = unconstrained_attack_failure(clean_right, scores["pgd20_unbounded"]["correct_any_iterate"])
    found["unconstrained attack failure"] = indicator(
        "unconstrained attack failure", failure, UNCONSTRAINED, failure > UNCONSTRAINED,
        f"PGD-20 with no bound (eps 1) leaves {failure:.1f}% of the images the model classifies right")

    # AutoAttack's checks
    batch = images[:AA_CHECK_IMAGES].to(device)
    batch = batch.float() / 255 if batch.dtype == torch.uint8 else batch
    torch.manual_seed(column_seed(key, "randomised"))
    spread = randomised_outputs(model, batch, labels[:AA_CHECK_IMAGES].to(device))
    found["randomised outputs"] = indicator(
        "randomised outputs", spread, RANDOM_ALPHA, spread > RANDOM_ALPHA,
        "the predictions change between forward passes" if spread == float("inf") else
        f"outputs of five passes differ by at most {spread:.2g} (L2, normalised)")
    probabilities = probability_outputs(model, batch)
    found["probability outputs"] = indicator(
        "probability outputs", probabilities, "outputs in [0, 1] summing to 1", probabilities,
        "the model returns probabilities, not logits" if probabilities else "the outputs are not probabilities")
    calls = gradients_at_inference(model, batch)
    found["gradients at inference"] = indicator(
        "gradients at inference", calls, "any call", calls > 0,
        f"{calls} calls of torch's gradient functions in one forward pass")

    # Carlini et al.
    steps_points = {str(k): replace(base20, steps=k, label=f"pgd{k}") for k in iterations}
    curves = {"eps": eps_curve(model, images, labels, key=key, experiment=experiment, store=store)}  # any eps
    steps_scores = _points(model, images, labels, key, steps_points, specs, scores, cached)
    curves["steps"] = {x: v["final"] for x, v in steps_scores.items()}
    doubled = [(a, 2 * a) for a in iterations if 2 * a in iterations]
    found["step size sweep helps"] = _paired("step size sweep helps", scores, [c.column for c in sweep], PAIRED_GAP)
    if doubled:
        a, b = max(doubled)
        counts = discordant(steps_scores[str(a)]["correct"], steps_scores[str(b)]["correct"])
        stronger, gap, p = beats(*counts, n, PAIRED_GAP)
        found["doubling the steps helps"] = indicator(
            "doubling the steps helps", gap, f"{PAIRED_GAP:g} points, p < {SIGNIFICANCE}", stronger,
            compared(f"PGD-{b}", *counts, n, against=f"PGD-{a}"))
    counts = discordant(worst_gradient[:m], noise)
    stronger, gap, p = beats(*counts, m)
    found["noise beats gradients"] = indicator(
        "noise beats gradients", gap, f"{MIN_GAP:g} points, p < {SIGNIFICANCE}", stronger,
        compared(f"random noise ({noise_draws} corners of the eps-ball)", *counts, m, against="every gradient attack"))
    rises = [r for r in eps_curve_flags(curves["eps"], scores["clean"]["final"]) if "rises" in r]
    found["CE-PGD rises with eps"] = indicator(
        "CE-PGD rises with eps", list(curves["eps"].values())[-1], f"a rise above {ORDER_TOLERANCE:g} point",
        bool(rises), rises[0] if rises else "CE-PGD accuracy falls with eps, to "
        f"{list(curves['eps'].values())[-1]:.1f}% at 128/255")
    curves["logit_scale"] = {x: v["final"] for x, v in _points(
        model, images, labels, key, {f"{t:g}": base20 if t == 1.0 else
                                     replace(base20, logit_scale=t, label=f"pgd20_T{t:g}") for t in LOGIT_SCALES},
        specs, scores, cached).items()}

    columns = {k: accuracy_interval(v["final"], v["n"]) for k, v in scores.items() if k != "pgd20_unbounded"}
    columns["noise"] = accuracy_interval(100.0 * noise.float().mean().item(), m)
    if "transfer" in free:
        columns["transfer"] = accuracy_interval(100.0 * free["transfer"].float().mean().item(), n)
    every = worst_case({**{k: v for k, v in scores.items() if k != "pgd20_unbounded"},
                        **{c: {"correct_any_iterate": right} for c, right in free.items()},
                        "noise": {"correct_any_iterate": noise}})
    columns["worst"] = accuracy_interval(100.0 * every.float().mean().item(), n)
    level, summary = verdict(found, discordant(scores["pgd20"]["correct"], every), n, columns["worst"])
    reasons = [f"{name}: {i['why']}" for name, i in found.items() if i["fired"]]
    return Audit(level != "sound", reasons, n, eps, columns, found, curves,
                 titles={"pgd20x20": PGD20x20.title_at(profile)}, verdict=level, summary=summary)


def verdict(found: dict, worst_counts: tuple, n: int, worst: dict) -> tuple[str, str]:
    """(level, sentence): "masked" where masking indicators of two FAMILIES fired; "incomplete" where any
    indicator fired or the per-image worst case lies below CE-PGD-20 beyond chance (then the worst case is
    the number to quote); else "sound"."""
    families = sorted({FAMILIES[k] for k, i in found.items() if i["fired"] and k in FAMILIES})
    breaks, spares = worst_counts
    gap = 100.0 * (breaks - spares) / max(n, 1)
    half = 196.0 * ((breaks + spares) - (breaks - spares) ** 2 / max(n, 1)) ** 0.5 / max(n, 1)
    below = f"{gap:.1f} points [{gap - half:.1f}, {gap + half:.1f}] below CE-PGD-20"
    quote = f"quote the worst case, {worst['accuracy']:.1f}% [{worst['low']:.1f}, {worst['high']:.1f}]"
    if len(families) >= 2:
        return "masked", (f"gradient masking or obfuscation: {' and '.join(families)} agree; the strongest "
                          f"attack is {below}; {quote}")
    fired = [k for k, i in found.items() if i["fired"]]
    beyond = breaks > 0 and binomtest(breaks, breaks + spares, 0.5, alternative="greater").pvalue < SIGNIFICANCE
    if fired or beyond:
        why = f" ({', '.join(fired)})" if fired else ""
        return "incomplete", f"the evaluation is incomplete{why}: the strongest attack is {below}; {quote}"
    return "sound", f"sound: no indicator fired and no attack beats CE-PGD-20 beyond chance ({below})"


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


def _number(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def accuracy_interval(accuracy: float, n: int) -> dict:
    low, high = wilson_interval(accuracy, n)
    return {"accuracy": round(accuracy, 2), "low": round(low, 2), "high": round(high, 2), "n": n}


def _identity(spec: AttackSpec) -> str:
    return json.dumps(spec.identity(), sort_keys=True, default=str)


def _points(model, images, labels, key: str, points: dict, specs: list, scores: dict, cached: dict) -> dict:
    """{x: scores (final, any-iterate, a bit per image)} of each point's spec, scored as a column
    (`score_columns`: seeded by its label, from the store's caches where `cached` names them); a point that
    is one of the audit's `specs` (PGD-20 at T = 1 and 20 steps, PGD-7) takes that column's scores."""
    done = {_identity(s) for s in specs}
    todo = [s for s in points.values() if _identity(s) not in done]
    new = score_columns(model, images, labels, todo, key=key, per_example=True, **cached) if todo else {}
    return {x: (scores if _identity(s) in done else new)[s.column] for x, s in points.items()}
