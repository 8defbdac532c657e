"""Accuracy under attack: the white-box table, the black-box matrix, and the sanity checks.

Every attack is scored two ways in one pass: at its final iterate ("final", as the authors' test.py
scored Tables I-IV, and what the tables show by default) and at every iterate ("any_iterate": an
example counts as broken at its first misclassified iterate, the honest worst case, never above
"final"). Results are cached in each run's eval/ folder under a name that hashes the attack specs, the test
set and the protocol version, so re-running a notebook costs nothing and a changed definition
recomputes.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace

import torch
from filelock import FileLock, Timeout

from .attacks import PGD7, AttackSpec, attack, attack_mode, attack_scored
from .config import PROTOCOL_VERSION
from .devices import autocast
from .loader import DeviceLoader
from .progress import ZERO_GRADIENT_MESSAGE, library_messages, zero_gradient_points
from .progress import bar as progress_bar
from .store import RunStore, StoreError, check_file, read_checked_json, write_checked_json

EPS_SWEEP = (0, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255, 128 / 255)
CURVE_BASE = PGD7  # Table I's PGD-7, scaled to each eps
ORDER_TOLERANCE = 1.0  # points: PGD-20 vs PGD-7 and 20PGD vs PGD-20 may differ by sampling noise
AA_GAP = 10.0  # points: AutoAttack this far below PGD-20 means PGD was fooled by the gradients


SCORINGS = ("final", "any_iterate")
# The key that seeds the columns of a model the store does not know (a user's module): `column_seed`.
FOREIGN_KEY = "module"


def _check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of {list(SCORINGS)} (final: the authors' "
                         "scoring of the last iterate; any_iterate: broken at the first misclassified iterate)")


@torch.no_grad()
def predicts_right(model, x, y, bf16: bool = False) -> torch.Tensor:
    """Whether the model, in eval mode (then put back in the mode it was in), classifies each image of
    a batch right; with `bf16`, in bf16 autocast where the device has it natively, as training runs."""
    with attack_mode(model), autocast(x.device, enabled=bf16):
        return model(x).argmax(1) == y


@torch.no_grad()
def check_logits(model, images, num_classes: int) -> int:
    """A model any table may attack: on a few of `images` it returns finite logits, one per image and at
    least one per class; returns how many logits. Anything else is one ValueError, before any attack runs (a
    model with NaN logits would otherwise score chance in every column)."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    x = images[:8].to(device)
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    with attack_mode(model):
        try:
            logits = model(x)
        except (RuntimeError, TypeError, ValueError, IndexError) as e:  # TorchScript's errors are RuntimeErrors
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
            raise ValueError(f"the model cannot take these images: a batch of shape {tuple(x.shape)} (N, C, H, W) "
                             f"failed with {type(e).__name__}: {first}. Give a model for these images (their "
                             "channels and size), or images of the model's shape") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(x):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model returns {shape} for {len(x)} images; it must return logits of shape "
                         f"({len(x)}, classes)")
    if logits.shape[1] < 2:
        raise ValueError(f"the model returns {logits.shape[1]} logit per image; a classifier under attack needs one "
                         "per class, at least 2 (a binary model with one logit: return torch.cat([-z, z], 1))")
    if logits.shape[1] < num_classes:
        raise ValueError(f"the model returns {logits.shape[1]} logits per image but the dataset has {num_classes} "
                         "classes")
    if not torch.isfinite(logits).all():
        raise ValueError("the model's logits are not finite (NaN or inf) on the test images; its accuracy under "
                         "attack would mean nothing")
    return logits.shape[1]


def accuracy(model, images, labels, *, batch_size: int = 250, bf16: bool = False) -> float:
    """Clean accuracy in eval mode, in percent, on uint8 or float images (the model's mode is restored)."""
    device = next(model.parameters()).device
    correct = torch.zeros((), device=device)
    for x, y in DeviceLoader(images, labels, batch_size, device=device):
        correct += predicts_right(model, x, y, bf16).sum()
    return 100.0 * correct.item() / max(len(labels), 1)


