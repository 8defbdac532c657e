"""One model, one number: every path to a Table I row (the table, `evaluate` by label, run folder and
export folder, `export`) gives the same row; runs with changed budgets write where they say; the store
lists what it has; the names researchers use; the command line explains itself; one version number."""
import argparse
import json
import platform
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import tomllib
import torch
from conftest import FASHION

from reproduce import load_model, make_loss, start, tables
from reproduce.cli import build_parser, main
from reproduce.config import get_profile, make_experiment
from reproduce.data import DatasetMissing
from reproduce.evaluation import accuracy
from reproduce.export import list_models
from reproduce.losses import ArcFaceLoss, SoftmaxLoss
from reproduce.protocol import TABLE1
from reproduce.store import RunStore
from reproduce.training import train

REPO = Path(__file__).resolve().parent.parent
# Budgets of the training only (the attacks keep the smoke profile's), as a user's --budget would change them:
# a model good enough that its PGD accuracies are neither 0 nor clean, so the random starts decide images.
SETTINGS = dict(epochs=1, train_limit=3000, val_limit=200)
BUDGETS = [f"--budget={k}={v}" for k, v in SETTINGS.items()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not FASHION.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("one_number")
    data = root / "data" / "FashionMNIST" / "raw"
    data.mkdir(parents=True)
    for f in FASHION.glob("*-ubyte.gz"):
        (data / f.name).symlink_to(f)
    data = root / "data"
    exp = make_experiment("SM", "UM", "smoke", "fashion-mnist", **SETTINGS)
    run = train(exp, RunStore(root / "runs"), data=data, device="cpu", progress=False)
    return root, data, exp, run


def _csv_row(path) -> dict:
    return pd.read_csv(path, index_col="column")["accuracy"].round(2).to_dict()


def test_every_path_gives_one_model_the_same_row(trained, tmp_path, capsys):
    root, data, exp, run = trained
    runs = str(root / "runs")
    common = ["--profile", "smoke", "--dataset", "fashion-mnist", "--data", str(data), "--quiet"]
    # 1. the table, which computes every column into the store's caches
    context = start("smoke", "fashion-mnist", runs_dir=runs, data_dir=data, budgets=SETTINGS, progress=False,
                    quiet=True)
    cells, _ = tables.compute(context, TABLE1)
    table = {c: round(a, 2) for r, c, a in zip(cells["row"], cells["column"], cells["accuracy"]) if r == "SM-UM"}
    caches = {p: p.stat().st_mtime_ns for p in (run.run_dir / "eval").glob("column-*.json")}
    assert len(caches) == len(TABLE1.attacks)
    # 2. evaluate by label, 3. by run folder: the store's caches (from any working store)
    assert main(["evaluate", "SM-UM", "--runs", runs, "--out", str(tmp_path / "label.csv"), *BUDGETS, *common]) == 0
    assert main(["evaluate", str(run.run_dir), "--runs", str(tmp_path / "other"), "--out", str(tmp_path / "dir.csv"),
                 *common]) == 0
    # 4. export, which reads the caches and says so
    capsys.readouterr()
    assert main(["export", str(run.run_dir), str(tmp_path / "exported"), "--data", str(data), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "every Table I column from the store's caches" in printed
    assert {p: p.stat().st_mtime_ns for p in (run.run_dir / "eval").glob("column-*.json")} == caches  # none redone
    order = [line.split()[0] for line in printed.splitlines()[2:2 + len(TABLE1.attacks)]]
    assert order == [c.title.split()[0] for c in TABLE1.attacks]  # in the table's order
    exported = {k: v["accuracy"] for k, v in json.loads((tmp_path / "exported" / "table1_row.json").read_text())["row"]
                .items()}
    # 5. evaluate the export folder: no store at all, every column attacked afresh under the same seeds
    assert main(["evaluate", str(tmp_path / "exported"), "--runs", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "export.csv"), *common]) == 0
    assert "seeded from experiment" in capsys.readouterr().out
    assert not (tmp_path / "empty").exists()  # nothing written into a store
    rows = [table, _csv_row(tmp_path / "label.csv"), _csv_row(tmp_path / "dir.csv"), exported,
            _csv_row(tmp_path / "export.csv")]
    differ = [{k: (v, r.get(k)) for k, v in rows[0].items() if r.get(k) != v} for r in rows]
    assert not any(differ), differ  # (the table's value, the path's)
    x, y = context.test_images()
    assert rows[0]["clean"] == pytest.approx(accuracy(run.model, x, y), abs=0.01)  # clean: computed another way
    assert rows[0]["pgd20"] < rows[0]["clean"]  # the attacks did attack


def test_an_export_without_caches_says_so_then_computes_the_same_row(trained, tmp_path, capsys):
    root, data, exp, run = trained
    store = tmp_path / "copy"
    shutil.copytree(run.run_dir, store / run.run_dir.name, ignore=shutil.ignore_patterns("eval"))
    assert main(["export", str(store / run.run_dir.name), str(tmp_path / "out"), "--data", str(data), "--quiet"]) == 0
    assert re.search(r"clean, fgsm, .*aa not in the store's caches; computing", capsys.readouterr().out)
    again = json.loads((tmp_path / "out" / "table1_row.json").read_text())["row"]
    if (run.run_dir / "eval").is_dir():  # the first test filled the original's caches: the same numbers
        first = json.loads(next((run.run_dir / "eval").glob("column-pgd20-*.json")).read_text())
        assert again["pgd20"]["accuracy"] == round(first["accuracy"], 2)


def test_export_refuses_a_target_inside_the_store(trained):
    root, data, exp, run = trained
    for target in (root / "runs", root / "runs" / "exported", run.run_dir):
        assert main(["export", str(run.run_dir), str(target), "--data", str(data), "--quiet"]) == 2
    assert not (root / "runs" / "model.safetensors").exists()


def test_a_foreign_module_gets_a_stated_fixed_seed(trained, tmp_path, capsys):
    root, data, exp, run = trained
    path = tmp_path / "module.pt"
    torch.save(run.model, path)
    args = ["evaluate", str(path), "--profile", "smoke", "--dataset", "fashion-mnist", "--data", str(data),
            "--quiet", "--runs", str(tmp_path / "runs"), "--trust-pickle", "--budget=test_limit=100"]
    assert main(args + ["--out", str(tmp_path / "a.csv")]) == 0
    assert "seeded from 'module'" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "b.csv")]) == 0
    assert _csv_row(tmp_path / "a.csv") == _csv_row(tmp_path / "b.csv")


