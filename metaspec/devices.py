"""Device and dtype choice, the same for every component (`--device`, `spec.*.dtype`).

torch is imported where a device or dtype object is made: the operator, which has no torch, builds
vLLM's arguments with `dtype_name`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaspec.runtime import PermanentError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | None = None) -> torch.device:
    """`auto` (or nothing) is the GPU when one is visible, else the CPU."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PermanentError(f"--device {name}: no CUDA GPU is visible in this container")
    return torch.device(name)


def dtype_name(name: str, device_type: str) -> str:
    """The dtype `name` means on a device of `device_type`: `auto` is bfloat16 on a GPU (the method
    trains and serves in bf16) and float32 on the CPU (where bfloat16 matmuls are slow). One rule for
    every engine, vLLM included (whose own `auto` would be bfloat16 on the CPU too)."""
    if name == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    return name


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    return getattr(torch, dtype_name(name, device.type))
