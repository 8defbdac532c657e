"""The plan's cost model. The benchmark itself runs in its smallest form in the rehearsal of
scripts/gpu_check.sh (tests/test_gpu_check.py), so it cannot rot."""
import pytest

from reproduce.context import Run
from reproduce.plan import plan


def test_plan_lists_every_experiment_and_converts_passes_with_a_measured_rate():
    rows, total = plan(Run("quick", "cifar10"), {"um_epoch_img_s": 10_000.0, "model_width": 64})
    trained = [r for r in rows if r["what"].startswith("train")]
    # Table IV at its own epochs (its (0.2, 2) is not Table I's AAML-AT); beyond the paper, 16 models of which
    # Table I has four
    assert len(trained) == 15 + 5 + 20 + 12
    sm_um = next(r for r in trained if r["what"] == "train SM-UM")
    assert sm_um["passes"] == 45_000 * 30  # the whole split, 30 epochs, one pass per image
    sm_at = next(r for r in trained if r["what"] == "train SM-AT")
    assert sm_at["passes"] == 8 * sm_um["passes"]  # PGD-7 crafting + the update
    trades = next(r for r in trained if r["what"] == "train SM-TRADES")
    assert trades["passes"] == 10 * sm_um["passes"] and trades["notebook"] == "07"  # + the clean pass, the KL
    # a column computed for Table I is not priced again for the table beyond the paper
    beyond = next(r for r in rows if r["what"].startswith("beyond: evaluate"))
    assert beyond["what"] == "beyond: evaluate 12 models"
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


def test_plan_divides_by_the_measured_levers_of_the_profile():
    from reproduce.config import get_profile
    from reproduce.plan import speedups

    rates = {"um_epoch_img_s": 10_000.0, "model_width": 64, "train_compile_speedup": 2.0,
             "pgd20_compile_speedup": 1.25, "compiled": "compiled (inductor)"}
    fill = {"models": 5, "one_process_s": 300.0, "workers_s": 100.0, "workers": "--workers 5"}
    quick = Run("quick", "cifar10")  # compiles
    rows = plan(quick, rates, fill)[0]
    for r in rows:
        factor = 2.0 * 3.0 if r["kind"] == "train" else 1.25
        assert r["seconds"] == pytest.approx(r["passes"] / 10_000.0 / factor), r["what"]
    # the eager profile gains nothing from the compile ratios; a failed compilation prices nothing either
    eager = Run(get_profile("quick", compile=False), "cifar10")
    assert speedups(eager, rates)[0] == {"train": 1.0, "attack": 1.0}
    assert speedups(quick, {**rates, "compiled": "eager (compile failed: x)"})[0] == {"train": 1.0, "attack": 1.0}
    # Table IV's budget: its 20 models at the profile's sweep_epochs, each an AT run
    sweep = [r for r in rows if r["group"] == "table4" and r["kind"] == "train"]
    assert len(sweep) == 20 and all(r["passes"] == 45_000 * 10 * 8 for r in sweep)
    from reproduce.protocol import TABLE4
    from reproduce.tables import notes

    assert {e.epochs for e in TABLE4.experiments(quick)} == {10}
    assert any("trained for 10 epochs" in n for n in notes(quick, TABLE4, {}))  # the table says so
    notes = speedups(quick, rates, fill)[1]
    assert any("x2.00" in n for n in notes) and any("x3.00" in n for n in notes)


def test_plan_refuses_a_fill_without_times(tmp_path, capsys):
    from reproduce.cli import main

    fill = tmp_path / "fill.json"
    fill.write_text('{"models": 5, "one_process_s": 10, "workers_s": 0}')
    assert main(["plan", "--profile", "quick", "--fill", str(fill)]) == 2
    assert "workers_s=0; each must be a number above 0" in capsys.readouterr().err


def test_side_by_side_times_one_process_and_one_thread_processes():
    """Benchmark 7 (CPU only, skipped by `bench` when the caller has one thread, as under `make test`'s
    workers): both sides time real epochs and the ratio is theirs."""
    import torch

    from reproduce.bench import side_by_side

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        found = side_by_side(256, 64, 1)
    finally:
        torch.set_num_threads(previous)
    assert found["one_thread_processes"] == 2
    assert found["one_process_all_threads_img_s"] > 0 and found["one_thread_processes_img_s"] > 0
    assert found["one_thread_processes_speedup"] == pytest.approx(
        found["one_thread_processes_img_s"] / found["one_process_all_threads_img_s"])
