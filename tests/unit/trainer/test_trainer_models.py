"""Model loading checks, draft derivation and the learning-rate schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from metaspec.runtime import PermanentError
from metaspec.trainer.loop import lr_lambda
from metaspec.trainer.models import check_loadable, derive_draft


def write_config(path, **extra):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **extra}))
    return path


def test_quantized_model_is_refused_naming_the_field(tmp_path):
    model = write_config(tmp_path / "m", quantization_config={"quant_method": "gptq", "bits": 4})
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(PermanentError, match=r"spec\.baseModel: the model is quantized \(gptq\)"):
        check_loadable(model)


def test_pickled_weights_are_refused(tmp_path):
    model = write_config(tmp_path / "m")
    (model / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(PermanentError, match=r"no \*\.safetensors weights \(found: pytorch_model\.bin\)"):
        check_loadable(model)


def test_missing_config_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(PermanentError, match=r"has no config\.json"):
        check_loadable(tmp_path / "m")


def tiny_target(layers: int = 3, tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=61,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_derived_draft_is_the_targets_first_layers(tied):
    target = tiny_target(tied=tied)
    draft = derive_draft(target, 2).eval()
    assert draft.config.num_hidden_layers == 2 and len(draft.model.layers) == 2
    target_state = target.state_dict()
    for name, tensor in draft.state_dict().items():
        torch.testing.assert_close(tensor, target_state[name], msg=name)
        assert tensor.data_ptr() != target_state[name].data_ptr(), f"{name} shares memory with the target"
    ids = torch.tensor([[1, 5, 9, 2]])
    hidden = target.model.embed_tokens(ids)
    position_embeddings = target.model.rotary_emb(hidden, torch.arange(4)[None])
    for layer in target.model.layers[:2]:
        hidden = layer(hidden, position_embeddings=position_embeddings, attention_mask=None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    expected = target.lm_head(target.model.norm(hidden))
    torch.testing.assert_close(draft(ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_draft_deeper_than_target_is_refused():
    with pytest.raises(PermanentError, match=r"spec\.draft\.numLayers: 5 exceeds the target's 3 layers"):
        derive_draft(tiny_target(), 5)


def test_schedule_warms_up_then_decays():
    cosine = lr_lambda("cosine", warmup=4, total=20)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(4) == 1.0
    assert cosine(12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert cosine(20) == pytest.approx(0.0)
    linear = lr_lambda("linear", warmup=0, total=10)
    assert linear(5) == pytest.approx(0.5)
    assert lr_lambda("constant", warmup=2, total=10)(9) == 1.0


@pytest.mark.parametrize(
    "tensors,found",
    [
        ({"model.layers.0.mlp.weight": torch.zeros(2, 2).to(torch.float8_e4m3fn)}, "F8_E4M3"),
        ({"model.layers.0.mlp.weight": torch.zeros(2, 2, dtype=torch.int8)}, "I8"),
        ({"model.layers.0.mlp.qweight": torch.zeros(2, 2, dtype=torch.int32)}, "qweight"),
    ],
)
def test_quantized_weights_are_refused_without_a_quantization_config(tmp_path, tensors, found):
    """FP8, int8 and GPTQ-packed checkpoints whose name and config say nothing are found from the
    safetensors header; a full-precision one passes."""
    model = write_config(tmp_path / "m")
    save_file(tensors, model / "model.safetensors")
    with pytest.raises(PermanentError, match=rf"spec\.baseModel: the model is quantized .*{found}"):
        check_loadable(model)
    save_file({"model.layers.0.mlp.weight": torch.zeros(2, 2, dtype=torch.bfloat16)}, model / "model.safetensors")
    assert check_loadable(model)["model_type"] == "llama"
    (model / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PermanentError, match="not a readable safetensors file"):
        check_loadable(model)
