import shutil

import pytest
import torch
import torch.nn.functional as F

from reproduce.attacks import AttackSpec
from reproduce.config import make_experiment
from reproduce.context import Run
from reproduce.defenses import defense_loss
from reproduce.models import build_model
from reproduce.protocol import TABLE2, TABLES, table1_experiments, table4_experiments
from reproduce.store import RunStore
from reproduce.training import train_all


def _model(loss="SM"):
    return build_model(make_experiment(loss, "UM", "smoke", "cifar10", width=4), 3, 10)


def test_paper_alp_is_its_three_terms():
    model = _model("CenL")
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    spec = AttackSpec("pgd", steps=2, random_start=True)
    torch.manual_seed(0)
    loss, logits = defense_loss(model, x, y, "ALP", spec, objectives="paper")
    torch.manual_seed(0)  # same random start: the same adversarial batch
    from reproduce.attacks import attack

    x_adv = attack(model, x, y, spec, train_mode=True)
    adv_loss, adv_logits = model.loss(x_adv, y)
    clean_loss, clean_logits = model.loss(x, y)
    expected = clean_loss + adv_loss + 0.5 * ((clean_logits - adv_logits) ** 2).mean()
    assert torch.allclose(loss, expected) and torch.allclose(logits, adv_logits)


@pytest.mark.parametrize("objectives", ["authors", "paper"])
def test_softmax_at_never_trains_on_clean_images(objectives):
    model = _model()
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    seen = []
    hook = model.embedder.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    loss, _ = defense_loss(model, x, y, "AT", AttackSpec("pgd", steps=1, random_start=True), objectives=objectives)
    hook.remove()
    # the last forward pass is the one the loss comes from: it sees adversarial images only
    assert not torch.equal(seen[-1], x) and (seen[-1] - x).abs().max() <= 8 / 255 + 1e-6
    # and the training gradient is the gradient of the adversarial loss
    model.zero_grad()
    loss.backward()
    g_at = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.loss(seen[-1], y)[0].backward()
    assert all(torch.allclose(a, b) for a, b in zip(g_at, (p.grad for p in model.parameters())))


def test_um_is_the_plain_loss():
    model = _model()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    loss, logits = defense_loss(model, x, y, "UM")
    assert torch.allclose(loss, F.cross_entropy(logits, y))


def test_grid_shapes():
    run = Run("smoke", "cifar10")
    t1 = table1_experiments(run)
    assert [e.label for e in t1[:3]] == ["SM-UM", "SM-AT", "SM-ALP"] and len(t1) == 15
    assert len({e.key for e in t1}) == 15
    t4 = table4_experiments(run)
    assert len(t4) == 20 and all(e.label == "AAML-AT" for e in t4)
    # the smoke profile trains Table IV at its own budget (sweep_epochs): no cell is Table I's AAML-AT ...
    assert t1[-2].key not in {e.key for e in t4} and {e.epochs for e in t4} == {run.profile.sweep_epochs}
    # ... while at Table I's epochs (colab), (m = 0.2, s = 2) is Table I's AAML-AT: trained once
    colab = Run("colab", "cifar10")
    assert table1_experiments(colab)[-2].key in {e.key for e in table4_experiments(colab)}
    both = TABLE2.experiments(run)
    assert len(both) == 20 and {e.seed for e in both[15:]} == {1000}
    assert list(TABLES) == ["table1", "table2", "table3", "table4", "beyond"]


def test_grid_skips_stored_runs_and_retrains_only_a_deleted_one(tmp_path, cifar_root):
    store = RunStore(tmp_path / "runs")
    exps = [make_experiment(loss, d, "smoke", "cifar10", width=4, epochs=1, batch_size=100, attack_steps=1)
            for loss, d in (("SM", "UM"), ("TL", "AT"), ("AAML", "ALP"))]
    train_all(Run("smoke", "cifar10", store=store, data_root=cifar_root, progress=False), exps)
    stamps = {e: (store.run_dir(e) / "result.json").stat().st_mtime_ns for e in exps}
    train_all(Run("smoke", "cifar10", store=store, data_root=cifar_root, progress=False), exps)
    assert {e: (store.run_dir(e) / "result.json").stat().st_mtime_ns for e in exps} == stamps
    shutil.rmtree(store.run_dir(exps[1]))
    train_all(Run("smoke", "cifar10", store=store, data_root=cifar_root, progress=False), exps)
    after = {e: (store.run_dir(e) / "result.json").stat().st_mtime_ns for e in exps}
    assert after[exps[0]] == stamps[exps[0]] and after[exps[2]] == stamps[exps[2]]
    assert after[exps[1]] != stamps[exps[1]]


def test_a_diverging_run_is_recorded_and_the_grid_completes(tmp_path, cifar_root):
    store = RunStore(tmp_path / "runs")
    bad = make_experiment("AAML", "AT", "smoke", "cifar10", width=4, epochs=1, batch_size=100, attack_steps=1,
                          lr=1e8, schedule="constant")
    good = make_experiment("SM", "UM", "smoke", "cifar10", width=4, epochs=1, batch_size=100)
    runs = train_all(Run("smoke", "cifar10", store=store, data_root=cifar_root, progress=False), [bad, good])
    assert runs[bad].diverged and store.result(bad)["status"] == "diverged"
    assert runs[good].result["status"] == "finished"


def test_cli_train_prints_the_run_directory(tmp_path, cifar_root, capsys):
    from reproduce.cli import main

    rc = main(["train", "--loss", "CenL", "--defense", "AT", "--profile", "smoke", "--dataset", "cifar10",
               "--runs", str(tmp_path / "runs"), "--data", str(cifar_root), "--epochs", "1", "--quiet",
               "--train-limit", "200"])
    out = capsys.readouterr().out
    assert rc == 0 and str(tmp_path / "runs") in out and "finished" in out
