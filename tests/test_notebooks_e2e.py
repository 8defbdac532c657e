"""Every notebook, executed headlessly through papermill on small files in the real on-disk formats."""
import json
import time

import nbformat
import pandas as pd
import pytest
from conftest import write_cifar10, write_idx

from reproduce.runner import NOTEBOOKS, notebooks_at_once, run_notebooks

# Budgets only: the attacks, eps and losses are the protocol's.
TINY = dict(width=4, epochs=1, sweep_epochs=1, grid_epochs=1, test_limit=20, val_limit=None, restarts=2, mim_steps=5,
            tsne_points=40, apgd_steps=5, apgd_targets=2, autoattack_steps=5, square_queries=30, square_images=20)

EXPECTED = ["table1_white_box", "table2_black_box_fgsm", "table3_black_box_20pgd", "table4_aaml_sweep",
            "beyond_white_box"]
FIGURES = ["fig1_tsne_sm_vs_aaml.png", "fig2_tsne_airplane_fgsm.png", "fig_table4_heatmap.png",
           "fig_training_curves.png", "fig_losses_2d_embeddings.png", "fig_curve_eps.png", "fig_curve_iterations.png",
           "appendix_a_feature_norm.png",
           "appendix_b_k1k2_grid.png", "appendix_c_scale_sweep.png", "appendix_d_tsne_mnist.png",
           "fig_masking_report.png", "fig_logit_scale.png", "fig_geometry.png", "fig_masking_report_beyond.png"]