def data_images(data):
    from reproduce.data import load_dataset

    split = load_dataset("fashion-mnist", data)
    return split.x_test, split.y_test


def test_the_dataset_comes_from_the_environment_everywhere(trained, monkeypatch, capsys):
    root, data, exp, run = trained
    monkeypatch.setenv("DATASET", "fashion-mnist")
    assert start("smoke", quiet=True).dataset == "fashion-mnist"
    assert main(["evaluate", "SM-UM", "--profile", "smoke", "--data", str(data), "--runs", str(root / "runs"),
                 "--quiet", *BUDGETS]) == 0
    assert "SM-UM on fashion-mnist" in capsys.readouterr().out
    # a run or export folder is evaluated on its own dataset and profile, whatever the environment says
    monkeypatch.setenv("DATASET", "cifar10")
    assert main(["evaluate", str(run.run_dir), "--data", str(data), "--quiet"]) == 0
    assert "SM-UM on fashion-mnist, smoke profile" in capsys.readouterr().out


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    with pytest.raises(DatasetMissing):
        train(make_experiment("SM", "UM", "smoke", "mnist"), RunStore(tmp_path / "runs"), data=tmp_path / "none",
              device="cpu")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_store_lists_its_models_and_a_missing_label_names_them(trained, capsys):
    root, data, exp, run = trained
    (found,) = [m for m in list_models(root / "runs") if m["label"] == "SM-UM"]
    assert found["budgets"] == ", ".join(f"{k}={v}" for k, v in SETTINGS.items()) and found["status"] == "finished"
    assert found["folder"] == str(run.run_dir) and found["val_acc"] == run.result["kept_val_acc"]
    assert main(["models", "--runs", str(root / "runs")]) == 0
    assert run.run_dir.name in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=re.escape(run.run_dir.name)):
        load_model("SM-UM", profile="smoke", dataset="fashion-mnist", runs_dir=root / "runs", device="cpu")
    by_name = load_model("softmax-plain", profile="smoke", dataset="fashion-mnist", runs_dir=root / "runs",
                         device="cpu", **SETTINGS)
    x, _ = data_images(data)
    assert torch.equal(by_name(x[:4].float() / 255), run.model(x[:4].float() / 255))


