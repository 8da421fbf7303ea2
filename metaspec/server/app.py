"""The FastAPI app: thin routes over `Serving`, OpenAI-shaped errors, request metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine.protocol import Engine
from .metrics import CLIENT_CLOSED, CONTENT_TYPE, ServerMetrics
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelList,
)
from .serving import ApiError, ServerSettings, Serving

log = logging.getLogger("metaspec.server")

#: Probe and scrape paths: polled constantly, not worth a request series of their own.
_UNCOUNTED = ("/healthz", "/readyz", "/metrics")


def create_app(engine: Engine | None, settings: ServerSettings) -> FastAPI:
    """The router's app. With `engine=None` it starts unready; `app.state.serving.attach(engine)` makes it
    ready once the models are loaded (the CLI loads them in the background so liveness works meanwhile)."""
    serving = Serving(settings, engine)
    app = FastAPI(title="metaspec speculative router", docs_url=None, redoc_url=None)
    app.state.serving = serving
    document = openapi_document(settings)
    app.openapi = lambda: document  # type: ignore[method-assign]
    app.add_middleware(_RequestMetrics, metrics=serving.metrics)
    _add_error_handlers(app)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serving.completion(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serving.chat(request)

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse(serving.models().model_dump())

    @app.api_route("/healthz", methods=["GET", "HEAD"])  # some health checkers send HEAD
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz() -> Response:
        ready = serving.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(serving.metrics.render(), media_type=CONTENT_TYPE)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error.response()

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # The client left while sending its body: nobody reads an answer, and it is not a server error.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return ApiError(error.status_code, message, headers=error.headers).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error: {type(error).__name__}: {error}", type="server_error").response()


class _RequestMetrics:
    """Counts requests by endpoint and the status code actually sent (streams count when they start)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNCOUNTED:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.request(scope["path"], status)


#: Every error status a generation request can get, all in OpenAI's error shape.
_GENERATION_ERRORS = {
    "400": "Invalid request; `error.param` and the message name the field.",
    "404": "No such model here.",
    "408": "The request body did not arrive in time.",
    "413": "The request body is too large.",
    "415": "The body is not JSON.",
    "429": "Every decoding slot and queue place is taken; retry after `Retry-After` seconds.",
    "503": "The models are still loading; retry after `Retry-After` seconds.",
}


def openapi_document(settings: ServerSettings) -> dict[str, Any]:
    """`/openapi.json`: the routes read their bodies themselves (to answer in OpenAI's error shape), so
    FastAPI cannot derive their schemas; this states them from the protocol models, with this server's
    model name and token limit filled in, so a schema-driven client or fuzzer sees the real contract."""
    models: list[type[BaseModel]] = [
        CompletionRequest,
        ChatCompletionRequest,
        CompletionResponse,
        ChatCompletionResponse,
        ErrorResponse,
        ModelList,
    ]
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas = defs["$defs"]
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        _apply_limits(schemas[name], settings)
    ref = {m.__name__: refs[(m, "validation")] for m in models}
    paths = {
        "/v1/completions": {"post": _generation("Complete a text prompt.", ref["CompletionRequest"], ref)},
        "/v1/chat/completions": {"post": _generation("Answer a chat conversation.", ref["ChatCompletionRequest"], ref)},
        "/v1/models": {"get": _operation("The served model.", {"200": _json("The model list.", ref["ModelList"])})},
        "/healthz": {"get": _operation("Liveness.", {"200": _json("Alive.", {"type": "object"})})},
        "/readyz": {
            "get": _operation(
                "Readiness: both models loaded.",
                {"200": _json("Ready.", {"type": "object"}), "503": _json("Loading.", {"type": "object"})},
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics.",
                {
                    "200": {
                        "description": "Text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
    }
    info = {"title": "metaspec speculative router", "version": "v1"}
    return {"openapi": "3.1.0", "info": info, "paths": paths, "components": {"schemas": schemas}}


def _apply_limits(schema: dict[str, Any], settings: ServerSettings) -> None:
    properties = schema["properties"]
    properties["model"]["enum"] = [settings.model_name]
    for name in ("max_tokens", "max_completion_tokens"):
        if name in properties:
            for option in properties[name]["anyOf"]:
                if option.get("type") == "integer":
                    option["maximum"] = settings.sampling.max_tokens_limit


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "responses": responses}


def _generation(summary: str, request: dict[str, Any], ref: dict[str, dict[str, Any]]) -> dict[str, Any]:
    whole = ref["ChatCompletionResponse" if "Chat" in request["$ref"] else "CompletionResponse"]
    ok = _json("The completion; with `stream: true`, server-sent events of chunks ending in `[DONE]`.", whole)
    ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    errors = {status: _json(text, ref["ErrorResponse"]) for status, text in _GENERATION_ERRORS.items()}
    operation = _operation(summary, {"200": ok, **errors})
    operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": request}}}
    return operation
