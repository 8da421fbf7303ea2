"""The causal-LM recipe: a draft cut from the (tiny) target and distilled from its logits."""

from __future__ import annotations

import json

from safetensors.torch import load_file
from trainer_helpers import tiny_draft_spec, training_run
from transformers import AutoConfig

from metaspec.api.serving import CALIBRATION_FILE, SpecServeSpec
from metaspec.artifacts import read_manifest
from metaspec.server.engine import SpeculativeEngine
from metaspec.trainer.progress import LogReporter
from metaspec.trainer.run import train


def test_derived_draft_distilled_from_target(tiny_llama, tmp_path):
    out = tmp_path / "out"
    draft = {"initFrom": "target", "numLayers": 1, "objective": "distill", "distillTemperature": 2.0}
    spec = tiny_draft_spec(tiny_llama, tmp_path, draft)
    summary = train(training_run(spec), work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())

    assert summary["artifacts"]["model"] == f"file://{out}/model"
    assert "adapter" not in summary["artifacts"]
    assert {"perplexityBase", "perplexityModel", "trainLoss", "evalLoss"} <= summary["metrics"].keys()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"], [r["loss"] for r in history]
    assert AutoConfig.from_pretrained(out / "model").num_hidden_layers == 1
    assert "model/model.safetensors" in read_manifest(out).files
    target = load_file(tiny_llama / "model.safetensors")
    draft = load_file(out / "model" / "model.safetensors")
    assert not any(".layers.1." in k for k in draft)
    assert set(draft) == {k for k in target if ".layers.1." not in k}


def test_derived_draft_publishes_a_confidence_threshold_auto_serves(tiny_llama, tmp_path):
    """The threshold calibrated on the evaluation set is in the metrics and in the draft's folder (under
    its manifest); a SpecServe with `confidenceThreshold: auto` serving that folder routes with it."""
    out = tmp_path / "out"
    draft = {"initFrom": "target", "numLayers": 1, "objective": "next-token"}
    summary = train(
        training_run(tiny_draft_spec(tiny_llama, tmp_path, draft, maxSteps=2)),
        work_dir=tmp_path / "work",
        device="cpu",
        reporter=LogReporter(),
    )
    published = summary["metrics"]["calibration"]
    assert 0 < published["confidenceThreshold"] <= 1 and published["maxSpeculativeTokens"] == 5
    assert published["prompts"] > 0 and published["cost"] >= 0 and published["predictedSpeedup"] >= 1
    assert CALIBRATION_FILE in read_manifest(out / "model").files
    spec = SpecServeSpec.model_validate(
        {
            "target": {"uri": str(tiny_llama)},
            "draft": {"uri": summary["artifacts"]["model"]},
            "routing": {"policy": "first-token", "confidenceThreshold": "auto"},
        }
    )
    engine = SpeculativeEngine.from_spec(spec, "tiny", tmp_path / "cache", device="cpu")
    engine.load()
    assert engine.routing.threshold == published["confidenceThreshold"]
    engine.close()


def test_half_precision_draft_keeps_fp32_master_weights(tiny_llama, tmp_path, monkeypatch):
    """With `dtype: bfloat16` the draft trains under autocast on fp32 weights (bf16 weights would round
    small AdamW updates away) and is saved in bf16, the dtype it is served in."""
    import torch

    from metaspec.trainer.recipes.causal_lm import CausalLmRecipe

    seen = []
    step = CausalLmRecipe.train_step

    def spy(self, scale):
        seen.append({p.dtype for p in self.model.parameters()})
        return step(self, scale)

    monkeypatch.setattr(CausalLmRecipe, "train_step", spy)
    out = tmp_path / "out"
    spec = tiny_draft_spec(
        tiny_llama, tmp_path, {"initFrom": "target", "numLayers": 1, "objective": "distill"}, maxSteps=3
    )
    spec["baseModel"]["dtype"] = "bfloat16"
    train(training_run(spec), work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)
    assert {t.dtype for t in load_file(out / "model" / "model.safetensors").values()} == {torch.bfloat16}
