"""Every bad input is one line that names it, before any compute: plan's --fill and --bench files, data
files, what `evaluate` is given, a weights digest, --threads and --gpus. Each class is tried with several
hostile cases; the test prints how many were tried and refused."""
import os
import struct

import pytest
import torch
from conftest import write_idx

from reproduce.cli import main
from reproduce.data import DatasetCorrupt, load_dataset
from reproduce.store import CheckpointError, read_weights

TRIED = {}


def refused(capsys, cls: str, argv: list, name: str) -> None:
    """`python -m reproduce argv` exits 2 with one line naming `name`."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    TRIED.setdefault(cls, []).append(rc == 2 and err.count("\n") == 0 and name in err)
    assert rc == 2, argv
    assert err.startswith("error: ") and err.count("\n") == 0 and name in err, err


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nhostile inputs, tried / refused in one line: "
          + ", ".join(f"{c} {len(v)}/{sum(v)}" for c, v in TRIED.items()))


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"one_process_s": 3, "workers_s": 1}',
                                     '{"one_process_s": Infinity, "workers_s": 1, "models": 5}',
                                     '{"one_process_s": -3, "workers_s": 1, "models": 5}',
                                     '{"one_process_s": true, "workers_s": 1, "models": 5}',
                                     '{"one_process_s": 3, "workers_s": 0, "models": 5}', ""])
def test_plan_fill_files(tmp_path, capsys, content):
    path = tmp_path / "fill.json"
    path.write_text(content)
    refused(capsys, "plan --fill", ["plan", "--profile", "smoke", "--dataset", "fashion-mnist", "--fill", str(path)],
            "--fill")


@pytest.mark.parametrize("content", ["{not json", '"a string"', '{"um_epoch_img_s": "fast"}', '{}',
                                     '{"um_epoch_img_s": 5, "train_compile_speedup": -1}'])
def test_plan_bench_files(tmp_path, capsys, content):
    path = tmp_path / "bench.json"
    path.write_text(content)
    refused(capsys, "plan --bench", ["plan", "--profile", "smoke", "--bench", str(path)], "--bench")


@pytest.mark.parametrize("case", ["magic", "empty labels", "truncated labels", "truncated images",
                                  "labels out of range", "more labels than images"])
def test_data_files(tmp_path, case):
    write_idx(tmp_path, n_train=50, n_test=20)
    raw = tmp_path / "MNIST" / "raw"
    labels, images = raw / "train-labels-idx1-ubyte", raw / "train-images-idx3-ubyte"
    good = labels.read_bytes()
    if case == "magic":
        labels.write_bytes(struct.pack(">II", 2051, 50) + good[8:])
    elif case == "empty labels":
        labels.write_bytes(b"")
    elif case == "truncated labels":
        labels.write_bytes(good[:30])
    elif case == "truncated images":
        images.write_bytes(images.read_bytes()[:1000])
    elif case == "labels out of range":
        labels.write_bytes(good[:8] + bytes([12] * 50))
    else:
        labels.write_bytes(struct.pack(">II", 2049, 60) + good[8:] + bytes(10))
    with pytest.raises(DatasetCorrupt, match="replace them with the original files") as e:
        load_dataset("mnist", tmp_path, download=False)
    TRIED.setdefault("data files", []).append("MNIST/raw" in str(e.value))
    assert "MNIST/raw" in str(e.value)


class FewerLogits(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :5]


class NanLogits(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10] * float("nan")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("data"), n_train=100, n_test=20)


@pytest.mark.parametrize("case", ["empty", "text", "missing", "missing folder", "fewer logits", "nan logits"])
def test_evaluate_inputs(tmp_path, capsys, mnist, case):
    path = tmp_path / "model.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a model\n")
    elif case == "missing folder":
        path = tmp_path / "no" / "such-folder"
    elif case in ("fewer logits", "nan logits"):
        torch.jit.script(FewerLogits() if case == "fewer logits" else NanLogits()).save(str(path))
    names = {"empty": "empty", "text": "model.pt", "missing": "no file or folder",
             "missing folder": "no file or folder", "fewer logits": "5 logits per image", "nan logits": "not finite"}
    refused(capsys, "evaluate", ["evaluate", str(path), "--profile", "smoke", "--dataset", "mnist", "--data",
                                 str(mnist), "--runs", str(tmp_path / "runs"), "--quiet"], names[case])


def test_an_empty_digest_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "model.safetensors.sha256").write_text("")
    with pytest.raises(CheckpointError, match="sha256 is empty"):
        read_weights(tmp_path)
    TRIED.setdefault("digest", []).append(True)


@pytest.mark.parametrize("argv,name", [
    (["table1", "--threads", str((os.cpu_count() or 1) + 1)], "--threads"),
    (["table1", "--threads", "0"], "--threads"),
    (["run", "--threads", "999", "--only", "01"], "--threads"),
    (["grid", "--table", "table1", "--gpus", "a,b", "--executor", "local"], "--gpus"),
    (["grid", "--table", "table1", "--gpus", "0,,1", "--executor", "local"], "--gpus"),
])
def test_flags(tmp_path, capsys, argv, name):
    refused(capsys, "flags", argv + ["--profile", "smoke", "--dataset", "fashion-mnist", "--runs",
                                     str(tmp_path / "runs")], name)


def test_json_cases_were_counted():
    assert TRIED and all(all(v) for v in TRIED.values())


# ---------------------------------------------------------------- the second round: outputs, the audit, the store

ROOT = os.geteuid() == 0  # root writes into read-only folders: those cases cannot fail for root


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of a tiny model on small MNIST files, and its data folder."""
    from reproduce.config import make_experiment
    from reproduce.store import RunStore
    from reproduce.training import train

    root = tmp_path_factory.mktemp("store")
    data = write_idx(root / "data", n_train=200, n_test=40)
    exp = make_experiment("SM", "UM", "smoke", "mnist", width=4, epochs=1, batch_size=50, train_limit=None,
                          val_limit=None)
    run = train(exp, RunStore(root / "runs"), data=data, progress=False)
    return run.run_dir, data


