"""Decoding engines behind one protocol: `vllm` (production) and `transformers` (fallback, CPU-capable)."""

from __future__ import annotations

from pathlib import Path

from metaspec.api.generation import TeacherGenerationSpec
from metaspec.runtime import PermanentError

from .base import Completion, Engine, FinishReason, Prompt, cut_at_stop, prompt_seed
from .vllm import vllm_llm_kwargs, vllm_sampling_kwargs

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_safetensors(model_dir: Path, model_name: str) -> None:
    """Refuse a model without safetensors weights: both engines would fall back to unpickling
    `pytorch_model.bin`, and unpickling a checkpoint can execute arbitrary code."""
    if any(model_dir.glob("*.safetensors")):
        return
    found = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise PermanentError(
        f"spec.model.uri: {model_name} has no *.safetensors weights (found: {', '.join(found) or 'none'}); "
        "the generator loads safetensors only, because unpickling a checkpoint can execute arbitrary code: "
        "re-save the model with save_pretrained(dir, safe_serialization=True)"
    )


def load_engine(spec: TeacherGenerationSpec, model_dir: Path, model_name: str, device: str = "auto") -> Engine:
    """The engine the spec asks for, loaded and ready to generate."""
    check_safetensors(model_dir, model_name)
    if spec.engine == "vllm":
        from .vllm import VllmEngine

        return VllmEngine(spec, model_dir, model_name)
    from metaspec.devices import resolve_device, resolve_dtype

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
    "vllm_llm_kwargs",
    "vllm_sampling_kwargs",
]
