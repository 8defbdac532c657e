"""`python -m reproduce bench`: each speed lever against a plain baseline measured in the same run.

Every number is the median of repeated timed runs after a warm-up (CUDA timed with events). Inputs are
random tensors of CIFAR-10's shape (uint8 images, never zeros).
"""
from __future__ import annotations

import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .attacks import AttackSpec, attack, attack_all_restarts
from .config import make_experiment
from .defenses import crafting_spec, defense_loss
from .devices import autocast, compile_model, device_name, how_it_ran, native_bf16, peak_memory_gib, resolve_device
from .evaluation import accuracy
from .loader import DeviceLoader
from .models import build_model


class Timer:
    """Wall time on the CPU, CUDA events on a GPU."""

    def __init__(self, device):
        self.device = device

    @contextmanager
    def __call__(self, out: list):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            yield
            out.append(time.perf_counter() - t0)


def interleaved_rates(runs: dict, device, repeats: int = 3, warmup: int = 1) -> dict:
    """Items per second of each named (fn, n_items), timed in turn (a, b, a, b, ...) so that a slow
    moment of a shared machine does not fall on one side of a ratio only; median of `repeats`."""
    timer, times = Timer(device), {name: [] for name in runs}
    for fn, _ in runs.values():
        for _ in range(warmup):
            fn()
    for _ in range(repeats):
        for name, (fn, _) in runs.items():
            with timer(times[name]):
                fn()
    return {name: n / statistics.median(times[name]) for name, (_, n) in runs.items()}


def median_rate(fn, n_items: int, device, repeats: int = 3, warmup: int = 1) -> float:
    """Items per second of one fn: median over `repeats` timed calls after `warmup` untimed ones."""
    return interleaved_rates({"fn": (fn, n_items)}, device, repeats, warmup)["fn"]


def random_cifar(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g)


