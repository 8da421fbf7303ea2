"""Draft formats: EAGLE-3 folders load only when consistent; draft vocabularies keep the special tokens
and the most frequent ones; a pruned head scores its subset only and maps draft ids onto target ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from metaspec.drafts import DraftFormatError, Eagle3Config, Eagle3Draft, draft_vocabulary, load_eagle3, save_eagle3
from metaspec.drafts.vocabulary import SubsetHead
from metaspec_testing.models import random_llama

VOCAB = 8
#: a pruned draft vocabulary holding both edges of the target's (0 and V − 1) and skipping the middle
PRUNED = torch.tensor([0, 2, 3, 7])


def tiny_target(layers: int = 4) -> LlamaForCausalLM:
    return random_llama(3, VOCAB, layers).eval()


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny_target()


@pytest.fixture(scope="module")
def pruned(target) -> Eagle3Draft:
    return Eagle3Draft.init_from_target(target, PRUNED).eval()


def saved(tmp_path: Path, draft: Eagle3Draft) -> Path:
    save_eagle3(draft, tmp_path / "eagle", dtype=torch.float32)
    return tmp_path / "eagle"


def test_saved_folder_round_trips(tmp_path, target, pruned) -> None:
    folder = saved(tmp_path, pruned)
    body = json.loads((folder / "config.json").read_text())
    assert body["architectures"] == ["LlamaForCausalLMEagle3"] and body["draft_vocab_size"] == 4
    assert body["eagle_aux_hidden_state_layer_ids"] == list(pruned.config.aux_layers) == [2, 2, 1]
    loaded = load_eagle3(folder, target.get_input_embeddings(), target.config)
    assert loaded.config == pruned.config
    assert Eagle3Config.from_json(loaded.config.to_json(), "again") == pruned.config
    for name, tensor in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert pruned.d2t.tolist() == [0, 1, 1, 4] and pruned.t2d.nonzero().flatten().tolist() == PRUNED.tolist()
    assert "embed_tokens.weight" not in load_file(folder / "model.safetensors")  # the target's is shared


def test_a_full_vocabulary_folder_has_no_mapping(tmp_path, target) -> None:
    """vLLM's EAGLE-3 loader creates `d2t`'s parameter only for a pruned head and refuses a folder with
    one otherwise: a full-vocabulary draft is saved without `d2t`/`t2d` and loads as the identity."""
    full = Eagle3Draft.init_from_target(target, None).eval()
    folder = saved(tmp_path, full)
    assert not {"d2t", "t2d"} & set(load_file(folder / "model.safetensors"))
    loaded = load_eagle3(folder, target.get_input_embeddings(), target.config)
    assert loaded.d2t.tolist() == [0] * VOCAB and loaded.t2d.all()
    for name, tensor in full.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    ("d2t", "message"),
    [
        (torch.tensor([0, 1, 1, 5]), "draft id 3 to target id 8, outside the target's vocabulary"),
        (torch.tensor([0, 1, 0, 4]), "several draft ids to target id 2"),
        (torch.tensor([-1, 1, 1, 4]), "draft id 0 to target id -1"),
        (torch.tensor([0.0, 1.0, 1.0, 4.0]), "integer offsets"),
        (torch.tensor([0, 1, 1]), r"d2t has shape \(3,\), config.json implies \(4,\)"),
    ],
)
def test_broken_d2t_is_refused(tmp_path, target, pruned, d2t, message) -> None:
    folder = saved(tmp_path, pruned)
    tensors = load_file(folder / "model.safetensors")
    tensors["d2t"] = d2t
    tensors.pop("t2d")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(DraftFormatError, match=message):
        load_eagle3(folder, target.get_input_embeddings(), target.config)


def test_inconsistent_t2d_and_a_foreign_target_are_refused(tmp_path, target, pruned) -> None:
    folder = saved(tmp_path, pruned)
    tensors = load_file(folder / "model.safetensors")
    tensors["t2d"][1] = True
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(DraftFormatError, match="t2d does not mark exactly the 4 target ids"):
        load_eagle3(folder, target.get_input_embeddings())
    other = tiny_target(layers=2)
    with pytest.raises(DraftFormatError, match="aux layers"):
        load_eagle3(saved(tmp_path, pruned), other.get_input_embeddings(), other.config)


def test_draft_vocabulary_keeps_special_tokens_then_the_most_frequent() -> None:
    counts = torch.tensor([0, 9, 3, 3, 0, 7, 1, 0])
    assert draft_vocabulary(counts, 4, always=[7]).tolist() == [1, 2, 5, 7]  # ties by lower id
    with pytest.raises(ValueError, match="must hold the 2 special tokens"):
        draft_vocabulary(counts, 1, always=[0, 7])


def test_subset_head_maps_draft_rows_to_target_ids(target) -> None:
    head = SubsetHead(target.get_output_embeddings(), PRUNED, VOCAB)
    hidden = torch.randn(5, 16)
    logits = head(hidden)
    assert logits.shape == (5, VOCAB)
    assert torch.isinf(logits[:, [1, 4, 5, 6]]).all()
    assert torch.allclose(logits[:, PRUNED], target.get_output_embeddings()(hidden)[:, PRUNED])


def test_a_pruned_draft_never_proposes_outside_yet_the_target_emits_it(target) -> None:
    """Greedy speculation with a separate draft whose head is pruned: its proposals stay in the subset,
    the output is the target's own greedy output, including tokens outside the subset."""
    from metaspec.server.engine import CausalLM, Processing, RequestStats, RoutingPolicy, SpeculativeDecoder

    draft = tiny_target(layers=1)
    draft.set_output_embeddings(SubsetHead(draft.get_output_embeddings(), PRUNED, VOCAB))
    draft_lm = CausalLM(draft, VOCAB)
    proposed: list[int] = []
    forward = draft_lm.forward

    def spy(ids, cache, keep, tokens=1):
        logits, padding = forward(ids, cache, keep, tokens)
        proposed.extend(logits.argmax(-1).tolist())
        return logits, padding

    draft_lm.forward = spy  # type: ignore[method-assign]
    decoder = SpeculativeDecoder(CausalLM(target, VOCAB), draft_lm, RoutingPolicy("always", 0.5, 3))
    emitted: set[int] = set()
    for prompt in ([1, 2, 3], [4, 5], [6, 1, 6, 1], [5, 4, 3, 2, 1]):
        expected = target.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt) :]
        got = [t for c in decoder.decode(prompt, Processing(), 10, RequestStats(), None) for t in c]
        assert got[: len(expected)] == expected.tolist()
        emitted.update(got)
    assert proposed and set(proposed) <= set(PRUNED.tolist())
    assert emitted - set(PRUNED.tolist()), "the target's choices outside the subset must be emitted"
