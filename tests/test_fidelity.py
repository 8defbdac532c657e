"""What the tables compute: the authors' defence objectives, Table III's scoring, ArcFace past pi,
run hashes that never serve a stale number, and the interval of each accuracy."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from reproduce import config, evaluation, losses
from reproduce.attacks import AttackSpec, attack
from reproduce.config import make_experiment
from reproduce.defenses import defense_loss
from reproduce.evaluation import black_box, craft, robust_accuracy
from reproduce.losses import make_loss
from reproduce.models import build_model
from reproduce.stats import wilson_interval

N, D, C = 12, 5, 3


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

def test_authors_softmax_is_adversarial_ce_only(pair):
    f, fa, y = pair
    sm = make_loss("SM", D, C)
    loss, adv, clean = sm.adversarial_objective(f, fa, y)
    head = lambda v: v @ sm.head.weight.T + sm.head.bias  # noqa: E731
    assert torch.allclose(loss, _ce(head(fa), y))
    assert torch.allclose(adv, head(fa)) and torch.allclose(clean, head(f))


def test_authors_contrastive_pairs_adversarial_anchors_with_clean_partners(pair):
    f, fa, y = pair
    conl = make_loss("ConL", D, C)
    loss, adv, clean = conl.adversarial_objective(f, fa, y)
    pos, neg, norms, anchors = [], [], [], set()
    for i in range(N):
        for j in range(N):
            if i == j:
                continue
            d = _d(fa[i], f[j])
            if y[i] == y[j]:
                pos.append(d)
            elif d < 0.3:
                neg.append(0.3 - d)
            else:
                continue
            norms.append(_sq(fa[i]) + _sq(f[j]))
            anchors.add(i)
    assert neg, "the batch must have active negative pairs for this test to mean something"
    metric = sum(p for p in pos if p > 0) / sum(1 for p in pos if p > 0) + sum(neg) / len(neg)
    a = sorted(anchors)
    logits = fa @ conl.head.weight.T + conl.head.bias
    expected = _ce(logits[a], y[a]) + 2 * metric + 0.001 * sum(norms) / len(norms)
    assert torch.allclose(loss, expected)
    assert torch.allclose(adv, logits[a]) and clean.shape == adv.shape


def test_authors_triplet_uses_adversarial_anchors_and_clean_positives_and_negatives(pair):
    f, fa, y = pair
    tl = make_loss("TL", D, C, margin=0.3)  # a wide margin: many active triplets
    loss, adv, _ = tl.adversarial_objective(f, fa, y)
    costs, norms = [], []
    for a in range(N):
        for p in range(N):
            for n in range(N):
                if a != p and y[a] == y[p] and y[a] != y[n]:
                    costs.append(torch.clamp(_d(fa[a], f[p]) - _d(fa[a], f[n]) + 0.3, min=0))
                    norms.append(_sq(fa[a]) + _sq(f[p]) + _sq(f[n]))
    active = [c for c in costs if c > 0]
    assert 0 < len(active) < len(costs)
    logits = fa @ tl.head.weight.T + tl.head.bias
    expected = _ce(logits, y) + 2 * sum(active) / len(active) + 0.001 * sum(norms) / len(norms)
    assert torch.allclose(loss, expected) and torch.allclose(adv, logits)  # every example is an anchor here


def test_authors_center_and_arcface_sum_the_clean_and_adversarial_objectives(pair):
    f, fa, y = pair
    cen = make_loss("CenL", D, C)
    head = lambda v: v @ cen.head.weight.T + cen.head.bias  # noqa: E731
    centre = lambda v: sum(_sq(v[i] - cen.centers[y[i]]) for i in range(N)) / N  # noqa: E731
    norm = lambda v: sum(_sq(v[i]) for i in range(N)) / N  # noqa: E731
    loss, adv, clean = cen.adversarial_objective(f, fa, y)
    expected = (_ce(head(f), y) + _ce(head(fa), y) + 0.005 * (centre(f) + centre(fa))
                + 0.001 * (norm(f) + norm(fa)))
    assert torch.allclose(loss, expected) and torch.allclose(adv, head(fa)) and torch.allclose(clean, head(f))

    arc = make_loss("AAML", D, C).train()

    def margin_logits(v):
        cos = torch.stack([torch.stack([1 - _d(v[i], w) for w in arc.weight]) for i in range(N)])
        out = cos.clone()
        for i in range(N):
            out[i, y[i]] = torch.cos(torch.acos(cos[i, y[i]]) + 0.2)
        return 2.0 * out

    loss, adv, clean = arc.adversarial_objective(f, fa, y)
    expected = _ce(margin_logits(f), y) + _ce(margin_logits(fa), y) + 0.001 * (norm(f) + norm(fa))
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(adv, margin_logits(fa), atol=1e-5) and torch.allclose(clean, margin_logits(f), atol=1e-5)


@pytest.mark.parametrize("loss_name", ["SM", "ConL", "TL", "CenL", "AAML"])
def test_authors_alp_is_authors_at_plus_pairing_and_differs_from_the_paper(loss_name):
    exp = make_experiment(loss_name, "AT", "smoke", "cifar10", width=4)
    model = build_model(exp, 3, 10).train()
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    spec = AttackSpec("pgd", steps=2, random_start=True)
    results = {}
    for objectives in ("authors", "paper"):
        for defense in ("AT", "ALP"):
            torch.manual_seed(0)
            results[objectives, defense] = defense_loss(model, x, y, defense, spec, objectives=objectives)[0]
    torch.manual_seed(0)
    x_adv = attack(model, x, y, spec, train_mode=True)
    f_clean, f_adv = model.embed(x), model.embed(x_adv)
    at, adv_pair, clean_pair = model.criterion.adversarial_objective(f_clean, f_adv, y)
    assert torch.allclose(results["authors", "AT"], at, atol=1e-5)
    pairing = ((adv_pair - clean_pair) ** 2).mean()
    assert torch.allclose(results["authors", "ALP"], at + 0.5 * pairing, atol=1e-5)
    # SM differs from the paper in ALP (no clean CE), CenL and AAML in AT (a clean term), ConL / TL in both
    differs = {d for d in ("AT", "ALP") if not torch.allclose(results["authors", d], results["paper", d], atol=1e-4)}
    assert differs == {"SM": {"ALP"}, "CenL": {"AT"}, "AAML": {"AT", "ALP"}}.get(loss_name, {"AT", "ALP"})


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
    old = robust_accuracy(target, craft(surrogate, x, y, spec), y, None)
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
    b_on_a = robust_accuracy(b, craft(a, x, y, spec), y, None)
    a_on_b = robust_accuracy(a, craft(b, x, y, spec), y, None)
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
    cache = evaluation._cache_name("white_box", specs, images)
    monkeypatch.setattr(config, "PROTOCOL_VERSION", config.PROTOCOL_VERSION + 1)
    monkeypatch.setattr(evaluation, "PROTOCOL_VERSION", config.PROTOCOL_VERSION)
    assert make_experiment("AAML", "AT", "smoke").key != before
    assert evaluation._cache_name("white_box", specs, images) != cache


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


def test_tables_show_intervals_seed_spread_and_no_cross_dataset_difference():
    import pandas as pd

    from reproduce.tables import cell, comparison_markdown, paper_table, summarise, wide

    cells = pd.DataFrame([cell("SM-UM", "clean", 0, 90.0, 1000), cell("SM-UM", "clean", 1, 94.0, 1000),
                          cell("SM-UM", "fgsm", 0, 24.0, 1000), cell("SM-UM", "fgsm", 1, None, 1000)])
    s = summarise(cells).set_index(["row", "column"])
    assert s.loc[("SM-UM", "clean"), "mean"] == 92.0 and s.loc[("SM-UM", "clean"), "sd"] == pytest.approx(2 ** 1.5)
    assert (s.loc[("SM-UM", "clean"), ["ci_low", "ci_high"]].tolist()
            == pytest.approx(list(wilson_interval(92.0, 2000))))
    assert s.loc[("SM-UM", "fgsm"), "seeds"] == 1  # the model that did not train is left out
    assert wide(cells).loc["SM-UM", "clean"] == 92.0
    paper = paper_table("table1")
    other = comparison_markdown(summarise(cells), paper, "fashion-mnist", "T", index_name="model")
    assert "92.00 ±1.19 sd 2.83 / 93.15 |" in other and "(-" not in other and "no difference" in other
    same = comparison_markdown(summarise(cells), paper, "cifar10", "T", index_name="model")
    assert "/ 93.15 (-1.15) |" in same and "/ 23.95 (+0.05, in CI) |" in same  # 93.15 is just above 93.19
    far = cells.assign(accuracy=[60.0, 60.0, 24.0, None])
    assert "(-33.15) |" in comparison_markdown(summarise(far), paper, "cifar10", "T")


def test_seeds_budget_trains_every_table_model_per_seed_with_distinct_surrogates():
    from reproduce.config import get_profile
    from reproduce.grid import surrogate_experiments, table1_experiments, table4_experiments

    prof = get_profile("smoke", seeds=2)
    t1, sur = table1_experiments(prof, "cifar10"), surrogate_experiments(prof, "cifar10")
    assert len(t1) == 30 and {e.seed for e in t1} == {0, 1} and len({e.key for e in t1}) == 30
    assert {e.seed for e in sur} == {1000, 1001} and not {e.key for e in sur} & {e.key for e in t1}
    assert len(table4_experiments(prof, "cifar10")) == 40


def test_center_loss_centres_are_learned_not_only_decayed(tmp_path, cifar_root):
    from reproduce.store import RunStore
    from reproduce.training import train

    moved = {}
    for weight in (0.005, 0.0):  # the control: weight decay alone moves the centres
        exp = make_experiment("CenL", "UM", "smoke", "cifar10", width=8, epochs=1, batch_size=64,
                              loss_params={"weight": weight})
        before = build_model(exp, 3, 10).criterion.centers.detach().clone()
        run = train(exp, RunStore(tmp_path), data_root=cifar_root, progress=False)
        moved[weight] = (run.model.criterion.centers.detach() - before).norm().item()
    assert moved[0.005] > 5 * moved[0.0] > 0
