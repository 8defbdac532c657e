"""The device a run computes on, and the precision it computes in there."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    return device


def device_name(device: torch.device | str) -> str:
    """What a user compares between machines: the GPU's name, or the CPU's model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model here; platform.processor() often says only "x86_64"
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def environment(device="cpu") -> dict:
    """The versions and the machine that decide a number on a CPU or a GPU: Python, torch, torchvision,
    CUDA and cuDNN (None without them), this package, the device's model (GPU name, or CPU model with
    its thread count) and the thread count."""
    import platform

    import torchvision

    from . import __version__

    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda if cuda else None, "cudnn": cudnn,
            "package": __version__, "device_name": device_name(device), "threads": torch.get_num_threads(),
            "platform": platform.platform()}


def peak_memory_gib(device: torch.device | str) -> float | None:
    """The most GPU memory tensors have held since the last reset (None on a CPU)."""
    device = torch.device(device)
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively: CUDA, or a CPU with AMX or AVX-512 BF16 (where
    oneDNN's bf16 convolutions are 1.1-1.2x faster than float32 for the smoke network on 2 cores;
    on other CPUs bf16 would be emulated, and slower)."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast for training where the device computes in bf16 natively, a no-op elsewhere.
    Heads and losses still run in float32 (models.Classifier)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and native_bf16(device))


class _CompiledForward:
    """A network's forward through torch.compile, falling back to the eager forward for good when
    compilation fails (an unsupported backend, no compiler on the machine): a run never stops for it."""

    def __init__(self, eager, backend: str, name: str):
        self.eager, self.name, self.backend = eager, name, backend
        self.compiled = torch.compile(eager, backend=backend)
        self.failed: str | None = None
        self.paused = False

    def __call__(self, *args, **kwargs):
        if self.failed is None and not self.paused:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure; the eager forward raises real errors
                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                print(f"{self.name}: torch.compile failed ({self.failed[:200]}); running eager")
        return self.eager(*args, **kwargs)


def compile_model(model, enabled: bool = True, name: str = "model", backend: str | None = None) -> str:
    """Compile the model's network (the embedder: every convolution) in place with torch.compile, and
    say which ran. The state dict and the numbers stay those of the eager model (up to float rounding:
    tests/test_compile.py); the first calls of each shape and mode pay the compilation. Returns "eager"
    (not asked), "compiled (<backend>)", or, after a failed compilation, "eager (compile failed: ...)"."""
    if not enabled:
        return "eager"
    if _compiled_forward(model) is not None:
        return how_it_ran(model)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    # one graph per mode (train / eval, with and without gradients, autocast), each static then dynamic
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 32))
    # REPRODUCE_COMPILE_BACKEND=aot_eager (the GPU check's rehearsal): traced, not code-generated, so
    # the same path in seconds instead of minutes on a CPU
    backend = backend or os.environ.get("REPRODUCE_COMPILE_BACKEND", "inductor")
    model.embedder.forward = _CompiledForward(model.embedder.forward, backend, name)
    print(f"{name}: torch.compile ({backend}) of its network; the first steps of each shape compile")
    return how_it_ran(model)


def _compiled_forward(model) -> _CompiledForward | None:
    """The wrapper compile_model put on the model's network, if any (any other module: None)."""
    forward = getattr(getattr(model, "embedder", None), "__dict__", {}).get("forward")
    return forward if isinstance(forward, _CompiledForward) else None


@contextmanager
def eager(model):
    """The model's eager forward within the block, compiled or not. For AutoAttack's reference code: its
    checks trace the model's Python calls with sys.settrace, which compiled frames confuse (they report a
    "dynamic defense") and which can crash the process while dynamo runs."""
    forward = _compiled_forward(model)
    if forward is None:
        yield model
        return
    was, forward.paused = forward.paused, True
    try:
        yield model
    finally:
        forward.paused = was


def how_it_ran(model) -> str:
    """"eager", "compiled (<backend>)" or "eager (compile failed: ...)": what compile_model left."""
    forward = _compiled_forward(model)
    if forward is None:
        return "eager"
    if forward.failed:
        return f"eager (compile failed: {forward.failed[:200]})"
    return f"compiled ({forward.backend})"
