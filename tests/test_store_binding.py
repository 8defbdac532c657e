"""Every file of a run is bound to its experiment: a valid file of another run, put where this run's
belongs, is caught like a damaged one (a cache is recomputed; anything else is named with the fix)."""
import shutil

import pytest

from reproduce.config import get_profile, make_experiment
from reproduce.context import Run
from reproduce.evaluation import score_columns
from reproduce.protocol import FGSM
from reproduce.store import CheckpointError, RunStore, StoreError, append_jsonl
from reproduce.training import load_trained, train


def _two_runs(tmp_path, cifar_root):
    store = RunStore(tmp_path / "runs")
    exps = [make_experiment(loss, "UM", "smoke", "cifar10", width=4, epochs=1, batch_size=64, train_limit=128,
                            val_limit=32) for loss in ("SM", "AAML")]
    for exp in exps:
        train(exp, store, data=cifar_root, device="cpu", progress=False)
    return store, exps


def test_a_cache_of_another_column_or_model_is_recomputed_not_served(tmp_path, cifar_root, capsys):
    store, (sm, aaml) = _two_runs(tmp_path, cifar_root)
    run = Run(get_profile("smoke", test_limit=20), "cifar10", store=store, data_root=cifar_root, progress=False)
    x, y = run.test_images()
    fgsm = [FGSM.spec(run.profile)]
    truth = score_columns(load_trained(sm, store), x, y, fgsm, experiment=sm, store=store)
    eval_dir = store.run_dir(sm) / "eval"
    clean, attacked = (next(eval_dir.glob(f"column-{c}-*.json")) for c in ("clean", "fgsm"))
    shutil.copy(attacked, clean)  # the red team's case: the run's own (valid) FGSM file as its clean cache
    assert score_columns(load_trained(sm, store), x, y, fgsm, experiment=sm, store=store) == truth
    assert "its column, spec differ" in capsys.readouterr().out
    score_columns(load_trained(aaml, store), x, y, fgsm, experiment=aaml, store=store)
    other = next((store.run_dir(aaml) / "eval").glob("column-fgsm-*.json"))
    shutil.copy(other, attacked)  # another model's FGSM cell
    assert score_columns(load_trained(sm, store), x, y, fgsm, experiment=sm, store=store) == truth
    assert "its key differ" in capsys.readouterr().out
    fewer = Run(get_profile("smoke", test_limit=10), "cifar10", store=store, data_root=cifar_root).test_images()
    score_columns(load_trained(sm, store), *fewer, fgsm, experiment=sm, store=store)
    assert len(list(eval_dir.glob("column-clean-*.json"))) == 2  # another test set: a cache of its own


def test_another_runs_checkpoint_result_metrics_or_config_is_named(tmp_path, cifar_root):
    store, (sm, aaml) = _two_runs(tmp_path, cifar_root)
    mine, theirs = store.run_dir(sm), store.run_dir(aaml)
    backup = tmp_path / "backup"
    shutil.copytree(mine, backup)

    shutil.copy(theirs / "best.pt", mine / "best.pt")  # a valid checkpoint of another model
    with pytest.raises(CheckpointError, match=f"belongs to experiment {aaml.key}, not {sm.key}"):
        load_trained(sm, store)

    shutil.copy(theirs / "result.json", mine / "result.json")
    with pytest.raises(StoreError, match=f"result.json belongs to experiment {aaml.key}"):
        store.result(sm)
    shutil.copy(backup / "result.json", mine / "result.json")

    shutil.copy(theirs / "metrics.jsonl", mine / "metrics.jsonl")
    with pytest.raises(StoreError, match=f"line 1, belongs to experiment {aaml.key}"):
        store.metrics(sm)
    text = (backup / "metrics.jsonl").read_text().replace('"epoch": 1', '"epoch": 3')
    (mine / "metrics.jsonl").write_text(text)  # an edited line
    with pytest.raises(StoreError, match="line 1, was edited or damaged"):
        store.metrics(sm)

    shutil.rmtree(mine)
    shutil.copytree(backup, mine)
    (mine / "result.json").unlink()  # the run must resume: its config is read again
    shutil.copy(theirs / "config.json", mine / "config.json")
    with pytest.raises(StoreError, match="config.json belongs to another experiment"):
        train(sm, store, data=cifar_root, device="cpu", progress=False)
    shutil.copy(backup / "config.json", mine / "config.json")
    shutil.copy(theirs / "last.pt", mine / "last.pt")
    with pytest.raises(CheckpointError, match="last.pt belongs to experiment"):
        train(sm, store, data=cifar_root, device="cpu", progress=False)


