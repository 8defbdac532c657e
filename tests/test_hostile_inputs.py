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
