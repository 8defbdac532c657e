"""python -m reproduce COMMAND: a thin shell over the package.

  run     every notebook in order, headless (what `make reproduce` does)
  train   one experiment (prints where its run lives)
  grid    every experiment a table needs, skipping what the store has
  table1  Table I for some or all of its models, from the terminal (trains them first with --train)
  bench   speed of each lever against a plain baseline, measured in the same run
  plan    every experiment and evaluation a profile runs, with estimated device time
  export  a trained run as weights (safetensors), experiment, Table I row and model card
  evaluate  every Table I column on one model: a run or export of ours, or any torch.nn.Module file
  audit   is a model's robustness real? the paper's attacks beside attacks that do not trust its gradients
  models  every run of the store: label, dataset, profile, changed budgets, seed, status, folder
  compare did a run reproduce the reference? two runs' tables, cell by cell, within or beyond the seed spread
  set-repository  the repository's URL, for the Colab cells, badges and install line

The dataset and profile, where no flag names them: $DATASET (else cifar10) and $PROFILE (else colab in
Colab, quick with CUDA, smoke without), read by every command, notebook and `reproduce.start`.

examples:
  python -m reproduce run --profile smoke --dataset fashion-mnist
  python -m reproduce train --loss AAML --defense AT --profile smoke --dataset fashion-mnist
  python -m reproduce table1 --profile smoke --dataset fashion-mnist --only SM-UM AAML-UM --train
  python -m reproduce evaluate runs/fashion-mnist-smoke-AAML-AT-963f71ce02a5
  python -m reproduce export runs/fashion-mnist-smoke-AAML-AT-963f71ce02a5 exported/AAML-AT
  python -m reproduce models
  python -m reproduce compare figures/fashion-mnist-smoke results/fashion-mnist-smoke-seeds3
  python -m reproduce audit AAML-UM --profile smoke --dataset fashion-mnist --out audits/AAML-UM
"""
from __future__ import annotations

import argparse
import sys

from .config import OPTIMIZERS, parse_label, profile_help
from .data import DATASETS
from .defenses import OBJECTIVES, defense_name
from .losses import LOSSES, loss_name
from .protocol import TABLES


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are one line with the way to the options (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


def _argument(convert, what: str):
    """An argparse type from a function that raises ValueError with the choices in its message: argparse
    would print only "invalid <function> value"; this prints the message, choices included."""
    def parse(text):
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = what
    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, help="smoke | colab | quick | paper (default: $PROFILE, else "
                                                   "colab in Colab, quick with CUDA and smoke without)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="the dataset (default: $DATASET, else cifar10)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--runs", default=None, help="run store folder (default: $REPRODUCE_RUNS, else runs/ of the "
                                                "checkout)")
    p.add_argument("--data", default=None, help="dataset folder (default: $REPRODUCE_DATA, else data/ of the "
                                                "checkout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of every run, workers included (default: PyTorch's for this machine); "
                        "numbers on a CPU depend on it, and each run records it")
    p.add_argument("--objectives", default="authors", choices=OBJECTIVES,
                   help="AT / ALP objectives: as the authors' code computed the tables (default) or as the "
                        "paper's text describes them")


def _budget_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", action="append", metavar="FIELD=VALUE",
                   help="a budget of the profile to change, e.g. --budget epochs=5 --budget test_limit=2000 "
                        "(the fields, their types and each profile's values are listed below); outputs then go "
                        "to a folder of their own, figures/<dataset>-<profile>-budgets-<digest>")
    p.epilog = "budgets of --budget (type: each profile's value):\n" + profile_help()


def _check_threads(threads: int) -> None:
    import os

    cores = os.cpu_count() or 1
    if not 1 <= threads <= cores:
        raise ValueError(f"--threads {threads}: give 1 to {cores}, this machine's cores (more threads than cores "
                         "wait on each other and make every run many times slower)")


