"""`python -m reproduce compare MINE REFERENCE`: cell by cell, within or beyond the seed spread, checked
against the rule computed here by hand; and its refusals, before any work."""
import math

import pandas as pd
import pytest

from reproduce.cli import main
from reproduce.compare import compare

COLUMNS = ["clean", "fgsm", "pgd20"]
ROWS = ["SM-UM", "AAML-UM"]


def write_run(folder, means, sd=None, seeds=1, n=300, dataset="fashion-mnist"):
    """A run's Table I as the tables write it: table1_white_box_intervals.csv (and a manifest)."""
    folder.mkdir(parents=True)
    lines = []
    for (row, column), mean in means.items():
        half = 100 * 1.96 * math.sqrt(mean / 100 * (1 - mean / 100) / n)
        lines.append(dict(model=row, column=column, mean=mean, sd=sd, seeds=seeds, n_images=n, any_iterate=mean,
                          ci_low=mean - half, ci_high=mean + half, paper=50.0))
    pd.DataFrame(lines).to_csv(folder / "table1_white_box_intervals.csv", index=False)
    (folder / "manifest.json").write_text(f'{{"dataset": "{dataset}"}}')
    return folder


def base(shift=0.0):
    return {(r, c): 60.0 + 5 * i + shift for i, (r, c) in enumerate((r, c) for r in ROWS for c in COLUMNS)}


def test_within_the_seed_spread_by_the_formula_and_one_cell_moved_beyond(tmp_path, capsys):
    sd, k = 3.0, 3
    reference = write_run(tmp_path / "ref", base(), sd=sd, seeds=k)
    moved = base(1.0)
    allowed = 1.96 * sd * math.sqrt(1 / 1 + 1 / k)  # one run of mine against k seeds
    moved[("AAML-UM", "pgd20")] = 85.0 + allowed + 0.5  # just beyond
    mine = write_run(tmp_path / "mine", moved)
    result = compare(mine, reference)
    cells = result.cells.set_index(["row", "column"])
    assert cells["allowed"].round(6).eq(round(allowed, 6)).all()
    assert list(cells.index[~cells["within"]]) == [("AAML-UM", "pgd20")]
    assert result.verdict.startswith("NOT REPRODUCED: 5 of 6 cells within the seed spread (the reference's seeds)")
    assert main(["compare", str(mine), str(reference), "--out", str(tmp_path / "c.md")]) == 0
    printed = capsys.readouterr().out
    assert "beyond (1): table1 AAML-UM pgd20 +" in printed
    md = (tmp_path / "c.md").read_text()
    assert md.count("| within |") == 5 and md.count("**beyond**") == 1


def test_without_a_seed_spread_the_intervals_decide_and_the_verdict_says_so(tmp_path):
    reference = write_run(tmp_path / "ref", base())
    mine = write_run(tmp_path / "mine", base(2.0))  # 2 points: inside 300-image Wilson intervals
    result = compare(mine, reference)
    assert result.cells["within"].all() and "test sampling only" in result.verdict
    far = write_run(tmp_path / "far", base(15.0))
    assert not compare(far, reference).cells["within"].any()
    # with --spread, the SD of a multi-seed run decides for one-seed runs: 2 points within 1.96 * 1.0 * sqrt(2)?
    spread = write_run(tmp_path / "seeds", base(), sd=1.0, seeds=3)
    result = compare(mine, reference, spread=spread)
    sampling = [100 * math.sqrt(m / 100 * (1 - m / 100) / 300) for m in base().values()]
    expected = [2.0 <= 1.96 * max(1.0, s) * math.sqrt(2) for s in sampling]
    assert list(result.cells["within"]) == expected and "--spread" in result.verdict


def test_against_the_paper_only_on_cifar10(tmp_path):
    fashion = write_run(tmp_path / "fashion", base())
    with pytest.raises(ValueError, match="CIFAR-10's and .* is a fashion-mnist run"):
        compare(fashion, "paper")
    cifar = write_run(tmp_path / "cifar", {("SM-UM", "clean"): 93.0, ("SM-UM", "fgsm"): 40.0}, n=10_000,
                      dataset="cifar10")
    cells = compare(cifar, "paper").cells.set_index("column")
    assert cells.loc["clean", "within"] and not cells.loc["fgsm", "within"]  # the paper: 93.15 and 23.95
    assert cells.loc["fgsm", "reference"] == pytest.approx(23.95)


@pytest.mark.parametrize("args, words", [
    (["compare", "nowhere", "paper"], "MINE nowhere is not a folder"),
    (["compare", "{empty}", "paper"], "holds no table"),
    (["compare", "{run}", "{run}", "--out", "{empty}"], "is a folder"),
    (["compare", "{run}", "{run}", "--out", "no/such/folder/c.md"], "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, words):
    run = write_run(tmp_path / "run", base())
    (tmp_path / "empty").mkdir()
    args = [a.format(run=run, empty=tmp_path / "empty") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
