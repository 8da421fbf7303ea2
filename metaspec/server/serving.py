"""Request → engine → response: validation against the server's limits, admission, usage, the `metaspec`
field, streaming as server-sent events, and cancellation when the client goes away.

Stop strings are the engine's (`SamplingParams.stop`): it cuts the text before them and stops decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from metaspec.api import SpecServe
from metaspec.api.serving import Auth, ServeSampling
from metaspec.runtime import PermanentError

from .engine.protocol import Delta, Engine, RequestStats, SamplingParams, TokenLogprob
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
    ChatTokenLogprob,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorBody,
    ErrorResponse,
    MetaspecInfo,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TopLogprob,
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
    api_keys: tuple[str, ...] = ()
    """Bearer tokens accepted on the API routes; none: no authentication."""
    protect_metrics: bool = False
    """Whether `/metrics` needs a key too."""

    @classmethod
    def from_resource(cls, resource: SpecServe, environ: Mapping[str, str] = os.environ) -> ServerSettings:
        spec = resource.spec
        return cls(
            model_name=spec.served_model_name or resource.metadata.name,
            sampling=spec.sampling,
            api_keys=api_keys(spec.auth, environ),
            protect_metrics=spec.auth.protect_metrics,
        )


def api_keys(auth: Auth, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The API keys `auth` names, from the variables the operator sets from the Secret."""
    ref = auth.api_key_secret_ref
    if ref is None:
        return ()
    keys = []
    for variable, key in ref.environment():
        value = environ.get(variable, "").strip()
        if not value:
            raise PermanentError(
                f"spec.auth.apiKeySecretRef: {variable} (Secret {ref.name!r}, key {key!r}) is unset or empty; "
                "the server will not start without the API keys it is configured to require"
            )
        keys.append(value)
    return tuple(keys)


def server_version() -> str:
    try:
        return version("metaspec")
    except PackageNotFoundError:
        return "unknown"


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
    """One admitted sample's decoding, holding a slot (or a place in line): its first piece when already
    produced, and the rest."""

    def __init__(self, first: Delta | None, rest: AsyncIterator[Delta], ticket: Ticket) -> None:
        self.first = first
        self._rest = rest
        self._ticket = ticket

    async def pieces(self) -> AsyncIterator[Delta]:
        if self.first is not None:
            yield self.first
            if self.first.finish_reason is not None:
                return
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
class Sample:
    """One finished sample of a request: its text, last piece (finish reason and stats) and logprobs."""

    text: str
    last: Delta
    logprobs: list[TokenLogprob]


@dataclass(frozen=True)
class _Format:
    """The OpenAI shapes of one endpoint: whole responses and streaming chunks."""

    rid: str
    model: str
    chat: bool
    engine: Engine | None = None
    """Spells the tokens of `logprobs`; None when the request asked for none."""

    def whole(self, samples: list[Sample], accounting: dict[str, Any]) -> BaseModel:
        if self.chat:
            choices = [
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=s.text),
                    logprobs=self._chat_logprobs(s.logprobs),
                    finish_reason=s.last.finish_reason,
                )
                for i, s in enumerate(samples)
            ]
            return ChatCompletionResponse(id=self.rid, model=self.model, choices=choices, **accounting)
        completions = [
            CompletionChoice(
                index=i, text=s.text, logprobs=self._text_logprobs(s.logprobs, 0), finish_reason=s.last.finish_reason
            )
            for i, s in enumerate(samples)
        ]
        return CompletionResponse(id=self.rid, model=self.model, choices=completions, **accounting)

    def chunk(self, index: int, delta: Delta, offset: int = 0, **extra: Any) -> BaseModel:
        """A streamed piece of choice `index`; `offset`: the characters of that choice sent before."""
        finish = delta.finish_reason
        if self.chat:
            content = ChatDelta(content=delta.text) if delta.text or finish is None else ChatDelta()
            choice = ChatChunkChoice(
                index=index, delta=content, logprobs=self._chat_logprobs(delta.logprobs), finish_reason=finish
            )
            return ChatCompletionChunk(id=self.rid, model=self.model, choices=[choice], **extra)
        piece = CompletionChoice(
            index=index, text=delta.text, logprobs=self._text_logprobs(delta.logprobs, offset), finish_reason=finish
        )
        return CompletionResponse(id=self.rid, model=self.model, choices=[piece], **extra)

    def usage_chunk(self, accounting: dict[str, Any]) -> dict[str, Any]:
        """The last chunk of `stream_options.include_usage`: usage, no choices."""
        cls = ChatCompletionChunk if self.chat else CompletionResponse
        return cls(id=self.rid, model=self.model, choices=[], **accounting).model_dump()

    def opening(self, n: int) -> list[BaseModel]:
        """Chat streams announce the assistant role first, once per choice, as OpenAI's do."""
        if not self.chat:
            return []
        return [
            ChatCompletionChunk(
                id=self.rid,
                model=self.model,
                choices=[ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))],
            )
            for i in range(n)
        ]

    def _chat_logprobs(self, scores: list[TokenLogprob]) -> ChoiceLogprobs | None:
        if self.engine is None:
            return None
        content = []
        for score in scores:
            spelled = self.engine.spell([score.token, *(t for t, _ in score.top)])
            top = [_top(text, value) for text, (_, value) in zip(spelled[1:], score.top, strict=True)]
            content.append(ChatTokenLogprob(**_top(spelled[0], score.logprob).model_dump(), top_logprobs=top))
        return ChoiceLogprobs(content=content)

    def _text_logprobs(self, scores: list[TokenLogprob], offset: int) -> CompletionLogprobs | None:
        if self.engine is None:
            return None
        out = CompletionLogprobs()
        for score in scores:
            spelled = self.engine.spell([score.token, *(t for t, _ in score.top)])
            out.tokens.append(spelled[0])
            out.token_logprobs.append(score.logprob)
            out.top_logprobs.append(dict(zip(spelled[1:], (v for _, v in score.top), strict=True)))
            out.text_offset.append(offset)
            offset += len(spelled[0])
        return out