def _run(args):
    """The run context of the command line: profile (with its --budget changes), dataset, objectives,
    store, device and folders."""
    import torch

    from .context import start

    if args.threads is not None:
        _check_threads(args.threads)
        torch.set_num_threads(args.threads)
    return start(args.profile, args.dataset, objectives=args.objectives, device=args.device, runs_dir=args.runs,
                 data_dir=args.data, budgets=_key_values(getattr(args, "budget", None)), progress=not args.quiet,
                 quiet=True)


def _chosen(experiments, only, table: str) -> list:
    """The experiments whose label is in `only` (all of them without it); an unknown label is an error."""
    labels = {e.label for e in experiments}
    unknown = sorted(set(only or []) - labels)
    if unknown:
        raise ValueError(f"no {table} model {unknown}; they are {sorted(labels)}")
    return [e for e in experiments if not only or e.label in only]


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _key_values(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = _parse_value(v)
    return out


def cmd_train(args) -> int:
    from .evaluation import accuracy
    from .training import train

    run = _run(args)
    overrides = {k: v for k, v in dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                       train_limit=args.train_limit, optimizer=args.optimizer).items()
                 if v is not None}
    if args.defense_param:
        overrides["defense_params"] = _key_values(args.defense_param)
    exp = run.experiment(args.loss, args.defense, args.seed, loss_params=_key_values(args.param), **overrides)
    print(f"experiment {exp.label} ({exp.profile}, {exp.dataset}) -> {run.store.run_dir(exp)}")
    trained = train(exp, run.store, data=run.data_root, device=run.device, progress=run.progress,
                    compile=run.profile.compile)
    kept = f"kept {trained.result['kept_why']}" if trained.result.get("kept_why") else "no model kept"
    print(f"{trained.result['status']}: {kept}; run at {trained.run_dir}")
    if trained.model is not None and run.progress:
        acc = accuracy(trained.model, run.data.x_test, run.data.y_test)
        print(f"test accuracy {acc:.2f}% on {len(run.data.y_test)} test images")
    return 0


def cmd_grid(args) -> int:
    from .executors import run_grid

    run = _run(args)
    exps = _chosen(TABLES[args.table].experiments(run), args.only, args.table)
    slurm = {k: v for k, v in dict(slurm_partition=args.slurm_partition, timeout_min=args.slurm_time,
                                   gpus_per_node=args.slurm_gpus, cpus_per_task=args.slurm_cpus).items()
             if v is not None}
    gpus = []
    for g in (args.gpus.split(",") if args.gpus else []):
        if not g.strip().isdigit():
            raise ValueError(f"--gpus {args.gpus}: give GPU indices separated by commas, e.g. --gpus 0,1,2,3")
        gpus.append(int(g))
    if args.no_wait and args.executor != "slurm":
        raise ValueError("--no-wait is for --executor slurm: local workers end with this command")
    runs = run_grid(run, exps, executor=args.executor, workers=args.workers, gpus=gpus,
                    workers_per_gpu=args.workers_per_gpu, slurm=slurm, wait=not args.no_wait)
    if not isinstance(runs, dict):  # --no-wait: the jobs, submitted
        print("submitted; the same command without --no-wait finishes the grid (what the tasks have trained is "
              "kept, a run a task holds is waited for)")
        return 0
    for exp, trained in runs.items():
        acc = trained.result["kept_val_acc"]
        shown = f"{acc:.2f}" if acc is not None else "-"
        print(f"{exp.label:10s} {str(exp.changed_params or ''):24s} {trained.result['status']:9s} val {shown:>6s}  "
              f"{trained.run_dir}")
    return 0


def cmd_table1(args) -> int:
    from pathlib import Path

    from . import claims
    from .protocol import TABLE1
    from .tables import compute, notes, write_table
    from .training import train_all

    run = _run(args)
    chosen = _chosen(TABLE1.experiments(run), args.only, "Table I")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if args.train:
        train_all(run, chosen)
    elif not any(run.finished(e) for e in chosen):
        raise ValueError(f"none of {sorted({e.label for e in chosen})} is trained in {run.store.root}; "
                         "add --train to train them first")
    cells, flags = compute(run, TABLE1, scoring=args.scoring)
    shown = {e.label for e in chosen}
    cells = cells[cells["row"].isin(shown)]
    print(write_table(cells, TABLE1, out, args.dataset,
                      notes=notes(run, TABLE1, {k: v for k, v in flags.items() if k in shown}, args.scoring),
                      profile=run.profile))
    print(claims.write(claims.table1(cells), out, "table1"))
    print(f"written to {out}")
    return 0


