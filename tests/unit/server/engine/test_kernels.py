"""Which modules `kernels.fuse` gives Liger's kernels. The kernels themselves are Triton, which needs a GPU:
`test_compiled_cuda.py` checks that the fused CUDA graphs decode what the eager path decodes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM
from transformers.models.llama import modeling_llama

from metaspec.drafts import Eagle3Draft
from metaspec.server.engine import kernels
from metaspec_testing.models import random_llama


def test_a_llama_fuses_every_norm_and_mlp_and_its_rotary_embedding() -> None:
    model = random_llama(0, 64, 3)
    norms, mlps, modules = kernels.plan(model)
    layers = model.model.layers
    assert norms == [m for layer in layers for m in (layer.input_layernorm, layer.post_attention_layernorm)] + [
        model.model.norm
    ]
    assert mlps == [layer.mlp for layer in layers]
    assert modules == [modeling_llama]


def test_an_eagle3_draft_fuses_its_layer_and_the_llama_rotary_embedding_it_calls() -> None:
    draft = Eagle3Draft.init_from_target(random_llama(0, 64, 2), torch.arange(0, 32))
    norms, mlps, modules = kernels.plan(draft)
    assert len(norms) == 4 and len(mlps) == 1  # input, hidden and post-attention norms, the final norm
    assert modules == [modeling_llama]


def test_other_forms_are_left_alone() -> None:
    """Gemma's norm scales by (1 + weight) and its MLP is GELU-gated: not the forms Liger's Llama kernels compute."""
    config = GemmaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    norms, mlps, _ = kernels.plan(GemmaForCausalLM(config))
    assert norms == [] and mlps == []


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed here")
def test_without_liger_the_model_is_untouched() -> None:
    model = random_llama(0, 64, 2)
    assert kernels.fuse(model) is False and kernels.fusible(model) is False
    assert all("forward" not in vars(m) for m in model.modules())
    assert not getattr(modeling_llama.apply_rotary_pos_emb, "_metaspec_fused", False)


def test_fused_kernels_run_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's kernels need a CUDA device: a model elsewhere is not `fusible` even with Liger-Kernel (its
    functions mocked here, since it is not installed without a GPU)."""
    monkeypatch.setattr(kernels, "_liger", lambda: (None, None, None))
    assert not kernels.fusible(random_llama(0, 64, 2))
