"""The audit's validation table: models whose answer is known, each audited, with the precision and recall
of "masked" over the table (docs/audit.md shows the table this script printed).

    python scripts/validate_audit.py --runs runs --data data --profile smoke --dataset fashion-mnist \
        [--out audit_validation.md]

Two kinds of model: the built controls of `reproduce.controls` (a small network on synthetic images, plain
and behind each way a model hides its gradients: `audit --self-test`), and models of a finished run's store
whose answer the literature gives: MMC and PCL without adversarial training mask (their PGD accuracy does
not survive AutoAttack), the adversarially trained ones (SM-AT, AAML-AT, SM-TRADES, SM-MART) and the
undefended SM-UM are honest. A store model is audited on the profile's test images with the store's caches
(what notebooks 03 and 07 computed is read, not computed again); one is timed without them.
"""
from __future__ import annotations

import argparse
import time

from reproduce import audit, start
from reproduce.controls import CONTROLS, self_test
from reproduce.protocol import BEYOND, TABLE1

TRAINED = {"MMC-UM": True, "PCL-UM": True, "SM-UM": False, "SM-AT": False, "AAML-AT": False, "SM-TRADES": False,
           "SM-MART": False}  # label: masks (from the literature)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--data", default="data")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--time", default="SM-AT", help="the store model timed without the store's caches")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args()

    rows = []
    for r in self_test():
        rows.append(dict(model=f"control: {r['control']}", masks=r["masked"], verdict=r["verdict"],
                         fired=r["fired"], clean=r["clean"], pgd20=r["pgd20"], worst=r["worst"]))
    run = start(args.profile, args.dataset, runs_dir=args.runs, data_dir=args.data, quiet=True)
    x, y = run.test_images()
    experiments = {e.label: e for e in TABLE1.models(run) + BEYOND.models(run)}
    timed = None
    for label, masks in TRAINED.items():
        exp = experiments[label]
        if not run.finished(exp):
            print(f"{label}: not trained in {args.runs}; left out")
            continue
        model = run.model(exp)
        if label == args.time:
            began = time.perf_counter()
            audit(model, x, y, profile=run.profile, key=exp.key, device=run.device)
            timed = (label, time.perf_counter() - began)
        result = audit(model, x, y, profile=run.profile, experiment=exp, store=run.store, device=run.device)
        fired = [k for k, i in result.indicators.items() if i["fired"]]
        rows.append(dict(model=label, masks=masks, verdict=result.verdict, fired=fired,
                         clean=result.columns["clean"]["accuracy"], pgd20=result.columns["pgd20"]["accuracy"],
                         worst=result.columns["worst"]["accuracy"]))
        print(f"{label}: {result.verdict}; fired: {', '.join(fired) or 'none'}", flush=True)

    called = [r for r in rows if r["verdict"] == "masked"]
    masking = [r for r in rows if r["masks"]]
    caught = [r for r in called if r["masks"]]
    lines = ["| model | masks (known) | verdict | indicators that fired | clean | CE-PGD-20 | worst case |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {'yes' if r['masks'] else 'no'} | {r['verdict']} | {', '.join(r['fired']) or 'none'} "
              f"| {r['clean']:.1f} | {r['pgd20']:.1f} | {r['worst']:.1f} |" for r in rows]
    lines += ["", f"{len(rows)} models ({len(CONTROLS)} built controls). \"masked\": precision "
                  f"{len(caught)}/{len(called)}, recall {len(caught)}/{len(masking)}."]
    if timed:
        lines.append(f"The audit of {timed[0]} on {len(y)} test images without the store's caches took "
                     f"{timed[1]:.0f} s.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
