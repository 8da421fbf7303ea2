"""Checks any OpenAI-compatible server must pass, shared by the tests of our router and of vLLM's server."""

from __future__ import annotations

from typing import Any

import openai


def greedy_chat_both_ways(client: openai.OpenAI, model: str) -> tuple[Any, list[Any]]:
    """One greedy chat request answered whole, then streamed with usage: greedy decoding is
    deterministic, so the streamed pieces add up to the whole answer and its usage."""
    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 12,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage
    return whole, chunks
