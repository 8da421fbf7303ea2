"""Bad requests get 4xx in OpenAI's error shape, naming the field; the server stays up."""

from __future__ import annotations

import pytest

MODEL = "tiny-spec"
CHAT = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}

# (endpoint, body, status, param, words the message must contain)
BAD = [
    ("/v1/completions", {"model": MODEL}, 400, "prompt", "required"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 601}, 400, "max_tokens", "maxTokensLimit"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "greater than"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "integer"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 3}, 400, "n", "maxConcurrency + maxQueue"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 0}, 400, "n", "greater than"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "echo": True}, 400, "echo", "not supported"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "min_tokens": 17}, 400, "min_tokens", "exceeds"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_k": -3}, 400, "top_k", "greater than"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop_token_ids": [-1]}, 400, "stop_token_ids.0", "greater"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": 2.5}, 400, "temperature", "less than"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p", "greater than"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": [""]}, 400, "stop.0", "at least 1"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 30}, 400, "logprobs", "less than"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, 2, 3]}, 400, "prompt", "token-id prompts"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt", "one prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt", "empty"),
    ("/v1/completions", {"model": MODEL, "prompt": "word " * 400}, 400, "prompt", "maxPromptTokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "frequency_penalty": 2.5}, 400, "frequency_penalty", "less"),
    (
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}},
        400,
        "stream_options",
        "stream",
    ),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model", "tiny-spec"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages", "at least 1"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages.0.role",
        "user",
    ),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400, "messages.0.content", "required"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages.0.content",
        "only text parts",
    ),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "max_completion_tokens": 9999},
        400,
        "max_completion_tokens",
        "maxTokensLimit",
    ),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "max_tokens": 3, "max_completion_tokens": 3},
        400,
        "max_completion_tokens",
        "not both",
    ),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "tools": [TOOL], "tool_choice": "required"},
        400,
        "tool_choice",
        "not supported",
    ),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        400,
        "response_format",
        "structured output",
    ),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "word " * 400}]},
        400,
        "messages",
        "chat template included",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"), BAD, ids=[f"{b[0][4:]}-{b[3]}-{b[4]}" for b in BAD]
)
def test_bad_request_names_the_field(router, path: str, body: dict, status: int, param: str | None, words: str) -> None:
    with router.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words in error["message"], error["message"]
    if param:
        assert f"`{param}`" in error["message"] or repr(body.get("model")) in error["message"]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"model": "tiny-spec", "prompt": ', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"a": "\xc3\x28"}', "UTF-8"),
    ],
)
def test_malformed_body(router, raw: bytes, words: str) -> None:
    with router.client() as http:
        response = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_oversized_body_is_refused_before_reading(router) -> None:
    with router.client() as http:
        response = http.post("/v1/completions", content=b" " * (router.serving.settings.max_body_bytes + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_harmless_openai_fields_are_accepted(router) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}, *CHAT],
        "max_tokens": 2.0,
        "user": "u-1",
        "logprobs": False,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "tools": [TOOL],
        "tool_choice": "auto",
        "n": 1,
        "stream": False,
        "seed": 3,
        "repetition_penalty": 1.1,
    }
    with router.client() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert "Warning" not in response.headers
    assert response.json()["usage"]["completion_tokens"] <= 2


def test_unknown_fields_are_ignored_with_a_warning(router) -> None:
    body = {"model": MODEL, "prompt": "x", "max_token": 5, "max_tokens": 1, "service_tier": "auto", "\u00e9\n": 1}
    with router.client() as http:
        response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    warning = r'299 metaspec "ignored unknown fields: max_token, service_tier, \u00e9\n"'
    assert response.headers["Warning"] == warning


def test_unknown_routes_and_methods_use_the_error_shape(router) -> None:
    with router.client() as http:
        missing = http.get("/v1/embeddings")
        wrong_method = http.get("/v1/completions")
    assert missing.status_code == 404 and "/v1/embeddings" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_a_storm_of_bad_requests_leaves_the_server_serving(router) -> None:
    with router.client() as http:
        for path, body, status, _, _ in BAD * 3:
            assert http.post(path, json=body).status_code == status
        for raw in (b"{", b"null", b'{"model": 1}', b"\x00" * 100, b"[" * 100_000 + b"]" * 100_000):
            assert http.post("/v1/chat/completions", content=raw).status_code == 400
        good = http.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 3})
    assert good.status_code == 200, good.text
    assert good.json()["choices"][0]["message"]["role"] == "assistant"
    router.wait_idle()
