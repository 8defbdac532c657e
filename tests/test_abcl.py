"""The ABCL appendix: the training recipe reaches the experiment and the optimiser, and the notebook's
sentences about the appendix's claims follow the numbers."""
import pandas as pd
import pytest
import torch

from reproduce import abcl
from reproduce.config import get_profile, make_experiment
from reproduce.losses import loss_parameters, loss_recipe
from reproduce.models import build_model
from reproduce.training import make_optimizer


def test_a_loss_recipe_sets_the_optimiser_and_overrides_still_win():
    ab = make_experiment("HT-SCE+AB", "UM", "smoke", "fashion-mnist")
    assert (ab.optimizer, ab.lr) == (loss_recipe("HT-SCE+AB")["optimizer"], loss_recipe("HT-SCE+AB")["lr"])
    sm = make_experiment("SM", "UM", "smoke", "fashion-mnist")
    assert (sm.optimizer, sm.lr) == ("sgd", 0.2) and loss_recipe("SM") == {}
    sgd = make_experiment("HT-SCE+AB", "UM", "smoke", "fashion-mnist", optimizer="sgd", lr=0.2)
    assert sgd.optimizer == "sgd" and sgd.key != ab.key
    assert isinstance(make_optimizer(build_model(ab, 1, 10), ab), torch.optim.Adam)
    assert isinstance(make_optimizer(build_model(sgd, 1, 10), sgd), torch.optim.SGD)


def test_an_unknown_optimiser_is_refused_before_training():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_experiment("SM", "UM", "smoke", "fashion-mnist", optimizer="rmsprop")


def test_every_recipe_of_the_search_is_a_distinct_run_at_k_512_64():
    exps = [make_experiment("HT-SCE+AB", "UM", "smoke", "fashion-mnist", **settings)
            for settings in abcl.recipes(get_profile("smoke")).values()]
    assert len({e.key for e in exps}) == len(exps)
    assert all(e.params["k1"] == 512 and e.params["k2"] == 64 for e in exps)
    default = make_experiment("HT-SCE+AB", "UM", "smoke", "fashion-mnist")
    assert exps[-1].key == default.key  # the last recipe is the default one


def _grid(clean):
    return pd.DataFrame([{"k1": k1, "k2": k2, "clean": c, "pgd7": c / 2} for (k1, k2), c in clean.items()])


def test_claims_follow_the_numbers():
    sweep = pd.DataFrame({"loss": ["HT-SCE"] * 3, "s": [4, 8, 10], "clean": [80.0, 70.0, 60.0]})
    holds = abcl.claims(_grid({(0, 0): 30.0, (512, 64): 80.0, (64, 8): 70.0}), sweep)
    assert "holds here (plain HT-SCE 30.0%, the other cells 70.0% to 80.0%)" in holds[0]
    assert "(512, 64) reaches 80.0% clean and 40.0% under PGD-7" in holds[1]
    assert "best clean accuracy is at s = 4 (80.0%" in holds[2] and "60.0% on average, below" in holds[2]
    fails = abcl.claims(_grid({(0, 0): 90.0, (512, 64): 80.0}), sweep, n_images=300)
    assert "does not hold here" in fails[0]
    assert "(0, 0) (45.0%)" in fails[1]  # the most robust cell, printed as plain numbers
    assert "300 test images: its 95% interval is about ±4." in fails[-1]


def test_the_k1k2_grid_at_zero_is_the_scale_sweeps_ht_sce_run_and_the_same_network():
    """Appendix B's (0, 0) cell reuses Appendix C's HT-SCE run: the same training settings, and a network
    that HT-SCE+AB at k1 = k2 = 0 would have built identically (same weights, same loss on a batch)."""
    from reproduce.context import Run

    run = Run("smoke", "fashion-mnist")
    cell = abcl.k1k2_experiment(run, 0, 0)
    sweep = abcl.scale_sweep.__defaults__[0]  # the scales Appendix C trains
    default_s = loss_parameters("HT-SCE")["s"]
    assert default_s in sweep
    assert cell.key == abcl.grid_experiment(run, "HT-SCE", "UM", {"s": float(default_s)}).key  # Appendix C's cell
    assert cell.epochs == run.profile.grid_epochs
    ab = abcl.grid_experiment(run, "HT-SCE+AB", "UM", {"k1": 0.0, "k2": 0.0})
    same = ("optimizer", "lr", "epochs", "batch_size", "seed", "width", "train_limit", "keep", "augment")
    assert all(getattr(ab, f) == getattr(cell, f) for f in same)
    a, b = build_model(ab, 1, 10), build_model(cell, 1, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    assert torch.equal(a.loss(x, y)[0], b.loss(x, y)[0]) and torch.equal(a(x), b(x))
    assert abcl.k1k2_experiment(run, 512, 64).loss == "HT-SCE+AB"
