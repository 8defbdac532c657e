"""Is Table I's robustness real? Attacks built for the heads beside the paper's cross-entropy attacks.

Cosine and normalised heads with a small logit scale (AAML's s) can flatten or saturate the gradient of
cross-entropy, so CE attacks may overstate their robustness. For every Table I model the masking report
puts beside Table I's CE-PGD-20: PGD-20 on the CW margin, APGD on the DLR loss, targeted APGD, the
gradient-free Square attack (on the first test images), the per-example worst case over every attack
(Table I's and these), the share of test images whose CE input gradient is zero, the end of the eps
curve, and the strongest transfer attack (Table III). Each model gets the audit's verdict (sound,
incomplete or masked, with its reasons), computed by the audit's own code on what the report measured.

The logit-scale sweep asks the same question another way: CE-PGD-20 with the attacker's temperature
(logits multiplied by T before the loss); a robust model's accuracy does not depend on T.
Every number is cached per (model, column) like Table I's, on the same test images. The rules, the
worst case and the zero-gradient count are the audit's (`reproduce.audits`), which asks the same question
of any model.
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch

from . import audits, figures
from .audits import MIN_GAP, ZERO_GRADIENT
from .evaluation import cached_value, score_columns
from .indicators import unavailable_gradients
from .protocol import EPS_END, LOGIT_SCALES, MASKING_COLUMNS, PGD20_COLUMN, SCALE_SWEEP_MODELS, TABLE1, TABLE3, Table
from .stats import wilson_interval
from .tables import cell, compute, summarise

WORST = "worst"  # the column of the per-example worst case
REPORT_COLUMNS = ("pgd20", "pgd20_cw", "apgd_dlr", "apgd_t", "square", WORST)
TITLES = {"clean": "Clean", "pgd20": "CE-PGD-20", "pgd20_cw": "CW-PGD-20", "apgd_dlr": "APGD-DLR",
          "apgd_t": "APGD-T", "square": "Square", WORST: "worst case", "pgd20_on_square": "CE-PGD-20 (Square's images)",
          "zero_gradient": "zero CE gradient (%)", "zero_dlr_gradient": "zero DLR gradient (%)",
          "eps_end": "PGD-7 at eps 128/255", "transfer": "best transfer 20PGD",
          "white_20pgd": "white-box 20PGD"}


def _pct(bits: torch.Tensor) -> float:
    return 100.0 * bits.float().mean().item() if len(bits) else float("nan")


def report_cells(run, table: Table = TABLE1) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(cells, extras, verdicts): the report's accuracies as table cells (row = model, a column per attack
    and the worst case, one line per seed); per model and seed, the numbers that are not accuracies of one
    attack (zero-gradient share, eps curve's end, transfer) with Square's images' CE-PGD-20; and each
    model's verdict (`verdicts`). `table`: a white-box table with Table I's columns whose models to report
    (transfer: Table I's only, from Table III)."""
    x, y = run.test_images()
    specs = report_specs(run.profile)
    transfer = _best_transfer(run) if table is TABLE1 else {}
    end = EPS_END.spec(run.profile).column  # an attack at eps 128/255: a check, not part of the worst case
    records, extras, per_model = [], [], {}
    for exp in table.models(run):
        if not run.finished(exp):
            continue
        model = run.model(exp)
        scores = score_columns(model, x, y, specs, experiment=exp, store=run.store, progress=run.progress,
                               per_example=True)
        unavailable = cached_value(run.store, exp, x, "unavailable_gradients",
                                   lambda m=model: list(unavailable_gradients(m, x, y)))
        kept = {c: v for c, v in scores.items() if c != end}
        per_model.setdefault(exp.label, []).append((kept, unavailable))
        worst = audits.worst_case(kept)
        square_n = scores["square"]["n"]
        for column in REPORT_COLUMNS:
            value = _pct(worst) if column == WORST else scores[column]["final"]
            records.append(cell(exp.label, column, exp.seed, value, scores[column]["n"] if column != WORST else len(y),
                                _pct(worst) if column == WORST else scores[column]["any_iterate"]))
        records.append(cell(exp.label, "pgd20_on_square", exp.seed, _pct(scores["pgd20"]["correct"][:square_n]),
                            square_n))
        extras.append({"model": exp.label, "seed": exp.seed, "clean": scores["clean"]["final"],
                       "zero_gradient": cached_value(run.store, exp, x, "zero_gradient",
                                                     lambda m=model: audits.zero_gradient_share(m, x, y)),
                       "zero_dlr_gradient": audits.zero_dlr_gradient_share(scores),
                       "eps_end": scores[end]["final"], "transfer": transfer.get((exp.label, exp.seed)),
                       "white_20pgd": scores["pgd20x20"]["final"]})
    extras = pd.DataFrame(extras)
    return pd.DataFrame(records), extras, verdicts(per_model, extras, run.profile)


