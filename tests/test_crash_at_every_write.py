"""A crash at every write of the store, then a resume: the run ends as an uninterrupted one. A file of its
own, so that `make test` can hand it to a worker early (tests/conftest.py: the longest files first)."""
import json
import os
import subprocess
import sys

import torch
from test_store_training import _final_state, _train_cmd

CRASHING_TRAIN = """
import os, sys
from pathlib import Path
from reproduce import store
crash_at, count = int(os.environ["CRASH_AT"]), [0]
real = store.atomic_write_bytes
def write(path, data):
    count[0] += 1
    if count[0] == crash_at:  # killed mid-write: half a temporary file, the target untouched
        path = Path(path)
        (path.parent / f".{path.name}.killed").write_bytes(data[: len(data) // 2])
        os._exit(17)
    real(path, data)
store.atomic_write_bytes = write
from reproduce.cli import main
rc = main(sys.argv[1:])
print("writes", count[0])
sys.exit(rc)
"""


def test_a_crash_at_every_write_then_a_resume_ends_as_an_uninterrupted_run(tmp_path):
    from conftest import write_cifar10

    data_root = write_cifar10(tmp_path / "data", n_train=600, n_test=20)
    env = dict(os.environ, OMP_NUM_THREADS="1", CRASH_AT="0")
    # two epochs: a crash in the first and one in the second (resumed from a finished epoch), each write once
    extra = ("--train-limit", "256", "--batch-size", "64", "--epochs", "2")
    cmd = [sys.executable, "-c", CRASHING_TRAIN, *_train_cmd(tmp_path / "ref", data_root, extra)[3:]]
    ref = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    writes = int(ref.stdout.split("writes")[-1])
    ref_metrics, ref_weights, ref_dir = _final_state(tmp_path / "ref")
    ref_result = json.loads((ref_dir / "result.json").read_text())
    assert writes >= 8  # config, 2 x (metrics, best, last), result
    for k in range(1, writes + 1):
        store_root = tmp_path / f"crash{k}"
        cmd = [sys.executable, "-c", CRASHING_TRAIN, *_train_cmd(store_root, data_root, extra)[3:]]
        crashed = subprocess.run(cmd, env=dict(env, CRASH_AT=str(k)), capture_output=True, text=True)
        assert crashed.returncode == 17, crashed.stderr
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        metrics, weights, run_dir = _final_state(store_root)
        assert metrics == ref_metrics, k
        assert all(torch.equal(ref_weights[name], weights[name]) for name in ref_weights), k
        result = json.loads((run_dir / "result.json").read_text())
        timeless = {"train_seconds": 0, "wall_seconds": 0, "images_per_s": 0, "sha256": ""}
        assert {**result, **timeless} == {**ref_result, **timeless}, k
        assert not list(run_dir.glob(".*")), k  # no temporary file left behind
