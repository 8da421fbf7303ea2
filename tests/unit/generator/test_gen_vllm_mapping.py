"""The vLLM engine's parameter mapping, checked without vLLM: exactly the configured sampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from metaspec.api import TeacherGenerationSpec
from metaspec.api.generation import Sampling
from metaspec.generator import vllm_llm_kwargs, vllm_sampling_kwargs


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path):
    return AutoTokenizer.from_pretrained(smollm2)


def test_sampling_params_are_exactly_the_configured_ones(tokenizer) -> None:
    sampling = Sampling(
        temperature=0.7, max_tokens=300, repetition_penalty=1.3, top_p=0.85, top_k=40, stop=["\nUser:", "###"], seed=11
    )
    assert vllm_sampling_kwargs(sampling, tokenizer) == {
        "temperature": 0.7,
        "max_tokens": 300,
        "repetition_penalty": 1.3,
        "top_p": 0.85,
        "top_k": 40,
        "seed": 11,
        "stop": ["\nUser:", "###"],
        "stop_token_ids": [tokenizer.convert_tokens_to_ids("<|im_end|>")],  # SmolLM2: EOS is <|im_end|>
        "include_stop_str_in_output": False,
    }


def test_seed_defaults_and_no_top_k(tokenizer) -> None:
    kwargs = vllm_sampling_kwargs(Sampling(), tokenizer)
    assert kwargs["top_k"] == -1  # vLLM's spelling of "no top-k"
    assert (kwargs["temperature"], kwargs["repetition_penalty"], kwargs["max_tokens"]) == (0.3, 1.2, 512)
    assert kwargs["stop"] == ["<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "\nUser:", "\nHuman:"]


def llm_spec(**fields) -> TeacherGenerationSpec:
    return TeacherGenerationSpec.model_validate(
        {
            "model": {"uri": "s3://models/llama"},
            "dataset": {"uri": "builtin://prompts"},
            "output": {"uri": "s3://out/teacher"},
            "tensorParallelSize": 2,
            "gpuMemoryUtilization": 0.8,
            "maxModelLen": 4096,
            "sampling": {"seed": 5},
            "resources": {"gpus": 2},
            **fields,
        }
    )


def test_llm_kwargs_follow_the_spec_on_a_gpu() -> None:
    assert vllm_llm_kwargs(llm_spec(dtype="float16"), Path("/cache/llama"), "cuda") == {
        "model": "/cache/llama",
        "dtype": "float16",
        "gpu_memory_utilization": 0.8,
        "tensor_parallel_size": 2,
        "seed": 5,
        "trust_remote_code": False,
        "load_format": "safetensors",
        "max_model_len": 4096,
    }


def test_on_the_cpu_no_gpu_share_no_chunked_prefill_and_eager() -> None:
    kwargs = vllm_llm_kwargs(llm_spec(), Path("/m"), "cpu")
    assert "gpu_memory_utilization" not in kwargs  # a share of all RAM there: VLLM_CPU_KVCACHE_SPACE instead
    assert kwargs["enable_chunked_prefill"] is False and kwargs["enforce_eager"] is True


@pytest.mark.parametrize(("device", "dtype"), [("cuda", "bfloat16"), ("cpu", "float32")])
def test_auto_dtype_is_the_transformers_engines(device: str, dtype: str) -> None:
    """One rule for both engines: vLLM's own `auto` would be bfloat16 on the CPU too."""
    import torch

    from metaspec.devices import resolve_dtype

    assert vllm_llm_kwargs(llm_spec(), Path("/m"), device)["dtype"] == dtype
    assert resolve_dtype("auto", torch.device(device)) == getattr(torch, dtype)


def test_vllm_is_imported_only_by_its_engine() -> None:
    code = "import sys, metaspec.generator, metaspec.generator.cli; print('vllm' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_shard_spreads_over_all_its_gpus_unless_told_otherwise() -> None:
    four = {"resources": {"gpus": 4}, "tensorParallelSize": None}
    assert vllm_llm_kwargs(llm_spec(**four), Path("/m"), "cuda")["tensor_parallel_size"] == 4
    assert vllm_llm_kwargs(llm_spec(**four), Path("/m"), "cuda", visible_gpus=1)["tensor_parallel_size"] == 1
    assert vllm_llm_kwargs(llm_spec(**four), Path("/m"), "cpu")["tensor_parallel_size"] == 1
    assert vllm_llm_kwargs(llm_spec(resources={"gpus": 4}), Path("/m"), "cuda")["tensor_parallel_size"] == 2
