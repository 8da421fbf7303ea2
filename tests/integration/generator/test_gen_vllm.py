"""The real vLLM engine on SmolLM2-135M-Instruct (GPU machines with vLLM; skipped elsewhere with the reason)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaspec.api import TeacherGeneration, TeacherGenerationSpec
from metaspec.datasets import read_records
from metaspec.generator import Options, Prompt, prompt_seed, run_shard
from metaspec.prompts import chat_prompt_ids
from metaspec.runtime import load_config

pytestmark = [pytest.mark.vllm, pytest.mark.gpu]


def spec(smollm2: Path, **sampling) -> TeacherGenerationSpec:
    return TeacherGenerationSpec.model_validate(
        {
            "model": {"uri": str(smollm2)},
            "dataset": {"uri": "builtin://prompts"},
            "output": {"uri": "/unused"},
            "engine": "vllm",
            "dtype": "float32",
            "maxModelLen": 1024,
            "gpuMemoryUtilization": 0.3,
            "sampling": {"temperature": 0.0, "maxTokens": 24, "stop": [], **sampling},
        }
    )


@pytest.fixture(scope="module")
def inputs():
    records, _ = read_records("builtin://prompts", require_output=False, max_examples=16)
    return records


@pytest.fixture(scope="module")
def vllm_engine(smollm2: Path):
    from metaspec.generator.engines.vllm import VllmEngine

    return VllmEngine(spec(smollm2), smollm2, "smollm2")


def run(engine, inputs, seed: int = 0, **sampling) -> dict:
    from vllm import SamplingParams

    engine.sampling = {**engine.sampling, **sampling}
    assert SamplingParams(**engine.sampling)  # the mapping is accepted by vLLM itself
    batch = [Prompt(r.id, chat_prompt_ids(engine.tokenizer, r.input), prompt_seed(seed, r.id)) for r in inputs]
    return {c.id: c for b in engine.plan(batch) for c in engine.generate(b)}


def test_finish_reasons_stops_and_seeds(vllm_engine, inputs) -> None:
    short = run(vllm_engine, inputs, max_tokens=2)
    assert {c.finish_reason for c in short.values()} == {"length"} and {c.num_tokens for c in short.values()} == {2}

    full = run(vllm_engine, inputs, max_tokens=24, stop=[])
    cut = run(vllm_engine, inputs, max_tokens=24, stop=["."])
    for key, completion in full.items():
        if "." in completion.text:
            assert cut[key].text == completion.text[: completion.text.index(".")]
            assert cut[key].finish_reason == "stop"

    sampled = {"temperature": 0.8, "max_tokens": 12, "stop": []}
    first, again = run(vllm_engine, inputs, 7, **sampled), run(vllm_engine, inputs, 7, **sampled)
    assert {k: c.text for k, c in first.items()} == {k: c.text for k, c in again.items()}


def test_vllm_shard_end_to_end(smollm2, tmp_path) -> None:
    body = {
        "apiVersion": "metaspec.dev/v1alpha1",
        "kind": "TeacherGeneration",
        "metadata": {"name": "vllm"},
        "spec": {**spec(smollm2).dump(), "output": {"uri": str(tmp_path / "out")}},
    }
    body["spec"]["dataset"]["maxExamples"] = 32
    (tmp_path / "config.json").write_text(json.dumps(body))
    result = run_shard(
        load_config(tmp_path / "config.json", TeacherGeneration).spec, 0, 1, Options(tmp_path / "w", tmp_path / "c")
    )
    assert result.merged is not None and result.merged["examplesDone"] == 32
    assert result.records[0]["metadata"]["generation_params"]["engine"] == "vllm"