def cmd_run(args) -> int:
    import os

    from .runner import run_notebooks

    if args.threads is not None:  # the notebooks' kernels start with it
        _check_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    return run_notebooks(args.profile, args.dataset, device=args.device, runs_dir=args.runs,
                         data_dir=args.data, figures_dir=args.figures, only=args.only,
                         objectives=args.objectives, quiet=args.quiet,
                         profile_overrides=_key_values(args.budget), parallel=args.parallel, threads=args.threads)


def cmd_bench(args) -> int:
    from .bench import format_results, run_benchmarks

    results = run_benchmarks(args.device, smoke=args.smoke, json_path=args.json, compiled=args.compile)
    print(format_results(results))
    if args.json:
        print(f"written {args.json}")
    return 0


def _json_numbers(flag: str, path, fields: list, what: str, optional=()) -> dict | None:
    """The JSON object in the file given to `flag` (None without one), whose `fields` (and `optional`
    ones, where present) are finite numbers above 0, not true or false: anything else is one line that
    names the flag, the file and `what` to give instead."""
    import json
    import math
    from pathlib import Path

    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag} {path} is not a file: give {what}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {path} is not JSON ({e}): give {what}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{flag} {path} holds a JSON {type(obj).__name__}, not an object: give {what}")
    bad = [k for k in list(fields) + [k for k in optional if k in obj]
           if isinstance(obj.get(k), bool) or not isinstance(obj.get(k), (int, float))
           or not math.isfinite(obj[k]) or obj[k] <= 0]
    if bad:
        got = ", ".join(f"{k}={obj.get(k)!r}" for k in bad)
        raise ValueError(f"{flag} {path}: {got}; each must be a number above 0: give {what}")
    return obj


def cmd_plan(args) -> int:
    import math

    if not (math.isfinite(args.hours) and args.hours > 0):
        raise ValueError(f"--hours must be a finite number above 0; got {args.hours}")
    from .context import Run
    from .plan import plan, speedups

    bench_file = "the JSON that `python -m reproduce bench --json FILE` wrote"
    rates = _json_numbers("--bench", args.bench, ["um_epoch_img_s"], bench_file,
                          optional=["train_compile_speedup", "pgd20_compile_speedup", "model_width"])
    fill = _json_numbers("--fill", args.fill, ["one_process_s", "workers_s", "models"],
                         "the fill.json of scripts/gpu_check.sh (rerun its fill step at a size that takes seconds)")
    run = Run(args.profile, args.dataset)
    rows, total = plan(run, rates, fill)
    print(f"{'device time' if total is not None else 'image passes':>12s}  {'group':13s} what")
    for r in rows:
        cost = f"{r['seconds'] / 60:8.1f} min" if total is not None else f"{r['passes'] / 1e6:8.2f} M"
        print(f"{cost}  {r['group']:13s} {r['what']}")
    passes = sum(r["passes"] for r in rows)
    by_notebook = {}
    for r in rows:
        by_notebook[r["notebook"]] = by_notebook.get(r["notebook"], 0) + (r["seconds"] if total else r["passes"])
    print("per notebook: " + ", ".join(f"{nb} {v / 60:.1f} min" if total else f"{nb} {v / 1e6:.2f} M"
                                       for nb, v in sorted(by_notebook.items())) + " (01, small CNNs, not counted)")
    print(f"{passes / 1e6:8.2f} M    image passes (forward + backward of one image) for profile {run.profile.name} on "
          f"{args.dataset}; to finish in {args.hours:g} h a device must sustain "
          f"{passes / (args.hours * 3600):,.0f} image passes per second")
    print("speed levers:\n" + "\n".join(f"  - {note}" for note in speedups(run, rates, fill)[1]))
    if total is None:
        print("For the device time, measure on the target device and pass the result: "
              "`python -m reproduce bench --json bench.json`, then `plan --bench bench.json`.")
    else:
        fits = "fits" if total <= args.hours * 3600 else "does not fit"
        print(f"{total / 3600:8.2f} h    estimated device time at {rates['um_epoch_img_s']:,.0f} eager image passes "
              f"per second ({rates.get('device', 'device')}, from {args.bench}) with the levers above: {fits} in "
              f"{args.hours:g} h")
    return 0


