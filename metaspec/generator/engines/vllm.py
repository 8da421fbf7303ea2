"""The vLLM engine: the production path (continuous batching, paged attention, tensor parallelism).

vLLM is imported inside `VllmEngine` only, so everything else runs where it is not installed. The
parameter mapping is in pure functions (`vllm_llm_kwargs`, `vllm_sampling_kwargs`) tested without it.
vLLM pins its own transformers, so it lives in a virtual environment of its own (`make vllm-venv`),
where `metaspec generate` runs with metaspec's generator extra installed next to it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaspec.api.generation import Sampling, TeacherGenerationSpec
from metaspec.devices import dtype_name
from metaspec.prompts import end_of_turn_ids

from .base import Completion, FinishReason, Prompt

#: Prompts per `LLM.generate` call. vLLM batches continuously inside a call; calls are the units of
#: progress and of resume, so this bounds the work a restart repeats, at the cost of a short tail of
#: an emptying batch per call.
CHUNK_SIZE = 512

#: GiB of KV cache vLLM's CPU build reserves unless `VLLM_CPU_KVCACHE_SPACE` says otherwise. On the
#: CPU `gpu_memory_utilization` is not a share of a GPU but of all RAM, and its 0.9 fails at start;
#: 4 GiB holds ~90k tokens of SmolLM2-135M in float32, or ~8k of an 8B Llama in bfloat16.
CPU_KVCACHE_GIB = 4


def vllm_llm_kwargs(
    spec: TeacherGenerationSpec, model_dir: Path, device_type: str, visible_gpus: int | None = None
) -> dict[str, Any]:
    """Arguments of `vllm.LLM` for a TeacherGeneration spec, on vLLM's `device_type` (`cuda`, `cpu`)
    with `visible_gpus` GPUs (None: as many as the spec's `resources.gpus`, as in its pod)."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": dtype_name(spec.dtype, device_type),
        "tensor_parallel_size": tensor_parallel_size(spec, device_type, visible_gpus),
        "seed": spec.sampling.seed,
        "trust_remote_code": spec.model.trust_remote_code,
        "load_format": "safetensors",  # never vLLM's fallback to unpickling *.bin weights
    }
    if device_type == "cpu":
        # Seeded sampling over a prefill split in chunks kills the CPU build's engine ("CPU Generator
        # does not use offset"); compiling costs minutes per start there and its cache does not reload.
        kwargs |= {"enable_chunked_prefill": False, "enforce_eager": True}
    else:
        kwargs["gpu_memory_utilization"] = spec.gpu_memory_utilization
    if spec.max_model_len is not None:
        kwargs["max_model_len"] = spec.max_model_len
    return kwargs


def tensor_parallel_size(spec: TeacherGenerationSpec, device_type: str, visible_gpus: int | None = None) -> int:
    """`tensorParallelSize`, by default every GPU of the shard (`resources.gpus`, at most the visible
    ones, as under `metaspec local` on a smaller machine): a shard given several GPUs spreads its one
    vLLM instance over them. The CPU build runs one instance."""
    if spec.tensor_parallel_size is not None:
        return spec.tensor_parallel_size
    if device_type == "cpu":
        return 1
    gpus = spec.resources.gpus if visible_gpus is None else min(spec.resources.gpus, visible_gpus)
    return max(gpus, 1)


def vllm_sampling_kwargs(sampling: Sampling, tokenizer: Any) -> dict[str, Any]:
    """Arguments of `vllm.SamplingParams`: exactly the configured sampling, plus the model's stop ids."""
    return {
        "temperature": 0.0 if sampling.greedy else sampling.temperature,
        "max_tokens": sampling.max_tokens,
        "repetition_penalty": sampling.repetition_penalty,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k is not None else -1,  # vLLM's "no top-k"
        "seed": sampling.seed,
        "stop": list(sampling.stop),
        "stop_token_ids": end_of_turn_ids(tokenizer),
        "include_stop_str_in_output": False,
    }


class VllmEngine:
    """`vllm.LLM` behind the `Engine` protocol. Each prompt gets its own seeded SamplingParams."""

    def __init__(self, spec: TeacherGenerationSpec, model_dir: Path, model_name: str):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KVCACHE_GIB))  # read by the CPU build only
        from vllm import LLM, SamplingParams, TokensPrompt
        from vllm.platforms import current_platform

        self.model_name = model_name
        self._sampling_params, self._tokens_prompt = SamplingParams, TokensPrompt
        device_type = current_platform.device_type
        visible = current_platform.device_count() if device_type == "cuda" else None
        self.llm_kwargs = vllm_llm_kwargs(spec, model_dir, device_type, visible)
        self.llm = LLM(**self.llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = vllm_sampling_kwargs(spec.sampling, self.tokenizer)

    def generation_params(self) -> dict[str, Any]:
        return {
            "engine": "vllm",
            **self.sampling,
            "per_prompt_seed": "sha256(f'{seed}:{id}')",
            "dtype": self.llm_kwargs["dtype"],
            "tensor_parallel_size": self.llm_kwargs["tensor_parallel_size"],
        }

    def plan(self, prompts: Sequence[Prompt]) -> list[list[Prompt]]:
        return [list(prompts[i : i + CHUNK_SIZE]) for i in range(0, len(prompts), CHUNK_SIZE)]

    def generate(self, batch: Sequence[Prompt]) -> list[Completion]:
        started = time.perf_counter()
        outputs = self.llm.generate(
            [self._tokens_prompt(prompt_token_ids=p.token_ids) for p in batch],
            [self._sampling_params(**{**self.sampling, "seed": p.seed}) for p in batch],
            use_tqdm=False,
        )
        share = (time.perf_counter() - started) / len(batch)
        return [self._completion(p, out.outputs[0], share) for p, out in zip(batch, outputs, strict=True)]

    @staticmethod
    def _completion(prompt: Prompt, output: Any, time_share: float) -> Completion:
        reason: FinishReason = "length" if output.finish_reason == "length" else "stop"
        return Completion(prompt.id, output.text, len(output.token_ids), reason, time_share)