def torchvision_loader(images, labels, batch_size, workers):
    """The plain pipeline: PIL images through torchvision transforms and a DataLoader."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.RandomErasing(p=0.5)])
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    ys = labels.tolist()

    class PILDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return tf(pil[i]), ys[i]

    return torch.utils.data.DataLoader(PILDataset(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


def _drain(loader, device, consume=None):
    def run():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if consume is not None:
                consume(x, y)
    return run


def run_benchmarks(device=None, smoke: bool = False, json_path: str | Path | None = None,
                   compiled: bool = False) -> dict:
    """Every lever against its baseline; `compiled` adds torch.compile against eager (section 6)."""
    device = resolve_device(device)
    n = 128 if smoke else (45_000 if device.type == "cuda" else 2_000)
    batch = 128 if device.type == "cpu" else 512
    repeats = 1 if smoke else 3
    images, labels = random_cifar(n)
    results = {"device": device_name(device), "images": n, "batch_size": batch, "smoke": smoke,
               "torch": torch.__version__, "bf16_training": native_bf16(device)}

    # 1. the loader alone
    ours = DeviceLoader(images, labels, batch, shuffle=True, augment=True, device=device, drop_last=True)
    plain = {w: torchvision_loader(images, labels, batch, w) for w in (0, 2)}
    rates = interleaved_rates({"ours": (_drain(ours, device), len(ours) * batch),
                               0: (_drain(plain[0], device), len(plain[0]) * batch)}, device, repeats)
    # the worker processes are timed last: between their epochs they still take CPU time from
    # whatever runs next, which would slow the other loaders down
    rates[2] = median_rate(_drain(plain[2], device), len(plain[2]) * batch, device, repeats)
    best = max(plain, key=rates.get)
    results["loader_ours_img_s"] = rates["ours"]
    results["loader_torchvision_img_s"] = rates[best]
    results["loader_torchvision_workers"] = best
    results["loader_speedup"] = rates["ours"] / rates[best]

    # 2. a whole smoke-profile training step as `train` runs it (device loader, channels-last model as
    #    `build_model` gives it, bf16 autocast where the device has it natively) vs the same model in
    #    PyTorch's default layout fed by the torchvision pipeline in float32
    exp = make_experiment("SM", "UM", "smoke", "cifar10")

    def trainer(model, loader, amp):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            if amp and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, enabled=amp):
                loss, _ = model.loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return _drain(loader, device, step), len(loader) * batch

    model = build_model(exp, 3, 10).to(device)
    baseline_model = build_model(exp, 3, 10).to(device).to(memory_format=torch.contiguous_format)
    rates = interleaved_rates({"ours": trainer(model, ours, True),
                               "baseline": trainer(baseline_model, plain[best], False)},
                              device, repeats if smoke else 5)
    results["train_step_ours_img_s"] = rates["ours"]
    results["train_step_baseline_img_s"] = rates["baseline"]
    results["train_step_speedup"] = rates["ours"] / rates["baseline"]

    # 3. PGD-20 against torchattacks on the same model and batch
    try:
        import torchattacks
    except ImportError:
        raise RuntimeError("bench compares our PGD with torchattacks, a test dependency: "
                           "pip install 'discriminative-robustness[dev]'") from None

    model.eval()
    spec = AttackSpec("pgd", steps=20, random_start=True)
    xs, ys = _learnable_batch(device, 64 if smoke else (512 if device.type == "cuda" else 256))
    um = _quick_um_model(device, xs, ys)  # a model that classifies its inputs, so attacks have work to do
    ta = torchattacks.PGD(um, eps=spec.eps, alpha=spec.step, steps=20, random_start=True)
    rates = interleaved_rates({"ours": (lambda: attack(um, xs, ys, spec, stop_when_broken=True), len(xs)),
                               "ours_all_steps": (lambda: attack(um, xs, ys, spec), len(xs)),
                               "torchattacks": (lambda: ta(xs, ys), len(xs))}, device, repeats)
    results["pgd_ours_img_s"], results["pgd_torchattacks_img_s"] = rates["ours"], rates["torchattacks"]
    # without the early stop: the implementations alone, every example attacked for all 20 steps
    results["pgd_ours_all_steps_img_s"] = rates["ours_all_steps"]
    results["pgd_all_steps_speedup_vs_torchattacks"] = rates["ours_all_steps"] / rates["torchattacks"]
    torch.manual_seed(0)
    results["pgd_ours_acc"] = accuracy(um, attack(um, xs, ys, spec, stop_when_broken=True), ys)
    results["pgd_torchattacks_acc"] = accuracy(um, ta(xs, ys), ys)
    results["pgd_speedup_vs_torchattacks"] = results["pgd_ours_img_s"] / results["pgd_torchattacks_img_s"]

    # 4. 20PGD: survivors only vs every restart on every example (the same UM model; no early stop on
    #    either side, so the ratio is the restarts lever alone). Fewer images on the CPU: the baseline
    #    runs 20 x 20 steps on each.
    restarts = AttackSpec("pgd", steps=20, random_start=True, restarts=3 if smoke else 20)
    xr, yr = (xs, ys) if device.type == "cuda" else (xs[:64], ys[:64])
    accs = {}

    def survivors():
        torch.manual_seed(0)
        accs["survivors"] = accuracy(um, attack(um, xr, yr, restarts), yr)

    def everything():
        torch.manual_seed(0)
        accs["all"] = accuracy(um, attack_all_restarts(um, xr, yr, restarts), yr)

    rates = interleaved_rates({"survivors": (survivors, len(xr)), "all": (everything, len(xr))}, device, repeats)
    results["restarts_survivors_img_s"], results["restarts_all_img_s"] = rates["survivors"], rates["all"]
    assert accs["survivors"] == accs["all"], accs  # same answer, less work
    results["restarts_accuracy"] = accs["survivors"]
    results["restarts_speedup"] = results["restarts_survivors_img_s"] / results["restarts_all_img_s"]

    # 5. throughput on this device at the profile's model size: UM and AT epochs, PGD-20 evaluation
    width = 64 if device.type == "cuda" and not smoke else 16
    big = build_model(make_experiment("SM", "UM", "smoke", "cifar10", width=width), 3, 10).to(device)
    big_opt = torch.optim.SGD(big.parameters(), lr=0.01, momentum=0.9)
    at_spec = crafting_spec(make_experiment("SM", "AT", "smoke", "cifar10"))

    def epoch(defense):
        return training_epoch(big, big_opt, ours, device, defense, at_spec)

    results["model_width"] = width
    results["um_epoch_img_s"] = median_rate(epoch("UM"), len(ours) * batch, device, repeats)
    results["at_epoch_img_s"] = median_rate(epoch("AT"), len(ours) * batch, device, 1 if smoke else 2)
    big.eval()
    xe = images[: min(n, 2048 if device.type == "cuda" else 256)].to(device).float() / 255
    ye = labels[: len(xe)].to(device)
    results["pgd20_eval_img_s"] = median_rate(lambda: attack(big, xe, ye, spec), len(xe), device, repeats)
    if device.type == "cuda":
        results["um_epoch_seconds_45k"] = 45_000 / results["um_epoch_img_s"]
        results["at_epoch_seconds_45k"] = 45_000 / results["at_epoch_img_s"]
        results.update(_bf16_attack_check(device, xs, ys))
    if compiled:
        results.update(_compiled_vs_eager(device, width, ours, batch, xe, ye, spec, repeats))
    if device.type == "cpu" and torch.get_num_threads() >= 2:
        results.update(side_by_side(n, batch, repeats))
    results["peak_memory_gib"] = peak_memory_gib(device)

    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _epoch_rate(n: int, batch: int, threads: int, repeats: int, barrier=None) -> float:
    """Images per second of a smoke-profile UM training epoch at `threads` CPU threads, median of
    `repeats` after a warm-up; with a `barrier`, every timed epoch starts with the other processes'."""
    torch.set_num_threads(threads)
    images, labels = random_cifar(n)
    loader = DeviceLoader(images, labels, batch, shuffle=True, augment=True, device=torch.device("cpu"),
                          drop_last=True)
    model = build_model(make_experiment("SM", "UM", "smoke", "cifar10"), 3, 10)
    run = training_epoch(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), loader,
                         torch.device("cpu"))
    run()
    times = []
    for _ in range(repeats):
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return len(loader) * batch / statistics.median(times)


