"""`SpeculativeEngine`: the `Engine` protocol on top of the batch decoder.

Decoding is synchronous torch code in one worker thread, which owns the models and their caches. It
loops: let waiting requests join (up to `max_batch` decode together; `batch.py`), run one step for
the batch, hand each request its new text (`Delta`s posted to the request's event loop or queue).
A request that is cancelled (the client went away) or finishes leaves at the next step, freeing its
slot. At a batch of one (maxConcurrency 1) the worker decodes requests one at a time through
`SpeculativeDecoder` instead: the batch-1 path, which `compile` on CUDA runs on static caches and CUDA
graphs (they need one owner and fixed shapes). In batches, `compile` on CUDA replays the decode steps
and verify passes of the target, and the steps of a draft (token-level or EAGLE-3), from CUDA graphs
(`slots.PaddedSteps`); so it does at a batch of one with an EAGLE-3 draft, which the batch decoder
serves, and with no draft where Liger-Kernel fuses the target's kernels, which is faster there than the
sequential decoder's compiled steps (`_sequential`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metaspec.api.serving import PromptLookup, SpecServeSpec
from metaspec.devices import resolve_device
from metaspec.drafts import Eagle3Draft
from metaspec.prompts import encode_chat, end_of_turn_ids

from . import kernels
from .batch import BatchDecoder, Draft, Sequence
from .detokenize import IncrementalDetokenizer, StopStrings
from .drafts import ModelDraft
from .eagle import FeatureDraft, FeatureModel
from .loader import LoadedModel, load_models, shared_vocab
from .lookup import Lookup, LookupDraft, LookupFirstDraft
from .protocol import Delta, RequestStats, SamplingParams, TokenLogprob
from .routing import RoutingPolicy
from .sampling import Processing
from .slots import SlotModel
from .speculative import CausalLM, SpeculativeDecoder

log = logging.getLogger(__name__)
_DONE = object()
#: Sequences decoded together when nothing says otherwise (tests, benchmarks); servers use maxConcurrency.
DEFAULT_BATCH = 16
#: The interpreter's switch interval (seconds) once an engine whose steps overlap decodes, at most. The
#: worker shares the interpreter lock with the thread that serves requests (an event loop streaming each
#: step's tokens and taking new requests), and a thread waiting for the lock gets it when its holder
#: waits (for the GPU, a lock) or after the switch interval, 5 ms by default: a worker that seldom waits
#: for the GPU (its steps overlap, `BatchDecoder.overlap`) would stream every step's tokens, and take
#: requests, that late.
SWITCH_INTERVAL = 0.0005
#: Share of the GPU memory free when a batch decoder is built that its caches may take up front
#: (`BatchDecoder.reserve`); the rest is for the CUDA graphs' memory and each step's activations. 0: none
#: (they grow as steps need).
CACHE_SHARE = 0.5


class SpeculativeEngine:
    """Target + draft with confidence routing and continuous batching. Build with `from_spec` (then
    `load()`, blocking) for the server, or `from_models` with models already in memory (tests,
    benchmarks)."""

    def __init__(self, model_name: str, max_batch: int = DEFAULT_BATCH) -> None:
        self.model_name = model_name
        self.max_batch = max_batch
        self.tokenizer: Any = None
        self.decoder: BatchDecoder | None = None
        self.sequential: SpeculativeDecoder | None = None
        self.served: dict[str, LoadedModel] = {}
        self._loader: Any = None
        self._stop_ids: frozenset[int] = frozenset()
        self._token_chars: int | None = None
        self._inbox: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._outbox = _Outbox()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.on_step: Callable[[int, bool], None] | None = None
        self.compiled = False
        """`compile` took effect: CUDA graphs (and torch.compile at a batch of one)."""

    @classmethod
    def from_spec(
        cls, spec: SpecServeSpec, model_name: str, cache_dir: Path, device: str | None = None
    ) -> SpeculativeEngine:
        """An engine that loads `spec`'s models when `load()` is called; `ready()` is False until then."""
        engine = cls(model_name, spec.sampling.max_concurrency)
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
        max_batch: int = DEFAULT_BATCH,
    ) -> SpeculativeEngine:
        engine = cls(model_name, max_batch)
        engine._build(target, draft, tokenizer, routing, static_cache_len, compile)
        return engine

    def with_routing(self, routing: RoutingPolicy, max_batch: int | None = None) -> SpeculativeEngine:
        """An engine decoding with this one's models (caches of its own, its own worker) under another
        routing policy with the same `maxSpeculativeTokens` (the compiled verify length is k + 1)."""
        assert self.decoder is not None
        if routing.max_speculative_tokens != self.decoder.routing.max_speculative_tokens:
            raise ValueError("the compiled verify length is k + 1: keep maxSpeculativeTokens")
        engine = SpeculativeEngine(self.model_name, max_batch or self.max_batch)
        engine.tokenizer, engine.served, engine._stop_ids = self.tokenizer, self.served, self._stop_ids
        target, draft = self.decoder.target, self.decoder.draft
        sequential = engine.max_batch == 1 and _sequential(draft, target.model, self.compiled)
        graphs = self.compiled and not sequential  # the batch decoder serves
        engine.compiled = self.compiled
        engine.decoder = BatchDecoder(
            SlotModel(target.model, target.vocab, target.max_length, graphs),
            _renewed(draft, graphs),
            routing,
            engine.max_batch,
        )
        _reserve(engine.decoder)
        if sequential:  # token models, lookup
            if self.sequential is not None:  # its compiled graphs, if any, serve every policy
                target, draft_lm = self.sequential.target, self.sequential.draft
            else:
                lm = self.decoder.target
                target = CausalLM(lm.model, lm.vocab)
                draft_lm = CausalLM(draft.lm.model, draft.lm.vocab) if isinstance(draft, ModelDraft) else None
            lookup = draft.lookup.renewed() if isinstance(draft, LookupDraft) else None
            engine.sequential = SpeculativeDecoder(target, draft_lm, routing, lookup)
        return engine

    def load(self) -> None:
        """Load and check both models (blocking: call it from a thread in an async server)."""
        if self.decoder is None and self._loader is not None:
            self._loader()

    def _load_spec(self, spec: SpecServeSpec, cache_dir: Path, device: torch.device) -> None:
        target, draft = load_models(spec, cache_dir, device)
        self.served = {m.role: m for m in (target, draft) if m is not None}
        routing = RoutingPolicy.of(spec.routing, draft.calibration if draft else None, draft.uri if draft else "")
        if draft is None and spec.prompt_lookup is None and routing.uses_draft:
            log.warning("no draft model: routing %r falls back to target-only decoding", routing.policy)
            routing = RoutingPolicy("never", routing.threshold, routing.max_speculative_tokens)
        limits = spec.sampling
        length = limits.max_prompt_tokens + limits.max_tokens_limit + routing.max_speculative_tokens + 1
        proposer = draft.model if draft else spec.prompt_lookup
        if draft and spec.prompt_lookup:
            proposer = LookupFirst(spec.prompt_lookup, draft.model)
        compile = spec.compile and device.type == "cuda"
        static = compile and self.max_batch == 1 and _sequential(proposer, target.model, compile)
        if static:
            # every attention reads the whole static cache: a verify pass at 6150 positions costs 2.2 steps
            # on an H100 (docs/benchmarks.md), so tight limits make speculation pay
            log.info("compile: a static KV cache of %d positions (maxPromptTokens + maxTokensLimit + k + 1)", length)
        elif compile:
            log.info("compile: batched steps replayed from CUDA graphs, captured as batch sizes and lengths come")
        elif spec.compile:
            log.warning("compile applies on CUDA; decoding eagerly")
        self._build(target.model, proposer, target.tokenizer, routing, length if static else None, compile, length)

    def _build(
        self,
        target: Any,
        draft: Any | None,
        tokenizer: Any,
        routing: RoutingPolicy,
        static_cache_len: int | None,
        compile: bool,
        cache_length: int | None = None,
    ) -> None:
        """`draft`: a draft model, a `PromptLookup`, both (`LookupFirst`), or None. `cache_length`: positions
        per sequence in the batch caches (default: the models' own limit). `compile`: torch.compile and
        static caches in the sequential decoder, CUDA graphs of the batch decoder's steps (`PaddedSteps`)."""
        vocab = shared_vocab(target, _token_model(draft), tokenizer)
        length = cache_length or static_cache_len or 1 << 20  # SlotModel caps it at max_position_embeddings
        sequential = self.max_batch == 1 and _sequential(draft, target, compile)
        graphs = compile and not sequential  # the batch decoder serves
        target_lm = SlotModel(target, vocab, length, graphs)
        self.compiled = compile
        self.decoder = BatchDecoder(
            target_lm, _draft(draft, vocab, length, target_lm.device, graphs), routing, self.max_batch
        )
        _reserve(self.decoder)
        if sequential:
            options = {"static_cache_len": static_cache_len, "compile": compile}
            options["compile_max_tokens"] = routing.max_speculative_tokens + 1  # verify: 1 pending + k proposals
            draft_lm = CausalLM(draft, vocab, **options) if _token_model(draft) is not None else None
            lookup = Lookup(draft, vocab, target_lm.device) if isinstance(draft, PromptLookup) else None
            self.sequential = SpeculativeDecoder(CausalLM(target, vocab, **options), draft_lm, routing, lookup)
        self.tokenizer = tokenizer
        self._stop_ids = frozenset(end_of_turn_ids(tokenizer))

    def ready(self) -> bool:
        return self.decoder is not None

    @property
    def routing(self) -> RoutingPolicy:
        assert self.decoder is not None
        return self.decoder.routing

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

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def spell(self, ids: list[int]) -> list[str]:
        return list(self.tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False))

    def vocabulary_size(self) -> int:
        return len(self.tokenizer)

    def token_chars(self) -> int:
        # Byte-level BPE spells one byte per symbol and a character is at least one byte; special
        # tokens are spelled literally: the longest entry bounds what one token stands for.
        if self._token_chars is None:
            self._token_chars = max(len(token) for token in self.tokenizer.get_vocab())
        return self._token_chars

    def max_model_len(self) -> int:
        return self._max_length

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
        if self._room(prompt_ids) < 1:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; the KV cache holds {self._max_length} per sequence, "
                "prompt and completion together (maxPromptTokens + maxTokensLimit)"
            )
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.repetition_penalty <= 0:
            raise ValueError("temperature must be ≥ 0, top_p in (0, 1], repetition_penalty > 0")
        if not 0 <= params.min_p <= 1 or params.min_tokens < 0 or (params.logprobs or 0) < 0:
            raise ValueError("min_p must be in [0, 1], min_tokens and logprobs ≥ 0")

    @property
    def _max_length(self) -> int:
        assert self.decoder is not None
        if self.sequential is not None:
            return self.sequential.max_length - self.decoder.routing.max_speculative_tokens - 1
        return self.decoder.max_length

    def _room(self, prompt_ids: list[int]) -> int:
        return self._max_length - len(prompt_ids)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream the completion. Raises ValueError (before any Delta) for an unusable request."""
        self.check_request(prompt_ids, params)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        request = self._submit(prompt_ids, params, lambda item: self._outbox.post(loop, inbox, item))
        try:
            while (item := await inbox.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._cancel(request)

    def _end_ids(self, params: SamplingParams) -> frozenset[int]:
        """The tokens that end this request: the model's end-of-turn/EOS tokens (unless `ignore_eos`)
        and the request's `stop_token_ids`."""
        own = frozenset() if params.ignore_eos else self._stop_ids
        return own | frozenset(params.stop_token_ids)

    def generate_sync(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """The blocking twin of `generate` (any thread; requests from several threads batch together):
        one Delta per round with new text, then a final one with `finish_reason` and `stats`."""
        self.check_request(prompt_ids, params)
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        request = self._submit(prompt_ids, params, inbox.put)
        try:
            while (item := inbox.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._cancel(request)

    def generate_here(self, prompt_ids: list[int], params: SamplingParams) -> list[Delta]:
        """`generate_sync`'s Deltas, decoded on the calling thread instead of the engine's own, alone: for
        scripts and benchmarks that run other torch work on their thread. Each thread that runs torch ops
        on a CPU keeps an OpenMP thread pool, and with libgomp, once the pools hold more threads than the
        machine has cores, every pool's workers sleep between parallel regions instead of spinning: a
        5-token pass of SmolLM2-135M on 2 cores took 81 ms on a thread alone and 98 ms next to another
        thread's pool. A server runs torch on its decode thread only. Not while that thread decodes."""
        self.check_request(prompt_ids, params)
        with self._wake:
            if self._worker is not None:
                raise RuntimeError("the engine decodes on its own thread: use generate_sync")
        posted: list[Any] = []
        active: list[_Request] = []
        self._advance(active, [self._request(prompt_ids, params, posted.append)])
        while active:
            self._advance(active, [])
        for item in posted:
            if isinstance(item, BaseException):
                raise item
        return posted[:-1]  # the last is _DONE

    def _request(self, prompt_ids: list[int], params: SamplingParams, post: Callable[[Any], None]) -> _Request:
        budget = min(params.max_tokens, self._room(prompt_ids))
        assert self.decoder is not None
        generator = torch.Generator(device=self.decoder.target.device).manual_seed(
            params.seed if params.seed is not None else random.SystemRandom().randrange(1 << 62)
        )
        return _Request(self, prompt_ids, params, budget, generator, post)

    def _submit(self, prompt_ids: list[int], params: SamplingParams, post: Callable[[Any], None]) -> _Request:
        request = self._request(prompt_ids, params, post)
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inbox.append(request)
            if self._worker is None:
                if self.decoder is not None and self.decoder.overlap:
                    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
                self._worker = threading.Thread(target=self._work, name="metaspec-decode", daemon=True)
                self._worker.start()
            self._wake.notify()
        return request

    def _cancel(self, request: _Request) -> None:
        with self._wake:
            request.seq.cancelled = True
            self._wake.notify()

    # the worker thread

    def _work(self) -> None:
        active: list[_Request] = []
        while True:
            with self._wake:
                while not self._inbox and not active and not self._closed:
                    self._wake.wait()
                if self._closed:
                    for request in [*active, *self._inbox]:
                        request.fail(RuntimeError("the engine was closed"))
                    self._outbox.send()
                    return
                limit = 1 if self.sequential is not None else self.max_batch
                joining = [self._inbox.popleft() for _ in range(min(len(self._inbox), limit - len(active)))]
            try:
                self._advance(active, joining)
            except Exception as error:  # a bug, not a request's fault: fail what is in flight, serve on
                log.exception("decoding step failed")
                for request in active:
                    request.fail(error)
                active.clear()
            self._outbox.send()

    def _advance(self, active: list[_Request], joining: list[_Request]) -> None:
        """Admit `joining`, run one step (or, sequentially, one whole request), finish who is done."""
        assert self.decoder is not None
        for request in [r for r in joining if r.seq.cancelled]:
            request.finish()
        joining = [r for r in joining if not r.seq.cancelled]
        active.extend(joining)
        if self.sequential is not None:
            for request in joining:
                request.decode_alone(self.sequential, self._outbox.send)
        else:
            if joining:
                self.decoder.add([r.seq for r in joining])
            batch, speculative = self.decoder.step()
            if batch and self.on_step is not None:
                self.on_step(batch, speculative)
        for request in [r for r in active if r.seq.slot < 0]:
            active.remove(request)
            request.finish()

    def close(self) -> None:
        """Fail what is in flight and wait for the worker to leave (after the step in progress): a torch
        thread still running at interpreter exit aborts the process."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()


class _Outbox:
    """What the worker posts to requests on event loops during a step, sent at its end with one
    `call_soon_threadsafe` a loop: each call writes to the loop's self-pipe and wakes its thread, which
    then takes the GIL from the worker (between the torch ops of a step's settling, which release it).
    Worker thread only."""

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}

    def post(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any], item: Any) -> None:
        self._items.setdefault(loop, []).append((inbox, item))

    def send(self) -> None:
        items, self._items = self._items, {}
        for loop, posted in items.items():
            with contextlib.suppress(RuntimeError):  # the loop closed (its server stopped): nobody is waiting
                loop.call_soon_threadsafe(_deliver, posted)


def _deliver(posted: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for inbox, item in posted:
        inbox.put_nowait(item)


class _Request:
    """One request in the worker: its sequence, its text so far, and where its Deltas go."""

    def __init__(
        self,
        engine: SpeculativeEngine,
        prompt_ids: list[int],
        params: SamplingParams,
        budget: int,
        generator: torch.Generator,
        post: Callable[[Any], None],
    ) -> None:
        self.stats = RequestStats(prompt_tokens=len(prompt_ids))
        self.ends = engine._end_ids(params)
        proc = Processing.of(params, tuple(sorted(self.ends)))
        self.seq = Sequence(prompt_ids, proc, budget, self.add, generator, self.stats)
        self.logprobs: list[TokenLogprob] = []
        if params.logprobs is not None:
            self.seq.logprobs = (params.logprobs, self.logprobs)
        self.text = IncrementalDetokenizer(engine.tokenizer, prompt_ids)
        self.stops = StopStrings(params.stop)
        self.post = post
        self.start = time.perf_counter()
        self.stopped = False

    def add(self, tokens: list[int]) -> bool:
        """A round's tokens: post the new text; True when a stop token or stop string ended it."""
        stats = self.stats
        if stats.time_to_first_token is None:
            stats.time_to_first_token = time.perf_counter() - self.start
        kept, ended = _until_end(tokens, self.ends)
        stats.completion_tokens += len(kept) + ended
        piece, stopped = self.stops.add(self.text.add(kept))
        if ended and not stopped:
            tail, stopped = _drain(self.text, self.stops)
            piece += tail
        self.stopped = ended or stopped
        scores = self.logprobs[: len(kept)]  # the round's; an end token's own is not reported
        self.logprobs.clear()
        if piece or kept or self.stopped:
            self.post(Delta(piece, kept, scores))
        return self.stopped

    def decode_alone(self, decoder: SpeculativeDecoder, send: Callable[[], None]) -> None:
        """Decode the whole request through the sequential (compiled) decoder, `send`ing each round's
        Delta as it comes."""
        seq = self.seq
        rounds = decoder.decode(seq.prompt, seq.proc, seq.budget, self.stats, seq.generator, seq.logprobs)
        try:
            for tokens in rounds:
                seq.tokens.extend(tokens)
                stop = self.add(tokens)
                send()
                if stop or seq.cancelled:
                    break
        except Exception as error:  # this request's alone, as a failing sequence in a batch
            log.warning("sequence failed: %r", error, exc_info=True)
            seq.error = error
        finally:
            rounds.close()

    def finish(self) -> None:
        """The sequence left the batch: post its end (final Delta, or its error)."""
        seq = self.seq
        if seq.error is not None:
            self.fail(seq.error)
            return
        if not seq.cancelled:
            finish = "stop" if self.stopped else "length"
            if not self.stopped:
                tail, stopped = _drain(self.text, self.stops)
                finish = "stop" if stopped else finish
                if tail:
                    self.post(Delta(tail))
            self.stats.decode_seconds = time.perf_counter() - self.start - (self.stats.time_to_first_token or 0.0)
            self.post(Delta("", finish_reason=finish, stats=self.stats))
        self.post(_DONE)

    def fail(self, error: BaseException) -> None:
        self.post(RuntimeError(f"generation failed: {error}"))
        self.post(_DONE)


@dataclass(frozen=True)
class LookupFirst:
    """A draft model behind prompt lookup (`draft` and `promptLookup` both set): `LookupFirstDraft`."""

    lookup: PromptLookup
    model: Any


def _token_model(draft: Any | None) -> Any | None:
    """The causal LM among the proposers that drafts tokens (a model sharing the target's vocabulary)."""
    if isinstance(draft, LookupFirst):
        draft = draft.model
    return None if isinstance(draft, Eagle3Draft | PromptLookup) else draft


def _sequential(draft: Any | None, target: torch.nn.Module, compile: bool) -> bool:
    """Whether requests at maxConcurrency 1 decode one at a time through the sequential decoder: with a
    causal-LM draft or prompt lookup (as given to `_build`, or as the batch decoder's `Draft`), and with no
    draft unless `compile` can fuse the target's kernels (`kernels.fusible`). There the batch decoder's
    padded steps, replayed from CUDA graphs of the fused body, ran target-only 1.26–1.78× faster than the
    sequential decoder's `torch.compile` on an H100 (docs/benchmarks.md, 2026-12-07); without the fused
    kernels they ran 0.69× as fast. An EAGLE-3 draft reads the target's features, which only the batch
    decoder's passes hand out; a draft behind prompt lookup also runs in the batch decoder."""
    if draft is None:
        return not (compile and kernels.fusible(target))
    return not isinstance(draft, Eagle3Draft | LookupFirst | FeatureDraft | LookupFirstDraft)


def _draft(model: Any | None, vocab: int, length: int, device: torch.device, graphs: bool = False) -> Draft | None:
    """The batch decoder's draft: a token-level causal LM (its decode steps from CUDA graphs with `graphs`),
    an EAGLE-3 draft, prompt lookup, or a draft behind prompt lookup."""
    if model is None:
        return None
    if isinstance(model, LookupFirst):
        drafted = _draft(model.model, vocab, length, device, graphs)
        assert isinstance(drafted, ModelDraft)
        return LookupFirstDraft(LookupDraft(model.lookup, vocab, length, device), drafted)
    if isinstance(model, Eagle3Draft):
        return FeatureDraft(FeatureModel(model, vocab, length, graphs))
    if isinstance(model, PromptLookup):
        return LookupDraft(model, vocab, length, device)
    return ModelDraft(SlotModel(model, vocab, length, graphs))


def _renewed(draft: Draft | None, graphs: bool) -> Draft | None:
    """A draft of the same model or lookup as `draft`, with state of its own (caches, history)."""
    if isinstance(draft, LookupFirstDraft):
        lookup, model = _renewed(draft.lookup, graphs), _renewed(draft.model, graphs)
        assert isinstance(lookup, LookupDraft) and isinstance(model, ModelDraft)
        return LookupFirstDraft(lookup, model)
    if isinstance(draft, ModelDraft):
        lm = draft.lm
        model = lm.draft if isinstance(draft, FeatureDraft) else lm.model
        return _draft(model, lm.vocab, lm.max_length, lm.device, graphs)
    if isinstance(draft, LookupDraft):
        lookup = draft.lookup
        return _draft(lookup.settings, lookup.vocab, draft.max_length, lookup.device)
    return None


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


def _reserve(decoder: BatchDecoder) -> None:
    """Where its steps replay from CUDA graphs, allocate `decoder`'s caches for its longest sequences up
    front, within `CACHE_SHARE` of the free GPU memory (`BatchDecoder.reserve`)."""
    target = decoder.target
    if target.padded is None or not target.padded.capture or CACHE_SHARE <= 0:
        return
    budget = int(CACHE_SHARE * torch.cuda.mem_get_info(target.device)[0])
    positions = decoder.reserve(target.max_length, budget)
    log.info("batch caches reserved for %d sequences of %d positions", decoder.max_batch, positions)
