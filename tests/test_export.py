"""A trained model outside the store: load_model by label and by folder, safetensors weights that plain
PyTorch opens, `export` and `evaluate` (ours and any pickled torch.nn.Module)."""
import hashlib
import json

import pytest
import torch
from conftest import write_idx

from reproduce import load_model
from reproduce.cli import main
from reproduce.config import make_experiment
from reproduce.evaluation import accuracy
from reproduce.protocol import TABLE1
from reproduce.store import WEIGHTS, CheckpointError, RunStore, read_weights, write_weights
from reproduce.training import train

SETTINGS = dict(epochs=1, train_limit=200, val_limit=50)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = write_idx(root / "data", n_train=300, n_test=60)
    exp = make_experiment("SM", "UM", "smoke", "mnist", **SETTINGS)
    run = train(exp, RunStore(root / "runs"), data=data, device="cpu", progress=False)
    return root, data, exp, run


def _images(data):
    """The test images as floats in [0, 1], and their labels."""
    from reproduce.data import load_dataset

    split = load_dataset("mnist", data)
    x = split.x_test
    return (x.float() / 255 if x.dtype == torch.uint8 else x), split.y_test


def test_load_model_by_label_and_by_folder_gives_the_trained_model(trained):
    root, data, exp, run = trained
    x, _ = _images(data)
    expected = run.model(x[:16])
    by_folder = load_model(run.run_dir, device="cpu")
    by_label = load_model("SM-UM", profile="smoke", dataset="mnist", runs_dir=root / "runs", device="cpu", **SETTINGS)
    assert torch.equal(by_folder(x[:16]), expected) and torch.equal(by_label(x[:16]), expected)
    with pytest.raises(FileNotFoundError, match="not trained"):
        load_model("AAML-AT", profile="smoke", dataset="mnist", runs_dir=root / "runs", device="cpu")
    with pytest.raises(ValueError, match="neither a folder nor a table label"):
        load_model("no such thing", runs_dir=root / "runs")


