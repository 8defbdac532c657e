import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import needs_fashion

from reproduce.config import make_experiment
from reproduce.evaluation import accuracy
from reproduce.store import CheckpointError, RunStore, load_checkpoint, read_jsonl, save_checkpoint
from reproduce.training import train


def tiny(loss="SM", defense="UM", **kw):
    base = dict(width=8, epochs=2, batch_size=64, train_limit=None, val_limit=None)
    base.update(kw)
    return make_experiment(loss, defense, "smoke", "cifar10", **base)


def test_experiment_hash_is_stable_and_sensitive():
    a, b = tiny(), tiny()
    assert a.key == b.key and a.run_name == b.run_name
    assert tiny(lr=0.05).key != a.key
    assert tiny("AAML", loss_params={"s": 4.0}).key != tiny("AAML").key
    # a parameter at its default names the same model as no parameter
    assert tiny("AAML", loss_params={"s": 2.0, "m": 0.2}).key == tiny("AAML").key


def test_bad_input_is_rejected_before_compute():
    with pytest.raises(ValueError, match="unknown loss"):
        tiny("Softmaxx")  # "Softmax" itself is an alias of SM (losses.loss_name)
    with pytest.raises(ValueError, match="unknown defense"):
        tiny(defense="FREE-AT")
    with pytest.raises(ValueError, match="no parameter"):
        tiny("AAML", loss_params={"margin": 0.3})
    with pytest.raises(ValueError, match="attack_eps"):
        tiny(attack_eps=8.0)


def test_checkpoint_corruption_and_truncation_are_reported_with_path(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.arange(1000.0)})
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(1000.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_checkpoint_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"f": os.getcwd})  # a function is not a tensor: weights_only refuses it
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_finished_run_is_returned_not_retrained(tmp_path, cifar_root):
    store = RunStore(tmp_path / "runs")
    exp = tiny()
    first = train(exp, store, data=cifar_root, progress=False)
    assert first.result["status"] == "finished"
    files = {p.name: p.stat().st_mtime_ns for p in first.run_dir.iterdir()}
    second = train(exp, store, data=cifar_root, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in second.run_dir.iterdir()} == files
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    config = json.loads((first.run_dir / "config.json").read_text())
    assert config["key"] == exp.key
    assert len(store.metrics(exp)) == 2


def test_divergence_is_recorded_not_raised(tmp_path, cifar_root):
    store = RunStore(tmp_path / "runs")
    run = train(tiny("AAML", lr=1e8, schedule="constant"), store, data=cifar_root, progress=False)
    assert run.diverged and run.model is None
    assert store.result(run.experiment)["status"] == "diverged"
    metrics = (store.run_dir(run.experiment) / "metrics.jsonl").read_text()
    assert "NaN" not in metrics and json.loads(metrics.splitlines()[-1])["train_loss"] is None  # JSON has no NaN


def _train_cmd(store, data_root, extra=()):
    return [sys.executable, "-m", "reproduce", "train", "--dataset", "cifar10", "--profile", "smoke",
            "--runs", str(store), "--data", str(data_root), "--epochs", "3", "--device", "cpu", "--quiet",
            "--lr", "0.05", *extra]


def _final_state(store_root):
    run_dir = next(p for p in store_root.iterdir() if p.is_dir())
    metrics = read_jsonl(run_dir / "metrics.jsonl")  # each line's digest checked, then dropped
    for m in metrics:
        m.pop("seconds"), m.pop("wall_seconds"), m.pop("images_per_s")
    return metrics, load_checkpoint(run_dir / "best.pt")["model"], run_dir


def test_sigkill_mid_epoch_then_resume_gives_the_same_numbers(tmp_path):
    from conftest import write_cifar10

    data_root = write_cifar10(tmp_path / "data", n_train=3000, n_test=50)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_train_cmd(tmp_path / "ref", data_root), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, data_root), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until epoch 1 is on disk, then kill during epoch 2
        runs = list(killed.glob("*/metrics.jsonl")) if killed.exists() else []
        if runs and runs[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(killed.iterdir())
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(_train_cmd(killed, data_root), check=True, env=env, capture_output=True, text=True)
    assert "resuming" in resumed.stdout
    ref_metrics, ref_weights, _ = _final_state(tmp_path / "ref")
    metrics, weights, _ = _final_state(killed)
    assert metrics == ref_metrics
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)


def test_corrupted_last_checkpoint_stops_resume_with_its_path(tmp_path, cifar_root):
    store = RunStore(tmp_path / "runs")
    exp = tiny(epochs=3)
    train(exp, store, data=cifar_root, progress=False)
    run_dir = store.run_dir(exp)
    (run_dir / "result.json").unlink()  # pretend it stopped early
    (run_dir / "last.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt"):
        train(exp, store, data=cifar_root, progress=False)


# The smoke SM-UM on 2000 Fashion-MNIST test images, measured on an AMD EPYC over seeds 0-7 at one thread:
# 79.6-83.05% (mean 81.5, SD 1.0), seeds 0-2 at two threads: 82.45-83.55%; an Intel Xeon gave 78.9% for seed 0.
# The floor sits 8.9 points under the lowest of those (more than eight SDs under the mean), far above what a
# broken training reaches (10-60%).
SMOKE_SOFTMAX_FLOOR = 70.0


@needs_fashion
@pytest.mark.slow
def test_smoke_softmax_learns_fashion_mnist_on_any_machine(tmp_path, fashion):
    exp = make_experiment("SM", "UM", "smoke", "fashion-mnist")
    run = train(exp, RunStore(tmp_path), data=fashion, device="cpu", progress=False)
    assert accuracy(run.model, fashion.x_test, fashion.y_test) >= SMOKE_SOFTMAX_FLOOR


def test_a_damaged_or_edited_store_file_is_named_or_recomputed(tmp_path, cifar_root, capsys):
    from reproduce.evaluation import score_columns
    from reproduce.store import StoreError

    store = RunStore(tmp_path / "runs")
    exp = tiny(epochs=1)
    run = train(exp, store, data=cifar_root, progress=False)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    score_columns(run.model, x, y, [], experiment=exp, store=store)
    cache = next((run.run_dir / "eval").glob("*.json"))
    edited = json.loads(cache.read_text())
    edited["accuracy"] = 99.0
    cache.write_text(json.dumps(edited))
    assert score_columns(run.model, x, y, [], experiment=exp, store=store)["clean"]["final"] != 99.0
    assert "was edited or damaged" in capsys.readouterr().out
    result = run.run_dir / "result.json"
    result.write_text(result.read_text()[:40])
    with pytest.raises(StoreError, match=f"{result}.*not valid JSON"):
        store.result(exp)


def test_two_processes_on_one_experiment_train_it_once(tmp_path):
    from conftest import write_cifar10

    data_root = write_cifar10(tmp_path / "data", n_train=600, n_test=20)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = _train_cmd(tmp_path / "runs", data_root, ("--train-limit", "256", "--batch-size", "64"))
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    metrics, _, run_dir = _final_state(tmp_path / "runs")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]  # one training, not two interleaved
    ref = subprocess.run(_train_cmd(tmp_path / "ref", data_root, ("--train-limit", "256", "--batch-size", "64")),
                         env=env, check=True, capture_output=True)
    assert ref.returncode == 0 and metrics == _final_state(tmp_path / "ref")[0]