def cmd_export(args) -> int:
    from .export import export, format_row
    from .store import read_checked_json

    out = export(args.run_dir, args.out_dir, data_dir=args.data)
    saved = read_checked_json(out / "table1_row.json")
    print(format_row(saved["row"], saved["test_images"]))
    print(f"written {out}: model.safetensors (+ .sha256), experiment.json, table1_row.json, MODEL_CARD.md")
    return 0


def _model_of(args):
    """(run, model, experiment or None, store or None) of the MODEL argument of `evaluate` and `audit`: a run
    or export folder (its own dataset and profile unless flags say otherwise), a model file, or a table
    label looked up in the store."""
    from pathlib import Path

    from .export import experiment_of, load_folder, load_model, load_module
    from .store import RunStore

    path = Path(args.model)
    experiment, store = None, None
    if path.is_dir():  # a run or an export of ours: its own dataset and profile unless flags say otherwise
        experiment = experiment_of(path)
        args.dataset, args.profile = args.dataset or experiment.dataset, args.profile or experiment.profile
        run = _run(args)
        if (experiment.dataset, experiment.profile) != (run.dataset, run.profile.name):
            print(f"note: {path} was trained on {experiment.dataset} ({experiment.profile}); evaluating on "
                  f"{run.dataset} with the {run.profile.name} profile's test images and attacks")
        if (path / "config.json").exists():  # a run folder: its own store's caches
            store = RunStore(path.resolve().parent)
        model = load_folder(path, run.device)
    elif path.exists():
        run = _run(args)
        model = load_module(path, run.device, architecture=args.architecture, trust_pickle=args.trust_pickle)
    elif "/" in args.model or path.suffix in (".pt", ".pth", ".ckpt", ".safetensors", ".bin"):
        raise FileNotFoundError(f"no file or folder {path}: give a run or export folder, a model file, or a table "
                                "label such as AAML-AT")
    else:
        run = _run(args)
        model = load_model(args.model, profile=run.profile, dataset=run.dataset, seed=args.seed,
                           objectives=run.objectives, runs_dir=run.store.root, device=run.device)
        experiment, store = run.experiment(*parse_label(args.model), args.seed), run.store
    return run, model, experiment, store


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from .evaluation import FOREIGN_KEY
    from .export import check_out_folder, format_row, table1_row

    if args.out:  # checked before any compute
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder: give the CSV file to write, e.g. {out / 'row.csv'}")
        check_out_folder(out.parent if str(out.parent) else Path("."), f"--out {out}: its folder")
        if not out.parent.is_dir():
            raise ValueError(f"--out {out}: its folder {out.parent} does not exist")
    run, model, experiment, store = _model_of(args)
    path = Path(args.model)
    seeds = (f"seeded from experiment {experiment.key} and each column's name" if experiment is not None else
             f"seeded from {FOREIGN_KEY!r} and each column's name (a module of no experiment)")
    x, _ = run.test_images()
    print(f"{experiment.label if experiment else path.name} on {run.dataset}, {run.profile.name} profile; {seeds}"
          + ("; the store's caches are read and filled" if store else ""))
    row = table1_row(run, model, experiment, store)
    print(format_row(row, len(x), run.profile))
    if args.out:
        import pandas as pd

        pd.DataFrame(row).T.rename_axis("column").to_csv(args.out)
        print(f"written {args.out}")
    return 0


