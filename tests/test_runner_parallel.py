"""Notebooks run two at once on a CPU: each kernel at its share of the threads, a notebook only after those
it reads, and a failure stops what has not started."""
import json
import os
import re

import nbformat
import pytest
import torch
from conftest import write_cifar10

from reproduce import runner
from reproduce.runner import NOTEBOOKS, notebooks_at_once, run_notebooks


def _stand_ins(folder, fail=()):
    """A notebook per name of NOTEBOOKS that records when it ran and at how many threads (and, for a name
    in `fail`, raises in its second cell)."""
    folder.mkdir()
    for name in NOTEBOOKS:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        crash = "raise ValueError('broken on purpose')" if name in fail else ""
        record = os.path.join(str(folder), name + ".json")
        body = (f"import json, os, time\nbegan = time.time()\ntime.sleep(1.5)\n{crash}\n"
                f"open({record!r}, 'w').write(json.dumps("
                "{'began': began, 'ended': time.time(), 'threads': os.environ.get('OMP_NUM_THREADS'), "
                "'workers': globals().get('workers', 1)}))")
        nb.cells = [nbformat.v4.new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, folder / name)
    return folder


def _times(folder):
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in NOTEBOOKS if (folder / f"{n}.json").exists()}


def test_two_at_once_each_at_one_thread_after_what_they_read(tmp_path, capsys):
    books = _stand_ins(tmp_path / "notebooks")
    data = write_cifar10(tmp_path / "data", n_train=50, n_test=10)
    rc = run_notebooks("smoke", "cifar10", device="cpu", runs_dir=tmp_path / "runs", data_dir=data,
                       figures_dir=tmp_path / "figures", notebooks_dir=books, parallel=2, threads=1)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    times = _times(books)
    assert set(times) == set(NOTEBOOKS)
    assert all(t["threads"] == "1" for t in times.values())
    # the notebooks others wait for (02 and 03) and the last one (07, beside 03's end and a short 04) ran
    # their grids with two workers; the others as they are
    assert {n for n, t in times.items() if t["workers"] == 2} == {"02_training.ipynb", "03_white_box.ipynb",
                                                                  "07_beyond_the_paper.ipynb"}
    for name, needs in runner.NEEDS.items():  # a notebook began after each one it reads had ended
        assert all(times[name]["began"] >= times[need]["ended"] for need in needs), name
    events = sorted([(t["began"], 1) for t in times.values()] + [(t["ended"], -1) for t in times.values()])
    running = [sum(step for _, step in events[:i + 1]) for i in range(len(events))]
    assert max(running) == 2  # two at once, never three
    assert "2 notebooks at once, 1 CPU thread(s) each" in printed and "all notebooks ran" in printed
    manifest = json.loads((tmp_path / "figures" / "cifar10-smoke" / "manifest.json").read_text())
    assert manifest["notebooks_at_once"] == 2 and manifest["environment"]["threads"] == 1
    assert manifest["end_time"] and manifest["failed"] is None


def test_a_failure_starts_nothing_more_and_names_the_notebook(tmp_path, capsys):
    books = _stand_ins(tmp_path / "notebooks", fail=("02_training.ipynb",))
    data = write_cifar10(tmp_path / "data", n_train=50, n_test=10)
    rc = run_notebooks("smoke", "cifar10", device="cpu", runs_dir=tmp_path / "runs", data_dir=data,
                       figures_dir=tmp_path / "figures", notebooks_dir=books, parallel=2, threads=1,
                       only=["01", "02", "03", "04"])
    printed = capsys.readouterr().out
    assert rc == 1, printed
    assert re.search(r"FAILED: 02_training.ipynb, cell \d+: ValueError: broken on purpose", printed), printed
    # 01 ran beside 02 and finished; 03 and 04 read 02 and never started
    assert set(_times(books)) == {"01_losses.ipynb"}
    manifest = json.loads((tmp_path / "figures" / "cifar10-smoke" / "manifest.json").read_text())
    assert manifest["failed"]["notebook"] == "02_training.ipynb"


def test_the_defaults_and_what_is_refused(monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert notebooks_at_once("cpu") == (2, 1)  # two kernels of one thread on 2 cores
        assert notebooks_at_once("cuda") == (1, None)  # one notebook at a time on a GPU
        assert notebooks_at_once("cpu", threads=2) == (1, 2)  # the threads asked for fill the cores
        assert notebooks_at_once("cpu", parallel=1) == (1, None)  # as before: the kernel's own default
        with pytest.raises(ValueError, match="4 threads on 2 cores"):
            notebooks_at_once("cpu", parallel=2, threads=2)
        with pytest.raises(ValueError, match="1 or more"):
            notebooks_at_once("cpu", parallel=0)
        torch.set_num_threads(1)
        assert notebooks_at_once("cpu") == (1, None)  # a caller with one thread runs one notebook
    finally:
        torch.set_num_threads(previous)


def _merge_many(out, worker: int, n: int, barrier) -> None:
    from reproduce.report import update_manifest

    barrier.wait()  # both start merging at the same moment
    for k in range(n):
        update_manifest(out, experiments={f"w{worker}-{k}": k})


def test_two_processes_merging_into_the_manifest_lose_nothing(tmp_path):
    """Two kernels record their experiments into one manifest.json at once: every entry of both survives
    (without the lock, a read-merge-write between the other's read and write drops entries)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        barrier = manager.Barrier(2)
        list(pool.map(_merge_many, [tmp_path] * 2, [0, 1], [200, 200], [barrier] * 2))
    entries = json.loads((tmp_path / "manifest.json").read_text())["experiments"]
    assert len(entries) == 400
    assert not [p.name for p in tmp_path.iterdir() if p.name != "manifest.json"]  # no lock file left among outputs


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_kernel_that_dies_fails_its_notebook_instead_of_hanging_the_run(tmp_path, parallel):
    """A kernel killed by a crash in native code (os.abort here; a heap corruption in torch once) fails its
    notebook with the reason, and the run ends with status 1. With jupyter_client's synchronous kernel
    manager, nbclient never learnt that the kernel had died and the run waited for ever: the run goes in a
    child process, so a regression fails this test instead of hanging the suite."""
    import subprocess
    import sys

    books = tmp_path / "notebooks"
    books.mkdir()
    for name in NOTEBOOKS:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell("import os\n" + ("os.abort()" if name.startswith("02") else ""))]
        nbformat.write(nb, books / name)
    data = write_cifar10(tmp_path / "data", n_train=50, n_test=10)
    code = (f"from reproduce.runner import run_notebooks\nif __name__ == '__main__':\n"
            f"    raise SystemExit(run_notebooks('smoke', 'cifar10', device='cpu', runs_dir={str(tmp_path / 'runs')!r},"
            f" data_dir={str(data)!r}, figures_dir={str(tmp_path / 'figures')!r}, notebooks_dir={str(books)!r}, "
            f"parallel={parallel}, threads=1))")
    (tmp_path / "go.py").write_text(code)
    done = subprocess.run([sys.executable, str(tmp_path / "go.py")], capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAILED: 02_training.ipynb" in done.stdout and "the kernel died" in done.stdout
