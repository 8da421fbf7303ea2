"""The OpenAI request models: normalisation of the forms OpenAI allows, and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from metaspec.server.protocol import ChatCompletionRequest, CompletionRequest

CHAT = [{"role": "user", "content": "Hi"}]


def test_one_string_or_a_list_of_one() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": "a", "stop": "x"}).stop == ["x"]
    request = CompletionRequest.model_validate({"model": "m", "prompt": ["a"], "stop": ["x", "y"]})
    assert request.text == "a" and request.stop == ["x", "y"]


def test_chat_normalisation() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                *CHAT,
            ],
            "max_completion_tokens": 7,
        }
    )
    assert request.max_tokens == 7
    assert [m.template_dict() for m in request.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


@pytest.mark.parametrize(
    ("body", "location", "words"),
    [
        ({"stream": "yes"}, ("stream",), "boolean"),  # strict: no "yes" -> True coercion
        ({"max_tokens": 2.5}, ("max_tokens",), "integer"),
        ({"temperature": "0.5"}, ("temperature",), "number"),
        ({"seed": 2**64}, ("seed",), "less than"),
        ({"n": 2}, ("n",), "only n=1"),
        ({"presence_penalty": 1}, ("presence_penalty",), "repetition_penalty"),
        ({"logit_bias": {"5": 1.0}}, ("logit_bias",), "not supported"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, ("messages", 0, "content"), "text part"),
        ({"messages": [{"role": "tool", "content": "x"}]}, ("messages", 0, "role"), "Input should be"),
        ({"response_format": {"type": "json_object"}}, ("response_format", "type"), "text"),
        ({"tool_choice": "auto"}, ("tool_choice",), "none"),
        ({"stream_options": {"include_usage": True}}, ("stream_options",), "stream: true"),
    ],
)
def test_refused(body: dict, location: tuple, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"model": "m", "messages": CHAT, **body})
    error = caught.value.errors()[0]
    assert error["loc"] == location
    assert words in error["msg"]