@pytest.mark.parametrize("argv,name", [
    (["train", "--loss", "FOO"], "HT-SCE+AB"),  # the choices, not "invalid loss_name value"
    (["train", "--defense", "XX"], "'UM', 'AT', 'ALP'"),
    (["train", "--epochs", "10000000"], "at most 5000"),
    (["audit", "SM-UM", "--eps", "0"], "--eps 0"),
])
def test_names_and_numbers(tmp_path, capsys, argv, name):
    refused(capsys, "names and numbers", argv + ["--profile", "smoke", "--dataset", "mnist", "--runs",
                                                 str(tmp_path / "runs")], name)
    assert not (tmp_path / "runs").exists()


def test_outputs_are_checked_before_any_compute(tmp_path, capsys, finished):
    """Every output path is refused before the first attack: a file where a folder goes, a folder where a
    file goes, a missing parent, a path under a file, and another model's export."""
    run_dir, data = finished
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    common = ["--profile", "smoke", "--dataset", "mnist", "--data", str(data), "--runs", str(tmp_path / "runs")]
    refused(capsys, "outputs", ["evaluate", str(run_dir), *common, "--out", str(tmp_path)], "is a folder")
    refused(capsys, "outputs", ["evaluate", str(run_dir), *common, "--out", str(tmp_path / "no" / "row.csv")],
            "does not exist")
    refused(capsys, "outputs", ["audit", str(run_dir), *common, "--out", str(a_file)], "is a file")
    refused(capsys, "outputs", ["audit", str(run_dir), *common, "--out", str(a_file / "audit")], "which is a file")
    refused(capsys, "outputs", ["export", str(run_dir), str(a_file / "export"), "--data", str(data)],
            "which is a file")
    assert not (run_dir / "eval").exists() or not any((run_dir / "eval").glob("column-fgsm*"))  # nothing computed
    other = tmp_path / "other-export"
    other.mkdir()
    (other / "experiment.json").write_text('{"key": "0123456789ab", "experiment": {"loss": "AAML", '
                                           '"defense": "AT"}}')
    from reproduce.store import write_checked_json

    write_checked_json(other / "experiment.json", {"key": "0123456789ab",
                                                   "experiment": {"loss": "AAML", "defense": "AT"}})
    refused(capsys, "outputs", ["export", str(run_dir), str(other), "--data", str(data)],
            "holds the export of another model (AAML-AT")


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders, so a read-only --out cannot fail for root")
def test_a_read_only_output_folder_is_refused_before_any_compute(tmp_path, capsys, finished):
    run_dir, data = finished
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    refused(capsys, "outputs", ["audit", str(run_dir), "--data", str(data), "--out", str(locked / "a")],
            "cannot be written")


