"""The tables are defined once, in protocol.py: every table reads its columns there, and a column
added there is computed alone while the others come from the cache."""
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest

from reproduce import evaluation, protocol, tables
from reproduce.attacks import AttackSpec
from reproduce.cli import main
from reproduce.config import get_profile
from reproduce.context import Run
from reproduce.plan import plan
from reproduce.store import RunStore
from reproduce.training import train


def _tiny_run(tmp_path, cifar_root):
    prof = get_profile("smoke", width=4, epochs=1, train_limit=64, val_limit=32, test_limit=24, restarts=2,
                       mim_steps=3, autoattack_steps=2)
    return Run(prof, "cifar10", store=RunStore(tmp_path / "runs"), device="cpu", data_root=cifar_root,
               figures_root=tmp_path / "figures", progress=False)


def test_a_new_column_is_one_column_in_protocol_and_is_computed_alone(tmp_path, cifar_root, monkeypatch):
    run = _tiny_run(tmp_path, cifar_root)
    sm_um = next(e for e in protocol.TABLE1.models(run) if e.label == "SM-UM")
    train(sm_um, run.store, data=run.data, device="cpu", progress=False)
    before, _ = tables.compute(run, protocol.TABLE1)
    passes_before = sum(r["passes"] for r in plan(run)[0])

    computed = []
    real = evaluation.robust_scores

    def counting(model, x, y, spec, **kw):
        computed.append("clean" if spec is None else spec.column)
        return real(model, x, y, spec, **kw)

    monkeypatch.setattr(evaluation, "robust_scores", counting)
    # the whole change a new column needs: one Column in the table's definition (protocol.py)
    dummy = protocol.Column("fgsm4", "FGSM 4/255", lambda p: AttackSpec("fgsm", eps=4 / 255, label="fgsm4"),
                            in_paper=False)
    table = replace(protocol.TABLE1, columns=protocol.TABLE1.columns + (dummy,))
    monkeypatch.setitem(protocol.TABLES, "table1", table)
    after, _ = tables.compute(run, table)

    assert computed == ["fgsm4"]  # one model trained, one new column: nothing else recomputed
    old, new = tables.wide(before), tables.wide(after)
    assert list(new.columns) == list(old.columns) + ["fgsm4"]
    pd.testing.assert_frame_equal(new[old.columns], old)
    assert not pd.isna(new.loc["SM-UM", "fgsm4"]) and new.drop(index="SM-UM")["fgsm4"].isna().all()
    md = tables.write_table(after, "table1", tmp_path / "out", "cifar10")
    assert "FGSM 4/255" in md.splitlines()[4] and f"{new.loc['SM-UM', 'fgsm4']:.2f} ±" in md
    sm_line = next(line for line in md.splitlines() if line.startswith("| SM-UM"))
    assert sm_line.rstrip(" |").endswith("/ -")  # the paper has no such column
    # the plan prices it: one FGSM pass per test image for each of the 15 models
    assert sum(r["passes"] for r in plan(run)[0]) == passes_before + 15 * 24


def test_a_new_table_is_one_table_in_protocol(tmp_path, cifar_root, monkeypatch, capsys):
    run = _tiny_run(tmp_path, cifar_root)
    # the whole change a new table needs: one Table added to protocol.TABLES
    ours = protocol.Table("fgsm_um", "UM models under FGSM and PGD-7 (%)", "fgsm_um", "model", None,
                          (protocol.CLEAN, protocol.FGSM, protocol.PGD7_COLUMN),
                          lambda run: [e for e in protocol.table1_experiments(run) if e.defense == "UM"][:2])
    monkeypatch.setitem(protocol.TABLES, "fgsm_um", ours)
    assert main(["grid", "--table", "fgsm_um", "--profile", "smoke", "--dataset", "cifar10", "--quiet",
                 "--runs", str(run.store.root), "--data", str(cifar_root), "--device", "cpu",
                 "--budget", "width=4", "--budget", "epochs=1", "--budget", "train_limit=64",
                 "--budget", "val_limit=32"]) == 0  # the command line offers it and trains its models
    assert all(run.finished(e) for e in ours.models(run))
    cells, flags = tables.compute(run, ours)
    assert set(cells["row"]) == {"SM-UM", "ConL-UM"} and cells["accuracy"].notna().all() and flags["SM-UM"] == []
    md = tables.write(run, ours, cells, flags)
    assert md.startswith("### UM models under FGSM and PGD-7") and (run.out_dir / "fgsm_um_intervals.csv").exists()
    # the plan prices what it adds: its models and its columns are Table I's (trained once, computed once) ...
    assert [r for r in plan(run)[0] if r["group"] == "fgsm_um"] == []
    # ... and a column Table I does not have is priced on its two models
    fgsm4 = protocol.Column("fgsm4", "FGSM 4/255", lambda p: AttackSpec("fgsm", eps=4 / 255, label="fgsm4"))
    monkeypatch.setitem(protocol.TABLES, "fgsm_um", replace(ours, columns=ours.columns + (fgsm4,)))
    rows = [r for r in plan(run)[0] if r["group"] == "fgsm_um"]
    assert [r["what"] for r in rows] == ["fgsm_um: evaluate 2 models"]
    assert rows[0]["passes"] == 2 * 24 * 1  # one FGSM pass per test image, the other columns cached


