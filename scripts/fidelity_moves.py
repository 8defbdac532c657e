"""Which Table I cells each fidelity choice moves, on one finished run (a one-shot measurement).

    python scripts/fidelity_moves.py --runs runs --data data --profile smoke --dataset fashion-mnist \
        [--before old_table1_white_box.csv]

Reads the run's Table I from its store (computing nothing that is cached), then, one choice at a time:
- scoring: the same models and attack runs scored at the final iterate (the tables) and at any iterate;
- AAML's crafting logits: AAML-AT / AAML-ALP trained again with craft_logits="prediction";
- the checkpoint rule: each model whose rule is not best-clean-validation, kept at its best clean
  validation epoch instead (trained again only where that epoch differs from the one kept);
- with --before, a Table I CSV of an earlier version of the code on the same machine: every cell.
The variants are ordinary experiments with their own hashes, so they live in the same store.
"""
from __future__ import annotations

import argparse
import dataclasses

import pandas as pd

from reproduce import TABLE1, start
from reproduce.evaluation import evaluate_white_box
from reproduce.executors import train_all
from reproduce.protocol import table1_experiments
from reproduce.tables import compute, wide


def _rows(run, experiments):
    x, y = run.test_images()
    rows = {}
    for exp in experiments:
        ev = evaluate_white_box(exp, run.model(exp), x, y, TABLE1.specs(run.profile), run.store, progress=False,
                                with_checks=False)
        rows[exp.label] = ev["row"]
    return pd.DataFrame(rows).T[TABLE1.keys]


def _moves(title: str, before: pd.DataFrame, after: pd.DataFrame) -> str:
    diff = (after - before.reindex_like(after)).round(2)
    moved = [(r, c) for r in diff.index for c in diff.columns if abs(diff.loc[r, c]) >= 0.005]
    lines = [f"### {title}", "", f"{len(moved)} of {diff.size} cells moved; mean |move| "
             f"{diff.abs().stack().mean():.2f} points, largest {diff.abs().stack().max():.2f}.", ""]
    for r in diff.index:
        cells = [f"{c} {before.loc[r, c]:.2f} -> {after.loc[r, c]:.2f}" for c in diff.columns if (r, c) in moved]
        if cells:
            lines.append(f"- {r}: " + ", ".join(cells))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default="data")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--before", default=None, help="Table I CSV (table1_white_box.csv) of an earlier version")
    args = ap.parse_args()

    run = start(args.profile, args.dataset, runs_dir=args.runs, data_dir=args.data, progress=False)
    store = run.store
    cells, _ = compute(run, TABLE1)
    after = wide(cells)[TABLE1.keys]
    any_iterate = wide(cells.assign(accuracy=cells["any_iterate"]))[TABLE1.keys]
    out = [_moves("Scoring: any iterate (before) -> final iterate (after)", any_iterate, after)]

    exps = {e.label: e for e in table1_experiments(run) if e.seed == 0}
    crafted = [dataclasses.replace(exps[label], craft_logits="prediction") for label in ("AAML-AT", "AAML-ALP")]
    train_all(run, crafted)
    out.append(_moves("AAML crafting: prediction logits (before) -> margin logits (after)",
                      _rows(run, crafted), after.loc[["AAML-AT", "AAML-ALP"]]))

    variants = []
    for exp in exps.values():
        if exp.keep == "best_clean_val":
            continue
        metrics = store.metrics(exp)
        best_clean = max(range(len(metrics)), key=lambda i: (metrics[i]["val_acc"], -i)) + 1
        if best_clean != store.result(exp)["kept_epoch"]:
            variants.append(dataclasses.replace(exp, keep="best_clean_val"))
    train_all(run, variants)
    labels = [v.label for v in variants]
    kept = _rows(run, variants) if variants else after.iloc[:0]
    out.append(_moves("Checkpoint: best clean validation epoch (before) -> the authors' rule (after); models "
                      f"whose two epochs differ: {', '.join(labels) or 'none'}", kept, after.loc[labels]))

    if args.before:
        before = pd.read_csv(args.before, index_col=0)[TABLE1.keys]
        out.append(_moves(f"Every change: {args.before} (before) -> this run (after)", before, after))
    print("\n".join(out))


if __name__ == "__main__":
    main()
