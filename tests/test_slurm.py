"""The grid on a real Slurm cluster: a single-node cluster of Debian's packages (scripts/slurm-local.sh),
started for these tests and stopped after them when they started it. Marked `slurm`: `make test` leaves
them out, `make test-slurm` (CI's own step) runs them; skipped, with the reason, where Slurm is not
installed or the tests do not run as root (its daemons need it).

On the CPU float sums depend on the thread count: each array task gets one CPU and computes at one
thread, the local process it is compared with too."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import write_cifar10

from reproduce.config import get_profile
from reproduce.context import Run
from reproduce.executors import evaluate_grid, finish_grid, run_grid
from reproduce.protocol import TABLE1
from reproduce.runner import REPO
from reproduce.store import RunStore, load_checkpoint

pytestmark = pytest.mark.slurm

STATE = Path(os.environ.get("REPRODUCE_SLURM_STATE", "/tmp/reproduce-slurm-tests"))
PORT = "6927"  # not the script's default: a cluster someone started with it keeps running beside the tests
SLURM = {"cpus_per_task": 1, "timeout_min": 20}


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed: sudo apt-get install slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("the single-node cluster's daemons run as root; run these tests as root")
    started = subprocess.run(["bash", str(REPO / "scripts" / "slurm-local.sh"), str(STATE)], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "SLURM_LOCAL_PORT": PORT})
    assert started.returncode == 0, started.stdout + started.stderr
    ours = "already running" not in started.stdout
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(STATE / "slurm.conf")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the array tasks' thread count
    yield STATE
    torch.set_num_threads(threads)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if ours:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm-local.sh"), "--stop", str(STATE)], timeout=60)


def _run(root, cifar_root, epochs: int = 2, train_limit: int = 256, width: int = 4) -> Run:
    prof = get_profile("smoke", width=width, epochs=epochs, batch_size=64, train_limit=train_limit, val_limit=64,
                       test_limit=40, restarts=1, mim_steps=5, autoattack_steps=5)
    return Run(prof, "cifar10", store=RunStore(root), device="cpu", data_root=cifar_root, progress=False)


def _grid(run) -> list:
    return [run.experiment(loss, "UM") for loss in ("SM", "CenL", "AAML", "CosFace")]


def _same_runs(store_a, store_b, exps):
    """Bitwise the same metrics (times aside) and kept weights for every experiment of two stores."""
    for exp in exps:
        metrics = [[{k: v for k, v in m.items() if k not in ("seconds", "wall_seconds", "images_per_s")}
                    for m in s.metrics(exp)] for s in (store_a, store_b)]
        assert metrics[0] == metrics[1] and metrics[0], exp.label
        wa, wb = (load_checkpoint(s.run_dir(exp) / "best.pt")["model"] for s in (store_a, store_b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), exp.label


def _trained_by_workers(folder) -> list:
    """The keys every array task returned as trained by it (submitit's result files)."""
    import pickle

    keys = []
    for path in Path(folder).glob("*_result.pkl"):
        outcome, value = pickle.loads(path.read_bytes())
        if outcome == "success":
            keys += value
    return keys


def _table1_run(root, cifar_root) -> Run:
    """Table I's fifteen models at tiny budgets."""
    prof = get_profile("smoke", width=4, epochs=1, batch_size=64, train_limit=128, adv_train_limit=64,
                       adv_batch_size=32, val_limit=32, test_limit=20, restarts=1, mim_steps=5, autoattack_steps=5)
    return Run(prof, "cifar10", store=RunStore(root), device="cpu", data_root=cifar_root, progress=False)


def test_table1_s_grid_through_a_job_array_is_bitwise_one_local_process(tmp_path, cifar_root, cluster, capsys):
    one_run = _table1_run(tmp_path / "one", cifar_root)
    exps = TABLE1.experiments(one_run)
    assert len(exps) == 15
    run_grid(one_run, exps)
    many_run = _table1_run(tmp_path / "many", cifar_root)
    runs = run_grid(many_run, exps, executor="slurm", workers=2, slurm=SLURM)
    printed = capsys.readouterr().out
    assert "Slurm job array" in printed and "_<task>_0_log.out" in printed and "2 running" in printed
    assert all(runs[e].result["status"] == "finished" for e in exps)
    _same_runs(one_run.store, many_run.store, exps)
    assert sorted(_trained_by_workers(tmp_path / "many" / "submitit")) == sorted(e.key for e in exps)
    # Table I's columns by two array tasks: the caches are those of one local process, byte for byte
    evaluate_grid(one_run, exps, executor="local", workers=1)
    evaluate_grid(many_run, exps, executor="slurm", workers=2, slurm=SLURM)
    x, _ = one_run.test_images()
    for exp in exps:
        files = sorted(p.name for p in one_run.store.eval_path(exp, "x").parent.glob("*.json"))
        assert len(files) == 1 + len(TABLE1.specs(one_run.profile)), exp.label
        for name in files:
            a, b = (json.loads((s.eval_path(exp, "x").parent / name).read_text()) for s in (one_run.store,
                                                                                           many_run.store))
            assert {k: v for k, v in a.items() if "second" not in k and k != "sha256"} == \
                {k: v for k, v in b.items() if "second" not in k and k != "sha256"}, (exp.label, name)


def _wait_for_epoch(store, exp, epochs: int, deadline_s: float = 300):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        path = store.run_dir(exp) / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= epochs:
            return
        time.sleep(0.5)
    raise AssertionError(f"{exp.label} did not reach epoch {epochs}")


@pytest.mark.parametrize("how", ["scancel", "requeue"])
def test_a_cancelled_or_requeued_task_resumes_from_its_checkpoint(tmp_path, cluster, how, capfd):
    """scancel of a task in the middle of its training, then the same command again; or `scontrol requeue`
    (a preempting partition): the run resumes from its last checkpoint, not from zero, and ends bitwise as
    an uninterrupted run. Slurm stops a task with SIGTERM and, KillWait (2 s here) later, SIGKILL; submitit
    lets SIGTERM pass, so the training must still have longer than that to go (here about 5 s: seven more
    epochs of a few seconds)."""
    cifar_root = write_cifar10(tmp_path / "data", n_train=3000, n_test=100)  # epochs of seconds
    run = _run(tmp_path / "many", cifar_root, epochs=8, train_limit=3000, width=8)
    exps = _grid(run)[:2]
    jobs = run_grid(run, exps, executor="slurm", workers=2, slurm=SLURM, wait=False)
    target, task = exps[0], str(jobs[0].job_id)  # each task starts at its own place in the list: task 0 at exps[0]
    _wait_for_epoch(run.store, target, 1)
    if how == "scancel":
        subprocess.run(["scancel", task], check=True, timeout=60)
        finish_grid(run, exps, jobs)  # the other task, or this process, resumes what the cancelled task left
        again = run_grid(run, exps, executor="slurm", workers=2, slurm=SLURM)  # the same command again
        assert all(again[e].result["status"] == "finished" for e in exps)
    else:
        subprocess.run(["scontrol", "requeue", task], check=True, timeout=60)
        deadline = time.time() + 60  # Slurm holds a requeued job back (minutes): once it waits, let it start now
        while time.time() < deadline:
            state = subprocess.run(["squeue", "-h", "-j", task, "-o", "%T"], capture_output=True, text=True,
                                   timeout=60).stdout.strip()
            if state == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True, timeout=60)
                break
            time.sleep(0.5)
        finish_grid(run, exps, jobs)
    # the interrupted run went on from a checkpoint: its log says so, and no epoch was logged twice
    logs = "".join(Path(p).read_text() for p in (tmp_path / "many" / "submitit").glob("*_log.*"))
    printed = "".join(capfd.readouterr())
    import re

    resumed = re.findall(rf"resuming {target.label} from epoch (\d+)", logs + printed)
    assert resumed and all(int(k) >= 1 for k in resumed), (logs + printed)[-3000:]  # from a checkpoint, not 0
    assert [m["epoch"] for m in run.store.metrics(target)] == list(range(1, 9))
    one = _run(tmp_path / "one", cifar_root, epochs=8, train_limit=3000, width=8)
    run_grid(one, exps)
    _same_runs(one.store, run.store, exps)


