import pandas as pd
import pytest
import torch

from reproduce.attacks import AttackSpec
from reproduce.evaluation import black_box, black_box_checks, white_box_checks
from reproduce.tables import comparison_markdown, paper_table


def test_checks_pass_on_a_sound_row_and_flag_each_failure():
    row = {"clean": 90.0, "fgsm": 40.0, "bim7": 10.0, "pgd7": 9.0, "pgd20": 8.0, "pgd20x20": 7.5, "mim40": 8.0}
    curve = {"0.0000": 90.0, "0.0314": 9.0, "0.5020": 0.0}
    assert white_box_checks(row, curve) == []
    bad = dict(row, fgsm=95.0, pgd20=12.0, pgd20x20=14.0)
    flags = white_box_checks(bad, {"0.0000": 89.0, "0.0314": 30.0, "0.5020": 45.0})
    text = " ".join(flags)
    for needle in ("fgsm (95.00) exceeds clean", "PGD-20", "20PGD", "eps = 0", "rises with eps", "gradient masking"):
        assert needle in text


def test_black_box_checks_flag_transfer_stronger_than_white_box_as_a_masking_signal():
    matrix = {"AAML-UM": {"surrogate_SM": 60.0, "surrogate_TL": 48.52}}
    (flag,) = black_box_checks(matrix, {"AAML-UM": 52.04})  # the paper's own AAML-UM under FGSM
    assert "surrogate_TL (48.52)" in flag and "(52.04)" in flag and "possible sign of masked gradients" in flag


def test_black_box_matrix_two_surrogates_three_targets(fashion_model, fashion):
    import copy

    x, y = fashion.x_test[:200], fashion.y_test[:200]
    torch.manual_seed(0)
    other = copy.deepcopy(fashion_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    surrogates = {"surrogate_SM": fashion_model, "surrogate_SM2": other}
    targets = {"A": fashion_model, "B": other, "C": copy.deepcopy(fashion_model)}
    spec = AttackSpec("fgsm", step=8 / 255)
    matrix = black_box(surrogates, targets, x, y, spec, progress=False)
    assert set(matrix) == {"A", "B", "C"} and all(set(r) == set(surrogates) for r in matrix.values())
    # a target attacked through its own weights is a white-box attack: identical numbers
    assert matrix["A"]["surrogate_SM"] == pytest.approx(matrix["C"]["surrogate_SM"])
    from reproduce.evaluation import robust_accuracy

    white = robust_accuracy(fashion_model, x, y, spec)
    assert matrix["A"]["surrogate_SM"] == pytest.approx(white)
    assert matrix["A"]["surrogate_SM2"] >= white - 1.0  # transfer is weaker than white-box


def test_markdown_shows_ours_and_the_paper():
    from reproduce.tables import cell, summarise

    paper = paper_table("table1")
    ours = pd.DataFrame([cell("SM-UM", "clean", 0, 90.0, 300), cell("SM-UM", "fgsm", 0, None, 300)])
    md = comparison_markdown(summarise(ours), paper, "cifar10", "T", index_name="model")
    assert "90.00 ±3.41 / 93.15 (-3.15) |" in md and "| - / 23.95 |" in md
    t4 = paper_table("table4")
    assert pd.isna(t4.loc["0.20", "s4"]) and t4.loc["0.05", "s2"] == 41.46


def test_the_eps_end_column_is_the_eps_curves_last_point(fashion_model, fashion):
    """The masking report reads the eps curve's end as a column of its own (a table without the curve pays
    for one point): the column must give the curve's number, seeded and batched as the curve is."""
    from reproduce.evaluation import EPS_SWEEP, eps_curve, robust_accuracy
    from reproduce.protocol import EPS_END

    x, y = fashion.x_test[:120], fashion.y_test[:120]
    curve = eps_curve(fashion_model, x, y, eps_values=(0, EPS_SWEEP[-1]), key="k")
    assert robust_accuracy(fashion_model, x, y, EPS_END.spec(None), key="k") == list(curve.values())[-1]
    assert EPS_END.spec(None).eps == EPS_SWEEP[-1] and EPS_END.spec(None).step >= EPS_SWEEP[-1] / 4
