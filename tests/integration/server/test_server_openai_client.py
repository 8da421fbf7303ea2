"""The official `openai` client against the running router: completions, chat, streaming.

`test_server_vllm.py` runs the tests of plain OpenAI behaviour against vLLM's OpenAI server too; the
docstrings of the others say why they cannot pass there.
"""

from __future__ import annotations

import openai
import pytest
from openai_checks import greedy_chat_both_ways

from metaspec.prompts import encode_chat

MODEL = "tiny-spec"  # the session server's name (tests/integration/server/conftest.py)


@pytest.fixture(scope="module")
def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def served_tokenizer(router_engine):
    return router_engine.tokenizer


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_completion(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8)
    choice = response.choices[0]
    assert response.object == "text_completion"
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == 8


def test_speculation_info_in_every_answer(client: openai.OpenAI) -> None:
    """The `metaspec` extension field of a completion, of a chat stream's usage chunk and of a completion
    stream's last chunk. Not on vLLM: its server has no such field (it counts speculation on `/metrics`)."""
    response = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8)
    info = response.model_extra["metaspec"]
    assert info["route"] == "speculative"  # the session engine's policy is `always`
    assert info["proposed_tokens"] > 0 and 0 <= info["accepted_tokens"] <= info["proposed_tokens"]
    assert info["acceptance_rate"] == info["accepted_tokens"] / info["proposed_tokens"]
    assert info["rounds"] >= 1
    assert set(info) == {
        "route",
        "proposed_tokens",
        "accepted_tokens",
        "acceptance_rate",
        "lookup_proposed_tokens",
        "lookup_accepted_tokens",
        "rounds",
        "first_token_confidence",
    }
    whole, chunks = greedy_chat_both_ways(client, MODEL)
    assert chunks[-1].model_extra["metaspec"]["route"] == whole.model_extra["metaspec"]["route"]
    pieces = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True))
    assert "metaspec" in pieces[-1].model_extra


def test_chat_uses_the_chat_template(client: openai.OpenAI, served_tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.usage.prompt_tokens == len(encode_chat(served_tokenizer, messages))
    assert response.usage.prompt_tokens > len(served_tokenizer("Be brief. Say hi.")["input_ids"])


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    """The stream opens with the assistant role, ends with one finish reason and a usage-only chunk."""
    whole, chunks = greedy_chat_both_ways(client, MODEL)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []


def test_streaming_completion(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0)
    pieces = list(
        client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True)
    )
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_string_is_cut_and_not_returned(client: openai.OpenAI) -> None:
    """Take a stop string from the model's own greedy output: the answer must end right before it."""
    base = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0)
    text = base.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3, f"greedy output too short to pick a stop string from: {text!r}"
    cut = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0, stop=stop, stream=True
    )
    assert "".join(p.choices[0].text for p in streamed) == cut.choices[0].text


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    """The same seed, the same sample. Not on vLLM's CPU build: while it speculates it samples wrongly
    (garbled text that differs between two requests with the same seed, intermittently)."""
    kwargs = dict(model=MODEL, prompt="Hello", max_tokens=8, temperature=1.0, top_p=0.9, seed=1234)
    first = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(**kwargs).choices[0].text == first


def test_n_samples_chat_and_streamed(client: openai.OpenAI) -> None:
    """`n` seeded samples: n choices with their indices, each a sample of its own; streamed, the chunks of
    the choices interleave and add up to the same texts, and usage counts every sample. vLLM seeds sample
    i with seed + i too, but its CPU build samples wrongly while it speculates (see above): not run there."""
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Tell a story."}], max_tokens=6, temperature=1.0)
    whole = client.chat.completions.create(n=2, seed=7, **kwargs)
    assert [c.index for c in whole.choices] == [0, 1]
    texts = [c.message.content for c in whole.choices]
    assert texts[0] != texts[1]  # seeds 7 and 8: different samples of a random tiny model
    chunks = list(
        client.chat.completions.create(n=2, seed=7, stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    streamed = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == texts
    assert chunks[-1].usage == whole.usage
    single = client.chat.completions.create(seed=8, **kwargs)  # sample 1 is seeded seed + 1
    assert single.choices[0].message.content == texts[1]


def test_completion_n(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, n=2, temperature=1.0, seed=1)
    assert [c.index for c in response.choices] == [0, 1]
    assert response.usage.completion_tokens <= 8


def test_chat_logprobs(client: openai.OpenAI) -> None:
    """Greedy chat with logprobs and 3 alternatives per token. Passes against vLLM's server too, but is not
    run there to keep the suite short: vLLM compiles its logprob-rank kernel (`torch.compile`) on the first
    request that asks for logprobs, about 21 s on a 2-core CPU."""
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = response.choices[0]
    content = choice.logprobs.content
    assert content and "".join(t.token for t in content).strip() and len(content) <= 5
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.logprob - 1e-5  # greedy picks the most likely token
        assert item.bytes == list(item.token.encode())


def test_completion_logprobs_streamed(client: openai.OpenAI) -> None:
    """Completion logprobs whole and streamed: the same tokens. Passes against vLLM's server too; not run
    there for the reason above."""
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0]
    assert len(whole.logprobs.tokens) == len(whole.logprobs.token_logprobs) == len(whole.logprobs.top_logprobs)
    assert all(len(top) <= 2 for top in whole.logprobs.top_logprobs)
    assert whole.logprobs.text_offset[0] == 0
    pieces = list(client.completions.create(stream=True, **kwargs))
    tokens = [t for p in pieces if p.choices and p.choices[0].logprobs for t in p.choices[0].logprobs.tokens]
    assert tokens == whole.logprobs.tokens


def test_vllm_sampling_fields_through_extra_body(client: openai.OpenAI) -> None:
    """vLLM's own sampling fields. Not on vLLM's server while it speculates: it answers 400, "The min_p
    and logit_bias sampling parameters are not yet supported with speculative decoding"."""
    response = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        temperature=0.8,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        extra_body={"top_k": 20, "min_p": 0.05, "min_tokens": 6, "ignore_eos": True, "stop_token_ids": [0]},
    )
    assert response.usage.completion_tokens == 6 and response.choices[0].finish_reason == "length"
