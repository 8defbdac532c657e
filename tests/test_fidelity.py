"""What the tables compute: the authors' defence objectives, Table III's scoring, ArcFace past pi,
run hashes that never serve a stale number, and the interval of each accuracy."""
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproduce import config, evaluation, losses
from reproduce.attacks import AttackSpec, attack, attack_scored
from reproduce.config import make_experiment
from reproduce.defenses import crafting_spec, defense_loss
from reproduce.evaluation import black_box, robust_accuracy
from reproduce.losses import make_loss
from reproduce.models import build_model
from reproduce.stats import wilson_interval

N, D, C = 12, 5, 3
Z = 1.959963984540054


@pytest.fixture
def pair(float64):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(N, D, generator=g)
    return f, f + 0.7 * torch.randn(N, D, generator=g), torch.arange(N) % C


def _d(a, b):  # cosine distance, written out
    return 1 - torch.dot(a, b) / (a.norm() * b.norm())


def _ce(logits, y):
    return -sum(logits[i, y[i]] - torch.logsumexp(logits[i], 0) for i in range(len(y))) / len(y)


def _sq(v):
    return (v * v).sum()


# ---------------------------------------------------------------- the authors' objectives, by hand in float64

def _authors_norm(*ends):
    """The authors' norm term: ||f||^2 summed over every end of every pair / triplet (or over both
    batches), divided by how many ends there are, all together (train_*.py of their code)."""
    return sum(sum(_sq(v) for v in group) for group in ends) / sum(len(group) for group in ends)


def test_authors_softmax_is_adversarial_ce_only(pair):
    f, fa, y = pair
    sm = make_loss("SM", D, C)
    loss, adv, clean = sm.adversarial_objective(f, fa, y)
    head = lambda v: v @ sm.head.weight.T + sm.head.bias  # noqa: E731
    assert torch.allclose(loss, _ce(head(fa), y))
    assert torch.allclose(adv, head(fa)) and torch.allclose(clean, head(f))
    assert sm.adversarial_objective(None, fa, y)[2] is None  # SM-AT needs no clean batch


def _contrastive_pairs(fa, f, y, margin=0.3):
    """(positive distances, negative hinge costs, anchors' adversarial ends, partners' clean ends, anchors)
    of the authors' batch_all_contrastive_loss with adversarial anchors (rows) and clean partners."""
    pos, neg, anchor_ends, partner_ends, anchors = [], [], [], [], set()
    for i in range(N):
        for j in range(N):
            if i == j:
                continue
            d = _d(fa[i], f[j])
            if y[i] == y[j]:
                pos.append(d)
            elif d < margin:
                neg.append(margin - d)
            else:
                continue
            anchor_ends.append(fa[i])
            partner_ends.append(f[j])
            anchors.add(i)
    return pos, neg, anchor_ends, partner_ends, sorted(anchors)


def test_authors_contrastive_pairs_adversarial_anchors_with_clean_partners(pair):
    f, fa, y = pair
    conl = make_loss("ConL", D, C, feature_penalty=1.0)  # weight 1: the norm term shows in full
    loss, adv, clean = conl.adversarial_objective(f, fa, y)
    pos, neg, anchor_ends, partner_ends, a = _contrastive_pairs(fa, f, y)
    assert neg, "the batch must have active negative pairs for this test to mean something"
    metric = sum(p for p in pos if p > 0) / sum(1 for p in pos if p > 0) + sum(neg) / len(neg)
    logits = fa @ conl.head.weight.T + conl.head.bias
    norm = _authors_norm(anchor_ends, partner_ends)
    assert torch.allclose(loss, _ce(logits[a], y[a]) + 2 * metric + norm)
    # the old reading summed the two ends of each pair: twice the authors' term, which this test tells apart
    assert not torch.allclose(loss, _ce(logits[a], y[a]) + 2 * metric + 2 * norm)
    assert torch.allclose(adv, logits[a]) and clean.shape == adv.shape


def _triplets(fa, f, y, margin):
    costs, ends = [], ([], [], [])
    for a in range(N):
        for p in range(N):
            for n in range(N):
                if a != p and y[a] == y[p] and y[a] != y[n]:
                    costs.append(torch.clamp(_d(fa[a], f[p]) - _d(fa[a], f[n]) + margin, min=0))
                    for group, v in zip(ends, (fa[a], f[p], f[n])):
                        group.append(v)
    return costs, ends


