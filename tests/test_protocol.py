"""The tables are defined once, in protocol.py: every table reads its columns there, and a column
added there is computed alone while the others come from the cache."""
from dataclasses import replace

import pandas as pd

from reproduce import evaluation, protocol, tables
from reproduce.attacks import AttackSpec
from reproduce.config import get_profile
from reproduce.data import load_dataset
from reproduce.grid import table1_experiments
from reproduce.store import RunStore
from reproduce.training import train


def test_a_new_column_is_computed_alone_and_shows_no_paper_number(tmp_path, cifar_root, monkeypatch):
    prof = get_profile("smoke", width=4, epochs=1, train_limit=64, val_limit=32, test_limit=24, restarts=2,
                       mim_steps=3, autoattack_steps=2)
    data = load_dataset("cifar10", cifar_root, test_limit=24)
    store = RunStore(tmp_path / "runs")
    sm_um = next(e for e in table1_experiments(prof, "cifar10") if e.label == "SM-UM")
    train(sm_um, store, data=data, device="cpu", progress=False)
    before, _ = tables.table1(prof, "cifar10", data, store, device="cpu", progress=False)

    computed = []
    real = evaluation.robust_scores

    def counting(model, x, y, spec, **kw):
        computed.append("clean" if spec is None else spec.column)
        return real(model, x, y, spec, **kw)

    monkeypatch.setattr(evaluation, "robust_scores", counting)
    dummy = protocol.Column("fgsm4", "FGSM 4/255", lambda p: AttackSpec("fgsm", eps=4 / 255, label="fgsm4"),
                            in_paper=False)
    table = replace(protocol.TABLE1, columns=protocol.TABLE1.columns + (dummy,))
    monkeypatch.setattr(tables, "TABLE1", table)
    monkeypatch.setitem(tables.TABLES, "table1", table)
    after, _ = tables.table1(prof, "cifar10", data, store, device="cpu", progress=False)

    assert computed == ["fgsm4"]  # one model trained, one new column: nothing else recomputed
    old, new = tables.wide(before), tables.wide(after)
    assert list(new.columns) == list(old.columns) + ["fgsm4"]
    pd.testing.assert_frame_equal(new[old.columns], old)
    assert not pd.isna(new.loc["SM-UM", "fgsm4"]) and new.drop(index="SM-UM")["fgsm4"].isna().all()
    md = tables.write_table(after, "table1", tmp_path / "out", "cifar10")
    assert "FGSM 4/255" in md.splitlines()[4] and f"{new.loc['SM-UM', 'fgsm4']:.2f} ±" in md
    sm_line = next(line for line in md.splitlines() if line.startswith("| SM-UM"))
    assert sm_line.rstrip(" |").endswith("/ -")  # the paper has no such column


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
