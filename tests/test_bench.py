"""The benchmark in its smallest form, so it cannot rot (no timing is asserted here)."""
import json

import pytest

from reproduce.bench import plan, run_benchmarks

KEYS = ["loader_speedup", "train_step_speedup", "pgd_speedup_vs_torchattacks", "restarts_speedup",
        "um_epoch_img_s", "at_epoch_img_s", "pgd20_eval_img_s"]


@pytest.mark.slow
def test_bench_smoke_writes_every_key(tmp_path):
    path = tmp_path / "bench.json"
    results = run_benchmarks("cpu", smoke=True, json_path=path)
    saved = json.loads(path.read_text())
    for key in KEYS:
        assert saved[key] == pytest.approx(results[key]) and results[key] > 0
    assert results["pgd_ours_acc"] <= results["pgd_torchattacks_acc"] + 2.0


def test_plan_lists_every_experiment_and_needs_a_measured_rate():
    rows, total = plan("quick", "cifar10", {"um_epoch_img_s": 10_000.0})
    trained = [r for r in rows if r["what"].startswith("train")]
    assert len(trained) == 15 + 5 + 19  # Table IV's (0.2, 2) is Table I's AAML-AT
    assert total == pytest.approx(sum(r["seconds"] for r in rows)) and total > 0
    doubled = plan("quick", "cifar10", {"um_epoch_img_s": 20_000.0})[1]
    assert doubled == pytest.approx(total / 2)
    with pytest.raises(ValueError, match="bench"):
        plan("quick", "cifar10", None)
