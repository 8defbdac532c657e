"""The library refuses what it cannot compute: every invalid AttackSpec or loss parameter is named at
construction, and attacks and losses refuse inputs that would make them silently wrong (NaN images,
ignored labels, an empty batch)."""
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reproduce.attacks import AttackSpec, attack
from reproduce.losses import LOSSES, loss_parameters, make_loss

NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NOT_A_NUMBER = st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))


@st.composite
def invalid_specs(draw):
    """A keyword set for AttackSpec with exactly one invalid field."""
    name = draw(st.sampled_from(["fgsm", "bim", "pgd", "mim"]))
    field = draw(st.sampled_from(["eps", "step", "momentum", "steps", "restarts"]))
    bad = {
        "eps": st.one_of(NOT_FINITE, NOT_A_NUMBER, st.floats(max_value=-1e-9), st.floats(min_value=1.0001)),
        "step": st.one_of(NOT_FINITE, NOT_A_NUMBER, st.floats(max_value=-1e-9)),
        "momentum": st.one_of(NOT_FINITE, NOT_A_NUMBER, st.floats(max_value=-1e-9)),
        "steps": st.one_of(NOT_FINITE, NOT_A_NUMBER.filter(lambda v: v is not None), st.integers(max_value=0),
                           st.floats(0.01, 100).filter(lambda v: v != int(v))),
        "restarts": st.one_of(NOT_FINITE, NOT_A_NUMBER, st.integers(max_value=0),
                              st.floats(0.01, 100).filter(lambda v: v != int(v))),
    }[field]
    return name, field, draw(bad)


@settings(max_examples=300, deadline=None)
@given(invalid_specs())
def test_no_invalid_attack_spec_is_accepted(case):
    name, field, value = case
    with pytest.raises(ValueError, match=f"AttackSpec {field}="):
        AttackSpec(name, **{"steps": 7, field: value})  # steps=None: the attack's default or an error of its own


def test_l2_eps_must_be_finite_and_whole_counts_become_ints():
    with pytest.raises(ValueError, match="eps=inf: expected a finite number"):
        AttackSpec("fgsm", norm="l2", eps=math.inf)
    assert AttackSpec("fgsm", norm="l2", eps=2.0).eps == 2.0  # L2 eps may exceed 1
    spec = AttackSpec("pgd", steps=7.0, restarts=2.0)
    assert (spec.steps, spec.restarts) == (7, 2) and isinstance(spec.steps, int)
    with pytest.raises(ValueError, match="random_start"):
        AttackSpec("pgd", steps=7, random_start="yes")


@st.composite
def invalid_loss_params(draw):
    """(loss, parameter, invalid value) for a numeric parameter of a loss."""
    loss = draw(st.sampled_from(sorted(LOSSES)))
    numeric = [k for k, v in loss_parameters(loss).items()
               if (isinstance(v, (int, float)) and not isinstance(v, bool)) or k == "s"]
    name = draw(st.sampled_from(numeric))
    low = {"s": st.floats(max_value=0.0), "m": st.floats(max_value=-1e-9)}.get(name, st.floats(max_value=-1e-9))
    bad = [NOT_FINITE, st.text(min_size=1, max_size=3), st.booleans(), low]
    if name == "m":
        bad.append(st.floats(min_value=math.pi, allow_infinity=False))
    return loss, name, draw(st.one_of(*bad))


@settings(max_examples=300, deadline=None)
@given(invalid_loss_params())
def test_no_invalid_loss_parameter_is_accepted(case):
    loss, name, value = case
    with pytest.raises(ValueError, match=re.escape(f"loss {loss} parameter {name}=")):
        make_loss(loss, 4, 3, **{name: value})


def test_loss_sizes_are_checked_and_valid_parameters_still_build():
    with pytest.raises(ValueError, match="num_classes=0"):
        make_loss("SM", 4, 0)
    with pytest.raises(ValueError, match="embedding_dim=2.5"):
        make_loss("SM", 2.5, 3)
    assert make_loss("AAML", 4, 3, s=4, m=0.0).s == 4.0
    assert make_loss("CosFace", 4, 3, s=None).s is None  # the feature norm as the scale


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_losses_refuse_an_empty_batch_and_ignored_labels(loss):
    criterion = make_loss(loss, 4, 3)
    with pytest.raises(ValueError, match="non-empty"):
        criterion(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(RuntimeError, match="class indices >= 0"):
        criterion(torch.randn(6, 4), torch.full((6,), -100))
    loss_value, _ = criterion(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.isfinite(loss_value)


def test_attacks_refuse_nan_images_and_labels_they_would_leave_unattacked():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    spec = AttackSpec("pgd", steps=2)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        attack(model, torch.full_like(x, math.nan), y, spec)
    with pytest.raises(ValueError, match="class indices >= 0"):
        attack(model, x, torch.full((5,), -100), spec)
    with pytest.raises(ValueError, match="one integer class index per image"):
        attack(model, x, y[:3], spec)
    adv = attack(model, x, y, spec)
    assert (adv - x).abs().max() <= spec.eps + 1e-6
