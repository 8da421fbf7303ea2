"""The official `openai` client against the running router: completions, chat, streaming."""

from __future__ import annotations

import openai
import pytest

MODEL = "tiny-spec"  # the session server's name (tests/integration/server/conftest.py)


@pytest.fixture(scope="module")
def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)


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
        "rounds",
        "first_token_confidence",
    }


def test_chat_uses_the_chat_template(client: openai.OpenAI, router_engine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.usage.prompt_tokens == len(router_engine.encode_chat(messages))
    assert response.usage.prompt_tokens > len(router_engine.encode_prompt("Be brief. Say hi."))


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    """Greedy decoding is deterministic, so the streamed pieces must add up to the whole response."""
    messages = [{"role": "user", "content": "Count to five."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert chunks[-1].model_extra["metaspec"]["route"] == whole.model_extra["metaspec"]["route"]


def test_streaming_completion(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0)
    pieces = list(
        client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True)
    )
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert "metaspec" in pieces[-1].model_extra


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
    kwargs = dict(model=MODEL, prompt="Hello", max_tokens=8, temperature=1.0, top_p=0.9, seed=1234)
    first = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(**kwargs).choices[0].text == first