def _top(text: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))


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
        self.metrics = ServerMetrics(settings.model_name, running, waiting, settings.sampling.max_concurrency)
        self.created = int(time.time())
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        engine.on_step = self.metrics.step

    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready()

    def card(self) -> ModelCard:
        length = self.engine.max_model_len() if self.engine is not None and self.ready() else None
        return ModelCard(id=self.settings.model_name, created=self.created, max_model_len=length)

    def models(self) -> ModelList:
        return ModelList(data=[self.card()])

    def model(self, name: str) -> ModelCard:
        self._check_model(name)
        return self.card()

    async def completion(self, request: Request, body: CompletionRequest) -> Response:
        arrived = time.monotonic()
        engine = self._engine_for(body.model)
        prompt_ids = await self._encode(engine, "prompt", len(body.text), lambda: engine.encode_prompt(body.text))
        form = self._format("cmpl", body, engine, chat=False)
        return await self._respond(request, body, form, engine, prompt_ids, self._sampling(body, "max_tokens"), arrived)

    async def chat(self, request: Request, body: ChatCompletionRequest) -> Response:
        arrived = time.monotonic()
        engine = self._engine_for(body.model)
        messages = [m.template_dict() for m in body.messages]
        chars = sum(len(m.content or "") for m in body.messages)
        tools, kwargs = body.template_tools(), body.chat_template_kwargs
        prompt_ids = await self._encode(engine, "messages", chars, lambda: engine.encode_chat(messages, tools, kwargs))
        params = self._sampling(body, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        form = self._format("chatcmpl", body, engine, chat=True)
        return await self._respond(request, body, form, engine, prompt_ids, params, arrived)

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        engine = self._engine_for(body.model or self.settings.model_name)
        if body.messages is not None:
            messages = [m.template_dict() for m in body.messages]
            encode = partial(engine.encode_chat, messages, add_generation_prompt=body.add_generation_prompt)
        else:
            encode = partial(engine.encode_prompt, str(body.prompt), add_special_tokens=body.add_special_tokens)
        param = "prompt" if body.messages is None else "messages"
        try:
            ids = await asyncio.to_thread(encode)
        except Exception as e:  # a chat template may refuse a conversation
            raise ApiError(400, f"cannot build the prompt from `{param}`: {e}", param=param) from None
        return TokenizeResponse(count=len(ids), max_model_len=engine.max_model_len(), tokens=ids)

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        engine = self._engine_for(body.model or self.settings.model_name)
        size = engine.vocabulary_size()
        bad = [t for t in body.tokens if t >= size]
        if bad:
            raise ApiError(400, f"`tokens` has ids outside the vocabulary [0, {size}): {bad[:5]}", param="tokens")
        text = await asyncio.to_thread(engine.decode, body.tokens)
        return DetokenizeResponse(prompt=text)

    def _format(
        self, prefix: str, body: CompletionRequest | ChatCompletionRequest, engine: Engine, chat: bool
    ) -> _Format:
        return _Format(request_id(prefix), body.model, chat, engine if body.top_logprob_count is not None else None)

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
        samples = _samples(params, body.n)
        generations = await self._start(request, engine, prompt_ids, samples, arrived)
        if generations is None:
            return Response(status_code=CLIENT_CLOSED)
        close = partial(_close_all, generations)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(_events(generations, form, len(prompt_ids), include_usage), close)
        try:
            done = await _until_disconnect(request, asyncio.gather(*(_collect(g.pieces()) for g in generations)))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            await close()
        accounting = _accounting([s.last for s in done], len(prompt_ids))
        return JSONResponse(form.whole(list(done), accounting).model_dump())

    async def _start(
        self, request: Request, engine: Engine, prompt_ids: list[int], samples: list[SamplingParams], arrived: float
    ) -> list[Generation] | None:
        """Admit the request's samples, then wait for a slot and the first piece of text of each before
        any response byte: so a request the engine refuses is still a 400, and a stream's 200 means
        decoding has begun. None when the client left meanwhile (its places in line, or its decoding,
        are then given up). The samples decode concurrently, as a batch where the engine batches."""
        tickets = self._admit(len(samples))
        streams = [self._generate(engine, prompt_ids, p, t, arrived) for p, t in zip(samples, tickets, strict=True)]
        generations = [Generation(None, stream, ticket) for stream, ticket in zip(streams, tickets, strict=True)]
        try:
            # the samples differ in their seeds only: what the engine refuses, it refuses for the first
            first = await _until_disconnect(request, anext(streams[0]))
        except BaseException as error:
            await _close_all(generations)
            if isinstance(error, ClientGone):
                return None
            if isinstance(error, ValueError):  # the engine refuses a request it cannot serve, before decoding
                raise ApiError(400, f"cannot serve this request: {error}") from None
            raise
        generations[0].first = first
        return generations

    # validation

    def _check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise ApiError(
                404,
                f"model {_clip(model, 64)!r} does not exist here; this server serves {self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def _engine_for(self, model: str) -> Engine:
        self._check_model(model)
        if self.engine is None or not self.engine.ready():
            raise ApiError(
                503,
                "the models are still loading; retry when /health reports ready",
                type="server_error",
                code="model_loading",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            )
        return self.engine

    async def _encode(self, engine: Engine, param: str, chars: int, encode: Callable[[], list[int]]) -> list[int]:
        """Token ids of the prompt, refusing one over maxPromptTokens. Tokenizing runs in a thread (the
        Rust tokenizer releases the GIL) so a long prompt does not stall other requests and probes, and a
        prompt longer than any `limit`-token text could be is refused before tokenizing at all."""
        limit = self.settings.sampling.max_prompt_tokens
        most = limit * engine.token_chars()
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

    def _sampling(self, body: CompletionRequest | ChatCompletionRequest, max_param: str) -> SamplingParams:
        """The request's sampling, with the spec's `sampling` for what it leaves out."""
        defaults = self.settings.sampling
        max_tokens = body.max_tokens if body.max_tokens is not None else defaults.max_tokens
        if max_tokens > defaults.max_tokens_limit:
            raise ApiError(
                400,
                f"`{max_param}` is {max_tokens}; this server generates at most {defaults.max_tokens_limit} tokens "
                "per request (maxTokensLimit)",
                param=max_param,
            )
        if body.min_tokens > max_tokens:
            raise ApiError(
                400, f"`min_tokens` ({body.min_tokens}) exceeds `{max_param}` ({max_tokens})", param="min_tokens"
            )
        places = defaults.max_concurrency + defaults.max_queue
        if body.n > places:
            raise ApiError(
                400,
                f"`n` is {body.n}: each sample takes a decoding slot or a queue place, and this server has "
                f"{places} (maxConcurrency + maxQueue)",
                param="n",
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_default(body.temperature, defaults.temperature),
            top_p=_default(body.top_p, defaults.top_p),
            repetition_penalty=_default(body.repetition_penalty, defaults.repetition_penalty),
            top_k=max(body.top_k or 0, 0),
            min_p=body.min_p or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            stop=tuple(body.stop or ()),
            stop_token_ids=tuple(body.stop_token_ids or ()),
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
            seed=body.seed,
            logprobs=body.top_logprob_count,
        )

    def _admit(self, count: int) -> list[Ticket]:
        """A place for each sample, or none (429)."""
        tickets: list[Ticket] = []
        try:
            for _ in range(count):
                tickets.append(self.admission.ticket())
        except QueueFull as e:
            for ticket in tickets:
                ticket.release()
            raise ApiError(
                429,
                f"{e}; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            ) from None
        return tickets

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
                    ticket.release()  # decoding is over: the slot is free for the next sequence already
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


def _samples(params: SamplingParams, n: int) -> list[SamplingParams]:
    """`n` independent samples: a seeded request seeds sample i with seed + i (mod 2**64), so the whole
    answer is reproducible and the samples differ."""
    if params.seed is None:
        return [params] * n
    return [params] + [replace(params, seed=(params.seed + i) % (1 << 64)) for i in range(1, n)]


async def _close_all(generations: list[Generation]) -> None:
    for generation in generations:
        await generation.close()


async def _merged(generations: list[Generation]) -> AsyncIterator[tuple[int, Delta]]:
    """The pieces of every sample as they come, tagged with the sample's index."""
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for delta in generation.pieces():
                await queue.put((index, delta))
        except Exception as error:
            await queue.put((index, error))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _events(
    generations: list[Generation], form: _Format, prompt_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI's streaming shape: chunks of every choice as they come, each choice's finish chunk (the
    last of them with `metaspec`), then an optional usage chunk with no choices, then `[DONE]`. An engine
    failure mid-stream becomes an error event."""
    for opening in form.opening(len(generations)):
        yield sse(opening)
    sent = [0] * len(generations)
    lasts: list[Delta] = []
    try:
        async for index, delta in _merged(generations):
            extra: dict[str, Any] = {}
            if delta.finish_reason is not None:
                lasts.append(delta)
                if len(lasts) == len(generations):
                    extra["metaspec"] = _accounting(lasts, prompt_tokens)["metaspec"]
            yield sse(form.chunk(index, delta, sent[index], **extra))
            sent[index] += len(delta.text)
        if include_usage:
            yield sse(form.usage_chunk(_accounting(lasts, prompt_tokens)))
    except Exception as e:
        log.exception("generation failed mid-stream")
        yield sse(ErrorResponse(error=ErrorBody(message=f"generation failed: {e}", type="server_error")))
    yield "data: [DONE]\n\n"


async def _collect(pieces: AsyncIterator[Delta]) -> Sample:
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    async for delta in pieces:
        text.append(delta.text)
        logprobs += delta.logprobs
        if delta.finish_reason is not None:
            return Sample("".join(text), delta, logprobs)
    raise RuntimeError("generation ended without a final piece")


def _accounting(lasts: list[Delta], prompt_tokens: int) -> dict[str, Any]:
    """`usage` and `metaspec` of finished samples (their last Deltas, which `_generate` checked have
    stats): the prompt counts once, completions and speculation add up over the samples."""
    stats = [cast(RequestStats, last.stats) for last in lasts]
    completion = sum(s.completion_tokens for s in stats)
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)
    proposed, accepted = sum(s.proposed_tokens for s in stats), sum(s.accepted_tokens for s in stats)
    info = MetaspecInfo(
        route=stats[0].route,
        proposed_tokens=proposed,
        accepted_tokens=accepted,
        acceptance_rate=accepted / proposed if proposed else None,
        lookup_proposed_tokens=sum(s.lookup_proposed_tokens for s in stats),
        lookup_accepted_tokens=sum(s.lookup_accepted_tokens for s in stats),
        rounds=sum(s.rounds for s in stats),
        first_token_confidence=stats[0].first_token_confidence,
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


async def read_json(request: Request, settings: ServerSettings) -> None:
    """Read a request's JSON body within the size and time limits, refusing what is not a JSON object
    with a message that says why; the parsed body is left where `request.json()` finds it."""
    _check_content_type(request)
    raw = await _read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal of more digits than Python converts (4300)
        raise ApiError(400, f"request body has a value that cannot be read: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    request._body, request._json = raw, body  # what Starlette's body() and json() return from now on


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


def validation_error(errors: Sequence[Any]) -> ApiError:
    """One 400 naming every bad field of a body (FastAPI's or pydantic's error list); `param` is the first."""
    messages, params = [], []
    for item in errors:
        loc = item["loc"][1:] if item["loc"][:1] == ("body",) else item["loc"]
        param = ".".join(str(p) for p in loc) or None
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
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
