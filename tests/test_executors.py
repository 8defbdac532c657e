"""Many workers, one store: a grid trained by 2 or 3 local workers equals the sequential run bitwise at
the default thread count, a killed worker's share is finished by the caller, and a Slurm submission asks
for what it was given."""
import os
import stat

import pytest
import torch

from reproduce.config import make_experiment
from reproduce.context import Run
from reproduce.executors import run_grid, worker_devices
from reproduce.store import RunStore, load_checkpoint


def _grid():
    return [make_experiment(loss, "UM", "smoke", "cifar10", width=4, epochs=2, batch_size=64, train_limit=256,
                            val_limit=64) for loss in ("SM", "CenL", "AAML", "CosFace")]


def _run(root, cifar_root=None, **kw):
    return Run("smoke", "cifar10", store=RunStore(root), device="cpu", data_root=cifar_root, progress=False, **kw)


def _same_runs(store_a, store_b, exps):
    """Bitwise the same metrics (times aside) and weights for every experiment of two stores."""
    for exp in exps:
        assert store_a.run_dir(exp).name == store_b.run_dir(exp).name
        metrics = [[{k: v for k, v in m.items() if k not in ("seconds", "wall_seconds", "images_per_s")}
                    for m in s.metrics(exp)] for s in (store_a, store_b)]
        assert metrics[0] == metrics[1] and len(metrics[0]) == 2, exp.label
        wa, wb = (load_checkpoint(s.run_dir(exp) / "best.pt")["model"] for s in (store_a, store_b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), exp.label


@pytest.mark.parametrize("workers", [2, 3])
def test_local_workers_train_the_grid_bitwise_as_one_process_at_the_default_threads(tmp_path, cifar_root, workers):
    exps = _grid()
    one = RunStore(tmp_path / "one")
    run_grid(_run(one.root, cifar_root), exps)
    many = RunStore(tmp_path / "many")
    run_grid(_run(many.root, cifar_root), exps, executor="local", workers=workers)
    _same_runs(one, many, exps)
    assert len(list((many.root / "submitit").glob("*_result.pkl"))) == workers  # every worker ran
    assert {many.result(e)["threads"] for e in exps} == {torch.get_num_threads()}  # recorded in each run


def test_a_killed_worker_leaves_its_share_to_the_caller(tmp_path, cifar_root):
    import time

    from reproduce.executors import finish_grid

    exps = _grid()
    many = RunStore(tmp_path / "many")
    jobs = run_grid(_run(many.root, cifar_root), exps, executor="local", workers=2, wait=False)
    deadline = time.time() + 120
    while not any(many.run_dir(e).joinpath("metrics.jsonl").exists() for e in exps) and time.time() < deadline:
        time.sleep(0.2)  # a worker is in the middle of a run
    jobs[0]._process.kill()
    runs = finish_grid(_run(many.root, cifar_root), exps, jobs)
    assert all(runs[e].result["status"] == "finished" for e in exps)
    one = RunStore(tmp_path / "one")
    run_grid(_run(one.root, cifar_root), exps)
    _same_runs(one, many, exps)  # the killed worker's run was resumed or redone to the same numbers


def test_worker_devices_share_gpus_and_refuse_too_many_workers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--gpus asks for GPU\(s\) \[0, 1\] but this machine has 0"):
        worker_devices(2, [0, 1], 1)  # refused here, before a worker starts
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"GPU\(s\) \[2\] but this machine has 2"):
        worker_devices(2, [1, 2], 1)
    assert worker_devices(4, [0, 1], 2) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert worker_devices(2, [], 1, "cpu") == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="do not fit on 2 GPU"):
        worker_devices(5, [0, 1], 2)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_grid(_run("unused"), _grid(), executor="local", workers=0)


def test_a_slurm_grid_is_submitted_as_a_job_array_with_its_options(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    jobs = run_grid(_run(tmp_path / "runs"), _grid(), executor="slurm", workers=3, wait=False,
                    slurm={"slurm_partition": "gpu", "timeout_min": 120, "gpus_per_node": 1})
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --array=0-2%3"):
        assert line in script, line


def test_two_local_workers_fill_the_evaluation_cache_with_the_sequential_numbers(tmp_path, cifar_root):
    import shutil

    from reproduce.config import get_profile
    from reproduce.data import load_dataset
    from reproduce.evaluation import accuracies, score_columns
    from reproduce.executors import evaluate_grid
    from reproduce.protocol import EPS_END, TABLE1
    from reproduce.training import load_trained

    prof = get_profile("smoke", test_limit=16, restarts=2, mim_steps=3, autoattack_steps=2)
    exps = _grid()[:2]
    run_grid(_run(tmp_path / "one", cifar_root), exps)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    specs = TABLE1.specs(prof) + [EPS_END.spec(prof)]  # Table I's and a column of the masking report
    evaluate_grid(Run(prof, "cifar10", store=RunStore(tmp_path / "two"), device="cpu", data_root=cifar_root), exps,
                  workers=2, specs=specs)
    data = load_dataset("cifar10", cifar_root, test_limit=16)
    # sequential, in the other store; then the workers' cache, read without computing
    one = {exp: accuracies(score_columns(load_trained(exp, RunStore(tmp_path / "one")), data.x_test, data.y_test,
                                         specs, experiment=exp, store=RunStore(tmp_path / "one"))) for exp in exps}
    for exp in exps:  # model None: every column must come from the cache
        two = accuracies(score_columns(None, data.x_test, data.y_test, specs, experiment=exp,
                                       store=RunStore(tmp_path / "two")))
        assert one[exp] == two and len(two) == len(TABLE1.columns) + 1
