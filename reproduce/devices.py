"""The device a run computes on, and the precision it computes in there."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    return device


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
