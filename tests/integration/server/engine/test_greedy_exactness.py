"""At temperature 0, every routing policy returns exactly the target's greedy output.

Target: SmolLM2-135M-Instruct; draft: its first 4 layers (untrained, so most proposals are rejected —
the hard case for exactness: caches are cropped almost every round). Reference: transformers'
`generate(do_sample=False)` on the target alone.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from metaspec.api.serving import SpecServeSpec
from metaspec.packed import PackedLinear
from metaspec.prompts import chat_prompt_ids, end_of_turn_ids
from metaspec.server.engine import RoutingPolicy, SamplingParams, SpeculativeEngine, load_models

pytestmark = pytest.mark.slow

MAX_TOKENS = 8
THRESHOLD = 0.4  # the derived draft's first-token confidence on these prompts spans 0.32–0.52: both routes occur
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about autumn.",
    "What does a thermometer measure?",
    "Give a synonym for 'happy'.",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
    "Explain photosynthesis in one sentence.",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in our solar system?",
]


@pytest.fixture(scope="module")
def references(smollm2_models) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target-only greedy completion) per prompt, from transformers' `generate`."""
    target, _, tokenizer = smollm2_models
    out = []
    with torch.inference_mode():
        for text in PROMPTS:
            prompt = chat_prompt_ids(tokenizer, text)
            ids = target.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False)
            out.append((prompt, ids[0, len(prompt) :].tolist()))
    return out


def completion(engine: SpeculativeEngine, prompt: list[int]):
    deltas = list(engine.generate_sync(prompt, SamplingParams(max_tokens=MAX_TOKENS)))
    ids = [t for d in deltas for t in d.token_ids]
    return ids, deltas[-1]


@pytest.mark.parametrize("policy", ["always", "first-token", "per-token", "never"])
def test_every_policy_is_target_greedy(policy: str, smollm2_models, references) -> None:
    target, draft, tokenizer = smollm2_models
    engine = SpeculativeEngine.from_models(target, draft, tokenizer, RoutingPolicy(policy, THRESHOLD, 4))
    routes, proposed = set(), 0
    # one at a time: half the prompts (both routes of `first-token` among them), a few for `never`, which
    # decodes exactly like `generate`; every prompt runs batched below
    cases = references[:4] if policy == "never" else references[:6]
    for prompt, expected in cases:
        ids, final = completion(engine, prompt)
        # the engine leaves the end-of-turn token out of the completion; `generate` keeps it
        if final.finish_reason == "stop":
            assert expected[len(ids) :][:1] == expected[-1:] and expected[-1] in end_of_turn_ids(tokenizer)
        got = ids + expected[-1:] if final.finish_reason == "stop" else ids
        assert got == expected, (tokenizer.decode(prompt), final.stats)
        routes.add(final.stats.route)
        proposed += final.stats.proposed_tokens
    if policy == "first-token":
        assert routes == {"speculative", "target-only"}, "the threshold should send prompts both ways"
    if policy in ("always", "per-token"):
        assert proposed > 0


@pytest.mark.parametrize("policy", ["always", "first-token"])
def test_every_policy_is_target_greedy_in_a_batch(policy: str, smollm2_models, references) -> None:
    """All prompts at once from as many threads into a batch of 4: requests of different lengths join
    and leave the batch at different steps, target-only and speculating ones share steps."""
    target, draft, tokenizer = smollm2_models
    engine = SpeculativeEngine.from_models(target, draft, tokenizer, RoutingPolicy(policy, THRESHOLD, 4), max_batch=4)
    with ThreadPoolExecutor(len(references)) as pool:
        results = list(pool.map(lambda case: completion(engine, case[0]), references))
    engine.close()
    for (prompt, expected), (ids, final) in zip(references, results, strict=True):
        got = ids + expected[-1:] if final.finish_reason == "stop" else ids
        assert got == expected, (tokenizer.decode(prompt), final.stats)


def test_served_models_decode_the_target_greedy(smollm2, derived_draft, references, tmp_path) -> None:
    """Both models as the server loads them, their linear layers packed for oneDNN on the CPU
    (`pack_linears`): every prompt decodes what transformers' `generate` decodes with the stock target,
    one at a time and in a batch of 4."""
    spec = SpecServeSpec.model_validate({"target": {"uri": str(smollm2)}, "draft": {"uri": str(derived_draft)}})
    target, draft = load_models(spec, tmp_path, torch.device("cpu"))
    assert isinstance(target.model.get_output_embeddings(), PackedLinear)
    routing = RoutingPolicy("always", THRESHOLD, 4)
    for max_batch in (1, 4):
        engine = SpeculativeEngine.from_models(
            target.model, draft.model, target.tokenizer, routing, max_batch=max_batch
        )
        with ThreadPoolExecutor(max_batch) as pool:
            results = list(pool.map(lambda case, e=engine: completion(e, case[0]), references))
        engine.close()
        for (prompt, expected), (ids, final) in zip(references, results, strict=True):
            got = ids + expected[-1:] if final.finish_reason == "stop" else ids
            assert got == expected, (max_batch, target.tokenizer.decode(prompt), final.stats)
