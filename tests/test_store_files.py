"""Files the store writes: readable by others as the user's umask says, and a resumed run whose log and
checkpoint disagree says which is damaged instead of training on."""
import os
import stat

import pytest
from conftest import write_cifar10

from reproduce.config import make_experiment
from reproduce.store import RunStore, StoreError, append_jsonl, atomic_write_text, read_jsonl
from reproduce.training import train


def test_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")  # what open() gives, the reference
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE((tmp_path / "b.json").stat().st_mode)
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "c.json", "{}")
        assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


@pytest.fixture
def interrupted(tmp_path):
    """An unfinished run: two of three epochs trained, its last checkpoint at epoch 2."""
    data = write_cifar10(tmp_path / "data", n_train=200, n_test=40)
    exp = make_experiment("SM", "UM", "smoke", "cifar10", width=4, epochs=2, batch_size=64, train_limit=None,
                          val_limit=None)
    store = RunStore(tmp_path / "runs")
    train(exp, store, data=data, device="cpu", progress=False)
    # the same run, with result.json gone and a third epoch still to train: as a kill leaves it
    run_dir = store.run_dir(exp)
    return data, store, exp, run_dir


def test_a_resume_checks_its_log_against_its_checkpoint(interrupted, tmp_path):
    data, store, exp, run_dir = interrupted
    (run_dir / "result.json").unlink()
    metrics = run_dir / "metrics.jsonl"
    records = read_jsonl(metrics)
    metrics.unlink()
    append_jsonl(metrics, records[1])  # the first line deleted (each kept line still carries its digest)
    with pytest.raises(StoreError, match=r"logs epochs \[2\] but last.pt holds epoch 2"):
        train(exp, store, data=data, device="cpu", progress=False)
    # the log intact: the resume ends the run as before
    metrics.unlink()
    for r in records:
        append_jsonl(metrics, r)
    assert train(exp, store, data=data, device="cpu", progress=False).result["epochs_run"] == 2