def test_every_table_reads_its_definition():
    prof = get_profile("smoke")
    assert tables.paper_table("table1").columns.tolist() == [c.key for c in protocol.TABLE1.columns if c.in_paper]
    assert "aa" in protocol.TABLE1.keys and "aa" not in tables.paper_table("table1").columns
    assert protocol.TABLE2.attack.spec(prof).name == "fgsm"
    t3 = protocol.TABLE3.attack.spec(prof)
    assert (t3.steps, t3.restarts, t3.random_start) == (20, prof.restarts, True)
    assert tables.paper_table("table2").columns.tolist() == list(protocol.SURROGATES)
    aa = [s for s in protocol.TABLE1.specs(prof) if s.name == "autoattack"]
    assert aa[0].version == "apgd" and protocol.TABLE1.specs(get_profile("quick"))[-1].version == "standard"


def test_the_masking_report_of_a_table_reads_the_eps_curves_end_as_its_column(tmp_path, cifar_root):
    """The report on a table's trained models (here one): its eps end is the eps curve's last point, read
    from the column `protocol.EPS_END` that the grid's workers fill (`masking.report_specs`)."""
    from reproduce import masking
    from reproduce.evaluation import eps_curve

    run = replace(_tiny_run(tmp_path, cifar_root),
                              profile=get_profile("smoke", width=4, epochs=1, train_limit=64, val_limit=32,
                                                  test_limit=24, restarts=2, mim_steps=3, autoattack_steps=2,
                                                  apgd_steps=2, apgd_targets=2, square_queries=5, square_images=8))
    sm_um = next(e for e in protocol.TABLE1.models(run) if e.label == "SM-UM")
    train(sm_um, run.store, data=run.data, device="cpu", progress=False)
    cells, extras, verdicts = masking.report_cells(run, protocol.BEYOND)
    x, y = run.test_images()
    curve = eps_curve(run.model(sm_um), x, y, experiment=sm_um, store=run.store)
    assert extras.set_index("model").loc["SM-UM", "eps_end"] == list(curve.values())[-1]
    assert set(cells["column"]) >= {"pgd20", "pgd20_cw", "apgd_dlr", "apgd_t", "square", masking.WORST}
    # the worst case is over the attacks at eps 8/255 only, never the eps curve's end at 128/255: by hand, an
    # image right under every one of them at its any-iterate score (Square on its first images)
    from reproduce.evaluation import score_columns

    at_eps = [s for s in masking.report_specs(run.profile) if s.column != protocol.EPS_END.spec(run.profile).column]
    scores = score_columns(run.model(sm_um), x, y, at_eps, experiment=sm_um, store=run.store, per_example=True)
    every = torch.ones(len(y), dtype=torch.bool)
    for v in scores.values():
        every[:len(v["correct_any_iterate"])] &= v["correct_any_iterate"]
    worst = cells[(cells["row"] == "SM-UM") & (cells["column"] == masking.WORST)]["accuracy"].item()
    assert worst == pytest.approx(100 * every.float().mean().item())
    # its verdict's indicators, each recomputed here from the same per-image scores by its rule written out
    level, sentence, found = verdicts["SM-UM"]
    n = len(y)
    pgd20 = scores["pgd20"]["correct"]

    def beats(column, floor):  # McNemar, one-sided, on the images the two disagree on; a floor in points
        other = scores[column]["correct"]
        breaks, spares = int((pgd20 & ~other).sum()), int((~pgd20 & other).sum())
        p = binomtest(breaks, breaks + spares, 0.5, alternative="greater").pvalue if breaks else 1.0
        return 100 * (breaks - spares) / n >= floor and p < 0.025

    invariant = ("pgd20_cw", "apgd_dlr", "apgd_t")
    assert found["scale-invariant loss beats CE"]["fired"] == any(beats(c, 5) for c in invariant)
    assert found["single step beats iterative"]["fired"] == beats("fgsm", 5)
    assert found["restarts help"]["fired"] == beats("pgd20x20", 1)
    silent = torch.zeros(n, dtype=torch.bool)
    for s in protocol.TABLE1.specs(run.profile):
        if s is not None and s.name in ("bim", "pgd", "mim"):
            silent |= scores[s.column]["correct"] & ~scores[s.column]["correct_any_iterate"]
    assert found["silent success"]["value"] == pytest.approx(100 * silent.float().mean().item())
    model = run.model(sm_um).eval()
    images = (x.float() / 255 if x.dtype == torch.uint8 else x.float()).requires_grad_(True)
    logits = model(images)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1), reduction="sum"), images)
    zero = 100 * (grad.flatten(1) == 0).all(1).float().mean().item()
    assert found["unavailable gradients"]["value"] == pytest.approx(zero)
    # the rule of the verdict: sound only where nothing fired and the worst case is within chance of PGD-20
    breaks, spares = int((pgd20 & ~every).sum()), int((~pgd20 & every).sum())
    beyond = breaks > 0 and binomtest(breaks, breaks + spares, 0.5, alternative="greater").pvalue < 0.025
    fired = [k for k, i in found.items() if i["fired"]]
    assert (level == "sound") == (not fired and not beyond), (level, fired, beyond)
    assert sentence.startswith({"sound": "sound", "incomplete": "the evaluation is incomplete",
                                "masked": "gradient masking"}[level])


