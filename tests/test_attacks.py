import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from reproduce.attacks import AttackSpec, attack, attack_all_restarts
from reproduce.config import get_profile
from reproduce.protocol import TABLE1


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))


def _norm(delta, norm):
    flat = delta.flatten(1)
    return flat.abs().max(1).values if norm == "linf" else flat.norm(dim=1)


SPECS = st.sampled_from([("fgsm", "linf", 1, False), ("bim", "linf", 3, False), ("pgd", "linf", 3, True),
                         ("mim", "linf", 3, False), ("fgsm", "l2", 1, False)])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), spec=SPECS, eps=st.floats(0.0, 0.5), train_mode=st.booleans(),
       restarts=st.integers(1, 3))
def test_adversarial_images_stay_in_the_ball_and_the_box(seed, spec, eps, train_mode, restarts):
    name, norm, steps, rs = spec
    model = small_model(seed)
    model.train(train_mode)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    s = AttackSpec(name, eps=eps, step=eps / 2 if steps > 1 else eps, steps=steps, random_start=rs,
                   norm=norm, restarts=restarts if name == "pgd" else 1)
    x_adv = attack(model, x, y, s)
    assert x_adv.shape == x.shape
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert (_norm(x_adv - x, norm) <= eps + 1e-5).all()
    if eps == 0:
        assert torch.equal(x_adv, x)
    assert model.training == train_mode
    assert all(p.grad is None for p in model.parameters())
    # eval mode during the attack: batch-norm running statistics are untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_train_mode_crafting_uses_batch_statistics():
    model = small_model(0).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 5, (8,))
    before = model[1].running_mean.clone()
    attack(model, x, y, AttackSpec("pgd", steps=2, random_start=True), train_mode=True)
    assert not torch.equal(before, model[1].running_mean) and not model.training


def test_table1_has_the_six_columns_of_the_protocol():
    specs = {s.column: s for s in TABLE1.specs(get_profile("paper"))}
    assert list(specs) == ["fgsm", "bim7", "pgd7", "pgd20", "pgd20x20", "mim40", "aa"]
    assert specs["fgsm"].step == specs["fgsm"].eps == pytest.approx(8 / 255)
    assert specs["bim7"].steps == 7 and not specs["bim7"].random_start and specs["bim7"].step == pytest.approx(2 / 255)
    assert specs["pgd7"].random_start and specs["pgd20"].steps == 20
    assert specs["pgd20x20"].restarts == 20 and specs["mim40"].steps == 40 and specs["mim40"].momentum == 0.9


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="unknown attack"):
        AttackSpec("cw")
    with pytest.raises(ValueError, match="eps"):
        AttackSpec("pgd", eps=3.0, steps=7)
    with pytest.raises(ValueError, match="L2"):
        AttackSpec("pgd", norm="l2", steps=7)


def test_iterative_attacks_need_their_steps_and_pgd_starts_at_random():
    for name in ("bim", "pgd", "mim"):
        with pytest.raises(ValueError, match="needs steps="):
            AttackSpec(name)
    assert AttackSpec("pgd", steps=7).random_start and not AttackSpec("bim", steps=7).random_start
    assert AttackSpec("fgsm").steps == 1


def test_images_outside_the_unit_range_or_not_float_are_refused():
    model = small_model(0).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    spec = AttackSpec("fgsm")
    with pytest.raises(ValueError, match=r"x.float\(\) / 255"):
        attack(model, (x * 255).to(torch.uint8), y, spec)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        attack(model, (x - 0.5) / 0.25, y, spec)


@pytest.mark.parametrize("stop_when_broken", [False, True])
def test_survivor_restarts_equal_all_restarts(stop_when_broken):
    model = small_model(3).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 5, (64,), generator=g)
    spec = AttackSpec("pgd", eps=0.03, step=0.01, steps=5, random_start=True, restarts=6)
    torch.manual_seed(11)
    fast = attack(model, x, y, spec, stop_when_broken=stop_when_broken)
    torch.manual_seed(11)
    slow = attack_all_restarts(model, x, y, spec, stop_when_broken=stop_when_broken)
    with torch.no_grad():
        survived_fast, survived_slow = model(fast).argmax(1) == y, model(slow).argmax(1) == y
    assert 0 < survived_fast.sum() < len(y)  # some examples broken, some not: the test has teeth
    assert torch.equal(survived_fast, survived_slow)


def test_more_restarts_never_raise_accuracy():
    model = small_model(4).eval()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 5, (64,))
    accs = []
    for r in (1, 3, 6):
        torch.manual_seed(0)
        x_adv = attack(model, x, y, AttackSpec("pgd", eps=0.02, step=0.01, steps=3, random_start=True, restarts=r))
        with torch.no_grad():
            accs.append((model(x_adv).argmax(1) == y).float().mean().item())
    assert accs[0] >= accs[1] >= accs[2]


def test_stop_when_broken_is_never_weaker_and_keeps_the_ball():
    model = small_model(5).eval()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(128, 1, 8, 8, generator=g), torch.randint(0, 5, (128,), generator=g)
    for spec in (AttackSpec("pgd", eps=0.05, step=0.01, steps=10, random_start=True),
                 AttackSpec("mim", eps=0.05, step=0.01, steps=10)):
        torch.manual_seed(0)
        plain = attack(model, x, y, spec)
        torch.manual_seed(0)
        early = attack(model, x, y, spec, stop_when_broken=True)
        with torch.no_grad():
            acc_plain = (model(plain).argmax(1) == y).float().mean()
            acc_early = (model(early).argmax(1) == y).float().mean()
            # examples the plain attack never broke at any step are followed step for step
            survivors = model(early).argmax(1) == y
        assert acc_early <= acc_plain
        assert torch.allclose(early[survivors], plain[survivors])
        assert (early - x).abs().max() <= 0.05 + 1e-6 and early.min() >= 0 and early.max() <= 1
