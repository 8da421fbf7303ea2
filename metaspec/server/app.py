"""The FastAPI app: thin typed routes over `Serving`, OpenAI-shaped errors, authentication, request metrics.

The routes declare their request and response models, so `/openapi.json` is FastAPI's own document,
generated from `protocol`'s models (with this server's model name and token limit filled in).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
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
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Readiness,
    TokenizeRequest,
    TokenizeResponse,
    Version,
    ignored_fields,
)
from .serving import ApiError, ServerSettings, Serving, read_json, server_version, validation_error

log = logging.getLogger("metaspec.server")
E = TypeVar("E", bound=Callable[..., Any])

#: Probe and scrape paths: polled constantly, not worth a request series of their own.
_UNCOUNTED = ("/health", "/healthz", "/readyz", "/metrics")
#: Paths open without an API key: the kubelet's probes cannot send one.
_OPEN = ("/health", "/healthz", "/readyz", "/version")
#: Most unknown field names listed in the warning header (all are logged), and characters shown of each.
_HEADER_FIELDS = 20
_FIELD_CHARS = 64

#: Every error status a generation request can get, all in OpenAI's error shape.
_GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Invalid request; `error.param` and the message name the field.",
        401: "Missing or wrong API key (`Authorization: Bearer KEY`), when the server has keys.",
        404: "No such model here.",
        408: "The request body did not arrive in time.",
        413: "The request body is too large.",
        415: "The body is not JSON.",
        429: "Every decoding slot and queue place is taken; retry after `Retry-After` seconds.",
        503: "The models are still loading; retry after `Retry-After` seconds.",
    }.items()
}
_STREAM = {200: {"content": {"text/event-stream": {}}, "description": "With `stream: true`: server-sent events."}}


class _JsonRoute(APIRoute):
    """A route whose JSON body is read by `read_json` before FastAPI validates it against the route's
    model: within the server's size and time limits, JSON media types only, and with errors that say
    what is wrong with the text; FastAPI then validates what was read. An accepted body's unknown fields
    are logged and named in a `Warning` header (they are ignored, not refused)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def read_then_handle(request: Request) -> Response:
            await read_json(request, request.app.state.serving.settings)
            return await handler(request)

        return read_then_handle


def create_app(engine: Engine | None, settings: ServerSettings) -> FastAPI:
    """The router's app. With `engine=None` it starts unready; `app.state.serving.attach(engine)` makes it
    ready once the models are loaded (the CLI loads them in the background so liveness works meanwhile)."""
    serving = Serving(settings, engine)
    app = FastAPI(
        title="metaspec speculative router",
        version=server_version(),
        docs_url=None,
        redoc_url=None,
        strict_content_type=False,
    )
    app.router.route_class = _JsonRoute
    app.state.serving = serving
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    if settings.api_keys:
        app.add_middleware(_Authentication, keys=settings.api_keys, protect_metrics=settings.protect_metrics)
    app.add_middleware(_RequestMetrics, metrics=serving.metrics)  # outermost: counts the 401s too
    _add_error_handlers(app)
    _add_routes(app, serving)
    return app