def test_a_models_seeds_pool_with_squares_images_aligned():
    """Seeds pooled for the report's verdict: every paired count and the worst case are the sums over
    seeds, though Square scores only each seed's first images."""
    from reproduce.audits import discordant, worst_case
    from reproduce.masking import pooled

    g = torch.Generator().manual_seed(0)

    def seed():
        bits = {c: torch.rand(n, generator=g) < 0.5 for c, n in (("pgd20", 8), ("apgd_dlr", 8), ("square", 3))}
        return {c: {"correct": b, "correct_any_iterate": b & (torch.rand(len(b), generator=g) < 0.8), "n": len(b),
                    **({"zero_dlr_gradient": 2} if c == "apgd_dlr" else {})} for c, b in bits.items()}

    def counts(scores, column):  # by hand: images the column breaks that PGD-20 leaves right, and the reverse
        other = scores[column]["correct"]
        ref = scores["pgd20"]["correct"][:len(other)]
        return int((ref & ~other).sum()), int((~ref & other).sum())

    def right_under_all(scores):  # by hand: right under every column, Square on its first images
        k = len(scores["square"]["correct_any_iterate"])
        rest = scores["pgd20"]["correct_any_iterate"] & scores["apgd_dlr"]["correct_any_iterate"]
        return int((rest[:k] & scores["square"]["correct_any_iterate"]).sum() + rest[k:].sum())

    seeds = [seed(), seed()]
    both = pooled(seeds)
    for column in ("apgd_dlr", "square"):
        assert discordant(both["pgd20"]["correct"], both[column]["correct"]) == tuple(
            map(sum, zip(*(counts(s, column) for s in seeds))))
    assert int(worst_case(both).sum()) == sum(right_under_all(s) for s in seeds)
    assert both["square"]["n"] == 6 and both["pgd20"]["n"] == 16 and both["apgd_dlr"]["zero_dlr_gradient"] == 4


def test_the_reports_verdict_on_scores_whose_answer_is_known():
    """`masking.verdicts` on per-image scores built so the answer is known: targeted APGD breaking 20 of 100
    images CE-PGD-20 leaves right (p ~ 1e-6) and 2% of images without a gradient is one masking sign (the
    gradients) beside an incomplete attack: incomplete, quoting the worst case; Square beating every gradient
    attack by 30 more images is a second, independent sign: masked; the same scores without either: sound."""
    from reproduce import masking

    n, profile = 100, get_profile("smoke")
    right = torch.arange(n) < 60  # 60 images right under every gradient attack, the same ones
    columns = ["fgsm", "bim7", "pgd7", "pgd20", "pgd20x20", "mim40", "aa", "pgd20_cw", "apgd_dlr", "apgd_t"]

    def scores(apgd_t_breaks=0, square_breaks=0):
        out = {c: {"correct": right.clone(), "correct_any_iterate": right.clone(), "n": n} for c in columns}
        every = torch.ones(n, dtype=torch.bool)
        out["clean"] = {"correct": every, "correct_any_iterate": every, "n": n}
        out["apgd_t"]["correct"][:apgd_t_breaks] = False
        out["apgd_t"]["correct_any_iterate"][:apgd_t_breaks] = False
        square = out["apgd_t"]["correct"].clone()  # Square breaks what APGD-T breaks, and more
        square[60 - square_breaks:60] = False
        out["square"] = {"correct": square, "correct_any_iterate": square, "n": n}
        return out

    extras = pd.DataFrame([{"model": m, "transfer": float("nan"), "white_20pgd": 60.0} for m in "ABC"])
    found = masking.verdicts({"A": [(scores(apgd_t_breaks=20), [False, 2.0])],
                              "B": [(scores(apgd_t_breaks=20, square_breaks=30), [False, 2.0])],
                              "C": [(scores(), [False, 0.0])]}, extras, profile)
    fired = {m: sorted(k for k, i in f[2].items() if i["fired"]) for m, f in found.items()}
    assert fired["A"] == ["scale-invariant loss beats CE", "unavailable gradients"]
    assert fired["B"] == ["Square beats the others", "gradient-free beats gradients", "scale-invariant loss beats CE",
                          "unavailable gradients"]  # Square at 10% against APGD-T's 40%: AutoAttack's check too
    assert fired["C"] == []
    assert [found[m][0] for m in "ABC"] == ["incomplete", "masked", "sound"]
    assert "quote the worst case, 40.0%" in found["A"][1]  # 60 right, 20 broken by APGD-T
    assert "quote the worst case, 10.0%" in found["B"][1]  # and 30 more by Square