def report_specs(profile) -> list:
    """Every attack the report reads on a model: Table I's, the report's own and the eps curve's end
    (what `executors.evaluate_grid` hands to workers ahead of the report)."""
    return TABLE1.specs(profile) + [c.spec(profile) for c in (*MASKING_COLUMNS, EPS_END)]


def _best_transfer(run) -> dict:
    """{(target, seed): the lowest accuracy any surrogate's 20PGD images leave it} (Table III's cells)."""
    if not all(run.finished(e) for e in TABLE3.surrogates(run)):
        return {}
    cells, _ = compute(run, TABLE3)
    cells = cells.dropna(subset=["accuracy"])
    return {(r, s): float(g["accuracy"].min()) for (r, s), g in cells.groupby(["row", "seed"])}


def pooled(seeds: list) -> dict:
    """One model's per-example scores over its seeds as one set of images: each column's bits laid end to
    end, the first images of every seed (those Square scores) ahead of the rest, so that Square's bits stay
    aligned with the other columns' (`audits.discordant` compares the first len(Square) images)."""
    k = seeds[0]["square"]["n"]
    out = {}
    for column in seeds[0]:
        out[column] = {"n": sum(s[column]["n"] for s in seeds)}
        for bits in ("correct", "correct_any_iterate"):
            parts = [s[column][bits] for s in seeds]
            out[column][bits] = torch.cat([p[:k] for p in parts] + [p[k:] for p in parts])
        dlr = [s[column].get("zero_dlr_gradient") for s in seeds]
        out[column]["zero_dlr_gradient"] = None if None in dlr else sum(dlr)
    return out


def verdicts(per_model: dict, extras: pd.DataFrame, profile) -> dict:
    """{model: (verdict, its sentence, indicators)}, the audit's (`audits.attack_indicators`, `audits.verdict`)
    on what the report measured, seeds pooled: every indicator the attacks' per-image scores give, the
    unavailable gradients (`indicators.unavailable_gradients`), and the transfer attack as a gradient-free
    one (Table III has no per-image record: it counts when its Wilson interval lies wholly below white-box
    20PGD's). The model-side checks of the audit (random noise, unstable predictions, the unbounded attack,
    AutoAttack's checks of the model) are `python -m reproduce audit`'s."""
    iterative = [s.column for s in TABLE1.specs(profile) if s.name in ("bim", "pgd", "mim")]
    out = {}
    for model, seeds in per_model.items():
        scores = pooled([s for s, _ in seeds])
        gradient = [c for c in scores if c not in ("clean", "square")]
        found, _ = audits.attack_indicators(scores, gradient, iterative,
                                            {"square": scores["square"]["correct_any_iterate"]})
        rows = extras[extras["model"] == model]
        transfer, white = rows["transfer"].astype(float).mean(), rows["white_20pgd"].mean()
        n = len(scores["pgd20"]["correct"])
        if pd.notna(transfer) and wilson_interval(transfer, n)[1] < wilson_interval(white, n)[0]:
            free = found["gradient-free beats gradients"]
            free.update(fired=True, why=f"transfer 20PGD {transfer:.1f}% < white-box 20PGD {white:.1f}% (Wilson "
                                        f"intervals); {free['why']}")
        found["unavailable gradients"] = audits.unavailable_indicator(any(u[0] for _, u in seeds),
                                                                     sum(u[1] for _, u in seeds) / len(seeds))
        every = audits.worst_case(scores)
        worst = audits.accuracy_interval(100.0 * every.float().mean().item(), n)
        level, sentence = audits.verdict(found, audits.discordant(scores["pgd20"]["correct"], every), n, worst)
        out[model] = (level, sentence, found)
    return out