@pytest.mark.slow
def test_every_notebook_runs_and_writes_every_output(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernels draw inline, as in Jupyter, not the suite's Agg
    data = tmp_path / "data"
    write_cifar10(data, n_train=300, n_test=100)
    write_idx(data, "MNIST", n_train=300, n_test=100)
    rc = run_notebooks("smoke", "cifar10", device="cpu", runs_dir=tmp_path / "runs", data_dir=data,
                       figures_dir=tmp_path / "figures", profile_overrides=TINY)
    assert rc == 0
    # changed budgets never write into the profile's own folder: a folder of their own, named by their digest
    assert not (tmp_path / "figures" / "cifar10-smoke").exists()
    (out,) = (tmp_path / "figures").glob("cifar10-smoke-budgets-*")
    # the terminal showed, as they ran, which notebook, model and attack column was at work, and no kernel
    # warned of TCP without encryption (the kernels talk over local sockets)
    printed, errors = capfd.readouterr()
    assert "without encryption" not in printed + errors
    # 02 and 03 hand their grids to worker processes when notebooks run two at once (a suite worker has one
    # thread, so one at a time here: run alone, two at once), and say each model as a worker finishes it;
    # one at a time, the kernel trains and evaluates, epoch by epoch and column by column
    if notebooks_at_once("cpu")[0] > 1:
        assert "  [02] SM-UM seed 0: trained by a worker" in printed
        assert "  [03] SM-UM seed 0: Table I's columns computed by a worker" in printed
    else:
        assert "  [02] [1/20] SM-UM" in printed and "  [02] SM-UM epoch 1:" in printed
        assert "  [03] SM-UM fgsm:" in printed and "by a worker" not in printed
    assert "  [05] AAML-AT epoch 1:" in printed
    assert "  [03] SM-UM pgd20_cw:" in printed  # the masking report's columns, computed in the kernel
    assert "  [06] " in printed and "  [01] " in printed and "  [07] " in printed
    for name in ("table1", "tables2_3", "table4"):
        assert "**Do the paper's claims hold on this run?**" in (out / f"claims_{name}.md").read_text()
    shapes = {"table1_white_box": (15, 8), "table2_black_box_fgsm": (15, 5), "table3_black_box_20pgd": (15, 5),
              "table4_aaml_sweep": (5, 4), "beyond_white_box": (16, 8)}
    for stem in EXPECTED:
        df = pd.read_csv(out / f"{stem}.csv", index_col=0)
        assert df.shape == shapes[stem], stem
        md = (out / f"{stem}.md").read_text()
        assert (" / " in md or stem == "beyond_white_box") and "paper" in md and " ±" in md
        intervals = pd.read_csv(out / f"{stem}_intervals.csv")
        finite = intervals.dropna(subset=["mean"])
        assert len(intervals) == shapes[stem][0] * shapes[stem][1] and len(finite) > 0, stem
        assert ((finite.ci_low <= finite["mean"]) & (finite["mean"] <= finite.ci_high)).all(), stem
    t1 = pd.read_csv(out / "table1_white_box.csv", index_col=0)
    assert list(t1.index[:3]) == ["SM-UM", "SM-AT", "SM-ALP"]
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name
    for csv in ("appendix_a_feature_norm", "appendix_b_k1k2_grid", "appendix_c_scale_sweep", "appendix_d_tsne_mnist",
                "appendix_recipe_search", "curve_eps", "curve_iterations"):
        assert len(pd.read_csv(out / f"{csv}.csv")) > 0
    report = pd.read_csv(out / "masking_report.csv", index_col=0)
    assert list(report.index) == list(t1.index) and report["flagged"].dtype == bool
    assert (report["pgd20"] - t1["pgd20"]).abs().max() < 1e-6  # its CE-PGD-20 is Table I's column
    assert (report["worst"] <= report[["pgd20", "pgd20_cw", "apgd_dlr", "apgd_t"]].min(axis=1) + 1e-6).all()
    sweep = pd.read_csv(out / "logit_scale_sweep.csv")
    assert set(sweep["model"]) == {f"{loss}-{d}" for loss in ("SM", "AAML") for d in ("UM", "AT", "ALP")}
    assert len(pd.read_csv(out / "geometry.csv")) == 15 * 3
    assert "the worst case |" in (out / "claims_table1_worst_case.md").read_text()
    # notebook 07: the table beyond the paper, its masking report (Table I's four models among its rows, the
    # same numbers) and its claims, under the CE attacks and the worst case
    beyond = pd.read_csv(out / "beyond_white_box.csv", index_col=0)
    assert list(beyond.index[:4]) == ["SM-UM", "SM-AT", "SM-TRADES", "SM-MART"] and "PCL-MART" in beyond.index
    assert (beyond.loc[["SM-UM", "AAML-AT"]] - t1.loc[["SM-UM", "AAML-AT"]]).abs().max().max() < 1e-6
    beyond_report = pd.read_csv(out / "masking_report_beyond.csv", index_col=0)
    assert (beyond_report.loc["SM-AT", "worst"] - report.loc["SM-AT", "worst"]) ** 2 < 1e-12
    assert "MMC-UM" in beyond_report.index and beyond_report["flagged"].dtype == bool
    assert "AAML is more robust than SM" in (out / "claims_beyond.md").read_text()
    assert "the worst case |" in (out / "claims_beyond_worst_case.md").read_text()
    a = pd.read_csv(out / "appendix_a_feature_norm.csv")
    assert {"mean_norm_correct", "mean_norm_misclassified"} <= set(a.columns) and len(a) == 4
    b = pd.read_csv(out / "appendix_b_k1k2_grid.csv")
    assert {(0, 0), (512, 64)} <= set(zip(b.k1, b.k2))
    c = pd.read_csv(out / "appendix_c_scale_sweep.csv")
    assert set(c.s) == set(range(1, 11)) and c["loss"].nunique() == 2
    assert "aa" in t1.columns and "AA: a reduced AutoAttack" in (out / "table1_white_box.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["dataset"] == "cifar10" and manifest["end_time"]
    assert manifest["budgets"] == {k: v for k, v in TINY.items() if v is not None}  # None keeps the profile's
    import torch

    assert manifest["environment"]["torch"] == torch.__version__ and manifest["environment"]["threads"] >= 1
    md = (out / "table1_white_box.md").read_text()
    assert "Budgets changed from the smoke profile: width=4, epochs=1" in md and "20PGD (20; 2 restarts)" in md
    assert manifest["objectives"] == "authors"
    # 20 (02) + 20 (05) - 1 shared, + 16 (07) - 4 shared with Table I
    assert len(manifest["experiments"]) == 51 and "table1" in manifest["sanity_flags"]
    # near-chance tiny models can score higher under FGSM than clean: the check must flag exactly those rows
    above = t1.drop(columns="clean").gt(t1["clean"], axis=0).any(axis=1)
    flagged = {label for label, flags in manifest["sanity_flags"]["table1"].items()
               if any("exceeds clean" in f for f in flags)}
    assert flagged == set(t1.index[above])
    if flagged:
        assert "CHECK FAILED" in (out / "table1_white_box.md").read_text()
    executed = tmp_path / "runs" / "notebooks" / out.name
    assert sorted(p.name for p in executed.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for path in executed.glob("*.ipynb"):  # every bar erased itself: none left frozen in the saved outputs
        assert not progress_bars(nbformat.read(path, as_version=4)), path.name
    # notebook 01 shows what a reader wants first: the set-up line, the dataset line, the figure, then
    # the accuracies rounded to one decimal
    outputs = [o for c in nbformat.read(executed / "01_losses.ipynb", as_version=4).cells
               if c.cell_type == "code" for o in c.outputs]
    images = [i for i, o in enumerate(outputs) if "image/png" in o.get("data", {})]
    assert images and images[0] <= 3, [o.get("text", o.get("data", {}).keys()) for o in outputs]
    table = outputs[images[0] + 1]["data"]["text/plain"]
    numbers = [w for w in table.split() if w.replace(".", "", 1).isdigit() and "." in w]
    assert "test accuracy (%)" in table and numbers and all(len(w.split(".")[1]) == 1 for w in numbers), table

    # a second run finds everything in the store: no model trained, no evaluation computed again (every file
    # of the store keeps its modification time; a timer would depend on the machine)
    stored = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()
              and "notebooks" not in p.parts}
    assert run_notebooks("smoke", "cifar10", device="cpu", runs_dir=tmp_path / "runs", data_dir=data,
                         figures_dir=tmp_path / "figures", profile_overrides=TINY, only=["02", "05"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file() and "notebooks" not in p.parts
                and p not in stored]


def progress_bars(nb) -> list[str]:
    """Progress-bar lines left in a notebook's saved outputs (tqdm's "NN%|...| k/n")."""
    import re

    texts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            texts.append(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", "")))
    return [line for text in texts for line in text.splitlines() if re.search(r"\d+%\|.*\| *\d+/\d+", line)]


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    from reproduce.runner import REPO

    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert any("parameters" in c.metadata.get("tags", []) for c in code), name
        assert "google.colab" in code[0].source, name


def test_missing_dataset_is_reported_before_any_notebook(tmp_path, capsys):
    start = time.perf_counter()
    rc = run_notebooks("smoke", "cifar10", runs_dir=tmp_path / "runs", data_dir=tmp_path / "nothing",
                       figures_dir=tmp_path / "figures")
    out = capsys.readouterr().out
    assert rc == 2 and time.perf_counter() - start < 30
    assert "DATASET=fashion-mnist" in out and "[1/" not in out


def test_a_failing_notebook_is_named_with_its_cell(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    books = tmp_path / "notebooks"
    books.mkdir()
    nbformat.write(nb, books / "01_losses.ipynb")
    data = write_cifar10(tmp_path / "data", n_train=50, n_test=10)
    rc = run_notebooks("smoke", "cifar10", runs_dir=tmp_path / "runs", data_dir=data, figures_dir=tmp_path / "f",
                       notebooks_dir=books, only=["01"])
    out = capsys.readouterr().out
    assert rc == 1 and "01_losses.ipynb" in out and "ValueError: broken on purpose" in out and "cell" in out
