"""The one training loop, for every loss and defence.

SGD (or a loss's own recipe, e.g. Adam) with the paper's plateau schedule or a one-cycle schedule;
channels-last models, bf16 autocast where the device has native bf16 (`native_bf16`); each epoch the
last checkpoint and the one the experiment's `keep` rule selects (best clean validation, best PGD-7
validation, or the last epoch); resume after a crash or a kill with the same final numbers; a
non-finite loss ends the run as "diverged" instead of raising.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from .attacks import PGD7, AttackSpec
from .data import DataSplit, load_dataset
from .defenses import crafting_spec, defense_loss
from .devices import autocast, compile_model, device_name, environment, how_it_ran, peak_memory_gib, resolve_device
from .loader import DeviceLoader
from .models import Classifier, build_model
from .progress import bar as progress_bar
from .store import (
    RunStore,
    StoreError,
    append_jsonl,
    check_file,
    keep_epochs,
    load_checkpoint,
    read_checked_json,
    read_jsonl,
    remove_temporary_files,
    save_checkpoint,
    write_checked_json,
    write_weights,
)


def data_for(experiment, root=None, test_limit=None) -> DataSplit:
    return load_dataset(experiment.dataset, root, train_limit=experiment.train_limit,
                        val_limit=experiment.val_limit, test_limit=test_limit)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


KEEP_REASONS = {"best_clean_val": "the best clean validation accuracy", "best_pgd7_val":
                "the best PGD-7 validation accuracy", "last": "the last epoch"}


def _validate(model, experiment, data, epoch: int) -> dict:
    """The epoch's validation numbers: clean accuracy, and PGD-7 accuracy when the keep rule needs it
    (seeded from the epoch, so a resumed run draws the same random starts)."""
    from .evaluation import accuracy, robust_scores

    out = {"val_acc": accuracy(model, data.x_val, data.y_val, batch_size=500, bf16=True)}
    if experiment.keep == "best_pgd7_val":
        torch.manual_seed(_epoch_seed(experiment.seed, epoch) + 500_000)
        out["val_pgd7_acc"] = robust_scores(model, data.x_val, data.y_val, PGD7)["final"]
    return out


def _keep_score(experiment, record: dict) -> float:
    """What the keep rule maximises over epochs (the epoch number itself for "last")."""
    return {"best_clean_val": record["val_acc"], "best_pgd7_val": record.get("val_pgd7_acc"),
            "last": record["epoch"]}[experiment.keep]


def _make_scheduler(optimizer, experiment, steps_per_epoch: int):
    if experiment.schedule == "onecycle":
        total = max(experiment.epochs * steps_per_epoch, 4)  # tiny runs: at least one step up and down
        # each parameter group peaks at its own learning rate, and a group without momentum (PCL's
        # centres, as in its reference) keeps none instead of cycling OneCycle's 0.85-0.95
        groups = optimizer.param_groups
        plain = [i > 0 and g.get("momentum") == 0.0 for i, g in enumerate(groups)]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], total_steps=total,
                                                   pct_start=max(0.25, 2 / total),
                                                   base_momentum=[0.0 if p else 0.85 for p in plain],
                                                   max_momentum=[0.0 if p else 0.95 for p in plain])
    if experiment.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1,
                                                          patience=experiment.plateau_patience)
    return None


def make_optimizer(model, experiment):
    """SGD with momentum and weight decay (the paper's), or Adam (no weight decay), which the ABCL
    losses need: its steps do not grow with the scale of the loss. A loss may train some of its own
    parameters with settings of their own (`optimizer_groups`: PCL's centres, as its reference does);
    the first group holds every other parameter and carries the experiment's settings."""
    if experiment.optimizer == "adam":  # a loss's own rates are SGD step sizes: Adam takes one rate for all
        return torch.optim.Adam(model.parameters(), lr=experiment.lr)
    own = model.criterion.optimizer_groups()
    taken = {id(p) for g in own for p in g["params"]}
    groups = [{"params": [p for p in model.parameters() if id(p) not in taken]}, *own]
    return torch.optim.SGD(groups, lr=experiment.lr, momentum=experiment.momentum,
                           weight_decay=experiment.weight_decay)


@dataclass
class TrainedRun:
    experiment: object
    model: Classifier
    result: dict
    run_dir: object

    @property
    def diverged(self) -> bool:
        return self.result["status"] == "diverged"


def load_trained(experiment, store: RunStore | None = None, device=None, num_classes: int = 10,
                 in_channels: int | None = None, compile: bool = False) -> Classifier:
    """The model a finished run kept (best.pt: the epoch its `keep` rule chose); `compile`: its network
    through torch.compile (devices.compile_model), for the attacks."""
    store = store or RunStore()
    device = resolve_device(device)
    run_dir = store.run_dir(experiment)
    result = store.result(experiment)
    if result is None:
        raise FileNotFoundError(f"{experiment.label} has not finished training; its run is {run_dir}")
    model = build_model(experiment, result.get("in_channels", in_channels or 3),
                        result.get("num_classes", num_classes))
    state = load_checkpoint(run_dir / "best.pt", key=experiment.key)
    model.load_state_dict(state["model"])
    model = model.to(device).eval()
    compile_model(model, compile, experiment.label)
    return model


def _from_store(experiment, store, device, compile: bool) -> TrainedRun:
    result = store.result(experiment)
    model = load_trained(experiment, store, device, compile=compile) if result["status"] == "finished" else None
    return TrainedRun(experiment, model, result, store.run_dir(experiment))


def train_all(run, experiments) -> dict:
    """Train whatever is not in the store yet, in order, in this process; a diverged run is recorded
    and the grid goes on. Returns {experiment: TrainedRun}. Each dataset is loaded once; every
    experiment takes its own slice of it. `run` is the run context (context.Run): store, data, device."""
    datasets, runs = {}, {}
    for i, exp in enumerate(experiments):
        done = run.store.is_done(exp)
        if run.progress:
            state = "in store" if done else "training"
            print(f"[{i + 1}/{len(experiments)}] {exp.label} {exp.changed_params or ''} seed {exp.seed} ({state}) "
                  f"-> {run.store.run_dir(exp)}")
        data = run.data_root
        if not done:
            if exp.dataset not in datasets:
                datasets[exp.dataset] = run.data if exp.dataset == run.dataset else run.on(exp.dataset).data
            data = datasets[exp.dataset]
        runs[exp] = train(exp, run.store, data=data, device=run.device, progress=run.progress,
                          compile=run.profile.compile)
    return runs


def train(experiment, store: RunStore | None = None, *, data: DataSplit | str | Path | None = None, device=None,
          progress: bool = True, wait_for_claim: bool = True, compile: bool = False) -> TrainedRun | None:
    """Train an experiment, or return it from the store when it has finished already (or diverged).
    An interrupted run resumes from its last checkpoint. `data` is the loaded dataset, or the folder to
    load it from (None: data/).

    Training claims the run through a lock file (claim.lock in its directory): another process that
    asks for the same experiment waits for it and then reads the result (or, with
    `wait_for_claim=False`, returns None at once). The operating system drops the lock of a process
    that dies, so a dead worker's claim is taken over.

    `compile`: the network through torch.compile (devices.compile_model), falling back to eager if that
    fails; not part of the experiment (the numbers are the same up to float rounding). result.json says
    which ran."""
    store = store or RunStore()
    device = resolve_device(device)
    if store.is_done(experiment):
        return _from_store(experiment, store, device, compile)
    run_dir = store.run_dir(experiment)
    unwritable = (f"cannot write the run store {store.root} ({{}}); point --runs (or REPRODUCE_RUNS) at a folder "
                  "you can write")
    if store.root.exists() and not store.root.is_dir():
        raise StoreError(unwritable.format("it is not a folder"))
    check_file(run_dir / "claim.lock")
    if not isinstance(data, DataSplit):  # a missing dataset fails here, before the run's folder exists
        data = data_for(experiment, data)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(unwritable.format(e.strerror)) from None
    claim = FileLock(str(run_dir / "claim.lock"))
    try:
        claim.acquire(timeout=-1 if wait_for_claim else 0)
    except Timeout:
        return None
    try:
        if store.is_done(experiment):  # finished by the process we waited for
            return _from_store(experiment, store, device, compile)
        return _train_claimed(experiment, store, data, device, progress, compile)
    finally:
        claim.release()


def _kept_why(experiment, kept: dict, epochs: int) -> str:
    """Which epoch the run kept and why, in words (written into result.json)."""
    measured = {"best_clean_val": f" ({kept['val_acc']:.2f}%)", "last": "",
                "best_pgd7_val": f" ({kept.get('val_pgd7_acc', math.nan):.2f}%)"}[experiment.keep]
    return f"epoch {kept['epoch']} of {epochs}: {KEEP_REASONS[experiment.keep]}{measured} (keep={experiment.keep})"


@dataclass
class _Training:
    """What the epochs of one run share: model, optimiser, schedule, loader and crafting attack."""

    model: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: DeviceLoader
    spec: AttackSpec


def _setup(experiment, data, device, compile: bool) -> _Training:
    model = build_model(experiment, data.channels, data.num_classes).to(device)
    compile_model(model, compile, experiment.label)
    if device.type == "cuda":  # result.json's peak memory is this run's
        torch.cuda.reset_peak_memory_stats(device)
    optimizer = make_optimizer(model, experiment)
    loader = DeviceLoader(data.x_train, data.y_train, min(experiment.batch_size, len(data.y_train)),
                          shuffle=True, augment=experiment.augment, seed=experiment.seed, device=device,
                          drop_last=True)
    return _Training(model, optimizer, _make_scheduler(optimizer, experiment, len(loader)), loader,
                     crafting_spec(experiment))


def _resume(experiment, t: _Training, run_dir) -> tuple[int, float, dict | None]:
    """(first epoch to train, best keep score so far, the kept epoch's record) from last.pt, if any.
    metrics and best.pt may hold an epoch that last.pt does not (a kill between the writes): the
    epochs after the checkpoint are trained again, and their lines written again."""
    start_epoch, best_score, kept = 0, -math.inf, None
    last_path = run_dir / "last.pt"
    if last_path.exists():
        state = load_checkpoint(last_path, key=experiment.key)  # names a damaged or misplaced file
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        if t.scheduler is not None and state.get("scheduler"):
            t.scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_score, kept = state["epoch"], state["best_score"], state["kept"]
        print(f"resuming {experiment.label} from epoch {start_epoch} ({last_path})")
    keep_epochs(run_dir / "metrics.jsonl", start_epoch)
    logged = [r.get("epoch") for r in read_jsonl(run_dir / "metrics.jsonl", key=experiment.key)]
    if logged != list(range(1, start_epoch + 1)):  # the log and the checkpoint must tell one story
        raise StoreError(f"{run_dir / 'metrics.jsonl'} logs epochs {logged} but {last_path.name} holds epoch "
                         f"{start_epoch}: the log is damaged (a line removed or edited); delete the run directory "
                         f"{run_dir} to retrain it")
    if start_epoch == 0:
        (run_dir / "best.pt").unlink(missing_ok=True)
    return start_epoch, best_score, kept


def _train_epoch(experiment, t: _Training, epoch: int, device, progress: bool) -> dict:
    """One pass over the training images; returns the epoch's loss, accuracy, images and seconds."""
    torch.manual_seed(_epoch_seed(experiment.seed, epoch))
    t.loader.set_epoch(epoch)
    t.model.train()
    t.model.criterion.set_epoch(epoch, experiment.epochs)  # a loss whose objective changes with training (PCL)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    t0 = time.perf_counter()
    bar = progress_bar(t.loader, f"{experiment.label} epoch {epoch + 1}/{experiment.epochs}", progress)
    shown = t0
    for step, (x, y) in enumerate(bar):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            loss, logits = defense_loss(t.model, x, y, experiment.defense, t.spec, experiment.craft_bn_mode,
                                        experiment.objectives, experiment.craft_logits, experiment.defense_params)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
        if isinstance(t.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            t.scheduler.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        # the only host-device syncs of the step loop: about once a second, and at the epoch's last step
        if progress and (time.perf_counter() - shown > 1.0 or step == len(t.loader) - 1):
            shown = time.perf_counter()
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    return {"train_loss": loss_sum.item() / max(seen, 1), "train_acc": 100 * correct.item() / max(seen, 1),
            "seen": seen, "seconds": time.perf_counter() - t0}


def _train_claimed(experiment, store, data, device, progress, compile: bool = False) -> TrainedRun:
    run_dir = store.run_dir(experiment)
    if data.name != experiment.dataset:
        raise ValueError(f"data is {data.name} but the experiment asks for {experiment.dataset}")
    data = data.limit(experiment.train_limit, experiment.val_limit)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(run_dir)
    config = run_dir / "config.json"
    if (config.exists() or config.is_symlink()) and read_checked_json(config).get("key") != experiment.key:
        raise StoreError(f"{config} belongs to another experiment than {experiment.key} (a file copied from "
                         f"another run); delete the run directory {run_dir} to retrain it")
    write_checked_json(config, {"experiment": asdict(experiment), "key": experiment.key,
                                "threads": torch.get_num_threads(), "device": str(device)})
    t = _setup(experiment, data, device, compile)
    start_epoch, best_score, kept = _resume(experiment, t, run_dir)

    status = "finished"
    for epoch in range(start_epoch, experiment.epochs):
        t_epoch = time.perf_counter()
        trained = _train_epoch(experiment, t, epoch, device, progress)
        if not math.isfinite(trained["train_loss"]):
            status = "diverged"
            append_jsonl(run_dir / "metrics.jsonl", {"epoch": epoch + 1, "train_loss": trained["train_loss"],
                                                     "diverged": True, "key": experiment.key})
            break
        validation = _validate(t.model, experiment, data, epoch)
        if isinstance(t.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            t.scheduler.step(trained["train_loss"])
        record = {"epoch": epoch + 1, "lr": t.optimizer.param_groups[0]["lr"], "train_loss": trained["train_loss"],
                  "train_acc": trained["train_acc"], **validation,
                  "images_per_s": trained["seen"] / trained["seconds"], "seconds": trained["seconds"],
                  "wall_seconds": time.perf_counter() - t_epoch, "key": experiment.key}  # with validation
        append_jsonl(run_dir / "metrics.jsonl", record)
        if progress:
            pgd7 = f" val PGD-7 {validation['val_pgd7_acc']:.1f}%" if "val_pgd7_acc" in validation else ""
            print(f"{experiment.label} epoch {epoch + 1}: loss {record['train_loss']:.3f} train acc "
                  f"{record['train_acc']:.1f}% val acc {validation['val_acc']:.1f}%{pgd7} "
                  f"({record['images_per_s']:.0f} img/s)")
        score = _keep_score(experiment, record)
        if score > best_score:
            best_score, kept = score, {"epoch": epoch + 1, **validation}
            save_checkpoint(run_dir / "best.pt", {"model": t.model.state_dict(), "epoch": epoch + 1,
                                                  "key": experiment.key})
        save_checkpoint(run_dir / "last.pt", {
            "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
            "epoch": epoch + 1, "best_score": best_score, "kept": kept, "key": experiment.key})
        # The plateau schedule ends early once the rate has fallen a thousandfold.
        if experiment.schedule == "plateau" and t.optimizer.param_groups[0]["lr"] < experiment.lr * 1e-3 + 1e-12:
            break
    return _finish(experiment, store, t.model, status, kept, data, progress)


def _finish(experiment, store, model, status: str, kept: dict | None, data, progress: bool) -> TrainedRun:
    """Write result.json and return the run, with the kept weights loaded when it finished."""
    run_dir = store.run_dir(experiment)
    metrics = store.metrics(experiment)
    finished = status == "finished"
    device = next(model.parameters()).device
    result = {"status": status, "label": experiment.label, "key": experiment.key,
              "best_val_acc": max(m["val_acc"] for m in metrics) if finished else None,
              "kept_epoch": kept["epoch"] if finished else None, "kept_val_acc": kept["val_acc"] if finished else None,
              "kept_why": _kept_why(experiment, kept, len(metrics)) if finished else None,
              "epochs_run": len(metrics), "num_classes": data.num_classes, "in_channels": data.channels,
              "train_seconds": sum(m.get("seconds", 0) for m in metrics),
              # what a user compares between machines: where it ran, at how many CPU threads, how fast
              "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
              "environment": environment(device), "compiled": how_it_ran(model),
              "peak_memory_gib": peak_memory_gib(device),
              "wall_seconds": sum(m.get("wall_seconds", m.get("seconds", 0)) for m in metrics),
              "images_per_s": sum(m.get("images_per_s", 0) for m in metrics) / max(len(metrics), 1)}
    if status == "diverged":
        write_checked_json(run_dir / "result.json", result)
        if progress:
            print(f"{experiment.label}: loss became non-finite; the run is recorded as diverged ({run_dir})")
        return TrainedRun(experiment, None, result, run_dir)
    model.load_state_dict(load_checkpoint(run_dir / "best.pt", key=experiment.key)["model"])
    # the kept weights as safetensors (for load_model and plain PyTorch) before result.json marks the run
    # finished, so a kill between the two is redone on resume rather than leaving a finished run without them
    write_weights(model, run_dir, experiment)
    write_checked_json(run_dir / "result.json", result)
    return TrainedRun(experiment, model.eval(), result, run_dir)
