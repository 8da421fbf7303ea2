"""The EAGLE-3 recipe: a feature-level draft over a tiny target, unrolled, with a pruned vocabulary."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import tiny_draft_spec, training_run

from metaspec.artifacts import read_manifest
from metaspec.drafts import load_eagle3
from metaspec.trainer.progress import LogReporter
from metaspec.trainer.recipes.eagle3 import unroll_bias
from metaspec.trainer.run import train


def test_eagle3_draft_trains_and_saves_in_vllm_layout(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    draft = {"architecture": "eagle3", "objective": "distill", "vocabulary": 256, "unroll": 2}
    spec = tiny_draft_spec(tiny_llama, tmp_path, draft)
    summary = train(training_run(spec), work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())

    assert 0 <= summary["metrics"]["draftAgreement"] <= 1
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"], [r["loss"] for r in history]
    assert {"model/model.safetensors", "model/config.json"} <= set(read_manifest(out).files)
    body = json.loads((out / "model" / "config.json").read_text())
    assert body["architectures"] == ["LlamaForCausalLMEagle3"]
    assert body["draft_vocab_size"] == 256 and body["num_hidden_layers"] == 1
    target = AutoModelForCausalLM.from_pretrained(tiny_llama)
    draft = load_eagle3(out / "model", target.get_input_embeddings(), target.config)
    ids = draft.target_ids()
    assert ids.unique().numel() == 256 and bool((ids[1:] > ids[:-1]).all())
    assert {target.config.eos_token_id, target.config.pad_token_id} <= set(ids.tolist())


def test_unroll_bias_sees_the_serving_time_cache():
    """Step 3 at position 5 continues the round based at 3: step-1 entries ≤ 3, step 2 at 4, itself at 5."""
    bias = unroll_bias(8, 3, torch.device("cpu"))[0, 0]  # (8, 24)
    seen = (bias[5] == 0).nonzero().flatten().tolist()
    assert seen == [0, 1, 2, 3, 8 + 4, 16 + 5]
    assert torch.isinf(unroll_bias(8, 1, torch.device("cpu"))[0, 0]).sum() == 28  # plain causal


@pytest.mark.parametrize("draft", [{"architecture": "eagle3", "numLayers": 2}, {"unroll": 2}])
def test_eagle3_fields_refused_where_they_do_not_apply(tiny_llama, tmp_path, draft):
    spec = {
        "method": "causal-lm",
        "baseModel": {"uri": str(tiny_llama)},
        "dataset": {"uri": "builtin://train"},
        "draft": draft,
        "output": {"uri": str(tmp_path)},
    }
    with pytest.raises(ValueError, match=r"eagle3|numLayers"):
        training_run(spec)


def test_layer_draft_with_a_vocabulary_saves_it_and_loads_pruned(tiny_llama, tmp_path):
    """`draft.vocabulary` on a separate draft: trained on the subset's rows, saved with its `d2t`, and
    loaded by the server with a head that scores only those rows."""
    from metaspec.api.sources import ModelSource
    from metaspec.drafts.vocabulary import SubsetHead
    from metaspec.server.engine.loader import load_model

    out = tmp_path / "out"
    draft = {"initFrom": "target", "numLayers": 1, "objective": "distill", "vocabulary": 128}
    spec = tiny_draft_spec(tiny_llama, tmp_path, draft, per_domain=2, maxSteps=2, evalSteps=2)
    train(training_run(spec), work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())
    assert "model/draft_vocabulary.safetensors" in read_manifest(out).files
    loaded = load_model(
        ModelSource(uri=str(out / "model")), "draft", tmp_path / "c", torch.device("cpu"), torch.float32
    )
    head = loaded.model.get_output_embeddings()
    assert isinstance(head, SubsetHead) and head.rows.out_features == 128
    logits = loaded.model(torch.tensor([[1, 2, 3]])).logits[0, -1]
    assert int(torch.isfinite(logits).sum()) == 128 and int(logits.argmax()) in head.ids.tolist()


def test_the_target_runs_over_each_example_once(tiny_llama, tmp_path, monkeypatch):
    """The frozen target gives an example the same features every epoch: they are kept after its first
    pass (training and evaluation alike), and training on them matches computing them again each time."""
    import metaspec.trainer.recipes.eagle3 as recipe

    rows: list[int] = []
    inputs = recipe.body_inputs

    def counted(batch, device):
        rows.append(len(batch["input_ids"]))
        return inputs(batch, device)

    monkeypatch.setattr(recipe, "body_inputs", counted)
    losses, passes = {}, {}
    budget = recipe.FEATURE_CACHE_BYTES
    for kept in (budget, 0):
        monkeypatch.setattr(recipe, "FEATURE_CACHE_BYTES", kept)
        rows.clear()
        work = tmp_path / str(kept)
        work.mkdir()
        draft = {"architecture": "eagle3", "objective": "distill", "unroll": 2}
        spec = tiny_draft_spec(tiny_llama, work, draft, maxSteps=12)  # 1.5 epochs of 32 examples
        train(training_run(spec), work_dir=work / "work", device="cpu", reporter=LogReporter())
        history = [json.loads(line) for line in (work / "out" / "history.jsonl").read_text().splitlines()]
        losses[kept] = [r["loss"] for r in history if "loss" in r]
        passes[kept] = sum(rows)
    examples = sum(len((tmp_path / "0" / name).read_text().splitlines()) for name in ("train.jsonl", "eval.jsonl"))
    assert passes[budget] == examples < passes[0]
    assert losses[budget] == pytest.approx(losses[0], rel=1e-4)
