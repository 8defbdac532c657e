"""Every number a document quotes from the committed reference run is read from the file it quotes: the
tables and claims it copies, row by row; the run's commit, machine and time from its manifest; the audit's
verdicts from audit.md; the figures of its prose from the CSVs. The next regeneration of results/ cannot
leave a stale sentence behind without this failing."""
import json
import re

import pandas as pd
import pytest

from reproduce.runner import REPO

RESULTS = REPO / "results" / "fashion-mnist-smoke"
SEEDS = REPO / "results" / "fashion-mnist-smoke-seeds3"
README, RESULTS_DOC = REPO / "README.md", REPO / "docs" / "results.md"
IMPLEMENTATION = REPO / "docs" / "implementation.md"
DOCUMENTS = [README, RESULTS_DOC, IMPLEMENTATION, REPO / "docs" / "usage.md", REPO / "docs" / "abcl.md"]
manifest = json.loads((RESULTS / "manifest.json").read_text())


def tables_in(text: str) -> list[tuple[str, list[str]]]:
    """(header line, body lines) of every Markdown table in `text`."""
    out, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]) and \
                (i == 0 or not lines[i - 1].startswith("|")):
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                body.append(row)
            out.append((line, body))
    return out


def result_tables() -> dict:
    """{header line: every body line under that header} over the Markdown of results/."""
    found = {}
    for path in REPO.glob("results/**/*.md"):
        for header, body in tables_in(path.read_text()):
            found.setdefault(header, set()).update(body)
    return found


def test_every_table_a_document_copies_from_results_is_the_files_row_for_row():
    sources, copied = result_tables(), 0
    for doc in DOCUMENTS:
        for header, body in tables_in(doc.read_text()):
            if header in sources:
                stale = [row for row in body if row not in sources[header]]
                assert not stale, f"{doc.name}: rows not in results/ (regenerate the document's table): {stale[:2]}"
                copied += len(body)
    assert copied >= 30  # Table I, the masking report and the geometry table of docs/results.md at least


def test_every_claim_a_document_quotes_is_in_a_claims_file():
    claims = "\n".join(p.read_text() for p in REPO.glob("results/**/claims_*.md"))
    quoted = 0
    for doc in DOCUMENTS:
        for line in doc.read_text().splitlines():
            if line.startswith("- ") and ": **" in line and line.rstrip().endswith("."):
                assert line in claims, f"{doc.name}: a claim that no claims file of results/ says: {line[:120]}"
                quoted += 1
    assert quoted >= 5


def test_the_reference_run_is_named_as_its_manifest_records_it():
    text = " ".join(RESULTS_DOC.read_text().split())
    env = manifest["environment"]
    line = re.search(r"\*\*Fashion-MNIST, smoke profile, commit `([0-9a-f]{7,40})`, (.*?)\*\*", text, re.S)
    assert line, "docs/results.md names the reference run in one bold line"
    commit, machine = line.group(1), " ".join(line.group(2).split())
    assert manifest["commit"].startswith(commit)
    assert env["device_name"].split(" (")[0] in machine
    threads = "one thread per notebook" if env["threads"] == 1 else f"{env['threads']} threads per notebook"
    assert threads in machine and f"{ {1: 'one', 2: 'two'}[manifest['notebooks_at_once']] } notebook" in machine
    assert f"Python {env['python']}" in machine and f"torch {env['torch'].split('+')[0]}" in machine
    seconds = re.search(r"the notebooks ran in (\d+) s", text)
    assert seconds and int(seconds.group(1)) == round(manifest["wall_seconds"])
    assert f"clone of {manifest['commit'][:7]}" in text


def test_the_readme_table_is_the_reference_table_one():
    ours = pd.read_csv(RESULTS / "table1_white_box.csv", index_col=0)
    paper = pd.read_csv(REPO / "reproduce" / "paper" / "table1_white_box.csv", index_col=0)
    titles = {"Clean": "clean", "FGSM": "fgsm", "PGD (20)": "pgd20"}
    (header, body), = [t for t in tables_in(README.read_text()) if t[0].startswith("| model | Clean")]
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    for row in body:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for title, cell in zip(columns, cells[1:]):
            key = titles.get(title, "pgd20x20" if title.startswith("20PGD") else None)
            mine, theirs = (float(v) for v in cell.split(" / "))
            expected = (round(ours.loc[cells[0], key], 2), round(paper.loc[cells[0], key], 2))
            assert (mine, theirs) == expected, (row, title)


def test_the_audit_the_readme_shows_is_the_committed_audit():
    audit = (RESULTS / "audit_AAML-UM" / "audit.md").read_text()
    block = re.search(r"```\n(### Robustness audit.*?)```", README.read_text(), re.S).group(1)
    for line in block.splitlines():
        assert line in audit, line
    assert "20PGD (20; 3 restarts)" in audit  # the title of the restarts it ran


def intervals(stem: str, folder=RESULTS) -> pd.DataFrame:
    df = pd.read_csv(folder / f"{stem}_intervals.csv", dtype={0: str})
    return df.rename(columns={df.columns[0]: "row"})