def robust_scores(model, images, labels, spec: AttackSpec | None, *, batch_size: int = 250,
                  desc: str | None = None, progress: bool = False, per_example: bool = False) -> dict:
    """{"final": accuracy (percent) at the attack's final iterate, "any_iterate": accuracy counting
    an example as broken at any misclassified iterate, "zero_dlr_gradient": the images on which AutoAttack's
    own check found a zero DLR input gradient (summed over batches; None for an attack without the check),
    "messages": what else the attack's libraries warned}, from one run of `spec` (clean images when spec
    is None: both are the clean accuracy). With `per_example`, also "correct" and "correct_any_iterate":
    a bool per image (CPU tensors)."""
    device = next(model.parameters()).device
    final, every, messages = [], [], []
    zero = 0 if checks_dlr_gradients(spec) else None
    for x, y in progress_bar(DeviceLoader(images, labels, batch_size, device=device), desc,
                             progress and spec is not None):
        if spec is None:
            right = always = predicts_right(model, x, y)
        else:
            with library_messages() as said:  # printed while the bar is live, they would freeze it mid-line
                _, right, always = attack_scored(model, x, y, spec)
            if zero is not None:
                zero += zero_gradient_points(said) or 0
            messages += [m for m in said if m not in messages and not ZERO_GRADIENT_MESSAGE.search(m)]
        final.append(right)
        every.append(always)
    for message in messages:  # the bar is erased: the libraries' other messages, once each
        print(f"note ({desc or spec.column}): {message}", flush=True)
    final = torch.cat(final).cpu() if final else torch.zeros(0, dtype=torch.bool)
    every = torch.cat(every).cpu() if every else torch.zeros(0, dtype=torch.bool)
    n = max(len(labels), 1)
    out = {"final": 100.0 * final.sum().item() / n, "any_iterate": 100.0 * every.sum().item() / n,
           "zero_dlr_gradient": zero, "messages": messages}
    return dict(out, correct=final, correct_any_iterate=every) if per_example else out


def checks_dlr_gradients(spec: AttackSpec | None) -> bool:
    """Whether the attack runs AutoAttack's zero-gradient check (APGD on DLR or targeted DLR, and AutoAttack,
    whose every version runs one of them)."""
    return spec is not None and (spec.name in ("apgd-t", "autoattack") or (spec.name == "apgd" and spec.loss == "dlr"))


def bits(correct: torch.Tensor) -> str:
    """A bool per image as a string of 0s and 1s, as caches keep it."""
    return "".join("1" if c else "0" for c in correct.tolist())