def side_by_side(n: int, batch: int, repeats: int) -> dict:
    """7. The CPU's threads split between processes against one process using them all: a UM training
    epoch in one process at every thread, then one process per thread, each at one thread, all timing
    the same epochs at once (what `python -m reproduce run` does with two notebooks on a CPU)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = torch.get_num_threads()
    one = _epoch_rate(n, batch, threads, repeats)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(threads, mp_context=context) as pool:
        barrier = manager.Barrier(threads)
        rates = list(pool.map(_epoch_rate, *zip(*[(n, batch, 1, repeats, barrier)] * threads)))
    torch.set_num_threads(threads)
    return {"one_process_all_threads_img_s": one, "one_thread_processes": threads,
            "one_thread_processes_img_s": sum(rates), "one_thread_processes_speedup": sum(rates) / one}


def training_epoch(model, opt, loader, device, defense: str = "UM", spec=None):
    """One training epoch over the loader as `train` runs its steps (channels-last batches on CUDA, bf16
    autocast where native), as a function to time."""
    def run():
        model.train()
        for xb, yb in loader:
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                loss, _ = defense_loss(model, xb, yb, defense, spec)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def _compiled_vs_eager(device, width, loader, batch, x, y, spec, repeats) -> dict:
    """6. torch.compile against eager, same network and inputs: a UM training epoch as `train` runs it
    and PGD-20 (all steps), each side timed in turn; the compile time is the first call's wall time less
    a warm call's. Which ran is recorded: a compilation that fails falls back to eager."""
    exp = make_experiment("SM", "UM", "smoke", "cifar10", width=width)
    models = {"eager": build_model(exp, 3, 10).to(device), "compiled": build_model(exp, 3, 10).to(device)}
    compile_model(models["compiled"], True, "bench")
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}

    def epoch(name):
        return training_epoch(models[name], optimizers[name], loader, device)

    def pgd(name):
        return lambda: attack(models[name].eval(), x, y, spec)

    out, n_train = {}, len(loader) * batch
    for what, make, n in (("train", epoch, n_train), ("pgd20", pgd, len(x))):
        timer, first, warm = Timer(device), [], []
        with timer(first):
            make("compiled")()  # compiles every graph the loop needs
        with timer(warm):
            make("compiled")()
        rates = interleaved_rates({k: (make(k), n) for k in models}, device, repeats, warmup=0)
        out[f"{what}_eager_img_s"], out[f"{what}_compiled_img_s"] = rates["eager"], rates["compiled"]
        out[f"{what}_compile_speedup"] = rates["compiled"] / rates["eager"]
        out[f"{what}_compile_seconds"] = max(first[0] - warm[0], 0.0)
    out["compiled"] = how_it_ran(models["compiled"])
    return out


def _learnable_batch(device, n):
    """Random CIFAR-shaped images carrying a faint class pattern (amplitude 6/255): a model learns them
    in a few dozen steps, and an 8/255 attack can break it, as on real data."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (n,), generator=g)
    patterns = torch.randint(0, 2, (10, 3, 32, 32), generator=g).float() * 2 - 1
    x = torch.randint(20, 236, (n, 3, 32, 32), generator=g).float() + 6 * patterns[y]
    return (x / 255).to(device), y.to(device)


def _quick_um_model(device, x, y, steps: int = 60):
    model = build_model(make_experiment("SM", "UM", "smoke", "cifar10", width=8), 3, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _bf16_attack_check(device, x, y) -> dict:
    """PGD-20 accuracy with the attack's forward passes in bf16 autocast vs float32, same model."""
    model = _quick_um_model(device, x, y)
    spec = AttackSpec("pgd", steps=20, random_start=True)
    torch.manual_seed(0)
    fp32 = accuracy(model, attack(model, x, y, spec), y)
    torch.manual_seed(0)
    with autocast(device):
        adv = attack(model, x, y, spec)
    bf16 = accuracy(model, adv, y)
    return {"pgd20_acc_fp32": fp32, "pgd20_acc_bf16": bf16, "bf16_attack_gap_points": bf16 - fp32}


