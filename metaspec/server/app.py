"""The FastAPI app: thin routes over `Serving`, OpenAI-shaped errors, request metrics."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine.protocol import Engine
from .metrics import CONTENT_TYPE, ServerMetrics
from .serving import ApiError, ServerSettings, Serving

log = logging.getLogger("metaspec.server")

#: Probe and scrape paths: polled constantly, not worth a request series of their own.
_UNCOUNTED = ("/healthz", "/readyz", "/metrics")


def create_app(engine: Engine | None, settings: ServerSettings) -> FastAPI:
    """The router's app. With `engine=None` it starts unready; `app.state.serving.attach(engine)` makes it
    ready once the models are loaded (the CLI loads them in the background so liveness works meanwhile)."""
    serving = Serving(settings, engine)
    app = FastAPI(title="metaspec speculative router", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = serving
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

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
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
