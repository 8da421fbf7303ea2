"""Device and dtype choice, the same for every component (`--device`, `spec.*.dtype`)."""

from __future__ import annotations

import torch

from metaspec.runtime import PermanentError


def resolve_device(name: str | None = None) -> torch.device:
    """`auto` (or nothing) is the GPU when one is visible, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PermanentError(f"--device {name}: no CUDA GPU is visible in this container")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU (the method trains and serves in bf16) and float32 on the CPU
    (where bfloat16 matmuls are slow)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)
