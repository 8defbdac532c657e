"""A new defence is one registration: named on the command line, trained by the one loop, priced by `plan`,
crafted on its own loss, and kept out of the paper's tables. The defence here (half clean, half adversarial
cross-entropy, Goodfellow et al.'s mixture) exists only in this test."""
import pytest
import torch
import torch.nn.functional as F

from reproduce.config import make_experiment
from reproduce.defenses import DEFENSES, Defense, crafting_spec, defense_loss, defense_name, register
from reproduce.models import build_model


def _half_and_half(model, x, x_adv, y, objectives):
    clean, adv = model(x), model(x_adv)
    return 0.5 * F.cross_entropy(clean, y) + 0.5 * F.cross_entropy(adv, y), adv


@pytest.fixture
def mixture():
    defense = register(Defense("MIX", _half_and_half, passes_per_image=9, aliases=("half-adversarial",),
                               summary="half clean, half PGD-7 cross-entropy"))
    yield defense
    del DEFENSES["MIX"]


def test_a_registered_defence_is_named_priced_and_trained(mixture, tmp_path, cifar_root, capsys):
    from reproduce.cli import main
    from reproduce.context import Run
    from reproduce.plan import _training_passes
    from reproduce.protocol import TABLE1

    assert defense_name("half-adversarial") == defense_name("mix") == "MIX"
    exp = make_experiment("SM", "MIX", "smoke", "cifar10", width=4, epochs=1, train_limit=200)
    at = make_experiment("SM", "AT", "smoke", "cifar10", width=4, epochs=1, train_limit=200)
    assert exp.label == "SM-MIX" and exp.key != at.key
    assert exp.keep == "best_pgd7_val" and exp.craft_logits == "training"  # the authors' rules, as for AT
    run = Run("smoke", "cifar10", data_root=cifar_root, progress=False)
    assert _training_passes(run, exp) == 200 * 9 and _training_passes(run, at) == 200 * 8
    assert len(TABLE1.models(run)) == 15  # the paper's table does not grow
    rc = main(["train", "--loss", "SM", "--defense", "half-adversarial", "--profile", "smoke", "--dataset",
               "cifar10", "--runs", str(tmp_path / "runs"), "--data", str(cifar_root), "--epochs", "1", "--quiet",
               "--train-limit", "200", "--budget", "width=4"])
    out = capsys.readouterr().out
    assert rc == 0 and "SM-MIX" in out and "finished" in out


def test_the_loop_hands_a_defence_the_examples_its_own_pgd_crafted(mixture):
    """defense_loss crafts with the experiment's spec and passes the images to the defence's objective:
    the objective computed by hand on the same PGD images (same seed) is the loop's, bit for bit."""
    from reproduce.attacks import attack

    torch.manual_seed(0)
    model = build_model(make_experiment("SM", "UM", "smoke", "cifar10", width=4), 3, 10)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    spec = crafting_spec(make_experiment("SM", "MIX", "smoke", "cifar10"))
    assert spec.loss == "ce" and spec.steps == 7 and not spec.clip_start  # the authors' unclipped start
    torch.manual_seed(1)
    loss, logits = defense_loss(model, x, y, "MIX", spec)
    torch.manual_seed(1)
    x_adv = attack(model, x, y, spec, train_mode=True, check_range=False, logits_of=model.training_logits)
    by_hand = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
    assert torch.equal(loss, by_hand) and torch.equal(logits, model(x_adv))


def test_names_are_checked_when_a_defence_registers():
    with pytest.raises(ValueError, match="already taken"):
        register(Defense("at", _half_and_half))
    with pytest.raises(ValueError, match="already taken"):
        register(Defense("PLAIN2", _half_and_half, aliases=("plain",)))
    with pytest.raises(ValueError, match="no hyphen"):
        register(Defense("PGD-X", _half_and_half))
    choices = r"\['UM', 'AT', 'ALP', 'TRADES', 'MART'\]"  # the registry's, in the order they registered
    with pytest.raises(ValueError, match=rf"unknown defense 'TRADESX'; choose one of {choices}"):
        defense_name("TRADESX")