def test_two_grid_commands_at_once_train_each_model_once(tmp_path, cifar_root, cluster):
    run = _run(tmp_path / "runs", cifar_root)
    exps = _grid(run)
    first = run_grid(run, exps, executor="slurm", workers=2, slurm=SLURM, wait=False, folder=tmp_path / "a")
    second = run_grid(run, exps, executor="slurm", workers=2, slurm=SLURM, wait=False, folder=tmp_path / "b")
    finish_grid(run, exps, first)
    finish_grid(run, exps, second)
    trained = _trained_by_workers(tmp_path / "a") + _trained_by_workers(tmp_path / "b")
    assert sorted(trained) == sorted(e.key for e in exps)  # the claim lock held across the jobs
    assert all(len(run.store.metrics(e)) == 2 for e in exps)


def test_a_failing_task_is_named_with_its_job_id_and_its_log(tmp_path, cifar_root, cluster, capsys):
    from reproduce.cli import main

    run = _run(tmp_path / "runs", cifar_root)
    missing = Run(run.profile, "cifar10", store=run.store, device="cpu", data_root=tmp_path / "no-data",
                  progress=False)
    with pytest.raises(RuntimeError, match=r"worker \d+(_\d+)? failed; the last lines of .*_log\.err") as failed:
        run_grid(missing, _grid(run)[:1], executor="slurm", workers=1, slurm=SLURM)
    assert "DatasetMissing" in str(failed.value) or "not found" in str(failed.value)
    # an option the cluster refuses: one line, and the command exits non-zero
    rc = main(["grid", "--table", "table1", "--only", "SM-UM", "--executor", "slurm", "--slurm-partition", "nosuch",
               "--profile", "smoke", "--dataset", "cifar10", "--data", str(cifar_root), "--runs", str(tmp_path / "r"),
               "--budget", "epochs=1", "--budget", "width=4"])
    err = capsys.readouterr().err
    assert rc == 2 and "Slurm refused the job array" in err and "nosuch" in err


def test_the_command_submits_without_waiting_then_finishes_the_grid(tmp_path, cifar_root, cluster, capsys):
    from reproduce.cli import main

    command = ["grid", "--table", "table1", "--only", "SM-UM", "AAML-UM", "--executor", "slurm", "--workers", "2",
               "--slurm-cpus", "1", "--profile", "smoke", "--dataset", "cifar10", "--data", str(cifar_root),
               "--runs", str(tmp_path / "runs"), "--budget", "epochs=1", "--budget", "width=4", "--threads", "1"]
    assert main(command + ["--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "Slurm job array" in out and "submitted;" in out
    assert main(command) == 0  # waits for the first array's runs, then lists the grid
    out = capsys.readouterr().out
    assert out.count("finished") == 2 and "SM-UM" in out and "AAML-UM" in out
    assert main(command + ["--no-wait"]) == 0  # nothing left to do: nothing submitted, the grid listed
    out = capsys.readouterr().out
    assert "Slurm job array" not in out and out.count("finished") == 2
