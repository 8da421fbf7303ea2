"""The transformers engine on the real SmolLM2-135M-Instruct (CPU) over built-in prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaspec.api import TeacherGeneration
from metaspec.api.generation import Sampling
from metaspec.causal_lm import load_causal_lm
from metaspec.datasets import read_records
from metaspec.generator import Options, Prompt, ShardResult, prompt_seed, run_shard
from metaspec.generator.engines.transformers import TransformersEngine
from metaspec.packed import PackedLinear
from metaspec.prompts import chat_prompt_ids
from metaspec.records import Record, dump_jsonl
from metaspec.runtime import load_config

pytestmark = pytest.mark.slow

PROMPTS = 16
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def inputs() -> list[Record]:
    """Built-in prompts, plus one whose answer SmolLM2 ends within the short budget."""
    records, _ = read_records("builtin://prompts", require_output=False, max_examples=PROMPTS - 1)
    short = Record(id="capital", input="What is the capital of France?", domain="common_sense", difficulty="easy")
    return [*records, short]


@pytest.fixture(scope="module")
def smol(smollm2: Path) -> TransformersEngine:
    """SmolLM2 loaded once; `engine` puts other sampling settings in front of the same model."""
    return TransformersEngine.load(smollm2, "smollm2", Sampling(), 8, torch.device("cpu"), torch.float32)


def engine(smol: TransformersEngine, **sampling) -> TransformersEngine:
    settings = {"temperature": 0.0, "max_tokens": MAX_TOKENS, "stop": [], **sampling}
    return TransformersEngine(smol.model, smol.tokenizer, "smollm2", Sampling(**settings), batch_size=8)


def prompts(engine: TransformersEngine, inputs, seed: int = 0) -> list[Prompt]:
    return [Prompt(r.id, chat_prompt_ids(engine.tokenizer, r.input), prompt_seed(seed, r.id)) for r in inputs]


def generate(engine: TransformersEngine, batch: list[Prompt]) -> dict:
    return {c.id: c for b in engine.plan(batch) for c in engine.generate(b)}


@pytest.fixture(scope="module")
def greedy(smollm2, inputs, tmp_path_factory) -> ShardResult:
    """A whole shard through `run_shard`: greedy with the default repetition penalty, short outputs."""
    tmp = tmp_path_factory.mktemp("smollm2-shard")
    (tmp / "prompts.jsonl").write_text("".join(dump_jsonl(inputs)))
    body = {
        "apiVersion": "metaspec.dev/v1alpha1",
        "kind": "TeacherGeneration",
        "metadata": {"name": "smollm2"},
        "spec": {
            "model": {"uri": str(smollm2)},
            "dataset": {"uri": str(tmp / "prompts.jsonl")},
            "output": {"uri": str(tmp / "out")},
            "engine": "transformers",
            "resources": {"gpus": 0},
            "batchSize": 8,
            "sampling": {"temperature": 0.0, "maxTokens": MAX_TOKENS, "stop": []},
        },
    }
    (tmp / "config.json").write_text(json.dumps(body))
    spec = load_config(tmp / "config.json", TeacherGeneration).spec
    return run_shard(spec, 0, 1, Options(tmp / "work", tmp / "cache", device="cpu", progress=False))


def test_records_are_complete_with_correct_finish_reasons(greedy, inputs, smollm2) -> None:
    assert [r["id"] for r in greedy.records] == [r.id for r in inputs]
    eot = "<|im_end|>"
    for record, source in zip(greedy.records, inputs, strict=True):
        meta = record["metadata"]
        assert (record["input"], record["domain"], record["difficulty"]) == (
            source.input,
            source.domain,
            source.difficulty,
        )
        assert record["output"] and eot not in record["output"]
        assert meta["teacher_model"] == str(smollm2) and meta["generation_time"] > 0
        assert meta["generation_params"]["max_tokens"] == MAX_TOKENS and meta["generation_params"]["temperature"] == 0
        assert 1 <= meta["num_tokens_generated"] <= MAX_TOKENS
        if meta["finish_reason"] == "length":  # only when the budget was used up
            assert meta["num_tokens_generated"] == MAX_TOKENS
    reasons = {r["id"]: r["metadata"]["finish_reason"] for r in greedy.records}
    assert reasons["capital"] == "stop"  # "The capital of France is Paris." and the end of turn
    assert set(reasons.values()) == {"stop", "length"}
    stats = json.loads((Path(greedy.output_uri.removeprefix("file://")) / "stats.json").read_text())
    assert stats["examplesDone"] == PROMPTS and stats["naturalStopRate"] == greedy.merged["naturalStopRate"]


def test_a_tiny_budget_forces_length(smol, inputs) -> None:
    tiny = engine(smol, max_tokens=2)
    out = generate(tiny, prompts(tiny, inputs[:6]))
    assert {c.finish_reason for c in out.values()} == {"length"}
    assert {c.num_tokens for c in out.values()} == {2}


def test_stop_strings_cut_the_text(smol, inputs, greedy) -> None:
    stopped = engine(smol, stop=["."])
    with_stop = [r["id"] for r in greedy.records if "." in r["output"]]
    without = [r["id"] for r in greedy.records if "." not in r["output"]][:2]
    out = generate(stopped, prompts(stopped, [r for r in inputs if r.id in {*with_stop, *without}]))
    for record in greedy.records:
        if record["id"] not in out:
            continue
        full, completion = record["output"], out[record["id"]]
        if "." in full:
            assert completion.text == full[: full.index(".")] and completion.finish_reason == "stop"
            assert completion.num_tokens < record["metadata"]["num_tokens_generated"] or full.endswith(".")
        else:
            assert completion.text == full
    assert len(with_stop) >= 3 and without  # the checks above ran on real cuts and on uncut text


def test_same_seed_same_outputs(smol, inputs) -> None:
    sampled = engine(smol, temperature=0.8, max_tokens=6, repetition_penalty=1.2, top_p=0.95)
    first = generate(sampled, prompts(sampled, inputs[:4], seed=7))
    again = generate(sampled, prompts(sampled, inputs[:4], seed=7))
    other = generate(sampled, prompts(sampled, inputs[:4], seed=8))
    assert {k: c.text for k, c in first.items()} == {k: c.text for k, c in again.items()}
    assert {k: c.text for k, c in first.items()} != {k: c.text for k, c in other.items()}


def test_the_packed_model_answers_as_transformers_loads_it(smol, inputs, smollm2) -> None:
    """On the CPU the engine's model has its linear layers packed for oneDNN (`metaspec.packed`): greedy,
    in batches of 8, it answers exactly what the model as transformers loads it answers one at a time."""
    assert isinstance(smol.model.get_output_embeddings(), PackedLinear)
    greedy = engine(smol, repetition_penalty=1.0)
    batch = prompts(greedy, inputs[:8])
    stock = load_causal_lm(smollm2, torch.float32).eval()
    completions = generate(greedy, batch)
    with torch.inference_mode():
        for prompt in batch:
            ids = torch.tensor([prompt.token_ids])
            out = stock.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=greedy.stop_ids)
            expected = [t for t in out[0, ids.shape[1] :].tolist() if t not in greedy.stop_ids]
            assert completions[prompt.id].text == greedy.tokenizer.decode(expected, skip_special_tokens=True), prompt.id