def cmd_audit(args) -> int:
    from pathlib import Path

    from .audits import audit
    from .evaluation import FOREIGN_KEY
    from .export import check_out_folder

    if args.self_test:
        return _audit_self_test()
    if args.model is None:
        raise ValueError("give the model to audit (a run folder, a table label, a model file), or --self-test")
    if not 0 < args.eps <= 255:
        raise ValueError(f"--eps {args.eps}: give it in 1/255 units, above 0 and at most 255 (8 is 8/255)")
    if args.out:
        check_out_folder(args.out, "--out")
    run, model, experiment, store = _model_of(args)
    surrogate = None
    if args.surrogate:
        surrogate_args = argparse.Namespace(**{**vars(args), "model": args.surrogate})
        surrogate = _model_of(surrogate_args)[1]
    out = Path(args.out or Path("audits") / (experiment.run_name if experiment else Path(args.model).stem))
    check_out_folder(out, "--out")
    x, y = run.test_images()
    name = experiment.label if experiment else Path(args.model).name
    print(f"auditing {name} on {len(y)} {run.dataset} test images at eps {args.eps:g}/255 ({run.profile.name} "
          f"profile's budgets; seeded from {experiment.key if experiment else repr(FOREIGN_KEY)})", flush=True)
    result = audit(model, x, y, args.eps / 255, profile=run.profile, surrogate=surrogate, device=run.device,
                   experiment=experiment, store=store, progress=run.progress)
    result.write(out, profile=run.profile)
    print(result.markdown())
    print(f"written {out}: audit.json, audit.md, audit_attacks.png, audit_eps.png, audit_steps.png, "
          "audit_logit_scale.png")
    return 0


def _audit_self_test() -> int:
    """The audit on its known-answer controls (reproduce.controls): 0 when every one gets its answer."""
    from .controls import self_test, self_test_markdown

    print("training a small network on synthetic images and auditing it plain and behind each control ...",
          flush=True)
    rows = self_test(progress=True)
    print(self_test_markdown(rows))
    wrong = [r["control"] for r in rows if not r["right"]]
    print(f"self-test: {len(rows) - len(wrong)} of {len(rows)} controls get their known answer"
          + (f"; wrong: {', '.join(wrong)}" if wrong else ""))
    return 1 if wrong else 0


def cmd_compare(args) -> int:
    from pathlib import Path

    from .compare import compare, write

    if args.out and not Path(args.out).parent.is_dir():
        raise ValueError(f"--out {args.out}: its folder {Path(args.out).parent} does not exist")
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder: give the Markdown file to write, e.g. compare.md")
    result = compare(args.mine, args.reference, spread=args.spread)
    print(result.markdown() if args.all else result.verdict)
    if not args.all:
        beyond = result.cells[~result.cells["within"]]
        if len(beyond):
            print(f"beyond ({len(beyond)}): " + ", ".join(f"{r.table} {r.row} {r.column} {r.difference:+.1f}"
                                                          for r in beyond.itertuples()))
    if args.out:
        print(f"written {write(result, args.out)}")
    return 0


def cmd_models(args) -> int:
    from .context import default_folder
    from .export import format_models, list_models

    root = args.runs or default_folder("runs")
    models = list_models(root)
    print(f"run store {root}: {len(models)} run(s)")
    print(format_models(models))
    return 0