def test_the_scoring_move_the_implementation_quotes_is_the_committed_runs():
    """Final-iterate against any-iterate scoring, on the committed Table I (both are in its intervals file)."""
    t = intervals("table1_white_box")
    moved = (t["mean"] - t["any_iterate"]).round(2)
    moved = moved[moved.abs() >= 0.005]
    sentence = re.search(r"moved (\d+) of (\d+) cells, by ([\d.]+) points on average \(at most ([\d.]+)\)",
                         " ".join(IMPLEMENTATION.read_text().split()))
    assert sentence, "docs/implementation.md quotes the scoring move"
    assert (int(sentence.group(1)), int(sentence.group(2))) == (len(moved), len(t))
    assert float(sentence.group(3)) == round(moved.abs().sum() / len(t), 2)
    assert float(sentence.group(4)) == round(moved.abs().max(), 2)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_no_document_calls_a_gap_beyond_chance_within_chance(doc):
    """The audit's words for APGD-T on AAML-UM are computed (`audits.compared`); a document that quotes them
    must not soften them."""
    audit = json.loads((RESULTS / "audit_AAML-UM" / "audit.json").read_text())
    why = audit["indicators"]["scale-invariant loss beats CE"]["why"]
    text = " ".join(doc.read_text().split())
    if "beyond chance" in why:
        assert "APGD-T within chance" not in text and "APGD-T 3.7 points" not in text.replace(why, "")


def prose(doc=RESULTS_DOC) -> str:
    return " ".join(doc.read_text().split())


TITLES = {"pgd20_cw": "CW-PGD-20", "apgd_dlr": "APGD-DLR", "apgd_t": "APGD-T"}


def test_the_masking_reports_prose_is_its_csv():
    report = pd.read_csv(RESULTS / "masking_report.csv", index_col=0)
    gaps = {(m, c): report.loc[m, "pgd20"] - report.loc[m, c] for m in report.index for c in TITLES}
    (model, column), gap = max(gaps.items(), key=lambda kv: kv[1])
    found = re.search(r"the largest loss to an attack built for the heads is (\S+?)'s ([\d.]+) points on (\S+?)[,.;]",
                      prose())
    assert found and found.groups() == (TITLES[column], f"{gap:.1f}", model)
    assert list(report["flagged"]) == list(report["verdict"] != "sound")
    for verdict in ("masked", "incomplete"):
        called = list(report.index[report["verdict"] == verdict])
        words = re.search(rf"verdicts on this run: .*?{verdict}: ([^;(]*?)[;(]", prose()).group(1).strip()
        assert words == (", ".join(called) if called else "none"), verdict
    assert f"the other {int((report['verdict'] == 'sound').sum())} are sound" in prose().replace("nine", "9")


def test_the_seeds_prose_is_the_seeds_table():
    t = intervals("table1_white_box", SEEDS)
    seeds = pd.read_csv(SEEDS / "table1_white_box_seeds.csv")
    worst = t.loc[t["sd"].idxmax()]
    text = prose()
    found = re.search(r"the standard deviation between seeds has a median of ([\d.]+) points \(largest ([\d.]+), "
                      r"(\S+) (\S+)\)", text)
    assert found and found.groups() == (f"{t['sd'].median():.1f}", f"{worst['sd']:.1f}", worst["row"], worst["column"])
    half = ((t["ci_high"] - t["ci_low"]) / 2).median()
    assert f"the 3-seed interval's median half-width is {half:.1f} points" in text
    zero = seeds[seeds["seed"] == 0].merge(t, left_on=["model", "column"], right_on=["row", "column"])
    inside = int(((zero["accuracy"] >= zero["ci_low"]) & (zero["accuracy"] <= zero["ci_high"])).sum())
    assert f"{inside} of the {len(t)} seed-0 cells lie inside their 3-seed interval" in text
    readme = " ".join(README.read_text().split())
    assert f"the median SD between the reference's three seeds is {t['sd'].median():.1f} points" in readme


def test_the_curves_prose_is_the_curves_csv():
    eps = pd.read_csv(RESULTS / "curve_eps.csv")
    end = eps[eps["eps"] == eps["eps"].max()]
    top = end.loc[end["accuracy"].idxmax()]
    assert f"the highest accuracy left at eps 128/255 is {top['accuracy']:.2f}% ({top['model']})" in prose()
    steps = pd.read_csv(RESULTS / "curve_iterations.csv").pivot(index="model", columns="steps", values="accuracy")
    gap = (steps[20] - steps[100]).abs().max()
    assert f"PGD-20 is within {gap:.1f} points of PGD-100 for the {len(steps)} models of the steps curve" in prose()


def test_the_logit_scale_prose_is_the_sweep():
    sweep = pd.read_csv(RESULTS / "logit_scale_sweep.csv")
    depends = sorted(sweep.loc[sweep["depends"], "model"].unique())
    words = re.search(r"models whose CE-PGD-20 accuracy depends on the attacker's logit scale: ([^.]*)\.", prose())
    assert words and words.group(1) == (", ".join(depends) if depends else "none")


def test_every_panel_of_the_reference_runs_2d_figure_is_a_trained_model():
    """Notebook 01's plane in the executed reference notebook: every panel beats 50% (chance is 10%), and the
    weakest is HT-SCE+AB, the panel tests/test_losses_training.py retrains at the plane's budget."""
    (notebook,) = (RESULTS / "notebooks").glob("01_*.ipynb")
    outputs = [o for cell in json.loads(notebook.read_text())["cells"] for o in cell.get("outputs", [])]
    (table,) = ["".join(o["data"]["text/plain"]) for o in outputs
                if "test accuracy (%)" in "".join(o.get("data", {}).get("text/plain", ""))]
    header, row = table.splitlines()
    accuracy = dict(zip(header.split(), map(float, row.split()[3:])))
    assert len(accuracy) == 8 and min(accuracy.values()) > 50.0, accuracy
    assert min(accuracy, key=accuracy.get) == "HT-SCE+AB"