TARGETS_CPU = {"loader_speedup": 10, "train_step_speedup": 1.5, "pgd_speedup_vs_torchattacks": 1.0,
               "restarts_speedup": 5}


def format_results(results: dict) -> str:
    lines = [f"device: {results['device']}  (images {results['images']}, batch {results['batch_size']}, "
             f"bf16 training: {results['bf16_training']})", "",
             "| key | value | target (2-core CPU) |", "|---|---|---|"]
    for k, v in results.items():
        if k in ("device", "images", "batch_size", "smoke", "torch", "bf16_training") or v is None:
            continue
        shown = f"{v:.2f}" if isinstance(v, float) else str(v)
        target = TARGETS_CPU.get(k)
        verdict = "" if target is None else f">= {target} {'met' if v >= target else 'NOT met'}"
        lines.append(f"| {k} | {shown} | {verdict} |")
    return "\n".join(lines)


def _trained_runs(store_root: Path) -> list[dict]:
    """result.json of every finished run under a store folder (digest checked)."""
    from .store import read_checked_json

    return [read_checked_json(p) for p in sorted(Path(store_root).glob("*/result.json"))]


def _runs_summary(results: list[dict], seconds: float | None) -> dict:
    """What a step's trained runs say: how many, images per second (each run's mean and, over the step's
    wall time, all of them together), peak GPU memory and where they ran."""
    if not results:
        return {}
    images = sum(r["images_per_s"] * r["train_seconds"] for r in results)
    peaks = [r["peak_memory_gib"] for r in results if r.get("peak_memory_gib") is not None]
    return {"models": len(results), "images_per_s_per_model": statistics.mean(r["images_per_s"] for r in results),
            "images_per_s_together": images / seconds if seconds else None,
            "peak_memory_gib": max(peaks) if peaks else None,
            "device": sorted({r.get("device_name", r["device"]) for r in results}),
            "compiled": sorted({r.get("compiled", "eager") for r in results})}


def summarise_check(out: str | Path) -> dict:
    """summary.json and summary.md of a scripts/gpu_check.sh folder: per step its wall time and status,
    and where it trained or measured, images per second, peak GPU memory and the device."""
    out = Path(out)
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        name, seconds, status = line.split("\t")
        steps[name] = {"seconds": float(seconds), "status": status}
    if (out / "bench.json").exists() and "bench" in steps:
        bench = json.loads((out / "bench.json").read_text())
        steps["bench"].update({k: bench.get(k) for k in ("device", "um_epoch_img_s", "at_epoch_img_s",
                                                         "pgd20_eval_img_s", "train_compile_speedup",
                                                         "pgd20_compile_speedup", "compiled", "peak_memory_gib")})
    if (out / "fill.json").exists() and "fill" in steps:
        fill = json.loads((out / "fill.json").read_text())
        steps["fill"]["one_process"] = _runs_summary(_trained_runs(out / "fill-one"), fill["one_process_s"])
        steps["fill"]["workers"] = _runs_summary(_trained_runs(out / "fill-many"), fill["workers_s"])
    if "table1" in steps:
        steps["table1"].update(_runs_summary(_trained_runs(out / "runs"), None))
    if "audit" in steps and (out / "audit" / "audit.json").exists():
        audited = json.loads((out / "audit" / "audit.json").read_text())
        steps["audit"].update(flagged=audited["flagged"], reasons=audited["reasons"], n=audited["n"])
    (out / "summary.json").write_text(json.dumps(steps, indent=2) + "\n")
    lines = ["| step | seconds | status | images/s | peak GPU memory (GiB) | device |", "|---|---|---|---|---|---|"]
    for name, s in steps.items():
        parts = [(name, s, s["seconds"])]
        if name == "fill" and (out / "fill.json").exists():
            parts = [("fill, one process", s["one_process"], fill["one_process_s"]),
                     ("fill, workers", s["workers"], fill["workers_s"])]
        for label, p, seconds in parts:
            rate = p.get("um_epoch_img_s") or p.get("images_per_s_together") or p.get("images_per_s_per_model")
            peak = p.get("peak_memory_gib")
            device = p.get("device", "")
            lines.append(f"| {label} | {seconds:.0f} | {s['status']} | {f'{rate:,.0f}' if rate else ''} | "
                         f"{f'{peak:.1f}' if peak is not None else ''} | "
                         f"{', '.join(device) if isinstance(device, list) else device} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return steps