def test_authors_triplet_uses_adversarial_anchors_and_clean_positives_and_negatives(pair):
    f, fa, y = pair
    tl = make_loss("TL", D, C, margin=0.3, feature_penalty=1.0)  # a wide margin: many active triplets
    loss, adv, _ = tl.adversarial_objective(f, fa, y)
    costs, ends = _triplets(fa, f, y, 0.3)
    active = [c for c in costs if c > 0]
    assert 0 < len(active) < len(costs)
    logits = fa @ tl.head.weight.T + tl.head.bias
    norm = _authors_norm(*ends)
    assert torch.allclose(loss, _ce(logits, y) + 2 * sum(active) / len(active) + norm)
    assert not torch.allclose(loss, _ce(logits, y) + 2 * sum(active) / len(active) + 3 * norm)
    assert torch.allclose(adv, logits)  # every example is an anchor here


def test_authors_center_and_arcface_sum_the_clean_and_adversarial_objectives(pair):
    f, fa, y = pair
    cen = make_loss("CenL", D, C, feature_penalty=1.0)
    head = lambda v: v @ cen.head.weight.T + cen.head.bias  # noqa: E731
    centre = lambda v: sum(_sq(v[i] - cen.centers[y[i]]) for i in range(N)) / N  # noqa: E731
    loss, adv, clean = cen.adversarial_objective(f, fa, y)
    norm = _authors_norm(list(f), list(fa))  # (sum ||f||^2 + sum ||f_adv||^2) / 2B: one term
    expected = _ce(head(f), y) + _ce(head(fa), y) + 0.005 * (centre(f) + centre(fa))
    assert torch.allclose(loss, expected + norm) and not torch.allclose(loss, expected + 2 * norm)
    assert torch.allclose(adv, head(fa)) and torch.allclose(clean, head(f))

    torch.manual_seed(0)  # the class weights: this test's, whatever ran before it in the process
    arc = make_loss("AAML", D, C, feature_penalty=1.0).train()

    def margin_logits(v):
        cos = torch.stack([torch.stack([1 - _d(v[i], w) for w in arc.weight]) for i in range(N)])
        out = cos.clone()
        for i in range(N):  # the authors' ArcMarginProduct: phi where cos > cos(pi - m), else cos - m sin(pi - m)
            c = cos[i, y[i]]
            phi = c * math.cos(0.2) - torch.sqrt(1 - c**2) * math.sin(0.2)
            out[i, y[i]] = phi if c > math.cos(math.pi - 0.2) else c - math.sin(math.pi - 0.2) * 0.2
        return 2.0 * out

    loss, adv, clean = arc.adversarial_objective(f, fa, y)
    expected = _ce(margin_logits(f), y) + _ce(margin_logits(fa), y)
    assert torch.allclose(loss, expected + norm, atol=1e-5) and not torch.allclose(loss, expected + 2 * norm)
    assert torch.allclose(adv, margin_logits(fa), atol=1e-5) and torch.allclose(clean, margin_logits(f), atol=1e-5)


def test_authors_um_norm_over_the_ends_and_tl_ce_over_anchors(pair):
    """Under UM the authors' ConL / TL average ||f||^2 over the ends of the clean pairs / triplets, and
    TL's CE covers only the anchors that have a triplet (train_contrastive.py, train_triplet.py)."""
    f, _, y = pair
    y = y.clone()
    y[0] = C  # a class of its own: example 0 anchors no triplet (and no positive pair)
    conl = make_loss("ConL", D, C + 1, feature_penalty=1.0)
    loss, logits = conl(f, y)
    pos, neg, anchor_ends, partner_ends, _ = _contrastive_pairs(f, f, y)
    metric = sum(p for p in pos if p > 0) / sum(1 for p in pos if p > 0) + (sum(neg) / len(neg) if neg else 0)
    assert torch.allclose(loss, _ce(logits, y) + 2 * metric + _authors_norm(anchor_ends, partner_ends))

    tl = make_loss("TL", D, C + 1, margin=0.3, feature_penalty=1.0)
    loss, logits = tl(f, y)
    costs, ends = _triplets(f, f, y, 0.3)
    active = [c for c in costs if c > 0]
    anchors = [i for i in range(N) if i != 0]
    assert torch.allclose(loss, _ce(logits[anchors], y[anchors]) + 2 * sum(active) / len(active)
                          + _authors_norm(*ends))