class Net(torch.nn.Module):
    """A network that needs an argument: --architecture cannot build it."""

    def __init__(self, classes):
        super().__init__()
        self.fc = torch.nn.Linear(784, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_models_and_loading(tmp_path, capsys, finished, monkeypatch):
    """`models` on a file, a run whose result.json lost its status or holds a word for its accuracy;
    load_model of a run without result.json; weights of the wrong kind; a malformed shared export;
    --architecture whose class needs arguments."""
    import json
    import shutil
    import sys

    from reproduce.export import list_models, load_model, load_module
    from reproduce.store import write_checked_json

    run_dir, data = finished
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused(capsys, "models and loading", ["models", "--runs", str(a_file)], "is a file")
    store = tmp_path / "store"
    for name, change in (("no-status", lambda r: r.pop("status")), ("word", lambda r: r.update(kept_val_acc="high"))):
        copy = store / f"{run_dir.name}-{name}"
        shutil.copytree(run_dir, copy)
        result = json.loads((copy / "result.json").read_text())
        result.pop("sha256")
        change(result)
        write_checked_json(copy / "result.json", result)
    found = {m["folder"].rsplit("-", 1)[-1]: m for m in list_models(store)}
    assert found["status"]["status"] == "unreadable (result.json has no status)"  # "no-status": split on '-'
    assert found["word"]["val_acc"] is None and found["word"]["status"] == "finished"
    assert main(["models", "--runs", str(store)]) == 0
    TRIED.setdefault("models and loading", []).append(True)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "result.json").unlink()
    with pytest.raises(FileNotFoundError, match="has not finished training \\(no result.json\\)"):
        load_model(unfinished)
    TRIED["models and loading"].append(True)
    # weights of another kind (int64 where the network has floats) are refused, not cast
    net = Net(10)
    torch.save({k: v.long() for k, v in net.state_dict().items()}, tmp_path / "ints.pt")
    monkeypatch.setattr(sys.modules[__name__], "make_net", lambda: Net(10), raising=False)
    with pytest.raises(ValueError, match="tensors of another kind than the network's: fc.weight \\(torch.int64"):
        load_module(tmp_path / "ints.pt", architecture=f"{__name__}:make_net")
    TRIED["models and loading"].append(True)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    refused(capsys, "models and loading", ["evaluate", str(tmp_path / "net.pt"), "--architecture", f"{__name__}:Net",
                                           "--profile", "smoke", "--dataset", "mnist", "--data", str(data)],
            "calling Net() failed")
    # a malformed export whose digest was written to match: named, not a raw safetensors error
    export = tmp_path / "export"
    shutil.copytree(run_dir, export)
    (export / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    from reproduce.store import sha256_of

    (export / "model.safetensors.sha256").write_text(f"{sha256_of(export / 'model.safetensors')}  model.safetensors\n")
    refused(capsys, "models and loading", ["evaluate", str(export), "--data", str(data), "--runs",
                                           str(tmp_path / "runs")], "is not a readable safetensors file")


class Linear(torch.nn.Module):
    def __init__(self, channels=1, size=28, classes=10, scale=1.0):
        super().__init__()
        self.fc = torch.nn.Linear(channels * size * size, classes)
        self.scale = scale

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


@pytest.mark.parametrize("case,words", [
    ("3-D images", "must be a batch (N, C, H, W)"),
    ("wrong channels", "the model cannot take these images"),
    ("fewer labels", "one integer class index per image"),
    ("empty", "no images to audit"),
    ("numpy", None), ("list", None), ("float64", None),
    ("one logit", "1 logit per image"),
    ("surrogate with nan logits", "the surrogate: the model's logits are not finite"),
    ("surrogate with 3 logits", "the surrogate: the model returns 3 logits"),
    ("surrogate with 3 channels", "the surrogate: the model cannot take these images"),
    ("a string", "must be a torch.nn.Module"),
])
def test_the_audit_function_names_bad_input_before_any_attack(case, words, monkeypatch):
    """`reproduce.audit` as a researcher calls it: each bad input is one ValueError that names it, raised
    before the first attack (attacks are counted); numpy, lists and float64 are taken as they are."""
    import numpy as np

    import reproduce.audits as audits

    attacks = []
    monkeypatch.setattr(audits, "score_columns", lambda *a, **k: attacks.append(1) or (_ for _ in ()).throw(
        RuntimeError("stop: inputs accepted")))
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    model, surrogate = Linear(), None
    if case == "3-D images":
        x = x[:, 0]
    elif case == "wrong channels":
        x = torch.rand(6, 3, 28, 28)
    elif case == "fewer labels":
        y = y[:4]
    elif case == "empty":
        x, y = x[:0], y[:0]
    elif case == "numpy":
        x, y = x.numpy(), y.numpy()
    elif case == "list":
        x, y = x.tolist(), y.tolist()
    elif case == "float64":
        x = x.double()
    elif case == "one logit":
        model, y = Linear(classes=1), torch.zeros(6, dtype=torch.long)
    elif case.startswith("surrogate"):
        surrogate = {"surrogate with nan logits": Linear(scale=float("nan")), "surrogate with 3 logits":
                     Linear(classes=3), "surrogate with 3 channels": Linear(channels=3)}[case]
    elif case == "a string":
        model = "model.pt"
    if words is None:
        with pytest.raises(RuntimeError, match="stop: inputs accepted"):
            audits.audit(model, x, y)
        assert np.asarray(x).dtype != object
    else:
        with pytest.raises(ValueError) as err:
            audits.audit(model, x, y, surrogate=surrogate)
        assert words in str(err.value) and "\n" not in str(err.value) and not attacks, str(err.value)
    TRIED.setdefault("reproduce.audit", []).append(True)


def test_a_torchscript_model_of_the_wrong_channels_is_one_line(tmp_path, capsys, finished):
    _, data = finished
    path = tmp_path / "rgb.pt"
    torch.jit.script(Linear(channels=3)).save(str(path))
    refused(capsys, "audit", ["audit", str(path), "--profile", "smoke", "--dataset", "mnist", "--data", str(data),
                              "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "audit")],
            "the model cannot take these images")


def test_attack_names_a_string_spec_and_images_without_a_batch_axis():
    from reproduce.attacks import AttackSpec, attack

    model, x, y = Linear(), torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with pytest.raises(TypeError, match="must be an AttackSpec, got str 'pgd'"):
        attack(model, x, y, "pgd")
    with pytest.raises(ValueError, match=r"must be a batch \(N, C, H, W\), got shape \(4, 28, 28\)"):
        attack(model, x[:, 0], y, AttackSpec("pgd", steps=2))
    TRIED.setdefault("attack", []).extend([True, True])
