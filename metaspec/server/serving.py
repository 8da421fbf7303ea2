"""Request → engine → response: validation against the server's limits, admission, usage, the `metaspec`
field, streaming as server-sent events, and cancellation when the client goes away.

Stop strings are the engine's (`SamplingParams.stop`): it cuts the text before them and stops decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from metaspec.api import SpecServe
from metaspec.api.serving import ServeSampling

from .engine.protocol import Delta, Engine, RequestStats, SamplingParams
from .limits import Admission, QueueFull, Ticket
from .metrics import CLIENT_CLOSED, ServerMetrics
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    MetaspecInfo,
    ModelCard,
    ModelList,
    Usage,
    request_id,
)

log = logging.getLogger("metaspec.server")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTP layer needs besides the engine."""

    model_name: str
    """The name clients put in `model`; any other name is a 404."""
    sampling: ServeSampling = field(default_factory=ServeSampling)
    """Defaults for omitted request fields, and the limits (tokens, concurrency, queue)."""
    retry_after_seconds: int = 1
    """`Retry-After` on 429/503: short, since a slot frees as soon as one generation ends."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body read; bounds tokenization work before the prompt-token limit applies."""
    body_timeout_seconds: float = 30.0
    """The whole request body must arrive within this time (else 408): a client trickling its body byte by
    byte would otherwise hold a connection and a coroutine for as long as it likes (uvicorn has no such
    timeout). Generous for the largest body over a slow link."""

    @classmethod
    def from_resource(cls, resource: SpecServe) -> ServerSettings:
        spec = resource.spec
        return cls(model_name=spec.served_model_name or resource.metadata.name, sampling=spec.sampling)


#: Longest error message and `param` sent back: they quote client input, which may be megabytes.
MAX_MESSAGE_CHARS = 2048
MAX_PARAM_CHARS = 256


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Messages and params quote client input (a model name, an unknown key): bounded, never echoed whole.
        message, param = _clip(message, MAX_MESSAGE_CHARS), param if param is None else _clip(param, MAX_PARAM_CHARS)
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type, param=param, code=code)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.body).model_dump(), self.status, headers=self.headers)


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


class Generation:
    """One admitted request's decoding: its first piece (already produced) and the rest, holding a slot."""

    def __init__(self, first: Delta, rest: AsyncIterator[Delta], ticket: Ticket) -> None:
        self.first = first
        self._rest = rest
        self._ticket = ticket

    async def pieces(self) -> AsyncIterator[Delta]:
        yield self.first
        if self.first.finish_reason is None:
            async for delta in self._rest:
                yield delta

    async def close(self) -> None:
        """Stop decoding (if still going) and free the slot; safe to call more than once."""
        try:
            await _aclose(self._rest)
        finally:
            self._ticket.release()


class EventStream(StreamingResponse):
    """Server-sent events that always run `on_close`, even when the client leaves before the first event
    (Starlette then cancels the stream before its generator ever starts, so a `finally` there never runs)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


@dataclass(frozen=True)
class _Format:
    """The OpenAI shapes of one endpoint: whole responses and streaming chunks."""

    rid: str
    model: str
    chat: bool

    def whole(self, text: str, last: Delta, accounting: dict[str, Any]) -> BaseModel:
        if self.chat:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason)
            return ChatCompletionResponse(id=self.rid, model=self.model, choices=[choice], **accounting)
        choice = CompletionChoice(text=text, finish_reason=last.finish_reason)
        return CompletionResponse(id=self.rid, model=self.model, choices=[choice], **accounting)

    def chunk(self, text: str, finish: str | None = None, **extra: Any) -> BaseModel:
        if self.chat:
            delta = ChatDelta(content=text) if text or finish is None else ChatDelta()
            choice = ChatChunkChoice(delta=delta, finish_reason=finish)
            return ChatCompletionChunk(id=self.rid, model=self.model, choices=[choice], **extra)
        choice = CompletionChoice(text=text, finish_reason=finish)
        return CompletionResponse(id=self.rid, model=self.model, choices=[choice], **extra)

    def opening(self) -> BaseModel | None:
        """Chat streams announce the assistant role first, as OpenAI's do."""
        if not self.chat:
            return None
        choice = ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))
        return ChatCompletionChunk(id=self.rid, model=self.model, choices=[choice])