def _add_routes(app: FastAPI, serving: Serving) -> None:
    generation = {"responses": {**_GENERATION_ERRORS, **_STREAM}}

    @app.post("/v1/completions", response_model=CompletionResponse, summary="Complete a text prompt.", **generation)
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return _warn(await serving.completion(request, body), body)

    @app.post(
        "/v1/chat/completions", response_model=ChatCompletionResponse, summary="Answer a conversation.", **generation
    )
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        return _warn(await serving.chat(request, body), body)

    @app.get("/v1/models", summary="The served model.")
    async def models() -> ModelList:
        return serving.models()

    @app.get("/v1/models/{model}", summary="One model.", responses={404: _GENERATION_ERRORS[404]})
    async def model(model: str) -> ModelCard:
        return serving.model(model)

    @app.post("/tokenize", summary="Token ids of a prompt or a conversation.", responses=_GENERATION_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        return await serving.tokenize(body)

    @app.post("/detokenize", summary="Text of token ids.", responses=_GENERATION_ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        return await serving.detokenize(body)

    @_probe(
        app,
        "/health",
        summary="200 once both models are loaded, 503 while loading.",
        responses={503: {"model": Health}},
    )
    async def health() -> Response:
        ready = serving.ready()
        return JSONResponse(Health(status="ok" if ready else "loading").model_dump(), 200 if ready else 503)

    @_probe(app, "/healthz", summary="Liveness: the process serves HTTP.")
    async def healthz() -> Health:
        return Health(status="ok")

    @_probe(app, "/readyz", summary="Readiness: both models loaded.", responses={503: {"model": Readiness}})
    async def readyz() -> Response:
        ready = serving.ready()
        return JSONResponse(Readiness(ready=ready).model_dump(), status_code=200 if ready else 503)

    @app.get("/version", summary="The server's version.")
    async def version() -> Version:
        return Version(version=server_version())

    @app.get("/metrics", summary="Prometheus metrics (text exposition format).", response_class=Response)
    async def metrics() -> Response:
        return Response(serving.metrics.render(), media_type=CONTENT_TYPE)


def _probe(app: FastAPI, path: str, **documented: Any) -> Callable[[E], E]:
    """A probe route: GET, and HEAD for health checkers that send it (left out of the OpenAPI document,
    where it would repeat GET's operation id)."""

    def register(endpoint: E) -> E:
        app.get(path, **documented)(endpoint)
        app.head(path, include_in_schema=False)(endpoint)
        return endpoint

    return register


def _warn(response: Response, body: CompletionRequest | ChatCompletionRequest) -> Response:
    """Log the request's ignored (unknown) fields and name them in a `Warning` header (code 299)."""
    ignored = [name if len(name) <= _FIELD_CHARS else f"{name[:_FIELD_CHARS]}..." for name in ignored_fields(body)]
    if ignored:
        log.warning("ignored unknown request fields: %s", ignored)
        shown = ", ".join(ignored[:_HEADER_FIELDS]) + (", ..." if len(ignored) > _HEADER_FIELDS else "")
        # a JSON string is a valid quoted-string: printable ASCII, quotes and control characters escaped
        response.headers["Warning"] = f"299 metaspec {json.dumps(f'ignored unknown fields: {shown}')}"
    return response


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error.response()

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # The client left while sending its body: nobody reads an answer, and it is not a server error.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        return validation_error(error.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return ApiError(error.status_code, message, headers=error.headers).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error: {type(error).__name__}: {error}", type="server_error").response()


class _Authentication:
    """`Authorization: Bearer KEY` on every route but the probes and `/version` (and `/metrics` unless
    `protect_metrics`), before the body is read. Each key is compared in constant time, and every key
    is compared, so neither the time nor which key matched tells a caller anything."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], protect_metrics: bool) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open = _OPEN if protect_metrics else (*_OPEN, "/metrics")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = ApiError(
            401,
            "missing or wrong API key: send `Authorization: Bearer KEY` with a key this server accepts",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
        return scheme.lower() == b"bearer" and any(matches)


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


def _openapi(app: FastAPI, settings: ServerSettings) -> dict[str, Any]:
    """FastAPI's document of the typed routes, with this server's model name and token limit filled in,
    so a schema-driven client or fuzzer sees the real contract."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in document["paths"].values():  # bad bodies are 400s in OpenAI's shape, not 422s
            for operation in operations.values():
                operation["responses"].pop("422", None)
        schemas = document["components"]["schemas"]
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for name in ("CompletionRequest", "ChatCompletionRequest"):
            properties = schemas[name]["properties"]
            properties["model"]["enum"] = [settings.model_name]
            for field in ("max_tokens", "max_completion_tokens"):
                for option in properties.get(field, {}).get("anyOf", []):
                    if option.get("type") == "integer":
                        option["maximum"] = settings.sampling.max_tokens_limit
        app.openapi_schema = document
    return app.openapi_schema
