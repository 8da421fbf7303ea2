"""`SpeculativeEngine` on a tiny random Llama with SmolLM2's tokenizer: streaming, stops, cancellation."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from metaspec.server.engine import RoutingPolicy, SamplingParams, SpeculativeEngine, kernels
from metaspec.server.engine.engine import SWITCH_INTERVAL, _Outbox


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> SpeculativeEngine:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    target = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(3)
    draft = AutoModelForCausalLM.from_config(target.config).eval()
    return SpeculativeEngine.from_models(target, draft, tokenizer, RoutingPolicy("always", 0.5, 3), "tiny")


async def collect(engine: SpeculativeEngine, prompt: list[int], params: SamplingParams):
    return [delta async for delta in engine.generate(prompt, params)]


async def test_streams_text_and_ends_with_stats(engine: SpeculativeEngine) -> None:
    prompt = engine.encode_chat([{"role": "user", "content": "Hello there"}])
    deltas = await collect(engine, prompt, SamplingParams(max_tokens=20))
    final = deltas[-1]
    assert final.finish_reason in ("stop", "length") and final.stats is not None
    ids = [t for d in deltas for t in d.token_ids]
    assert "".join(d.text for d in deltas) == engine.tokenizer.decode(ids, skip_special_tokens=True)
    stats = final.stats
    assert stats.route == "speculative" and stats.prompt_tokens == len(prompt)
    assert stats.completion_tokens == len(ids) + (final.finish_reason == "stop")
    assert stats.proposed_tokens > 0 and stats.time_to_first_token is not None
    if final.finish_reason == "length":
        assert len(ids) == 20


async def test_same_seed_same_sample(engine: SpeculativeEngine) -> None:
    prompt = engine.encode_prompt("Once upon a time")
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=11)
    first, second = [await collect(engine, prompt, params) for _ in range(2)]
    assert [d.token_ids for d in first] == [d.token_ids for d in second]


async def test_end_of_turn_token_stops_and_is_not_shown(engine: SpeculativeEngine) -> None:
    prompt = engine.encode_prompt("Once upon a time")
    free = await collect(engine, prompt, SamplingParams(max_tokens=8))
    ids = [t for d in free for t in d.token_ids]
    stop_token = ids[4]
    saved = engine._stop_ids  # the tiny random model never says <|im_end|>: make one of its tokens the EOS
    engine._stop_ids = frozenset({stop_token})
    try:
        deltas = await collect(engine, prompt, SamplingParams(max_tokens=8))
    finally:
        engine._stop_ids = saved
    got = [t for d in deltas for t in d.token_ids]
    assert got == ids[: ids.index(stop_token)]
    assert deltas[-1].finish_reason == "stop"


async def test_stop_string(engine: SpeculativeEngine) -> None:
    prompt = engine.encode_prompt("Once upon a time")
    free = await collect(engine, prompt, SamplingParams(max_tokens=10))
    text = "".join(d.text for d in free)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    deltas = await collect(engine, prompt, SamplingParams(max_tokens=10, stop=(stop,)))
    assert "".join(d.text for d in deltas) == text[: text.index(stop)]
    assert deltas[-1].finish_reason == "stop"


async def test_cancel_stops_decoding_and_the_engine_serves_on(engine: SpeculativeEngine) -> None:
    prompt = engine.encode_prompt("Count forever")
    stream = engine.generate(prompt, SamplingParams(max_tokens=500))
    await anext(stream)
    await stream.aclose()
    deltas = await asyncio.wait_for(collect(engine, prompt, SamplingParams(max_tokens=3)), timeout=60)
    assert deltas[-1].finish_reason is not None


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([], "empty"), ([10**9], "out of range"), (list(range(5000)), "holds 1020 per sequence")],
)
async def test_bad_requests_raise_value_error(engine: SpeculativeEngine, prompt: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await collect(engine, prompt, SamplingParams(max_tokens=4))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_logprobs_are_the_targets_at_the_emitted_positions(engine: SpeculativeEngine, temperature: float) -> None:
    """Under speculation, greedy or sampled: each reported log-probability (and its alternatives) is the
    target's log-softmax at that position given the emitted tokens before it, as one plain forward pass
    over prompt + completion computes them."""
    prompt = engine.encode_prompt("Once upon a time")
    params = SamplingParams(max_tokens=12, temperature=temperature, seed=5, logprobs=3)
    deltas = await collect(engine, prompt, params)
    ids = [t for d in deltas for t in d.token_ids]
    scores = [s for d in deltas for s in d.logprobs]
    assert deltas[-1].stats.proposed_tokens > 0 and [s.token for s in scores] == ids
    with torch.inference_mode():
        logits = engine.decoder.target.model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
    expected = torch.log_softmax(logits.float(), -1)
    for position, score in enumerate(scores):
        assert score.logprob == pytest.approx(expected[position, score.token].item(), abs=1e-4)
        top = expected[position].topk(3)
        assert [t for t, _ in score.top] == top.indices.tolist()
        assert [v for _, v in score.top] == pytest.approx(top.values.tolist(), abs=1e-4)


async def test_stop_token_ids_ignore_eos_and_min_tokens(engine: SpeculativeEngine) -> None:
    prompt = engine.encode_prompt("Once upon a time")
    free = [t for d in await collect(engine, prompt, SamplingParams(max_tokens=8)) for t in d.token_ids]
    stop = free[3]
    cut = await collect(engine, prompt, SamplingParams(max_tokens=8, stop_token_ids=(stop,)))
    assert [t for d in cut for t in d.token_ids] == free[: free.index(stop)] and cut[-1].finish_reason == "stop"
    saved = engine._stop_ids
    engine._stop_ids = frozenset({stop})  # as if the model's own EOS
    try:
        ignoring = await collect(engine, prompt, SamplingParams(max_tokens=8, ignore_eos=True))
        held = await collect(engine, prompt, SamplingParams(max_tokens=8, min_tokens=8))
    finally:
        engine._stop_ids = saved
    assert [t for d in ignoring for t in d.token_ids] == free and ignoring[-1].finish_reason == "length"
    tokens = [t for d in held for t in d.token_ids]
    assert len(tokens) == 8 and stop not in tokens  # banned until the 8th token, so never drawn


async def test_concurrent_requests_decode_as_they_would_alone(engine: SpeculativeEngine) -> None:
    """Requests of different lengths, greedy and seeded-sampled, arriving at different times, decode in
    one batch; greedy ones give exactly what they give alone."""
    texts = ["Hi", "Once upon a time there was", "Count to ten, slowly and clearly", "A", "Tell me about the sea"]
    params = [SamplingParams(max_tokens=6 + 3 * i, temperature=0.0 if i % 2 else 0.9, seed=i) for i in range(5)]
    prompts = [engine.encode_prompt(t) for t in texts]
    alone = [await collect(engine, p, s) for p, s in zip(prompts, params, strict=True)]

    async def later(delay: float, prompt: list[int], sampling: SamplingParams):
        await asyncio.sleep(delay)
        return await collect(engine, prompt, sampling)

    together = await asyncio.gather(
        *(later(0.02 * i, p, s) for i, (p, s) in enumerate(zip(prompts, params, strict=True)))
    )
    for sampling, one, many in zip(params, alone, together, strict=True):
        assert many[-1].finish_reason == one[-1].finish_reason
        if sampling.temperature == 0:
            assert [t for d in many for t in d.token_ids] == [t for d in one for t in d.token_ids]


async def test_a_batch_wakes_the_event_loop_once_a_step(engine: SpeculativeEngine, monkeypatch) -> None:
    """Each step posts a Delta to every request in its batch; they reach the event loop in one wake-up
    (a `call_soon_threadsafe`, counted by a spy that passes every call through), in order for each
    request. One wake-up per Delta would give as many wake-ups as Deltas."""
    loop = asyncio.get_running_loop()
    wakes = []
    call_soon_threadsafe = loop.call_soon_threadsafe
    monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a: wakes.append(a) or call_soon_threadsafe(*a))
    prompts = [engine.encode_prompt(t) for t in ["Hi", "Once upon a time", "Count to ten", "Tell me about the sea"]]
    greedy = SamplingParams(max_tokens=16, ignore_eos=True)
    together = await asyncio.gather(*(collect(engine, p, greedy) for p in prompts))
    monkeypatch.undo()
    deltas = sum(len(d) for d in together)
    assert 0 < len(wakes) <= deltas / 2, (len(wakes), deltas)
    for prompt, many in zip(prompts, together, strict=True):
        alone = await collect(engine, prompt, greedy)
        assert [t for d in many for t in d.token_ids] == [t for d in alone for t in d.token_ids]
        assert many[-1].finish_reason == "length" and many[-1].stats is not None


def test_posts_to_a_closed_event_loop_are_dropped() -> None:
    """A client's loop that has closed (its server stopped) takes nothing more: sending the worker's
    posts to it neither raises nor keeps them."""
    loop = asyncio.new_event_loop()
    outbox = _Outbox()
    inbox: asyncio.Queue[int] = asyncio.Queue()
    outbox.post(loop, inbox, 1)
    loop.close()
    outbox.send()
    outbox.send()
    assert inbox.empty()


@pytest.mark.parametrize("max_batch", [1, 4])  # the sequential decoder, the batch decoder
def test_generate_here_decodes_on_the_callers_thread_as_the_worker_does(tiny_llama: Path, max_batch: int) -> None:
    """Seeded sampling and stats as through the decode thread; refused once that thread runs. The decode
    thread of a decoder whose steps overlap (a GPU's; switched on here), as it starts, has the interpreter
    switch threads at least every `SWITCH_INTERVAL`."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # the interpreter's default
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    target = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(3)
    draft = AutoModelForCausalLM.from_config(target.config).eval()
    policy = RoutingPolicy("always", 0.5, 3)
    engine = SpeculativeEngine.from_models(target, draft, tokenizer, policy, "tiny", max_batch=max_batch)
    prompt = engine.encode_prompt("Once upon a time")
    params = SamplingParams(max_tokens=10, temperature=0.8, seed=5)
    here = engine.generate_here(prompt, params)
    assert engine._worker is None  # nothing started a thread
    assert engine.decoder is not None
    engine.decoder.overlap = True
    there = list(engine.generate_sync(prompt, params))
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    sys.setswitchinterval(interval)
    assert [(d.text, d.token_ids) for d in here] == [(d.text, d.token_ids) for d in there]
    assert here[-1].finish_reason == there[-1].finish_reason and here[-1].stats.proposed_tokens > 0
    with pytest.raises(RuntimeError, match="its own thread"):
        engine.generate_here(prompt, params)
    with pytest.raises(ValueError):  # checked as every request is
        engine.generate_here([], params)
    engine.close()


@pytest.mark.parametrize("fusible", [False, True])
def test_target_only_at_a_batch_of_one_takes_the_batch_decoder_where_its_kernels_fuse(
    tiny_llama: Path, fusible: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `compile` and no draft at maxConcurrency 1, requests decode through the sequential decoder, or
    through the batch decoder's padded steps where Liger-Kernel fuses the target's kernels (faster there on
    a GPU). Liger's kernels need a GPU, so `kernels.fusible` is mocked here (the CUDA tests check the real
    one); with a separate draft the sequential decoder serves either way. Both decode the same tokens."""
    monkeypatch.setattr(kernels, "fusible", lambda model: fusible)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    target = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    never, options = RoutingPolicy("never", 0.5, 3), {"static_cache_len": 64, "compile": True, "max_batch": 1}
    alone = SpeculativeEngine.from_models(target, None, tokenizer, never, **options)
    assert (alone.sequential is None) == fusible == (alone.decoder.target.padded is not None)
    assert (alone.with_routing(never).sequential is None) == fusible
    assert SpeculativeEngine.from_models(target, target, tokenizer, never, **options).sequential is not None
    if fusible:  # (the sequential decoder would torch.compile on its first request: slow on a CPU)
        eager = SpeculativeEngine.from_models(target, None, tokenizer, never, max_batch=1)
        prompt, params = alone.encode_prompt("Once upon a time"), SamplingParams(max_tokens=10)
        tokens = [[d.token_ids for d in engine.generate_here(prompt, params)] for engine in (alone, eager)]
        assert tokens[0] == tokens[1] and eager.sequential is not None