def sse(payload: BaseModel | dict[str, Any]) -> str:
    body = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {body}\n\n"


class Serving:
    """The logic behind the routes. The engine may be attached later (models load in the background)."""

    def __init__(self, settings: ServerSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.admission = Admission(settings.sampling.max_concurrency, settings.sampling.max_queue)
        running, waiting = (lambda: self.admission.in_flight), (lambda: self.admission.waiting)
        self.metrics = ServerMetrics(settings.model_name, running, waiting)
        self.created = int(time.time())
        self._longest_token: int | None = None
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        engine.on_step = self.metrics.step

    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready()

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.settings.model_name, created=self.created)])

    async def completion(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await self._parse(request, CompletionRequest)
        engine = self._engine_for(body.model)
        prompt_ids = await self._encode("prompt", len(body.text), lambda: engine.encode_prompt(body.text))
        params = self._sampling(body, "max_tokens")
        form = _Format(request_id("cmpl"), body.model, chat=False)
        return await self._respond(request, body, form, engine, prompt_ids, params, arrived)

    async def chat(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await self._parse(request, ChatCompletionRequest)
        engine = self._engine_for(body.model)
        messages = [m.template_dict() for m in body.messages]
        chars = sum(len(m.content) for m in body.messages)
        prompt_ids = await self._encode("messages", chars, lambda: engine.encode_chat(messages))
        params = self._sampling(body, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        form = _Format(request_id("chatcmpl"), body.model, chat=True)
        return await self._respond(request, body, form, engine, prompt_ids, params, arrived)

    async def _respond(
        self,
        request: Request,
        body: CompletionRequest | ChatCompletionRequest,
        form: _Format,
        engine: Engine,
        prompt_ids: list[int],
        params: SamplingParams,
        arrived: float,
    ) -> Response:
        generation = await self._start(request, engine, prompt_ids, params, arrived)
        if generation is None:
            return Response(status_code=CLIENT_CLOSED)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(_events(generation, form, len(prompt_ids), include_usage), generation.close)
        try:
            text, last = await _until_disconnect(request, _collect(generation.pieces()))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            await generation.close()
        return JSONResponse(form.whole(text, last, _accounting(last, len(prompt_ids))).model_dump())

    async def _start(
        self, request: Request, engine: Engine, prompt_ids: list[int], params: SamplingParams, arrived: float
    ) -> Generation | None:
        """Admit the request, then wait for a slot and the first piece of text before any response byte:
        so a request the engine refuses is still a 400, and a stream's 200 means decoding has begun.
        None when the client left meanwhile (its place in line, or its decoding, is then given up)."""
        ticket = self._admit()
        pieces = self._generate(engine, prompt_ids, params, ticket, arrived)
        try:
            first = await _until_disconnect(request, anext(pieces))
        except ClientGone:
            ticket.release()
            return None
        except ValueError as e:  # the engine refuses a request it cannot serve, before decoding
            ticket.release()
            raise ApiError(400, f"cannot serve this request: {e}") from None
        except BaseException:
            ticket.release()
            raise
        return Generation(first, pieces, ticket)

    # validation

    async def _parse(self, request: Request, model: type[M]) -> M:
        _check_content_type(request)
        raw = await _read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_seconds)
        try:
            body = json.loads(raw)
        except UnicodeDecodeError:
            raise ApiError(400, "request body is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise ApiError(
                400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
        except RecursionError:
            raise ApiError(400, "request body is nested too deeply") from None
        except ValueError as e:  # e.g. an integer literal of more digits than Python converts (4300)
            raise ApiError(400, f"request body has a value that cannot be read: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
        try:
            return model.model_validate(body)
        except ValidationError as e:
            raise _validation_error(e) from None

    def _engine_for(self, model: str) -> Engine:
        if model != self.settings.model_name:
            raise ApiError(
                404,
                f"model {_clip(model, 64)!r} does not exist here; this server serves {self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )
        if self.engine is None or not self.engine.ready():
            raise ApiError(
                503,
                "the models are still loading; retry when /readyz reports ready",
                type="server_error",
                code="model_loading",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            )
        return self.engine

    async def _encode(self, param: str, chars: int, encode: Callable[[], list[int]]) -> list[int]:
        """Token ids of the prompt, refusing one over maxPromptTokens. Tokenizing runs in a thread (the
        Rust tokenizer releases the GIL) so a long prompt does not stall other requests and probes, and a
        prompt longer than any `limit`-token text could be is refused before tokenizing at all."""
        limit = self.settings.sampling.max_prompt_tokens
        most = limit * self._token_chars()
        if chars > most:
            raise ApiError(
                400,
                f"`{param}` is {chars} characters long: over {most}, the most that {limit} prompt tokens "
                f"(maxPromptTokens) can hold with this tokenizer",
                param=param,
                code="context_length_exceeded",
            )
        try:
            ids = await asyncio.to_thread(encode)
        except Exception as e:  # a chat template may refuse a conversation (e.g. roles must alternate)
            raise ApiError(400, f"cannot build the prompt from `{param}`: {e}", param=param) from None
        if not ids:
            raise ApiError(400, f"`{param}` is empty: nothing to complete", param=param)
        if len(ids) > limit:
            raise ApiError(
                400,
                f"`{param}` is {len(ids)} tokens long (chat template included); this server accepts at most "
                f"{limit} prompt tokens (maxPromptTokens)",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def _token_chars(self) -> int:
        """The most characters one token can stand for: the longest entry of the vocabulary (byte-level
        BPE spells one byte per symbol and a character is at least one byte; special tokens literally)."""
        if self._longest_token is None:
            vocab = cast(Any, self.engine).tokenizer.get_vocab()
            self._longest_token = max(len(token) for token in vocab)
        return self._longest_token

    def _sampling(self, body: CompletionRequest | ChatCompletionRequest, max_param: str) -> SamplingParams:
        defaults = self.settings.sampling
        max_tokens = body.max_tokens if body.max_tokens is not None else defaults.max_tokens
        if max_tokens > defaults.max_tokens_limit:
            raise ApiError(
                400,
                f"`{max_param}` is {max_tokens}; this server generates at most {defaults.max_tokens_limit} tokens "
                "per request (maxTokensLimit)",
                param=max_param,
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_default(body.temperature, defaults.temperature),
            top_p=_default(body.top_p, defaults.top_p),
            repetition_penalty=_default(body.repetition_penalty, defaults.repetition_penalty),
            stop=tuple(body.stop or ()),
            seed=body.seed,
        )

    def _admit(self) -> Ticket:
        try:
            return self.admission.ticket()
        except QueueFull as e:
            raise ApiError(
                429,
                f"{e}; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            ) from None

    # generation

    async def _generate(
        self, engine: Engine, prompt_ids: list[int], params: SamplingParams, ticket: Ticket, arrived: float
    ) -> AsyncIterator[Delta]:
        """The engine's pieces of text once a slot is free; the last one carries finish_reason and stats.
        Closing this iterator (client gone) closes the engine's, which stops decoding."""
        await ticket.acquire()
        metrics, model = self.metrics, self.metrics.model
        metrics.queue_wait.labels(model).observe(time.monotonic() - arrived)
        last: float | None = None  # when the previous tokens arrived
        started, reason = False, "cancelled"
        stream = engine.generate(prompt_ids, params)
        try:
            async for delta in stream:
                now = time.monotonic()
                if not started and (delta.text or delta.token_ids):
                    metrics.ttft.labels(model).observe(now - arrived)
                    started = True
                if delta.token_ids:
                    if last is not None:
                        metrics.token_latency(now - last, len(delta.token_ids))
                    last = now
                if delta.finish_reason is not None:
                    if delta.stats is None:
                        raise RuntimeError("the engine finished a generation without its stats")
                    metrics.generation(delta.stats, now - arrived)
                    reason = delta.finish_reason
                    yield delta
                    return
                yield delta
            reason = "error"
        except Exception:
            reason = "error"
            raise
        finally:
            metrics.end(reason)
            await _aclose(stream)
        raise RuntimeError("the engine ended a generation without its final delta (finish_reason and stats)")


async def _events(generation: Generation, form: _Format, prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's streaming shape: one chunk per piece, the finish chunk (with `metaspec`), then an optional
    usage chunk with no choices, then `[DONE]`. An engine failure mid-stream becomes an error event."""
    opening = form.opening()
    if opening is not None:
        yield sse(opening)
    try:
        async for delta in generation.pieces():
            if delta.finish_reason is None:
                yield sse(form.chunk(delta.text))
                continue
            accounting = _accounting(delta, prompt_tokens)
            yield sse(form.chunk(delta.text, delta.finish_reason, metaspec=accounting["metaspec"]))
            if include_usage:
                yield sse({**form.chunk("", **accounting).model_dump(), "choices": []})
    except Exception as e:
        log.exception("generation failed mid-stream")
        yield sse(ErrorResponse(error=ErrorBody(message=f"generation failed: {e}", type="server_error")))
    yield "data: [DONE]\n\n"


async def _collect(pieces: AsyncIterator[Delta]) -> tuple[str, Delta]:
    text: list[str] = []
    async for delta in pieces:
        text.append(delta.text)
        if delta.finish_reason is not None:
            return "".join(text), delta
    raise RuntimeError("generation ended without a final piece")


def _accounting(last: Delta, prompt_tokens: int) -> dict[str, Any]:
    """`usage` and `metaspec` of a finished generation (its last Delta, which `_generate` checked has stats)."""
    stats = cast(RequestStats, last.stats)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=stats.completion_tokens,
        total_tokens=prompt_tokens + stats.completion_tokens,
    )
    info = MetaspecInfo(
        route=stats.route,
        proposed_tokens=stats.proposed_tokens,
        accepted_tokens=stats.accepted_tokens,
        acceptance_rate=stats.acceptance_rate,
        rounds=stats.rounds,
        first_token_confidence=stats.first_token_confidence,
    )
    return {"usage": usage, "metaspec": info}


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first; then cancel it (stopping decoding) and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _check_content_type(request: Request) -> None:
    """JSON bodies only. A missing Content-Type is read as JSON (a bare `curl --data-binary`); any other
    type is refused, which also keeps browsers' cross-site "simple requests" (`text/plain`, form posts)
    from starting generations."""
    given = request.headers.get("content-type")
    if given is None:
        return
    media = given.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415,
            f"Content-Type {media!r} is not supported: send the body as JSON with `Content-Type: application/json`",
            param="Content-Type",
            code="unsupported_media_type",
        )


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    too_large = ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, f"request body not received within {timeout:g} s ({size} bytes arrived)", code="request_timeout"
        ) from None
    return b"".join(chunks)


def _validation_error(error: ValidationError) -> ApiError:
    """One 400 naming every bad field; `param` is the first one."""
    messages, params = [], []
    for item in error.errors():
        param = ".".join(str(p) for p in item["loc"]) or None
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown field `{param}`: not part of the API served here"
        elif item["type"] == "missing":
            message = f"`{param}` is required"
        elif param:
            message = f"`{param}`: {message}"
        else:  # the body as a whole, e.g. a key that is not text (an unpaired surrogate escape)
            message = f"request body: {message}"
        messages.append(message)
        params.append(param)
    return ApiError(400, "; ".join(messages), param=params[0])


def _default(value: float | None, default: float) -> float:
    return default if value is None else value


async def _aclose(stream: AsyncIterator[Delta]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