def test_weights_open_with_plain_safetensors_and_carry_their_digest(trained, tmp_path):
    from safetensors.torch import load_file

    _, _, exp, run = trained
    with pytest.raises((RuntimeError, IndexError, ValueError)):  # the checkpoint's digest line comes first
        torch.load(run.run_dir / "best.pt", weights_only=True)
    state = load_file(str(run.run_dir / WEIGHTS))  # no code of ours
    assert state.keys() == run.model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in run.model.state_dict().items())
    digest, name = (run.run_dir / (WEIGHTS + ".sha256")).read_text().split()
    assert name == WEIGHTS and digest == hashlib.sha256((run.run_dir / WEIGHTS).read_bytes()).hexdigest()
    # a damaged copy is refused
    copy = tmp_path / "copy"
    copy.mkdir()
    data = bytearray((run.run_dir / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (copy / WEIGHTS).write_bytes(bytes(data))
    (copy / (WEIGHTS + ".sha256")).write_text((run.run_dir / (WEIGHTS + ".sha256")).read_text())
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        read_weights(copy, key=exp.key)


def test_export_writes_weights_experiment_row_and_card(trained, tmp_path, capsys):
    root, data, exp, run = trained
    out = tmp_path / "exported"
    assert main(["export", str(run.run_dir), str(out), "--data", str(data), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} >= {WEIGHTS, WEIGHTS + ".sha256", "experiment.json", "table1_row.json",
                                               "MODEL_CARD.md"}
    row = json.loads((out / "table1_row.json").read_text())["row"]
    assert set(row) == {c.key for c in TABLE1.attacks}
    x, y = _images(data)
    assert row["clean"]["accuracy"] == pytest.approx(accuracy(run.model, x, y), abs=0.01)
    assert all(row[k]["accuracy"] <= row["clean"]["accuracy"] + 100 / len(y) for k in row)
    assert row["clean"]["low"] <= row["clean"]["accuracy"] <= row["clean"]["high"]
    # the export loads like a run folder, with the same weights
    assert torch.equal(load_model(out, device="cpu")(x[:8]), run.model(x[:8]))
    assert "SM-UM" in (out / "MODEL_CARD.md").read_text()


def test_evaluate_runs_every_column_on_any_module(trained, tmp_path, capsys):
    root, data, exp, run = trained
    path = tmp_path / "module.pt"
    torch.save(run.model, path)  # a user's whole nn.Module, pickled
    csv = tmp_path / "row.csv"
    assert main(["evaluate", str(path), "--profile", "smoke", "--dataset", "mnist", "--data", str(data),
                 "--runs", str(tmp_path / "runs"), "--device", "cpu", "--quiet", "--out", str(csv),
                 "--trust-pickle"]) == 0
    printed = capsys.readouterr().out
    assert all(c.key in printed for c in TABLE1.attacks)
    import pandas as pd

    row = pd.read_csv(csv, index_col="column")["accuracy"]
    x, y = _images(data)
    assert row["clean"] == pytest.approx(accuracy(run.model, x, y), abs=0.01)
    assert (row <= row["clean"] + 100 / len(y)).all()
    assert main(["evaluate", str(tmp_path / "missing.pt"), "--dataset", "mnist", "--data", str(data)]) == 2


def test_the_same_weights_give_the_same_bytes(trained, tmp_path):
    """A digest identifies the weights: two writes of one model are byte for byte equal (safetensors keeps
    metadata in a hash map whose order varies between writes, so everything goes in one entry)."""
    _, _, exp, run = trained
    digests = set()
    for i in range(6):  # 3! orders of three entries: the old writer gave two digests in six writes
        folder = tmp_path / str(i)
        folder.mkdir()
        write_weights(run.model, folder, exp)
        digests.add(hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest())
    assert len(digests) == 1
    state = read_weights(tmp_path / "0", key=exp.key)
    assert state.keys() == run.model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in run.model.state_dict().items())


class _Hidden:
    """What a hostile pickle holds: unpickling it calls os.makedirs (any call would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.makedirs, (str(self.marker),)


def test_a_file_runs_no_code_unless_the_user_says_so(trained, tmp_path, capsys, monkeypatch):
    from reproduce.export import load_module

    root, data, exp, run = trained
    marker = tmp_path / "the-file-ran-code"
    hostile = tmp_path / "hostile.pt"
    torch.save(_Hidden(marker), hostile)
    args = ["evaluate", str(hostile), "--profile", "smoke", "--dataset", "mnist", "--data", str(data), "--quiet",
            "--runs", str(tmp_path / "runs")]
    assert main(args) == 2 and not marker.exists()
    assert "--trust-pickle" in capsys.readouterr().err
    # with the user's explicit say, it is unpickled, and the command says that it runs the file's code
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        load_module(hostile, "cpu", trust_pickle=True)
    assert marker.exists() and "this runs the code the file holds" in capsys.readouterr().out
    # weights alone load without running code, into the network the user names
    (tmp_path / "tiny_net.py").write_text("import torch\n\ndef Net():\n    return torch.nn.Linear(4, 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = torch.nn.Linear(4, 3)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "weights.safetensors"))
    x = torch.rand(2, 4)
    for name in ("weights.pt", "weights.safetensors"):
        with pytest.raises(ValueError, match="--architecture"):
            load_module(tmp_path / name, "cpu")
        assert torch.equal(load_module(tmp_path / name, "cpu", architecture="tiny_net:Net")(x), net(x))
    with pytest.raises(ValueError, match="does not fit"):
        load_module(tmp_path / "weights.pt", "cpu", architecture="torch.nn:Identity")
    for bad, content in (("empty.pt", b""), ("text.pt", b"not a model\n")):
        (tmp_path / bad).write_bytes(content)
        with pytest.raises(ValueError):
            load_module(tmp_path / bad, "cpu")


def test_a_folder_holding_a_run_and_an_export_is_named(trained, tmp_path):
    """An export written into another run's folder must not make load_model return the exported model."""
    import shutil

    from reproduce.export import experiment_of

    _, _, exp, run = trained
    copy = tmp_path / run.run_dir.name
    shutil.copytree(run.run_dir, copy)
    (copy / "experiment.json").write_text((copy / "config.json").read_text())
    with pytest.raises(ValueError, match="holds both a run"):
        experiment_of(copy)
    with pytest.raises(ValueError, match="holds both a run"):
        load_model(copy, device="cpu")
