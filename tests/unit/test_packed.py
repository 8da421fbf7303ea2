"""`PackedLinear` and `pack_linears`: oneDNN's packed linear layers computing what `nn.Linear` does."""

from __future__ import annotations

import pytest
import torch

from metaspec.causal_lm import load_causal_lm
from metaspec.packed import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 64), (1, 1, 64), (0, 64)])
def test_a_packed_layer_computes_the_linear_layer(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)


def test_a_row_is_computed_the_same_whatever_rows_share_its_pass() -> None:
    """What lets a verify pass score each position exactly as the one-token step it stands for."""
    torch.manual_seed(0)
    packed = PackedLinear(torch.nn.Linear(576, 4096, bias=False))
    x = torch.randn(8, 576)
    with torch.inference_mode():
        whole = packed(x)
        for rows in (1, 2, 3, 5):
            assert torch.equal(packed(x[:rows]), whole[:rows])


def test_pack_linears_packs_a_models_layers_and_keeps_its_tied_embedding(tiny_llama) -> None:
    model, packed = (load_causal_lm(tiny_llama, torch.float32).eval() for _ in range(2))
    layers = sum(type(m) is torch.nn.Linear for m in packed.modules())
    embedding = packed.get_input_embeddings().weight
    assert pack_linears(packed) == layers > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert packed.get_input_embeddings().weight is embedding
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
        greedy = {m: m.generate(ids, max_new_tokens=12, do_sample=False) for m in (model, packed)}
    assert torch.equal(greedy[model], greedy[packed])


def test_only_cpu_layers_in_float32_or_bfloat16_are_packed() -> None:
    layers = torch.nn.ModuleList(
        [torch.nn.Linear(8, 8), torch.nn.Linear(8, 8, dtype=torch.bfloat16), torch.nn.Linear(8, 8, dtype=torch.float16)]
    )
    assert pack_linears(layers) == 2
    assert [type(m).__name__ for m in layers] == ["PackedLinear", "PackedLinear", "Linear"]
