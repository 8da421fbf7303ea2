"""Decoding engines behind one protocol: `vllm` (production) and `transformers` (fallback, CPU-capable)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metaspec.api.generation import TeacherGenerationSpec

from .base import Completion, Engine, FinishReason, Prompt, cut_at_stop, prompt_seed
from .vllm import vllm_llm_kwargs, vllm_sampling_kwargs

if TYPE_CHECKING:
    import torch


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when one is visible, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU and float32 on the CPU (where bfloat16 matmuls are slow)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_engine(spec: TeacherGenerationSpec, model_dir: Path, model_name: str, device: str = "auto") -> Engine:
    """The engine the spec asks for, loaded and ready to generate."""
    if spec.engine == "vllm":
        from .vllm import VllmEngine

        return VllmEngine(spec, model_dir, model_name)
    from .transformers import TransformersEngine

    torch_device = resolve_device(device)
    return TransformersEngine.load(
        model_dir,
        model_name,
        spec.sampling,
        spec.batch_size,
        torch_device,
        resolve_dtype(spec.dtype, torch_device),
        trust_remote_code=spec.model.trust_remote_code,
    )


__all__ = [
    "Completion",
    "Engine",
    "FinishReason",
    "Prompt",
    "cut_at_stop",
    "load_engine",
    "prompt_seed",
    "resolve_device",
    "resolve_dtype",
    "vllm_llm_kwargs",
    "vllm_sampling_kwargs",
]
