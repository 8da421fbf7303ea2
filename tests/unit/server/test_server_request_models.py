"""The OpenAI request models: the forms OpenAI and vLLM allow, what is ignored, and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from metaspec.server.protocol import ChatCompletionRequest, CompletionRequest, ignored_fields

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
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
            ],
            "max_completion_tokens": 7.0,
        }
    )
    assert request.max_tokens == 7
    assert [m.template_dict() for m in request.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]


def test_unknown_fields_are_kept_aside_and_named() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "Hi", "audio": None}],
            "service_tier": "auto",
            "reasoning_effort": "low",
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
    )
    assert ignored_fields(request) == [
        "service_tier",
        "reasoning_effort",
        "stream_options.continuous_usage_stats",
        "messages.0.audio",
    ]


def test_sampling_fields_are_read() -> None:
    request = CompletionRequest.model_validate(
        {
            "model": "m",
            "prompt": "x",
            "n": 3,
            "logprobs": 2,
            "top_k": -1,
            "min_p": 0.1,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "stop_token_ids": [1, 2.0],
            "ignore_eos": True,
            "min_tokens": 4,
            "seed": 5,
        }
    )
    assert (request.n, request.top_logprob_count, request.stop_token_ids) == (3, 2, [1, 2])
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": CHAT, "logprobs": True})
    assert chat.top_logprob_count == 0


@pytest.mark.parametrize(
    ("body", "location", "words"),
    [
        ({"stream": "yes"}, ("stream",), "boolean"),  # strict: no "yes" -> True coercion
        ({"max_tokens": 2.5}, ("max_tokens",), "integer"),
        ({"max_tokens": "5"}, ("max_tokens",), "integer"),
        ({"temperature": "0.5"}, ("temperature",), "number"),
        ({"seed": 2**64}, ("seed",), "less than"),
        ({"n": 17}, ("n",), "less than"),
        ({"presence_penalty": 3}, ("presence_penalty",), "less than"),
        ({"top_k": -2}, ("top_k",), "greater than"),
        ({"logit_bias": {"5": 1.0}}, ("logit_bias",), "not supported"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, ("messages", 0, "content"), "text part"),
        ({"messages": [{"role": "user"}]}, ("messages", 0, "content"), "required"),
        ({"messages": [{"role": "robot", "content": "x"}]}, ("messages", 0, "role"), "Input should be"),
        ({"response_format": {"type": "json_object"}}, ("response_format",), "structured output"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, ("response_format",), "structured output"),
        ({"tool_choice": "required"}, ("tool_choice",), "not supported"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, ("tool_choice",), "not supported"),
        ({"top_logprobs": 2}, ("top_logprobs",), "logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, ("top_logprobs",), "less than"),
        ({"store": True}, ("store",), "not supported"),
        ({"chat_template_kwargs": {"tokenize": False}}, ("chat_template_kwargs",), "template variables"),
        ({"stream_options": {"include_usage": True}}, ("stream_options",), "stream: true"),
    ],
)
def test_refused(body: dict, location: tuple, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"model": "m", "messages": CHAT, **body})
    error = caught.value.errors()[0]
    assert error["loc"] == location
    assert words in error["msg"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"prompt": [1, 2]}, "token-id prompts"),
        ({"logprobs": 21}, "less than"),
    ],
)
def test_completion_refused(body: dict, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CompletionRequest.model_validate({"model": "m", "prompt": "x", **body})
    assert words in caught.value.errors()[0]["msg"]