def test_changed_budgets_write_to_a_folder_of_their_own(tmp_path):
    reference = start("smoke", "mnist", figures_dir=tmp_path, quiet=True)
    changed = start("smoke", "mnist", figures_dir=tmp_path, budgets={"epochs": 1}, quiet=True)
    assert reference.out_dir == tmp_path / "mnist-smoke"
    assert changed.out_dir.name.startswith("mnist-smoke-budgets-") and changed.out_dir != reference.out_dir
    assert start("smoke", "mnist", figures_dir=tmp_path, budgets={"epochs": 2}, quiet=True).out_dir != changed.out_dir
    from reproduce import figures

    fig = figures.plt.figure()
    figures.stamp(fig, changed.profile)
    assert any("epochs=1" in t.get_text() for t in fig.texts)


def test_the_names_researchers_use():
    assert isinstance(make_loss("ArcFace", 8, 10), ArcFaceLoss) and isinstance(make_loss("softmax", 8, 10), SoftmaxLoss)
    assert make_experiment("arcface", "pgd-at", "smoke").key == make_experiment("AAML", "AT", "smoke").key
    with pytest.raises(ValueError, match=r"unknown loss 'FOO'; choose one of .*'AAML'"):
        make_loss("FOO", 8, 10)
    with pytest.raises(ValueError, match="unknown defense 'FREEAT'"):
        make_experiment("SM", "FREEAT")
    # 20PGD's title says the restarts the profile ran
    assert TABLE1.title_of("pgd20x20", get_profile("smoke")) == "20PGD (20; 3 restarts)"
    assert TABLE1.title_of("pgd20x20", get_profile("quick")) == "20PGD (20)"


def test_the_command_line_explains_itself(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings}"
        assert name in parser.description, f"{name} is missing from the top-level help"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    shown = capsys.readouterr().out
    assert "--budget" in shown and "restarts (int): smoke 3" in shown
    assert main(["train", "--budget", "epoch=3"]) == 2
    assert "test_limit (int or none)" in capsys.readouterr().err


def test_one_version_number():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    citation = re.search(r"^version: (\S+)$", (REPO / "CITATION.cff").read_text(), re.M).group(1)
    changelog = re.search(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.M).group(1)
    assert version == citation == changelog


def test_every_run_records_its_versions_and_machine(trained):
    env = trained[3].result["environment"]
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["threads"] == torch.get_num_threads() and env["device_name"]


def test_an_experiment_without_a_store_is_seeded_from_its_key(monkeypatch):
    """`score_columns` given an experiment and no store (evaluate on an export folder) seeds every column
    from the experiment's key, as with a store, not from the key of a module of no experiment."""
    from reproduce import evaluation

    seen = []
    monkeypatch.setattr(evaluation, "_score_column", lambda model, x, y, spec, key, **kw: seen.append(key) or {})
    exp = make_experiment("SM", "UM", "smoke", "fashion-mnist", **SETTINGS)
    evaluation.score_columns(None, None, None, [None], experiment=exp)
    evaluation.score_columns(None, None, None, [None])
    assert seen == [exp.key, exp.key, evaluation.FOREIGN_KEY, evaluation.FOREIGN_KEY]