def _authors_train_logits(model, x, y):
    """What the authors' model(images, labels) returns in train mode: the linear head's logits, or for
    AAML s * cos with the target cosine replaced by cos(theta_y + m) (models/metrics.py), by hand."""
    f = model.embed(x).float()
    crit = model.criterion
    if not hasattr(crit, "m"):
        return crit.head(f)
    cos = F.normalize(f, dim=1) @ F.normalize(crit.weight, dim=1).T
    target = torch.cos(torch.acos(cos.gather(1, y[:, None]).clamp(-1, 1)) + crit.m)
    return crit.s * cos.scatter(1, y[:, None], target)


def _authors_pgd(logits_fn, x, y, eps, alpha, iters):
    """models/attacks.py's pgd, written out: an unclipped uniform start, signed CE-gradient steps, the
    offset clamped to eps and the image to [0, 1] after each step, the final iterate returned."""
    x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(iters):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits_fn(x_adv, y), y), x_adv)
        eta = torch.clamp(x_adv.detach() + alpha * grad.sign() - x, -eps, eps)
        x_adv = torch.clamp(x + eta, 0, 1)
    return x_adv.detach()


@pytest.mark.parametrize("loss_name", ["SM", "ConL", "TL", "CenL", "AAML"])
def test_authors_alp_is_authors_at_plus_pairing_and_differs_from_the_paper(loss_name):
    exp = make_experiment(loss_name, "AT", "smoke", "cifar10", width=4)
    model = build_model(exp, 3, 10).train()
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    spec = crafting_spec(exp)
    assert (spec.steps, spec.eps, spec.step, spec.clip_start) == (7, 8 / 255, 2 / 255, False)
    results = {}
    for objectives in ("authors", "paper"):
        for defense in ("AT", "ALP"):
            torch.manual_seed(0)
            results[objectives, defense] = defense_loss(model, x, y, defense, spec, objectives=objectives,
                                                        craft_logits=exp.craft_logits)[0]
    torch.manual_seed(0)
    x_adv = _authors_pgd(lambda v, t: _authors_train_logits(model, v, t), x, y, 8 / 255, 2 / 255, 7)
    f_clean, f_adv = model.embed(x), model.embed(x_adv)
    at, adv_pair, clean_pair = model.criterion.adversarial_objective(f_clean, f_adv, y)
    assert torch.allclose(results["authors", "AT"], at, atol=1e-5)
    pairing = ((adv_pair - clean_pair) ** 2).mean()
    assert torch.allclose(results["authors", "ALP"], at + 0.5 * pairing, atol=1e-5)
    # SM differs from the paper in ALP only (no clean CE); CenL and AAML in AT (a clean term) and in ALP
    # (one norm term over both batches, not two); ConL / TL in both
    differs = {d for d in ("AT", "ALP") if not torch.allclose(results["authors", d], results["paper", d], atol=1e-4)}
    assert differs == {"SM": {"ALP"}}.get(loss_name, {"AT", "ALP"})


def test_aaml_crafts_on_margin_logits_and_the_switch_crafts_on_prediction_logits():
    authors = make_experiment("AAML", "AT", "smoke", "cifar10", width=4)
    assert authors.craft_logits == "training"
    assert make_experiment("AAML", "AT", "smoke", objectives="paper").craft_logits == "prediction"
    switched = make_experiment("AAML", "AT", "smoke", "cifar10", width=4, craft_logits="prediction")
    assert switched.key != authors.key
    model = build_model(authors, 3, 10).train()
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    seen = []
    model.embedder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    crafted = {}
    for logits in ("training", "prediction"):
        torch.manual_seed(0)
        seen.clear()
        defense_loss(model, x, y, "AT", crafting_spec(authors), craft_logits=logits)
        crafted[logits] = seen[-1]  # the last forward is the adversarial batch
    torch.manual_seed(0)
    margin = _authors_pgd(lambda v, t: _authors_train_logits(model, v, t), x, y, 8 / 255, 2 / 255, 7)
    torch.manual_seed(0)
    plain = _authors_pgd(lambda v, t: model(v), x, y, 8 / 255, 2 / 255, 7)
    assert torch.allclose(crafted["training"], margin, atol=1e-6)
    assert torch.allclose(crafted["prediction"], plain, atol=1e-6)
    assert not torch.allclose(margin, plain, atol=1e-3)


def test_sm_at_forwards_only_the_adversarial_batch():
    """The authors' SM-AT forwards the adversarial batch alone (batch-norm's running statistics see
    only it); SM-ALP and every other loss forward the clean batch too."""
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    for loss_name, defense, expected in (("SM", "AT", 1), ("SM", "ALP", 2), ("ConL", "AT", 2), ("CenL", "AT", 2)):
        exp = make_experiment(loss_name, defense, "smoke", "cifar10", width=4)
        model = build_model(exp, 3, 10).train()
        calls = []
        model.embedder.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        spec = AttackSpec("pgd", steps=1, random_start=True)
        x_adv = attack(model, x, y, spec, train_mode=True)
        calls.clear()
        model.adversarial_objective(x, x_adv, y, pairing=defense == "ALP")
        assert len(calls) == expected, (loss_name, defense)


