"""The endpoints besides generation: a model by id, tokenize/detokenize, version, the OpenAPI document,
and API-key authentication."""

from __future__ import annotations

from dataclasses import replace

import httpx
import openai
import pytest

MODEL = "tiny-spec"  # the session server's name (tests/integration/server/conftest.py)


def test_model_by_id(router) -> None:
    with router.client() as http:
        card = http.get(f"/v1/models/{MODEL}")
        missing = http.get("/v1/models/gpt-4")
    assert card.status_code == 200 and card.json()["id"] == MODEL and card.json()["max_model_len"] > 0
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_tokenize_and_detokenize_round_trip(router, router_engine) -> None:
    messages = [{"role": "user", "content": "Hi there"}]
    with router.client() as http:
        plain = http.post("/tokenize", json={"model": MODEL, "prompt": "Hello world"}).json()
        bare = http.post("/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}).json()
        chat = http.post("/tokenize", json={"model": MODEL, "messages": messages}).json()
        text = http.post("/detokenize", json={"model": MODEL, "tokens": bare["tokens"]}).json()
        neither = http.post("/tokenize", json={"model": MODEL})
        outside = http.post("/detokenize", json={"tokens": [10**7]})
    assert plain["tokens"] == router_engine.encode_prompt("Hello world") and plain["count"] == len(plain["tokens"])
    assert chat["tokens"] == router_engine.encode_chat(messages)
    assert text == {"prompt": "Hello world"}
    assert neither.status_code == 400 and "either `prompt` or `messages`" in neither.json()["error"]["message"]
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens"


def test_version_and_openapi_from_the_models(router) -> None:
    with router.client() as http:
        version = http.get("/version").json()["version"]
        document = http.get("/openapi.json").json()
    assert version and document["info"]["version"] == version
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    assert set(chat["responses"]) == {"200", "400", "401", "404", "408", "413", "415", "429", "503"}
    schemas = document["components"]["schemas"]
    assert schemas["CompletionRequest"]["properties"]["model"]["enum"] == [MODEL]
    assert {"top_k", "min_p", "n", "logprobs", "stop_token_ids"} <= set(schemas["CompletionRequest"]["properties"])
    assert "HTTPValidationError" not in schemas
    assert {"/health", "/tokenize", "/detokenize", "/version", "/v1/models/{model}"} <= set(document["paths"])
    operations = [operation["operationId"] for path in document["paths"].values() for operation in path.values()]
    assert len(operations) == len(set(operations)), operations


@pytest.fixture(scope="module")
def locked(router):
    """The session's engine behind an app that requires one of two API keys."""
    with router.beside(replace(router.serving.settings, api_keys=("key-one", "key-two"))) as url:
        yield url


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Bearer key-on", "Bearer key-one-and-more", "Basic a2V5LW9uZQ==", "key-one"]
)
def test_api_routes_need_a_key(locked: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"), ("POST", "/tokenize")):
        response = httpx.request(method, f"{locked}{path}", headers=headers, json={"prompt": "x"})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_either_key_is_accepted_and_probes_stay_open(locked: str) -> None:
    for key in ("key-one", "key-two"):
        client = openai.OpenAI(base_url=f"{locked}/v1", api_key=key, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == [MODEL]
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    for path in ("/health", "/healthz", "/readyz", "/version", "/metrics"):
        assert httpx.get(f"{locked}{path}").status_code == 200, path
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{locked}/v1", api_key="nope", max_retries=0).models.list()


def test_metrics_can_be_protected(router) -> None:
    with router.beside(replace(router.serving.settings, api_keys=("k",), protect_metrics=True)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
