"""The plan's cost model. The benchmark itself runs in its smallest form in the rehearsal of
scripts/gpu_check.sh (tests/test_gpu_check.py), so it cannot rot."""
import pytest

from reproduce.context import Run
from reproduce.plan import plan


def test_plan_lists_every_experiment_and_converts_passes_with_a_measured_rate():
    rows, total = plan(Run("quick", "cifar10"), {"um_epoch_img_s": 10_000.0, "model_width": 64})
    trained = [r for r in rows if r["what"].startswith("train")]
    assert len(trained) == 15 + 5 + 19  # Table IV's (0.2, 2) is Table I's AAML-AT
    sm_um = next(r for r in trained if r["what"] == "train SM-UM")
    assert sm_um["passes"] == 45_000 * 30  # the whole split, 30 epochs, one pass per image
    sm_at = next(r for r in trained if r["what"] == "train SM-AT")
    assert sm_at["passes"] == 8 * sm_um["passes"]  # PGD-7 crafting + the update
    assert total == pytest.approx(sum(r["passes"] for r in rows) / 10_000.0)
    doubled = plan(Run("quick", "cifar10"), {"um_epoch_img_s": 20_000.0, "model_width": 64})[1]
    assert doubled == pytest.approx(total / 2)
    rows_without, total_without = plan(Run("quick", "cifar10"), None)  # no bench yet: the work, not the time
    assert total_without is None and [r["passes"] for r in rows_without] == [r["passes"] for r in rows]


def test_plan_refuses_a_bench_of_another_width():
    with pytest.raises(ValueError, match="width-16"):
        plan(Run("quick", "cifar10"), {"um_epoch_img_s": 1000.0, "model_width": 16})
    with pytest.raises(ValueError, match="um_epoch_img_s"):
        plan(Run("quick", "cifar10"), {"device": "cpu"})


def test_plan_command_prints_the_rate_a_budget_needs(capsys):
    from reproduce.cli import main

    assert main(["plan", "--profile", "smoke", "--dataset", "fashion-mnist", "--hours", "1"]) == 0
    out = capsys.readouterr().out
    assert "train SM-UM" in out and "image passes per second" in out and "bench --json" in out