def masking_report(run, table: Table = TABLE1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The masking report of every trained model of `table` (Table I's by default): writes
    masking_report.csv (a row per model: each accuracy, the extras, the verdict, its sentence and indicators),
    masking_report_intervals.csv (each cell's mean and 95% interval), masking_report.md and
    fig_masking_report.png (another table's: masking_report_<name>.*); returns (the wide table, its cells)."""
    cells, extras, found = report_cells(run, table)
    if cells.empty:
        raise RuntimeError(f"no {table.name} model is trained: run notebook {table.trained_in} (or `python -m "
                           f"reproduce grid --table {table.name}`) first")
    summary = summarise(cells)
    wide = summary.pivot(index="row", columns="column", values="mean").reindex(
        index=pd.unique(cells["row"]), columns=list(REPORT_COLUMNS) + ["pgd20_on_square"])
    more = extras.drop(columns="seed").groupby("model", sort=False).mean()
    wide = wide.join(more[["clean", "zero_gradient", "zero_dlr_gradient", "eps_end", "transfer", "white_20pgd"]])
    wide["verdict"] = [found[m][0] for m in wide.index]
    wide["flagged"] = wide["verdict"] != "sound"
    wide["reason"] = [found[m][1] for m in wide.index]
    wide["indicators"] = ["; ".join(k for k, i in found[m][2].items() if i["fired"]) for m in wide.index]
    wide.index.name = "model"
    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = "masking_report" if table is TABLE1 else f"masking_report_{table.name}"
    wide.to_csv(out / f"{stem}.csv", float_format="%.2f")
    summary.rename(columns={"row": "model"}).to_csv(out / f"{stem}_intervals.csv", index=False, float_format="%.2f")
    (out / f"{stem}.md").write_text(markdown(wide, summary, run, table))
    figures.masking_report(summary[summary["column"].isin(REPORT_COLUMNS)], TITLES, out / f"fig_{stem}.png",
                           profile=run.profile, verdicts=dict(wide["verdict"]))
    return wide, cells


def markdown(wide: pd.DataFrame, summary: pd.DataFrame, run, table: Table = TABLE1) -> str:
    """The report as Markdown: accuracy ± half its interval per attack, then the extras and the flag."""
    s = summary.set_index(["row", "column"])
    prof = run.profile
    cols = ["clean"] + list(REPORT_COLUMNS)
    whose = "Table I's models" if table is TABLE1 else f"the models of {table.title.split(':')[0]}"
    lines = [f"### Gradient-masking report: {whose} under attacks built for their heads", "",
             "| model | " + " | ".join(TITLES[c] for c in cols) + " | zero CE gradient | zero DLR gradient | "
             "PGD-7 at 128/255 | best transfer / white-box 20PGD | verdict |", "|" + "---|" * (len(cols) + 6)]
    for model, row in wide.iterrows():
        values = []
        for c in cols:
            if c == "clean":
                values.append(f"{row['clean']:.1f}")
                continue
            v = s.loc[(model, c)]
            values.append(f"{v['mean']:.1f} ±{(v['ci_high'] - v['ci_low']) / 2:.1f}")
        transfer = "-" if pd.isna(row["transfer"]) else f"{row['transfer']:.1f}"
        flag = f"**{row['verdict']}**: {row['reason']}" if row["flagged"] else "sound"
        dlr = "-" if pd.isna(row["zero_dlr_gradient"]) else f"{row['zero_dlr_gradient']:.1f}%"
        lines.append(f"| {model} | " + " | ".join(values) + f" | {row['zero_gradient']:.1f}% | {dlr} | "
                     f"{row['eps_end']:.1f} | {transfer} / {row['white_20pgd']:.1f} | {flag} |")
    n, n_square = int(s["n_images"].max()), int(summary.loc[summary["column"] == "square", "n_images"].max())
    lines += ["", f"- {n} test images per model (Square: the first {n_square}, {prof.square_queries} queries); "
              f"L-inf eps 8/255. CE-PGD-20 is Table I's column (final iterate); CW-PGD-20 ascends the margin "
              f"max_j z_j - z_y (20 steps of 2/255); APGD-DLR and APGD-T ({prof.apgd_targets} target classes) run "
              f"{prof.apgd_steps} iterations, APGD-T and Square through AutoAttack's reference code (pyautoattack).",
              "- worst case: an image counts only if it survives every attack of Table I and of this report "
              "(each at its any-iterate score).",
              "- ± is half the 95% interval (Wilson with one seed). The verdict is the audit's (`python -m "
              "reproduce audit`, docs/audit.md), computed by the same code on what this report measured, seeds "
              "pooled. It says masked where signs of two independent kinds agree; incomplete where any sign fired "
              f"(an attack built for the head at least {MIN_GAP:g} points below CE-PGD-20 beyond chance, image by "
              "image; Square or a transfer attack beating every gradient attack; silent success; many zero DLR "
              "gradients; Square beating the others; FGSM or restarts beating PGD-20; a zero CE input gradient) or "
              "the per-image worst case lies below CE-PGD-20 beyond chance: then the worst case is the number to "
              "quote; sound otherwise. The audit adds the checks that need the model itself (random noise, "
              "unstable predictions, an unbounded attack, AutoAttack's checks of the model).",
              f"- zero CE gradient: the share of clean test images whose CE input gradient is zero (every entry below "
              f"{ZERO_GRADIENT:g}), where CE attacks cannot move.",
              "- zero DLR gradient: the share of test images on which AutoAttack's own check (pyautoattack's "
              "`check_zero_gradients`) found a DLR input gradient of exactly zero, at APGD-DLR's or APGD-T's "
              "starting point (the larger; '-': a cache written before the check was kept). DLR is flat wherever the "
              "true class is not among the top logits it compares, so a few such images are expected; many mean "
              "the DLR attacks could not move there."]
    if prof.name == "smoke":
        lines.append("- SMOKE PROFILE: these numbers test the pipeline; they do not reproduce the paper.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the attacker's temperature

def logit_scale_sweep(run) -> pd.DataFrame:
    """CE-PGD-20 accuracy of the SM and AAML models of Table I when the attacker multiplies the logits by
    each of LOGIT_SCALES before the loss (T = 1 is Table I's column). Writes logit_scale_sweep.csv (a line
    per model and T, with the 95% interval), fig_logit_scale.png; returns the table with a `depends`
    column: True for a model whose accuracy at some T lies wholly below its accuracy at another."""
    x, y = run.test_images()
    base = PGD20_COLUMN.spec(run.profile)
    specs = {t: base if t == 1.0 else _scaled(base, t) for t in LOGIT_SCALES}
    rows = []
    for exp in TABLE1.models(run):
        if exp.loss not in SCALE_SWEEP_MODELS or not run.finished(exp):
            continue
        scores = score_columns(run.model(exp), x, y, list(specs.values()), experiment=exp, store=run.store,
                               progress=run.progress)
        rows += [dict(cell(exp.label, f"{t:g}", exp.seed, scores[s.column]["final"], len(y)), loss=exp.loss,
                      defense=exp.defense) for t, s in specs.items()]
    cells = pd.DataFrame(rows)
    summary = summarise(cells, ["row", "loss", "defense", "column"]).rename(
        columns={"row": "model", "column": "logit_scale", "mean": "accuracy", "n_images": "n"})
    summary["logit_scale"] = summary["logit_scale"].astype(float)
    depends = {m: g["ci_high"].min() < g["ci_low"].max() for m, g in summary.groupby("model")}
    summary["depends"] = summary["model"].map(depends)
    summary.drop(columns="sd").to_csv(run.out_dir / "logit_scale_sweep.csv", index=False, float_format="%.2f")
    figures.curve_panels(summary, "logit_scale", "defense", "model", run.out_dir / "fig_logit_scale.png", log_x=True,
                         x_label="attacker's logit scale T (CE of T x logits)", profile=run.profile,
                         title=f"CE-PGD-20 accuracy against the attacker's logit scale ({run.dataset}; "
                               "band: 95% interval)")
    return summary


def _scaled(spec, t: float):
    return replace(spec, logit_scale=t, label=f"pgd20_T{t:g}")


def worst_case_cells(report: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """A white-box table's cells (Table I's, or another with its columns) with every attack column replaced
    by the per-example worst case of its model and seed (clean kept): the cells on which claims.table1 (or
    claims.beyond) restates each claim under the strongest attack."""
    w = report[report["column"] == WORST]
    worst = {(r, s): a for r, s, a in zip(w["row"], w["seed"], w["accuracy"])}
    out = cells.copy()
    attack = out["column"] != "clean"
    out.loc[attack, "accuracy"] = [worst.get((r, s), float("nan")) for r, s in zip(out.loc[attack, "row"],
                                                                                    out.loc[attack, "seed"])]
    out.loc[attack, "any_iterate"] = out.loc[attack, "accuracy"]
    return out

