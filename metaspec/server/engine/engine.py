"""`SpeculativeEngine`: the `Engine` protocol on top of the speculative decoding loop.

Decoding is synchronous torch code; it runs in one dedicated worker thread (requests are decoded one at
a time, which keeps the static caches and CUDA graphs of the compiled path single-owner) and streams
`Delta`s to the event loop. Cancellation (the client went away) is checked between rounds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from metaspec.api.serving import SpecServeSpec
from metaspec.devices import resolve_device
from metaspec.prompts import encode_chat, end_of_turn_ids

from .detokenize import IncrementalDetokenizer, StopStrings
from .loader import LoadedModel, load_models, shared_vocab
from .protocol import Delta, RequestStats, SamplingParams, TokenLogprob
from .routing import RoutingPolicy
from .sampling import Processing
from .speculative import CausalLM, SpeculativeDecoder

log = logging.getLogger(__name__)
_DONE = object()


class SpeculativeEngine:
    """Target + draft with confidence routing. Build with `from_spec` (then `load()`, blocking) for
    the server, or `from_models` with models already in memory (tests, benchmarks)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.tokenizer: Any = None
        self.decoder: SpeculativeDecoder | None = None
        self.served: dict[str, LoadedModel] = {}
        self._loader: Any = None
        self._stop_ids: frozenset[int] = frozenset()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaspec-decode")

    @classmethod
    def from_spec(
        cls, spec: SpecServeSpec, model_name: str, cache_dir: Path, device: str | None = None
    ) -> SpeculativeEngine:
        """An engine that loads `spec`'s models when `load()` is called; `ready()` is False until then."""
        engine = cls(model_name)
        engine._loader = lambda: engine._load_spec(spec, cache_dir, resolve_device(device))
        return engine

    @classmethod
    def from_models(
        cls,
        target: Any,
        draft: Any | None,
        tokenizer: Any,
        routing: RoutingPolicy,
        model_name: str = "metaspec",
        static_cache_len: int | None = None,
        compile: bool = False,
    ) -> SpeculativeEngine:
        engine = cls(model_name)
        engine._build(target, draft, tokenizer, routing, static_cache_len, compile)
        return engine

    def with_routing(self, routing: RoutingPolicy) -> SpeculativeEngine:
        """An engine decoding with this one's models (and compiled graphs) under another routing policy
        with the same `maxSpeculativeTokens`; both must decode from one thread, one request at a time."""
        assert self.decoder is not None
        if routing.max_speculative_tokens != self.decoder.routing.max_speculative_tokens:
            raise ValueError("the compiled verify length is k + 1: keep maxSpeculativeTokens")
        engine = SpeculativeEngine(self.model_name)
        engine.tokenizer, engine.served, engine._stop_ids = self.tokenizer, self.served, self._stop_ids
        engine.decoder = SpeculativeDecoder(self.decoder.target, self.decoder.draft, routing)
        engine._executor = self._executor
        return engine

    def load(self) -> None:
        """Load and check both models (blocking: call it from a thread in an async server)."""
        if self.decoder is None and self._loader is not None:
            self._loader()

    def _load_spec(self, spec: SpecServeSpec, cache_dir: Path, device: torch.device) -> None:
        target, draft = load_models(spec, cache_dir, device)
        self.served = {m.role: m for m in (target, draft) if m is not None}
        routing = RoutingPolicy.of(spec.routing)
        if draft is None and routing.uses_draft:
            log.warning("no draft model: routing %r falls back to target-only decoding", routing.policy)
            routing = RoutingPolicy("never", routing.threshold, routing.max_speculative_tokens)
        static = None
        compile = spec.compile and device.type == "cuda"
        if compile:
            limits = spec.sampling
            static = limits.max_prompt_tokens + limits.max_tokens_limit + routing.max_speculative_tokens + 1
            # every attention reads the whole static cache: a verify pass at 6150 positions costs 2.2 steps
            # on an H100 (docs/benchmarks.md), so tight limits make speculation pay
            log.info("compile: a static KV cache of %d positions (maxPromptTokens + maxTokensLimit + k + 1)", static)
        elif spec.compile:
            log.info("compile: static cache + torch.compile apply on CUDA only; decoding eagerly on %s", device)
        self._build(target.model, draft.model if draft else None, target.tokenizer, routing, static, compile)

    def _build(
        self,
        target: Any,
        draft: Any | None,
        tokenizer: Any,
        routing: RoutingPolicy,
        static_cache_len: int | None,
        compile: bool,
    ) -> None:
        vocab = shared_vocab(target, draft, tokenizer)
        options = {"static_cache_len": static_cache_len, "compile": compile}
        options["compile_max_tokens"] = routing.max_speculative_tokens + 1  # verify: 1 pending + k proposals
        draft_lm = CausalLM(draft, vocab, **options) if draft is not None else None
        self.decoder = SpeculativeDecoder(CausalLM(target, vocab, **options), draft_lm, routing)
        self.tokenizer = tokenizer
        self._stop_ids = frozenset(end_of_turn_ids(tokenizer))

    def ready(self) -> bool:
        return self.decoder is not None

    def encode_prompt(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        return encode_chat(
            self.tokenizer, messages, tools=tools, template_kwargs=template_kwargs, generation=add_generation_prompt
        )

    def max_model_len(self) -> int:
        assert self.decoder is not None
        return self.decoder.max_length

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream the completion. Raises ValueError (before any Delta) for an unusable request."""
        self.check_request(prompt_ids, params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def post(item: Any) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for delta in self.generate_sync(prompt_ids, params, cancel):
                    post(delta)
            except Exception as error:  # handed to the awaiting request; the worker stays alive
                post(error)
            finally:
                post(_DONE)

        loop.run_in_executor(self._executor, work)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancel.set()

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if self.decoder is None:
            raise RuntimeError("the engine is not loaded yet")
        if not prompt_ids:
            raise ValueError("the prompt is empty: at least one token is needed")
        vocab = self.decoder.target.vocab
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1, got {params.max_tokens}")
        room = self.decoder.max_length - len(prompt_ids) - self.decoder.routing.max_speculative_tokens - 1
        if room < 1:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; the models hold {self.decoder.max_length} in all"
            )
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.repetition_penalty <= 0:
            raise ValueError("temperature must be ≥ 0, top_p in (0, 1], repetition_penalty > 0")
        if not 0 <= params.min_p <= 1 or params.min_tokens < 0 or (params.logprobs or 0) < 0:
            raise ValueError("min_p must be in [0, 1], min_tokens and logprobs ≥ 0")

    def generate_sync(
        self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event | None = None
    ) -> Iterator[Delta]:
        """The blocking generator behind `generate`: one Delta per round, then a final one with
        `finish_reason` and `stats`."""
        self.check_request(prompt_ids, params)
        assert self.decoder is not None
        room = self.decoder.max_length - len(prompt_ids) - self.decoder.routing.max_speculative_tokens - 1
        budget = min(params.max_tokens, room)
        stats = RequestStats(prompt_tokens=len(prompt_ids))
        text = IncrementalDetokenizer(self.tokenizer, prompt_ids)
        stops = StopStrings(params.stop)
        start = time.perf_counter()
        ends = self._end_ids(params)
        proc = Processing.of(params, tuple(sorted(ends)))
        logprobs: list[TokenLogprob] = []
        record = None if params.logprobs is None else (params.logprobs, logprobs)
        rounds = self.decoder.decode(prompt_ids, proc, budget, stats, self._generator(params), record)
        finish = "length"
        try:
            for tokens in rounds:
                if stats.time_to_first_token is None:
                    stats.time_to_first_token = time.perf_counter() - start
                kept, ended = _until_end(tokens, ends)
                stats.completion_tokens += len(kept) + ended
                piece, stopped = stops.add(text.add(kept))
                if ended and not stopped:
                    tail, stopped = _drain(text, stops)
                    piece += tail
                scores = logprobs[: len(kept)]  # the round's; an end token's own is not reported
                logprobs.clear()
                if ended or stopped:
                    finish = "stop"
                    yield Delta(piece, kept, scores)
                    break
                if piece or kept:
                    yield Delta(piece, kept, scores)
                if cancel is not None and cancel.is_set():
                    return
            else:
                tail, stopped = _drain(text, stops)
                finish = "stop" if stopped else finish
                if tail:
                    yield Delta(tail)
        finally:
            rounds.close()
        stats.decode_seconds = time.perf_counter() - start - (stats.time_to_first_token or 0.0)
        yield Delta("", finish_reason=finish, stats=stats)

    def _end_ids(self, params: SamplingParams) -> frozenset[int]:
        """The tokens that end this request: the model's end-of-turn/EOS tokens (unless `ignore_eos`)
        and the request's `stop_token_ids`."""
        own = frozenset() if params.ignore_eos else self._stop_ids
        return own | frozenset(params.stop_token_ids)

    def _generator(self, params: SamplingParams) -> torch.Generator:
        assert self.decoder is not None
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(1 << 62)
        return torch.Generator(device=self.decoder.target.device).manual_seed(seed)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _until_end(tokens: list[int], ends: frozenset[int]) -> tuple[list[int], int]:
    """The tokens before the first end token, and 1 if there was one."""
    for i, token in enumerate(tokens):
        if token in ends:
            return tokens[:i], 1
    return tokens, 0


def _drain(text: IncrementalDetokenizer, stops: StopStrings) -> tuple[str, bool]:
    """The text still held back at the end of a completion, and whether it completed a stop string."""
    piece, stopped = stops.add(text.flush())
    return (piece if stopped else piece + stops.flush()), stopped