def cmd_set_repository(args) -> int:
    from .colab import set_repository
    from .runner import REPO

    for path in set_repository(args.url, REPO):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: every sub-command with its description, every flag with its help."""
    from . import __version__

    parser = _Parser(prog="python -m reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        """A sub-command whose one-line help is also its description (its epilog is kept as written)."""
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("run", help="run every notebook in order (make reproduce)")
    _common(p)
    p.add_argument("--figures", default=None, help="where tables and figures go (default: figures/ of the checkout)")
    p.add_argument("--only", nargs="*", help="run only these notebooks (e.g. 03 04)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="notebooks run at once, a notebook starting when those it reads have finished (default: "
                        "2 on a CPU, each kernel at half the threads; 1 on a GPU)")
    _budget_option(p)
    p.set_defaults(func=cmd_run)

    p = command("train", help="train one experiment")
    _common(p)
    p.add_argument("--loss", default="SM", type=_argument(loss_name, "loss"), metavar="LOSS",
                   help=f"one of {', '.join(LOSSES)} (the paper's five, then the ABCL losses) or a common name "
                        "such as ArcFace or softmax (default: SM)")
    p.add_argument("--defense", default="UM", type=_argument(defense_name, "defense"), metavar="DEFENSE",
                   help="UM: plain training, AT: PGD adversarial training, ALP: adversarial logit pairing "
                        "(default: UM)")
    p.add_argument("--seed", type=int, default=0, help="the training seed (default: 0)")
    p.add_argument("--epochs", type=int, help="epochs (default: the profile's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the profile's, or the loss's recipe)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd | adam (default: sgd, or the loss's own recipe)")
    p.add_argument("--batch-size", type=int, help="default: the profile's")
    p.add_argument("--train-limit", type=int, help="train on the first N images (default: the profile's)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a loss parameter, e.g. --param s=4")
    p.add_argument("--defense-param", action="append", metavar="NAME=VALUE",
                   help="a defence parameter, e.g. --defense TRADES --defense-param beta=1")
    _budget_option(p)
    p.set_defaults(func=cmd_train)

    p = command("grid", help="train every experiment a table needs")
    _common(p)
    p.add_argument("--table", required=True, choices=list(TABLES), help="the table whose models to train")
    p.add_argument("--only", nargs="*", help="only the models with these labels, e.g. SM-UM AAML-AT")
    p.add_argument("--executor", default="none", choices=["none", "local", "slurm"],
                   help="none: this process (default); local: --workers processes here; slurm: a job array")
    p.add_argument("--workers", type=int, default=1, help="worker processes or array tasks (default 1)")
    p.add_argument("--gpus", default=None, help="local: GPU indices to use, e.g. 0,1,2,3")
    p.add_argument("--workers-per-gpu", type=int, default=1, help="local: workers sharing one GPU (default 1)")
    p.add_argument("--slurm-partition", default=None, help="slurm: the partition to submit to (default: the "
                                                           "cluster's)")
    p.add_argument("--slurm-time", type=int, default=None, help="minutes per array task")
    p.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per array task")
    p.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per array task; each task computes at that "
                                                               "many threads (default: the cluster's, torch's threads)")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit the array and return (the command run "
                                                          "again waits for it and finishes the grid)")
    _budget_option(p)
    p.set_defaults(func=cmd_grid)

    p = command("table1", help="Table I for some or all of its models")
    _common(p)
    p.add_argument("--only", nargs="*", help="model labels, e.g. SM-UM AAML-AT (default: all 15)")
    p.add_argument("--train", action="store_true", help="train the models the store does not have yet")
    p.add_argument("--scoring", default="final", choices=["final", "any_iterate"],
                   help="final: the attack's last iterate, as the authors scored (default); any_iterate: an image "
                        "is broken at its first misclassified iterate (the worst case)")
    _budget_option(p)
    p.add_argument("--out", default="figures/table1", help="where the table goes (default figures/table1)")
    p.set_defaults(func=cmd_table1)

    p = command("bench", help="benchmarks of each speed lever")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--smoke", action="store_true", help="smallest sizes: checks that it runs, not timings")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile against eager: a training epoch and PGD-20, with the compile time")
    p.set_defaults(func=cmd_bench, profile=None)

    p = command("plan", help="estimated device time of a profile")
    p.add_argument("--profile", default=None, help="smoke | colab | quick | paper (default: as for run)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="the dataset (default: $DATASET, else cifar10)")
    p.add_argument("--bench", default=None, help="JSON written by `bench --json` on the target device")
    p.add_argument("--fill", default=None, help="fill.json of scripts/gpu_check.sh: the grid trained by several "
                                                "workers on one GPU")
    p.add_argument("--hours", type=float, default=2.0, help="the budget to compare with (default 2)")
    p.set_defaults(func=cmd_plan)

    p = command("set-repository", help="the repository's URL, for the Colab cells, badges and install line")
    p.add_argument("url", help="e.g. https://github.com/you/repo")
    p.set_defaults(func=cmd_set_repository, profile=None)

    p = command("export", help="a trained run as weights, experiment, Table I row and model card")
    p.add_argument("run_dir", help="a run folder of the store, e.g. runs/fashion-mnist-smoke-AAML-AT-963f71ce02a5")
    p.add_argument("out_dir", help="the folder to write (created if missing)")
    p.add_argument("--data", default=None, help="dataset folder (default: $REPRODUCE_DATA, else data/ of the "
                                                "checkout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export, profile=None)

    p = command("evaluate", help="every Table I column on one model")
    p.add_argument("model", help="a run or export folder of ours, a table label (e.g. AAML-AT, looked up in the "
                                 "store), a TorchScript file, or weights with --architecture (a pickled module "
                                 "only with --trust-pickle); the model maps images in [0, 1] to logits")
    _common(p)
    p.add_argument("--seed", type=int, default=0, help="with a label: the seed of the run (default: 0)")
    p.add_argument("--architecture", default=None, metavar="MODULE:CALLABLE",
                   help="for a file of weights alone (safetensors, or a state dict saved with torch.save): the "
                        "network to load them into, built by calling MODULE:CALLABLE (e.g. my_models:Net)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a whole pickled module (torch.save(model)); unpickling runs the code the file holds, "
                        "so give only a file you made")
    _budget_option(p)
    p.add_argument("--out", default=None, help="also write the row as CSV here")
    p.set_defaults(func=cmd_evaluate)

    p = command("audit", help="is a model's robustness real? the paper's attacks beside attacks that do not trust "
                              "its gradients, with a verdict and its reasons")
    p.add_argument("model", nargs="?", help="a run or export folder of ours, a table label (e.g. AAML-AT), a "
                                            "TorchScript file, or weights with --architecture (a pickled module "
                                            "only with --trust-pickle)")
    p.add_argument("--self-test", action="store_true",
                   help="audit models whose answer is known (built on the fly, about a minute) and say whether each "
                        "gets it")
    _common(p)
    p.add_argument("--eps", type=float, default=8.0, help="L-inf eps in 1/255 units (default: 8, i.e. 8/255)")
    p.add_argument("--out", default=None, help="the folder to write (default: audits/<model>)")
    p.add_argument("--surrogate", default=None, help="a model (as MODEL) whose 20PGD images are transferred")
    p.add_argument("--seed", type=int, default=0, help="with a label: the seed of the run (default: 0)")
    p.add_argument("--architecture", default=None, metavar="MODULE:CALLABLE",
                   help="for weights alone: the network to load them into (e.g. my_models:Net)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a whole pickled module; unpickling runs the code the file holds")
    _budget_option(p)
    p.set_defaults(func=cmd_audit)

    p = command("compare", help="did a run reproduce the reference? two runs' tables cell by cell, within or "
                                "beyond the spread between training seeds")
    p.add_argument("mine", help="the tables folder of your run, e.g. figures/fashion-mnist-smoke")
    p.add_argument("reference", help="a reference run's tables folder (e.g. results/fashion-mnist-smoke-seeds3), "
                                     "or 'paper' for the paper's numbers (CIFAR-10 runs only)")
    p.add_argument("--spread", default=None, metavar="FOLDER",
                   help="a run of several seeds whose per-cell SD stands for the seed spread where neither side "
                        "has several seeds (e.g. results/fashion-mnist-smoke-seeds3)")
    p.add_argument("--all", action="store_true", help="print every cell as a Markdown table, not only the verdict")
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    p.set_defaults(func=cmd_compare, profile=None)

    p = command("models", help="every run of the store: label, dataset, profile, changed budgets, seed, "
                                      "status, clean validation accuracy and folder")
    p.add_argument("--runs", default=None, help="run store folder (default: $REPRODUCE_RUNS, else runs/ of the "
                                                "checkout)")
    p.set_defaults(func=cmd_models, profile=None)

    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad option, said in one line by _Parser (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # one line, never a traceback, for what a user can fix
        print(f"error: {e}", file=sys.stderr)
        return 2