def from_bits(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def cache_identity(images, **parts) -> dict:
    """What decides a cached evaluation: `parts` (the model's key, the column, the attack spec, the
    models of a transfer table), the test images' shape and pixel sum, and the protocol version. The
    cache's name hashes it and its content carries it, checked when read (`read_cache`)."""
    return dict(parts, test_set=[list(images.shape), int(images.float().sum())], protocol=PROTOCOL_VERSION)


def cache_name(kind: str, images, **parts) -> str:
    """The file name of every cached evaluation: its kind and the SHA-256 of its identity, so that a
    changed definition is computed anew instead of served stale."""
    text = json.dumps(dict(cache_identity(images, **parts), kind=kind), sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def cached_value(store: RunStore, experiment, images, name: str, compute):
    """A per-model result (anything JSON holds) cached in the run's eval/ folder under `name`, on this test
    set: `compute()` runs only when the cache is missing, damaged or another's."""
    path = store.eval_path(experiment, cache_name(name, images))
    identity = cache_identity(images, key=experiment.key, column=name)
    found = read_cache(path, identity)
    if found is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        found = dict(identity, value=compute())
        write_checked_json(path, found)
    return found["value"]


def curve_point(eps: float, base: AttackSpec | None = None) -> AttackSpec:
    """The eps curve's attack at `eps`: the base (Table I's PGD-7) with its step grown to at least eps / 4,
    so that every eps-ball can be crossed; at the base's own eps, the base itself."""
    base = base or CURVE_BASE
    return base if eps == base.eps else replace(base, eps=eps, step=max(base.step, eps / 4),
                                                label=f"{base.column}_eps{eps * 255:g}")


def eps_curve(model, images, labels, base: AttackSpec | None = None, eps_values=EPS_SWEEP, *,
              key: str = FOREIGN_KEY, experiment=None, store: RunStore | None = None) -> dict:
    """PGD accuracy as eps grows ({eps as text: accuracy}); it must fall toward zero, or the gradients
    are masked. Each point (`curve_point`) is scored as a column (`score_columns`' seed, from `key` or
    the experiment's key); the point at the base's own eps is the base's column (Table I's PGD-7), so the
    curve and the table give one number there. With `experiment` and `store`, Table I's curve is cached in
    the run's eval/ folder (what Table I's checks, notebook 03's curves and the audit all read)."""
    key = experiment.key if experiment is not None else key
    points = {f"{e:.4f}": curve_point(e, base) for e in eps_values}

    def compute():
        return {text: _score_column(model, images, labels, spec, key)["final"] for text, spec in points.items()}

    if experiment is None or store is None or base not in (None, CURVE_BASE) or tuple(eps_values) != EPS_SWEEP:
        return compute()
    path = store.eval_path(experiment, cache_name("eps_curve", images, spec=CURVE_BASE.identity()))
    identity = cache_identity(images, key=experiment.key, column="eps_curve", spec=CURVE_BASE.identity())
    cached = read_cache(path, identity)
    if cached is None:
        cached = dict(identity, curve=compute())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_checked_json(path, cached)
    return cached["curve"]


def white_box_checks(row: dict, curve: dict | None = None, tol: float = ORDER_TOLERANCE) -> list[str]:
    """The flags of one model's row; an empty list means every check passed."""
    flags = []
    clean = row["clean"]
    for col, acc in row.items():  # final-iterate scoring may turn a wrong clean image right: a point of slack
        if col != "clean" and acc > clean + tol:
            flags.append(f"{col} ({acc:.2f}) exceeds clean ({clean:.2f})")
    if "pgd20" in row and "pgd7" in row and row["pgd20"] > row["pgd7"] + tol:
        flags.append(f"PGD-20 ({row['pgd20']:.2f}) above PGD-7 ({row['pgd7']:.2f})")
    if "pgd20x20" in row and "pgd20" in row and row["pgd20x20"] > row["pgd20"] + tol:
        flags.append(f"20PGD ({row['pgd20x20']:.2f}) above PGD-20 ({row['pgd20']:.2f})")
    if "aa" in row:
        attacks = {c: a for c, a in row.items() if c not in ("clean", "aa")}
        if attacks:
            weakest_col = min(attacks, key=attacks.get)
            if row["aa"] > attacks[weakest_col] + tol:
                flags.append(f"AutoAttack ({row['aa']:.2f}) above {weakest_col} ({attacks[weakest_col]:.2f}): "
                             "AutoAttack should be the strongest attack")
        if "pgd20" in row and row["aa"] < row["pgd20"] - AA_GAP:
            flags.append(f"AutoAttack ({row['aa']:.2f}) far below PGD-20 ({row['pgd20']:.2f}): PGD overstates "
                         "robustness, a possible sign of masked gradients")
    if curve:
        values = list(curve.values())
        if abs(values[0] - clean) > 1e-9:
            flags.append(f"accuracy at eps = 0 ({values[0]:.2f}) differs from clean ({clean:.2f})")
        if any(b > a + tol for a, b in zip(values, values[1:])):
            flags.append("accuracy rises with eps")
        if values[-1] > 10.0:
            flags.append(f"accuracy stays at {values[-1]:.2f}% at eps = {list(curve)[-1]}: possible gradient masking")
    return flags


def subset(images, labels, spec: AttackSpec | None):
    """The test images a column is measured on: the first `spec.images` of them, or all."""
    n = None if spec is None else spec.images
    return (images, labels) if n is None else (images[:n], labels[:n])


def column_seed(key: str, column: str) -> int:
    """The seed of one column's random draws (random starts, restarts, AutoAttack's own): the SHA-256 of
    the model's experiment key (FOREIGN_KEY for a module of no experiment) and the column. One rule for
    every path, so a table, `evaluate` and `export` give one model the same number, whatever else was
    evaluated before it and whichever worker computed it."""
    return int(hashlib.sha256(f"{key}/{column}".encode()).hexdigest()[:8], 16)


def _score_column(model, images, labels, spec: AttackSpec | None, key: str, *, progress: bool = False,
                  desc: str | None = None) -> dict:
    """One column on its test images (`subset`), seeded by `column_seed(key, column)`: robust_scores
    with a bool per image, and "n" the images it scored."""
    xs, ys = subset(images, labels, spec)
    torch.manual_seed(column_seed(key, "clean" if spec is None else spec.column))
    scores = robust_scores(model, xs, ys, spec, progress=progress, desc=desc, per_example=True)
    return dict(scores, n=len(ys))


def _column_cache(store: RunStore, experiment, images, spec: AttackSpec | None):
    """(path, identity) of one column's cache in the run's eval/ folder."""
    column = "clean" if spec is None else spec.column
    spec_fields = None if spec is None else spec.identity()
    if spec is not None and spec.name == "autoattack":  # since 0.2 the reference code, not torchattacks
        spec_fields["implementation"] = "pyautoattack"
    return (store.eval_path(experiment, cache_name(f"column-{column}", images, spec=spec_fields)),
            cache_identity(images, key=experiment.key, column=column, spec=spec_fields))


def uncached_columns(experiment, images, specs, store: RunStore) -> list[str]:
    """The columns (clean first) that the store has no cache of for this model and test set."""
    out = []
    for spec in [None] + list(specs):
        path, identity = _column_cache(store, experiment, images, spec)
        if not path.exists() or read_cache(path, identity, quiet=True) is None:
            out.append("clean" if spec is None else spec.column)
    return out


def score_columns(model, images, labels, specs, *, experiment=None, store: RunStore | None = None,
                  key: str = FOREIGN_KEY, progress: bool = False, per_example: bool = False,
                  wait_for_claim: bool = True) -> dict:
    """The one way every path (tables, curves, the masking report, the audit, `evaluate`, `export`, the
    grid's workers) scores a model: {'clean' or column: {"final": accuracy, "any_iterate": accuracy, "n":
    test images, "zero_dlr_gradient", "messages" (`robust_scores`)}} for `specs`, every column seeded by
    `column_seed` from `key` or the experiment's key, so a number does not depend on what was evaluated
    before it nor on which worker computed it. With `experiment` and `store` each column is read from, or
    written to, its own cache in the run's eval/ folder (a column another process is computing is waited
    for, or with `wait_for_claim=False` left out); else it is computed here. With `per_example`, also
    "correct" and "correct_any_iterate", a bool per image (a cache written without them is computed again)."""
    key = experiment.key if experiment is not None else key  # the experiment's seeds, with or without a store
    row = {}
    for spec in [None] + list(specs):
        column = "clean" if spec is None else spec.column
        if experiment is None or store is None:
            row[column] = _score_column(model, images, labels, spec, key, progress=progress, desc=spec and column)
            continue
        scores = _cached_column(experiment, model, images, labels, spec, store, progress=progress,
                                wait_for_claim=wait_for_claim, per_example=per_example)
        if scores is not None:
            row[column] = scores
    return row


def accuracies(scores: dict, scoring: str = "final") -> dict:
    """{column: accuracy} of `score_columns`' result under `scoring` ("final" or "any_iterate")."""
    _check_scoring(scoring)
    return {column: s[scoring] for column, s in scores.items()}


def robust_accuracy(model, images, labels, spec: AttackSpec | None = None, *, scoring: str = "final",
                    key: str = FOREIGN_KEY) -> float:
    """Accuracy (percent) of any model under one attack (clean images when spec is None), scored as every
    table scores it (`score_columns`, seeded from `key`): at the final iterate (the authors' scoring) or,
    with scoring="any_iterate", counting an image broken at its first misclassified iterate."""
    _check_scoring(scoring)
    column = "clean" if spec is None else spec.column
    return score_columns(model, images, labels, [spec] if spec is not None else [], key=key)[column][scoring]


def _cached_column(experiment, model, images, labels, spec, store: RunStore, *, progress: bool,
                   wait_for_claim: bool, per_example: bool) -> dict | None:
    """One column of `score_columns` through its cache, computed under a claim lock when missing; None when
    another process holds the claim and `wait_for_claim` is False."""
    column = "clean" if spec is None else spec.column
    path, identity = _column_cache(store, experiment, images, spec)
    usable = lambda c: c is not None and (not per_example or "correct" in c)  # noqa: E731
    cached = read_cache(path, identity)
    if not usable(cached):
        path.parent.mkdir(parents=True, exist_ok=True)
        claim = FileLock(str(path) + ".lock")
        try:
            claim.acquire(timeout=-1 if wait_for_claim else 0)
        except Timeout:
            return None
        try:
            cached = read_cache(path, identity)  # computed by the process we waited for
            if not usable(cached):
                start = time.perf_counter()
                scores = _score_column(model, images, labels, spec, experiment.key, progress=progress,
                                       desc=f"{experiment.label} {column}")
                cached = dict(identity, label=experiment.label, accuracy=scores["final"],
                              accuracy_any_iterate=scores["any_iterate"], seconds=time.perf_counter() - start,
                              n=scores["n"], correct=bits(scores["correct"]),
                              correct_any_iterate=bits(scores["correct_any_iterate"]),
                              zero_dlr_gradient=scores["zero_dlr_gradient"], messages=scores["messages"])
                write_checked_json(path, cached)
                if progress:
                    print(f"{experiment.label} {column}: {cached['accuracy']:.2f}% on {scores['n']} images "
                          f"({cached['seconds']:.0f} s)", flush=True)
        finally:
            claim.release()
    out = {"final": cached["accuracy"], "any_iterate": cached["accuracy_any_iterate"],
           "n": len(subset(images, labels, spec)[1]),
           # caches of 0.4.0 and before did not keep it: None, unknown (not zero)
           "zero_dlr_gradient": cached.get("zero_dlr_gradient"), "messages": cached.get("messages", [])}
    if per_example:
        out.update(correct=from_bits(cached["correct"]), correct_any_iterate=from_bits(cached["correct_any_iterate"]))
    return out


def read_cache(path, identity: dict, quiet: bool = False):
    """A cached evaluation, or None when there is none, or it was damaged or edited, or it belongs to
    another model, column, attack, test set or protocol version than `identity` says (then it is
    recomputed). A folder or a symbolic link in its place is an error (store.check_file), not something
    to overwrite."""
    check_file(path)
    check_file(str(path) + ".lock")
    if not path.exists():
        return None
    try:
        cached = read_checked_json(path)
    except StoreError as e:
        if not quiet:
            print(f"warning: {e}; recomputing it")
        return None
    wrong = sorted(k for k, v in identity.items() if cached.get(k) != json.loads(json.dumps(v, default=str)))
    if wrong:
        if not quiet:
            print(f"warning: {path} is not this evaluation (its {', '.join(wrong)} differ: a file of another "
                  "model or computation); recomputing it")
        return None
    return cached


def evaluate_white_box(experiment, model, images, labels, specs, store: RunStore | None = None, *,
                       progress: bool = True, with_checks: bool = True, scoring: str = "final") -> dict:
    """One row of Table I under `scoring` ("row"), the same row under the other scoring too
    ("row_final", "row_any_iterate"), its eps curve and sanity flags; every column and the curve are
    cached."""
    _check_scoring(scoring)
    store = store or RunStore()
    scores = score_columns(model, images, labels, specs, experiment=experiment, store=store, progress=progress)
    rows = {s: accuracies(scores, s) for s in SCORINGS}
    n_images = {c: v["n"] for c, v in scores.items()}
    row = rows[scoring]
    curve = eps_curve(model, images, labels, experiment=experiment, store=store) if with_checks else None
    return {"label": experiment.label, "key": experiment.key, "row": row, "row_final": rows["final"],
            "row_any_iterate": rows["any_iterate"], "n_images": n_images, "eps_curve": curve,
            "flags": white_box_checks(row, curve)}


def transfer_correct(surrogate, targets: dict, images, labels, spec: AttackSpec, *, batch_size: int = 250,
                     progress: bool = False, desc: str | None = None) -> dict:
    """{target label: bool per image}: whether the target classifies every adversarial image the
    surrogate crafts for that image correctly. Each of the spec's restarts is crafted in full on the
    surrogate (never filtered by whether it fools the surrogate) and scored on every target; an image
    counts as robust only if the target survives all of them, as the authors scored Table III."""
    device = next(surrogate.parameters()).device
    single = replace(spec, restarts=1)
    correct = {t: [] for t in targets}
    for x, y in progress_bar(DeviceLoader(images, labels, batch_size, device=device), desc, progress):
        survived = {t: torch.ones(len(y), dtype=torch.bool) for t in targets}
        for _ in range(spec.restarts):
            x_adv = attack(surrogate, x, y, single)
            for t, target in targets.items():
                survived[t] &= predicts_right(target, x_adv, y).cpu()
        for t in targets:
            correct[t].append(survived[t])
    return {t: torch.cat(c) for t, c in correct.items()}


def black_box(surrogates: dict, targets: dict, images, labels, spec: AttackSpec, *,
              progress: bool = True) -> dict:
    """{target label: {surrogate label: accuracy of the target on the surrogate's adversarial images}}
    (with restarts, an image counts only if the target survives every restart: `transfer_correct`)."""
    matrix = {t: {} for t in targets}
    for s_label, surrogate in surrogates.items():
        correct = transfer_correct(surrogate, targets, images, labels, spec, progress=progress,
                                   desc=f"craft {spec.column} on {s_label}")
        for t_label, right in correct.items():
            matrix[t_label][s_label] = 100.0 * right.float().mean().item()
    return matrix


def black_box_checks(matrix: dict, white: dict, tol: float = ORDER_TOLERANCE) -> list[str]:
    """A transferred attack is expected to be weaker than the white-box attack on the same target; when
    it is stronger, the white-box gradients may be masked. A signal to look at, not an error: the
    paper's own AAML-UM scores 48.52 under transferred FGSM and 52.04 under white-box FGSM."""
    flags = []
    for target, row in matrix.items():
        if target not in white:
            continue
        for surrogate, acc in row.items():
            if acc + tol < white[target]:
                flags.append(f"{target}: transfer from {surrogate} ({acc:.2f}) is stronger than the white-box attack "
                             f"({white[target]:.2f}), a possible sign of masked gradients")
    return flags