def test_unclipped_random_start_takes_its_first_gradient_outside_the_image_range():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.cat([torch.zeros(4, 6), torch.ones(4, 6)], 1).view(4, 3, 2, 2)  # pixels at both ends of [0, 1]
    y = torch.arange(4)
    for clip in (False, True):
        spec = AttackSpec("pgd", eps=0.1, step=0.03, steps=1, clip_start=clip)
        torch.manual_seed(3)
        ours = attack(net, x, y, spec)
        torch.manual_seed(3)
        start = x + torch.empty_like(x).uniform_(-0.1, 0.1)
        at = start.clamp(0, 1) if clip else start  # where the first gradient is taken
        at.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(at), y, reduction="sum"), at)
        expected = torch.clamp(x + torch.clamp(at.detach() + 0.03 * grad.sign() - x, -0.1, 0.1), 0, 1)
        assert torch.allclose(ours, expected, atol=1e-7)
    # the unclipped start is never an iterate: early-stopped or scored, every image stays in [0, 1]
    spec = AttackSpec("pgd", eps=0.1, step=0.03, steps=3, clip_start=False)
    for x_adv in (attack(net, x, y, spec, stop_when_broken=True), attack_scored(net, x, y, spec)[0]):
        assert 0 <= x_adv.min() and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert not crafting_spec(make_experiment("SM", "AT")).clip_start  # the authors' objectives: their start
    assert crafting_spec(make_experiment("SM", "AT", objectives="paper")).clip_start


def test_objectives_enter_the_hash_except_for_um():
    a = make_experiment("AAML", "AT", "smoke", objectives="authors")
    p = make_experiment("AAML", "AT", "smoke", objectives="paper")
    assert a.key != p.key
    assert make_experiment("SM", "UM", objectives="paper").key == make_experiment("SM", "UM").key
    with pytest.raises(ValueError, match="objectives='paper'"):
        make_experiment("CosFace", "AT", "smoke")
    with pytest.raises(ValueError, match="unknown objectives"):
        make_experiment("SM", "AT", objectives="theirs")


# ---------------------------------------------------------------- ArcFace past pi

def test_arcface_margin_logit_falls_monotonically_over_zero_to_pi(float64):
    arc = make_loss("AAML", 2, 2, m=0.5).train()
    theta = torch.linspace(0, math.pi, 2001)
    cos = torch.stack([torch.cos(theta), torch.cos(math.pi / 2 - theta)], 1)
    target = arc.margin_cosines(cos, torch.zeros(len(theta), dtype=torch.long))
    assert (target[1:] < target[:-1]).all()
    inside = theta + 0.5 <= math.pi - 1e-3
    assert torch.allclose(target[inside], torch.cos(theta[inside] + 0.5), atol=2e-3)  # acos is clamped at 0
    past = theta + 0.5 > math.pi + 1e-3
    assert torch.allclose(target[past], torch.cos(theta[past]) - 0.5 * math.sin(0.5), atol=1e-6)


# ---------------------------------------------------------------- Table III: every restart scored on the target