def test_a_metrics_line_is_written_with_its_digest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1, "val_acc": 50.0, "key": "k"})
    assert '"sha256"' in path.read_text()
    from reproduce.store import read_jsonl

    assert read_jsonl(path, key="k") == [{"epoch": 1, "val_acc": 50.0, "key": "k"}]


def test_a_run_is_bound_to_its_training_data_and_the_standard_data_keeps_its_keys(tmp_path, capsys):
    """Two data folders of the same dataset name: a model trained on one is not served for the same command
    on the other (the training set's identity enters the key where it is not the official one), and the
    official files (Debian's Fashion-MNIST) keep every key the committed reference run recorded."""
    import json

    from conftest import FASHION, write_idx

    from reproduce.data import training_set_id
    from reproduce.protocol import TABLES
    from reproduce.runner import REPO

    profile = get_profile("smoke", width=4, epochs=1, batch_size=50, train_limit=None, val_limit=None)
    runs = [Run(profile, "mnist", store=RunStore(tmp_path / "runs"), data_root=write_idx(tmp_path / name, seed=seed),
                progress=False) for name, seed in (("a", 0), ("b", 1))]
    a, b = (run.experiment("SM", "UM") for run in runs)
    assert a.train_data and b.train_data and a.train_data != b.train_data and a.key != b.key
    assert a.train_data == training_set_id("mnist", tmp_path / "a", runs[0].data)  # the same files, the same id
    train(a, runs[0].store, data=runs[0].data, device="cpu", progress=False)
    assert runs[0].finished(a) and not runs[1].finished(b)  # not served for the other folder
    # a field at its default stays out of the hash: keys recorded before it existed still hold
    assert make_experiment("SM", "UM", "smoke", "mnist").key == make_experiment(
        "SM", "UM", "smoke", "mnist", train_data="").key
    if not FASHION.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist: the official files' keys are checked against them")
    reference = Run("smoke", "fashion-mnist", data_root=tmp_path / "fashion", progress=False)
    assert reference.train_data == ""
    manifest = json.loads((REPO / "results" / "fashion-mnist-smoke" / "manifest.json").read_text())
    recorded = {name: entry["key"] for name, entry in manifest["experiments"].items()}
    today = {exp.run_name: exp.key for table in TABLES.values() for exp in table.experiments(reference)}
    assert set(recorded) <= set(today) and len(recorded) == 52  # Tables I-IV: 15 + 5 surrogates + 20; beyond: 12
    assert all(today[name] == key for name, key in recorded.items())  # a folder's name ends with its key


def test_a_field_added_with_a_default_moves_no_key():
    """Every Experiment field of 0.4.0 is hashed; one added since enters the key only when it is set to
    something other than its default (as `defense_params`, TRADES's beta, was: no run of 0.4.0 moved)."""
    import dataclasses

    from reproduce.config import KEYED_FIELDS_0_4, Experiment, make_experiment

    later = dataclasses.make_dataclass("Later", [("beta", float, dataclasses.field(default=6.0))],
                                       bases=(Experiment,), frozen=True)
    for loss, defense in (("SM", "UM"), ("AAML", "AT"), ("TL", "ALP")):
        now = make_experiment(loss, defense, "smoke", "cifar10")
        fields = dataclasses.asdict(now)
        assert later(**fields).key == now.key
        assert later(**fields, beta=3.0).key != now.key
    assert {f.name for f in dataclasses.fields(Experiment)} - set(KEYED_FIELDS_0_4) == {"train_data", "defense_params"}
    # the 0.4.0 key, written out: every field of 0.4.0 with its value (defaults too) and the protocol version
    import hashlib
    import json

    from reproduce.config import PROTOCOL_VERSION

    exp = make_experiment("AAML", "AT", "smoke", "cifar10")
    old = {k: v for k, v in dataclasses.asdict(exp).items() if k not in ("train_data", "defense_params")}
    text = json.dumps(dict(old, protocol=PROTOCOL_VERSION), sort_keys=True, default=str)
    assert exp.key == hashlib.sha256(text.encode()).hexdigest()[:12]