def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def test_black_box_restarts_are_each_scored_on_the_target():
    surrogate, target = _mlp(0), _mlp(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = target(x).argmax(1)  # the target is right on every clean image
    spec = AttackSpec("pgd", eps=0.25, step=0.1, steps=3, random_start=True, restarts=6)
    single = AttackSpec("pgd", eps=0.25, step=0.1, steps=3, random_start=True)

    torch.manual_seed(5)
    survived = []
    for _ in range(spec.restarts):
        x_adv = attack(surrogate, x, y, single)
        with torch.no_grad():
            survived.append(target(x_adv).argmax(1) == y)
    expected = 100.0 * torch.stack(survived).all(0).float().mean().item()
    torch.manual_seed(5)
    new = black_box({"s": surrogate}, {"t": target}, x, y, spec, progress=False)["t"]["s"]
    assert new == pytest.approx(expected)
    assert new <= min(100.0 * s.float().mean().item() for s in survived)
    # the old rule (keep the first restart that fools the surrogate) scores something else
    torch.manual_seed(5)
    kept = attack(surrogate, x, y, spec)  # one batch: the 200 images at once
    with torch.no_grad():
        old = 100.0 * (target(kept).argmax(1) == y).float().mean().item()
    assert old > new + 1.0
    # more restarts never raise the accuracy (the first restarts are the same draws)
    torch.manual_seed(5)
    fewer = black_box({"s": surrogate}, {"t": target}, x, y, AttackSpec(**{**single.__dict__, "restarts": 3}),
                      progress=False)["t"]["s"]
    assert new <= fewer


def test_black_box_matrix_is_target_accuracy_on_the_surrogates_images():
    a, b = _mlp(2), _mlp(3)
    x = torch.rand(300, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(2))
    spec = AttackSpec("fgsm", eps=0.3, step=0.3)
    matrix = black_box({"A": a, "B": b}, {"A": a, "B": b}, x, y, spec, progress=False)
    b_on_a = robust_accuracy(b, attack(a, x, y, spec), y)  # FGSM draws nothing: the images are the matrix's
    a_on_b = robust_accuracy(a, attack(b, x, y, spec), y)
    assert b_on_a != pytest.approx(a_on_b)  # distinct models: swapping the two would fail below
    assert matrix["B"]["A"] == pytest.approx(b_on_a) and matrix["A"]["B"] == pytest.approx(a_on_b)


# ---------------------------------------------------------------- caches that never serve a stale number

def test_loss_parameters_are_resolved_and_typed_so_one_model_has_one_hash():
    from reproduce.cli import _key_values

    grid_run = make_experiment("AAML", "AT", "smoke", loss_params={"s": 4.0})
    cli_run = make_experiment("AAML", "AT", "smoke", loss_params=_key_values(["s=4"]))
    assert grid_run.key == cli_run.key and cli_run.params == {"feature_penalty": 0.001, "m": 0.2, "s": 4.0}
    assert make_experiment("AAML", "AT", "smoke").params["s"] == 2.0  # defaults are written out
    for bad in (["m="], ["s=abc"], ["m=nan"]):
        with pytest.raises(ValueError, match="expected a finite number"):
            make_experiment("AAML", "AT", "smoke", loss_params=_key_values(bad))


def test_a_changed_default_or_protocol_version_names_a_new_run(monkeypatch):
    before = make_experiment("AAML", "AT", "smoke").key  # a property: read it now, before any patch
    original = losses.loss_parameters
    monkeypatch.setattr(losses, "loss_parameters",
                        lambda name: dict(original(name), m=0.25) if name == "AAML" else original(name))
    assert make_experiment("AAML", "AT", "smoke").key != before
    monkeypatch.undo()
    assert make_experiment("AAML", "AT", "smoke").key == before
    specs = [AttackSpec("fgsm", step=8 / 255)]
    images = torch.zeros(4, 1, 2, 2)
    cache = evaluation.cache_name("column-fgsm", images, spec=asdict(specs[0]))
    monkeypatch.setattr(config, "PROTOCOL_VERSION", config.PROTOCOL_VERSION + 1)
    monkeypatch.setattr(evaluation, "PROTOCOL_VERSION", config.PROTOCOL_VERSION)
    assert make_experiment("AAML", "AT", "smoke").key != before
    assert evaluation.cache_name("column-fgsm", images, spec=asdict(specs[0])) != cache


def test_eps_zero_runs_the_attack_and_returns_the_clean_images():
    model = _mlp(4)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    x, y = torch.rand(8, 3, 4, 4), torch.arange(8)
    for spec in (AttackSpec("pgd", eps=0, steps=3, random_start=True), AttackSpec("mim", eps=0, steps=3),
                 AttackSpec("fgsm", eps=0, step=0)):
        calls.clear()
        assert torch.equal(attack(model, x, y, spec), x) and len(calls) >= 1


# ---------------------------------------------------------------- how sure each number is

@pytest.mark.parametrize("accuracy,n", [(81.0, 300), (0.0, 300), (100.0, 40), (37.5, 10000), (50.0, 1)])
def test_wilson_interval_solves_its_defining_quadratic(accuracy, n):
    z = 1.959963984540054
    p = accuracy / 100
    # the Wilson bounds are the p' with (p - p')^2 = z^2 p'(1 - p') / n
    roots = np.roots([1 + z * z / n, -(2 * p + z * z / n), p * p])
    low, high = wilson_interval(accuracy, n)
    assert sorted(100 * np.real(roots)) == pytest.approx([low, high], abs=1e-9)
    assert 0 <= low <= accuracy <= high <= 100


@pytest.mark.parametrize("k,n", [(243, 300), (0, 300), (40, 40), (3750, 10000), (1, 1), (7, 13)])
def test_wilson_interval_equals_scipys(k, n):
    from scipy.stats import binomtest

    theirs = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(100 * k / n, n)
    assert (low, high) == pytest.approx((100 * theirs.low, 100 * theirs.high), abs=1e-9)


def test_tables_show_intervals_seed_spread_and_no_cross_dataset_difference():
    import pandas as pd

    from reproduce.tables import cell, comparison_markdown, paper_table, summarise, wide

    cells = pd.DataFrame([cell("SM-UM", "clean", 0, 90.0, 1000), cell("SM-UM", "clean", 1, 94.0, 1000),
                          cell("SM-UM", "fgsm", 0, 24.0, 1000), cell("SM-UM", "fgsm", 1, None, 1000)])
    s = summarise(cells).set_index(["row", "column"])
    assert s.loc[("SM-UM", "clean"), "mean"] == 92.0 and s.loc[("SM-UM", "clean"), "sd"] == pytest.approx(2 ** 1.5)
    # two seeds 4 points apart on the same 1000 images: the seed mean's t-interval (1 degree of freedom
    # dominates) widened by the test set's binomial variance, by hand
    q = (0.92 * 1000 + Z * Z / 2) / (1000 + Z * Z)
    seed_var, test_var = ((0.90 - 0.92) ** 2 + (0.94 - 0.92) ** 2) / 2, q * (1 - q) / (1000 + Z * Z)
    df = (seed_var + test_var) ** 2 / seed_var ** 2
    from scipy import stats

    half = 100 * stats.t.ppf(0.975, df) * math.sqrt(seed_var + test_var)
    bounds = [92 - half, min(100.0, 92 + half)]  # clipped to what an accuracy can be
    assert s.loc[("SM-UM", "clean"), ["ci_low", "ci_high"]].tolist() == pytest.approx(bounds)
    assert s.loc[("SM-UM", "fgsm"), "seeds"] == 1  # the model that did not train is left out
    assert wide(cells).loc["SM-UM", "clean"] == 92.0
    paper = paper_table("table1")
    other = comparison_markdown(summarise(cells), paper, "fashion-mnist", "T", index_name="model")
    assert f"92.00 ±{(bounds[1] - bounds[0]) / 2:.2f} sd 2.83 / 93.15 |" in other
    assert "over seeds and test images" in other
    assert "(-" not in other and "no difference" in other
    same = comparison_markdown(summarise(cells), paper, "cifar10", "T", index_name="model")
    assert "/ 93.15 (-1.15, in CI) |" in same and "/ 23.95 (+0.05, in CI) |" in same  # two seeds 4 points apart
    far = cells.assign(accuracy=[60.0, 60.0, 24.0, None])
    assert "(-33.15) |" in comparison_markdown(summarise(far), paper, "cifar10", "T")


def test_seeds_budget_trains_every_table_model_per_seed_with_distinct_surrogates():
    from reproduce.config import get_profile
    from reproduce.context import Run
    from reproduce.protocol import surrogate_experiments, table1_experiments, table4_experiments

    run = Run(get_profile("smoke", seeds=2), "cifar10")
    t1, sur = table1_experiments(run), surrogate_experiments(run)
    assert len(t1) == 30 and {e.seed for e in t1} == {0, 1} and len({e.key for e in t1}) == 30
    assert {e.seed for e in sur} == {1000, 1001} and not {e.key for e in sur} & {e.key for e in t1}
    assert len(table4_experiments(run)) == 40


def test_center_loss_centres_are_learned_not_only_decayed(tmp_path, cifar_root):
    from reproduce.store import RunStore
    from reproduce.training import train

    moved = {}
    for weight in (0.005, 0.0):  # the control: weight decay alone moves the centres
        exp = make_experiment("CenL", "UM", "smoke", "cifar10", width=8, epochs=1, batch_size=64,
                              loss_params={"weight": weight})
        before = build_model(exp, 3, 10).criterion.centers.detach().clone()
        run = train(exp, RunStore(tmp_path), data=cifar_root, progress=False)
        moved[weight] = (run.model.criterion.centers.detach() - before).norm().item()
    assert moved[0.005] > 5 * moved[0.0] > 0


# ---------------------------------------------------------------- scoring: the final iterate, as the authors' test.py

def _authors_accuracy(model, x, y, spec, restarts=1):
    """test.py of the authors' code: each restart's final iterate is scored; an image counts as right
    only if every restart's final iterate is classified right. BIM starts at the clean image, PGD at an
    unclipped random point (torch draws one start tensor per restart, in order, as `attack` does)."""
    wrong = torch.zeros(len(y), dtype=torch.bool)
    for _ in range(restarts):
        x_adv = x + torch.empty_like(x).uniform_(-spec.eps, spec.eps) if spec.random_start else x.clone()
        for _ in range(spec.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            eta = torch.clamp(x_adv.detach() + spec.step * grad.sign() - x, -spec.eps, spec.eps)
            x_adv = torch.clamp(x + eta, 0, 1)
        with torch.no_grad():
            wrong |= model(x_adv).argmax(1) != y
    return 100.0 * (~wrong).float().mean().item()


@pytest.mark.parametrize("spec", [AttackSpec("bim", eps=0.1, step=0.08, steps=4),
                                  AttackSpec("pgd", eps=0.1, step=0.08, steps=4, clip_start=False),
                                  AttackSpec("pgd", eps=0.1, step=0.08, steps=4, clip_start=False, restarts=3)])
def test_final_iterate_scoring_is_the_authors_and_any_iterate_is_never_above_it(spec):
    from reproduce.evaluation import robust_scores

    model = _mlp(6)
    x = torch.rand(400, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y[:300] = model(x[:300]).argmax(1)  # most images start right: there is something to break
    torch.manual_seed(7)
    expected = _authors_accuracy(model, x, y, spec, spec.restarts)
    torch.manual_seed(7)
    scores = robust_scores(model, x, y, spec, batch_size=400)
    assert scores["final"] == pytest.approx(expected)
    # the big step overshoots: some images are wrong at an iterate and right again at the last one
    assert scores["any_iterate"] < scores["final"]
    with pytest.raises(ValueError, match="unknown scoring"):
        robust_accuracy(model, x, y, spec, scoring="first")


def test_tables_score_the_final_iterate_and_keep_the_any_iterate_score(tmp_path):
    import pandas as pd

    from reproduce.store import RunStore
    from reproduce.tables import cell, write_table

    model = _mlp(8)
    x = torch.rand(200, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    exp = make_experiment("SM", "UM", "smoke", "cifar10")
    spec = AttackSpec("bim", eps=0.1, step=0.08, steps=4, label="bim7")
    ev = evaluation.evaluate_white_box(exp, model, x, y, [spec], RunStore(tmp_path), progress=False,
                                       with_checks=False)
    torch.manual_seed(0)
    assert ev["row"]["bim7"] == pytest.approx(_authors_accuracy(model, x, y, spec))
    assert ev["row_any_iterate"]["bim7"] < ev["row"]["bim7"]
    cells = pd.DataFrame([cell("SM-UM", c, 0, ev["row"][c], len(y), ev["row_any_iterate"][c]) for c in ev["row"]])
    write_table(cells, "table1", tmp_path, "cifar10")
    intervals = pd.read_csv(tmp_path / "table1_white_box_intervals.csv").set_index("column")
    assert intervals.loc["bim7", "any_iterate"] == pytest.approx(ev["row_any_iterate"]["bim7"], abs=0.01)
    assert intervals.loc["bim7", "mean"] == pytest.approx(ev["row"]["bim7"], abs=0.01)


# ---------------------------------------------------------------- which epoch a run keeps

def test_keep_rule_defaults_are_the_authors():
    """train_softmax.py saves SM-UM at its best clean validation epoch and SM-AT / SM-ALP at their best
    PGD-7 validation epoch (its validation phase attacks too); every other script saves the last epoch."""
    expected = {("SM", "UM"): "best_clean_val", ("SM", "AT"): "best_pgd7_val", ("SM", "ALP"): "best_pgd7_val"}
    for loss in ("SM", "ConL", "TL", "CenL", "AAML"):
        for defense in ("UM", "AT", "ALP"):
            assert make_experiment(loss, defense).keep == expected.get((loss, defense), "last"), (loss, defense)
            if defense != "UM":
                assert make_experiment(loss, defense, objectives="paper").keep == "best_clean_val"
    assert make_experiment("HT-SCE", "UM").keep == "best_clean_val"
    assert make_experiment("ConL", "AT", keep="best_clean_val").key != make_experiment("ConL", "AT").key
    with pytest.raises(ValueError, match="unknown keep rule"):
        make_experiment("SM", "UM", keep="best")


def test_runs_keep_the_epoch_their_rule_chooses_and_say_why(tmp_path, cifar_root):
    from reproduce.attacks import PGD7 as VALIDATION_PGD7
    from reproduce.store import RunStore, load_checkpoint
    from reproduce.training import _epoch_seed, train

    store = RunStore(tmp_path / "runs")
    last = make_experiment("ConL", "UM", "smoke", "cifar10", width=4, epochs=3, batch_size=64, train_limit=256)
    run = train(last, store, data=cifar_root, progress=False)
    assert last.keep == "last" and run.result["kept_epoch"] == 3 and "the last epoch" in run.result["kept_why"]
    kept, final = (load_checkpoint(run.run_dir / n)["model"] for n in ("best.pt", "last.pt"))
    assert all(torch.equal(kept[k], final[k]) for k in kept)

    sm_at = make_experiment("SM", "AT", "smoke", "cifar10", width=4, epochs=3, batch_size=64, train_limit=128,
                            val_limit=100)
    run = train(sm_at, store, data=cifar_root, progress=False)
    metrics = store.metrics(sm_at)
    pgd7 = [m["val_pgd7_acc"] for m in metrics]
    best = max(range(3), key=lambda i: (pgd7[i], -i))  # the first epoch with the best PGD-7 accuracy
    assert run.result["kept_epoch"] == best + 1 and "PGD-7" in run.result["kept_why"]
    # the kept weights score what the metrics say, by an authors'-style PGD-7 loop on the validation split
    from reproduce.data import load_dataset

    data = load_dataset("cifar10", cifar_root, val_limit=100)
    xv, yv = data.x_val.float() / 255, data.y_val
    model = run.model.eval()
    torch.manual_seed(_epoch_seed(sm_at.seed, best) + 500_000)
    start = torch.empty_like(xv).uniform_(-VALIDATION_PGD7.eps, VALIDATION_PGD7.eps)
    x_adv = (xv + start).clamp(0, 1)
    for _ in range(7):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), yv), x_adv)
        x_adv = torch.clamp(xv + torch.clamp(x_adv.detach() + 2 / 255 * grad.sign() - xv, -8 / 255, 8 / 255), 0, 1)
    with torch.no_grad():
        hand = 100.0 * (model(x_adv).argmax(1) == yv).float().mean().item()
    assert hand == pytest.approx(pgd7[best], abs=1.01)  # within one image of round-off


# ---------------------------------------------------------------- intervals that cover the seeds' spread

def test_seed_interval_covers_the_true_accuracy_where_pooling_seeds_does_not():
    """A simulation with a known truth: each test image has its own difficulty (shared by every seed),
    each training run its own offset (sd 4 points). The interval of `seed_interval` covers the expected
    accuracy at least at its nominal 95%; the Wilson interval over seeds x images, which takes them for
    independent draws, falls far short."""
    from reproduce.stats import seed_interval

    rng = np.random.default_rng(0)
    mu, tau, k, n, reps = 0.6, 0.04, 3, 300, 1000
    a, b = 2.0, 2.0 * (1 - mu) / mu
    truth = 100 * np.clip(rng.beta(a, b, 400_000)[None, :] + rng.normal(0, tau, (40, 1)), 0, 1).mean()
    ours = pooled = 0
    for _ in range(reps):
        q = rng.beta(a, b, n)
        right = rng.random((k, n)) < np.clip(q[None, :] + rng.normal(0, tau, (k, 1)), 0, 1)
        accs = 100 * right.mean(1)
        low, high = seed_interval(list(accs), n)
        ours += low <= truth <= high
        low, high = wilson_interval(accs.mean(), n * k)
        pooled += low <= truth <= high
    assert ours / reps >= 0.94 and pooled / reps < 0.8
    assert seed_interval([81.0], 300) == wilson_interval(81.0, 300)  # one seed: test sampling only
    low, high = seed_interval([0.0, 0.0, 0.0], 300)
    assert low == 0.0 and 0.0 < high < 2.0  # no spread at 0%: the test-set part keeps a width


def test_table1_notes_say_whether_the_checks_passed_and_how_attacks_were_scored():
    from reproduce.context import Run
    from reproduce.protocol import TABLE1
    from reproduce.tables import notes

    run = Run("smoke")
    passed = notes(run, TABLE1, {"SM-UM": []})
    assert passed[0].startswith("All sanity checks passed") and "final iterate" in passed[1]
    failed = notes(run, TABLE1, {"SM-UM": ["pgd20 (50.00) exceeds clean (40.00)"]}, "any_iterate")
    assert failed[0].startswith("CHECK FAILED for SM-UM") and not any(n.startswith("All") for n in failed)
    assert "every iterate" in failed[1]
