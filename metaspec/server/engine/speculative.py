"""The speculative decoding loop (batch 1): a draft proposes, the target verifies in one pass.

Speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding", Algorithm 1; Chen et al. 2023, "Accelerating Large Language Model Decoding with
Speculative Sampling", Algorithm 2): the draft samples x_1..x_J from its distributions q_1..q_J; the
target computes p_1..p_{J+1} in one forward pass over the proposals; x_i is accepted with probability
min(1, p_i(x_i) / q_i(x_i)); at the first rejection the token is resampled from
norm(max(0, p_i − q_i)) and the round ends; if all J are accepted a bonus token is drawn from
p_{J+1}. Every emitted token is then distributed exactly as under target-only sampling. At
temperature 0 both distributions are one-hot, and the rule becomes: accept while the draft's argmax
equals the target's, then emit the target's argmax — the output equals target-only greedy decoding.

Both models keep their KV cache across rounds; a rejection crops the rejected positions. Within a
round the tokens stay on the device; one host sync per round reads the outcome (plus one per draft
step under the `per-token` policy, which must look at the draft's confidence to decide).

A compiled draft proposes a greedy round in one call instead of one per token (`CausalLM.propose`): k
draft steps captured in one CUDA graph, with no host sync between them. `per-token` routing keeps the
step-by-step loop: its point is to skip the draft steps after an unconfident one, and a round in one
graph computes them all anyway.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache, StaticCache
from transformers import __version__ as _VERSION

from .protocol import RequestStats, TokenLogprob
from .routing import Adaptive, RoutingPolicy, StepClock
from .sampling import History, Processing, confidence, draw, greedy_tokens, logprobs, penalize, probabilities

if TYPE_CHECKING:
    from .lookup import Lookup


class CausalLM:
    """A loaded causal LM and how to run it incrementally.

    `vocab`: logits are cut to the first `vocab` entries, so target and draft score the same token
    set even when one of them pads its embedding matrix. `static_cache_len`: one preallocated
    `StaticCache` reused by every request (requests are decoded one at a time), which makes the
    decode step's shapes and addresses fixed; `compile` then wraps the forward in `torch.compile`
    with CUDA graphs for inputs of at most `compile_max_tokens` tokens (decode and verify steps; the
    variable-length prefill runs eagerly).

    A compiled graph is specialised to its input length, and a verify pass scores 1 to k+1 tokens
    depending on how many the draft proposed: compiling each length recompiles and re-records CUDA
    graphs round after round. So compiled inputs come in two lengths only: 1 (a decode step) and
    `compile_max_tokens`, shorter inputs padded at the end. The padding's positions lie after every
    real token, so the causal mask hides them from the real ones, and the session crops them from the
    cache right away (the next write overwrites them).

    `draft_rounds` (default: when compiled): as a draft, propose a greedy round's tokens in one call
    (`propose`), compiled into one CUDA graph, instead of one call per token.

    `capture_seconds`: the time compiled calls spent compiling and recording rather than replaying, which
    `adaptive` leaves out of its step times (a shape's first probe on an H100 compiled for seconds, and
    counted as a step, it held speculation off for good). torch.compile's CUDA-graph trees run a compiled
    function's first call as a warm-up, after compiling it, and record its graph at the second
    (`WARM_CALLS`); a call is timed on the host, where compiling and recording take their time.
    """

    WARM_CALLS = 2

    def __init__(
        self,
        model: torch.nn.Module,
        vocab: int,
        *,
        static_cache_len: int | None = None,
        compile: bool = False,
        compile_max_tokens: int = 8,
        draft_rounds: bool | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.device = next(model.parameters()).device
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.static_cache_len = static_cache_len
        self.draft_rounds = compile if draft_rounds is None else draft_rounds
        self._static = None
        if static_cache_len:  # room for padding, or a draft round's proposals, beyond the last position
            slack = compile_max_tokens if compile or self.draft_rounds else 0
            self._static = StaticCache(config=model.config, max_cache_len=static_cache_len + slack)
            if not all(hasattr(layer, "crop") for layer in self._static.layers):
                # older static layers keep a length tensor that nothing can rewind after a rejection
                raise ValueError(f"a static KV cache needs transformers >= 5.24 (StaticCache.crop): {_VERSION}")
        self._compiled = self._round = None
        self.capture_seconds = 0.0
        self._calls: Counter[tuple[str, int]] = Counter()
        if compile:
            if self._static is None:
                raise ValueError("torch.compile needs a static cache (static_cache_len)")
            self._compiled = torch.compile(model.forward, mode="reduce-overhead", dynamic=False, fullgraph=False)
            self._round = torch.compile(self._greedy_round, mode="reduce-overhead", dynamic=False, fullgraph=False)
        self.compile_max_tokens = compile_max_tokens

    @property
    def max_length(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or 1 << 20
        return min(limit, self.static_cache_len) if self.static_cache_len else limit

    def session(self) -> Session:
        if self._static is not None:
            self._static.reset()
            return Session(self, self._static)
        return Session(self, DynamicCache(config=self.model.config))

    def forward(self, ids: torch.Tensor, cache: object, keep: int, tokens: int = 1) -> tuple[torch.Tensor, int]:
        """Logits (keep, V) for the last `keep` positions of `ids` (1, T), appended to `cache`, and the
        number of padding positions appended after them (the caller crops them). Eagerly, with a dynamic
        cache, the pass is padded to at least `tokens` positions and the head runs over the padding too:
        on some CPUs a pass of 5 tokens runs faster than one of 3 (`Adaptive.width`)."""
        n = ids.shape[1]
        compiled = self._compiled is not None and n <= self.compile_max_tokens
        if compiled:
            length = 1 if n == 1 else self.compile_max_tokens
        else:
            length = n if self._static is not None else max(n, tokens)  # a static cache has no room for more
        if length > n:
            ids = torch.cat([ids, ids[:, -1:].expand(1, length - n)], dim=1)  # (1, length)
        if not compiled:
            rows = length - n + keep  # the kept positions and the padding after them
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=rows, **{self._cache_arg: cache})
            return out.logits[0, :keep, : self.vocab], length - n  # (keep, V)
        kwargs = {"input_ids": ids, "use_cache": True, "logits_to_keep": length, self._cache_arg: cache}
        out = self._call(("forward", length), self._compiled, **kwargs)
        return out.logits[0, n - keep : n, : self.vocab].clone(), length - n  # (keep, V), outliving the graph

    def propose(
        self, cache: object, last: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor, k: int
    ) -> torch.Tensor:
        """A greedy draft round in one call: see `_greedy_round`."""
        if self._round is None:
            return self._greedy_round(cache, last, seen, penalty, k)
        return self._call(("round", k), self._round, cache, last, seen, penalty, k).clone()  # outliving the graph

    def _call(self, shape: tuple[str, int], compiled: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A compiled function's call, its time counted in `capture_seconds` while the shape is warming."""
        if self._calls[shape] >= self.WARM_CALLS:
            torch.compiler.cudagraph_mark_step_begin()  # the previous call's outputs may be overwritten
            return compiled(*args, **kwargs)
        start = time.perf_counter()
        torch.compiler.cudagraph_mark_step_begin()  # its first call imports the compiler (about a second)
        out = compiled(*args, **kwargs)
        self._calls[shape] += 1
        self.capture_seconds += time.perf_counter() - start
        return out

    def _greedy_round(
        self, cache: object, last: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor, k: int
    ) -> torch.Tensor:
        """k greedy tokens (k,) following `last` (1, 1).

        Each token is the argmax after the repetition penalty (`penalty` (), 1 for none) over `seen`
        (V,) bool, which grows with the proposals, as `greedy_tokens` does. The cache takes `last` and
        every proposal, k + 1 positions: the last proposal too, so a fully accepted round leaves the
        draft nothing to catch up on. Pure tensor code with a fixed k, so one CUDA graph captures it.
        """
        cache_kwargs = {self._cache_arg: cache}
        tokens: list[torch.Tensor] = []
        x = last
        for _ in range(k):
            out = self.model(input_ids=x, use_cache=True, logits_to_keep=1, **cache_kwargs)
            logits = out.logits[0, -1, : self.vocab].float()  # (V,)
            x = penalize(logits, seen, penalty).argmax().view(1, 1)
            seen = seen.index_fill(0, x.view(1), True)
            tokens.append(x.view(1))
        self.model.base_model(input_ids=x, use_cache=True, **cache_kwargs)  # no head: only its KV is needed
        return torch.cat(tokens)


class Session:
    """One request's KV cache of one model and how many tokens it holds."""

    def __init__(self, lm: CausalLM, cache: object) -> None:
        self.lm = lm
        self.cache = cache
        self.length = 0

    def feed(self, ids: torch.Tensor, keep: int = 1, tokens: int = 1) -> torch.Tensor:
        logits, padding = self.lm.forward(ids, self.cache, keep, tokens)
        self.length += ids.shape[1] + padding
        self.truncate(self.length - padding)
        return logits

    def propose(self, last: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor, k: int) -> torch.Tensor:
        """A greedy draft round after `last` (`CausalLM.propose`): the cache grows by k + 1 positions."""
        proposals = self.lm.propose(self.cache, last, seen, penalty, k)
        self.length += k + 1
        return proposals

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (rejected proposals)."""
        if self.length > length:
            self.cache.crop(length - self.length)  # a negative count removes that many positions
            self.length = length


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) per row, the distribution to resample from after a rejection (Leviathan et
    al. 2023, Algorithm 1). `p`, `q` (J, V). A row with no mass only occurs where p == q, where a
    rejection has probability 0; it falls back to p so the tensor stays finite."""
    residual = (p - q).clamp_min(0)  # (J, V)
    mass = residual.sum(-1, keepdim=True)  # (J, 1)
    return torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(p.dtype).tiny), p)


def speculative_accept(
    p: torch.Tensor, q: torch.Tensor | None, proposals: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rejection rule: the number of accepted proposals (), and the next token (1,).

    `p` (J+1, V) the target's distributions at the J proposals and after them, `q` (J, V) the draft's
    (None when J = 0), `proposals` (J,). Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at
    the first rejection draw from the residual, else the bonus token from p_{J+1}."""
    j = proposals.shape[0]
    if j == 0 or q is None:
        token = draw(p[-1:], generator)
        return torch.zeros((), dtype=torch.long, device=p.device), token
    px = p[:j].gather(1, proposals[:, None]).squeeze(1)  # (J,)
    qx = q.gather(1, proposals[:, None]).squeeze(1)  # (J,) > 0: each x_i was drawn from q_i
    u = torch.rand(j, device=p.device, generator=generator)
    accepted = (u * qx < px).int().cumprod(0).sum()  # u < p/q: accept with probability min(1, p/q)
    rows = torch.cat([residual_distribution(p[:j], q), p[j:]])  # (J+1, V): residuals, then bonus p
    dist = rows.index_select(0, accepted.view(1))  # (1, V)
    return accepted, draw(dist, generator)


def record_logprobs(logits: torch.Tensor, new: list[int], top: int, sink: list[TokenLogprob]) -> None:
    """The target's log-probabilities at the emitted positions `new`: row i of a verify pass scored
    position i given the emitted tokens before it. `logits` (len(new), V)."""
    ids = torch.tensor(new, dtype=torch.long, device=logits.device)
    chosen, values, top_ids = logprobs(logits, ids, top)
    for token, value, row_values, row_ids in zip(new, chosen.tolist(), values.tolist(), top_ids.tolist(), strict=True):
        sink.append(TokenLogprob(token, value, tuple(zip(row_ids, row_values, strict=True))))


class SpeculativeDecoder:
    """Target + optional draft (a causal LM, or prompt lookup) + routing policy: decodes one request at a
    time."""

    def __init__(
        self, target: CausalLM, draft: CausalLM | None, routing: RoutingPolicy, lookup: Lookup | None = None
    ) -> None:
        if routing.uses_draft and draft is None and lookup is None:
            raise ValueError(f"routing policy {routing.policy!r} needs a draft model")
        self.target = target
        self.draft = draft
        self.lookup = lookup
        self.routing = routing
        self.adaptive = Adaptive(routing.max_speculative_tokens) if routing.adaptive else None

    @property
    def max_length(self) -> int:
        """Longest sequence (prompt + completion) both models can hold."""
        if self.draft is None or not self.routing.uses_draft:
            return self.target.max_length
        return min(self.target.max_length, self.draft.max_length)

    def decode(
        self,
        prompt: list[int],
        proc: Processing,
        max_new_tokens: int,
        stats: RequestStats,
        generator: torch.Generator | None = None,
        logprobs: tuple[int, list[TokenLogprob]] | None = None,
    ) -> Iterator[list[int]]:
        """Yield the tokens emitted by each round until `max_new_tokens` are out (stopping earlier is
        the caller's: close the iterator). Updates `stats` (route, proposals, rounds) as it goes.

        `logprobs` (alternatives per position, a list): each round appends the target's log-probability
        of every token it emits, and the most likely alternatives, to the list. They are exact under
        speculation with no extra model call: every emitted token is either verified against or sampled
        from the target's distribution at its position, so the verify pass that decided the round has
        already scored exactly the emitted positions (the accepted proposals and the correction or bonus
        token), each given the emitted tokens before it."""
        with torch.inference_mode():
            run = _Run(self, prompt, proc, stats, generator, logprobs)
            finished = False
            try:
                yield from run.rounds(max_new_tokens)
                finished = True
            except GeneratorExit:  # the caller stopped it (a stop string, the end of a turn, a cancel)
                finished = True
                raise
            finally:
                if finished and self.lookup is not None:
                    self.lookup.finish(run.emitted)


class _Run:
    """The state of one request: emitted tokens, both sessions, the context mask for penalties."""

    def __init__(
        self,
        decoder: SpeculativeDecoder,
        prompt: list[int],
        proc: Processing,
        stats: RequestStats,
        generator: torch.Generator | None,
        logprobs: tuple[int, list[TokenLogprob]] | None = None,
    ) -> None:
        self.routing = decoder.routing
        self.logprobs = logprobs
        self.adaptive = decoder.adaptive
        self.proc = proc
        self.stats = stats
        self.generator = generator
        self.device = decoder.target.device
        self.emitted = list(prompt)
        self.history = History(proc, decoder.target.vocab, self._tensor(prompt))
        self.target = decoder.target.session()
        self.draft: Session | None = None
        self.draft_logits: torch.Tensor | None = None  # (V,) draft's next-token logits, when up to date
        self.lookup = decoder.lookup if self.routing.uses_draft else None
        self.lookup_index = self.lookup.index() if self.lookup is not None else None
        self.speculate = self.lookup is not None  # a lookup has no confidence: only `always` and `adaptive`
        self.whole_rounds = False  # the draft proposes a round in one call (`CausalLM.propose`)
        self.width = 1
        """Tokens the last verify pass ran at, padding included."""
        if self.routing.uses_draft and decoder.draft is not None:
            self._route(decoder.draft)
        one_graph = proc.greedy and not proc.counted and not proc.min_tokens  # what `_greedy_round` applies
        if self.draft is not None and one_graph and decoder.draft.draft_rounds and not self.routing.checks_each_token:
            # a round starts from the last emitted token, which the draft has not taken yet
            self.whole_rounds = True
            self.draft.truncate(len(self.emitted) - 1)
            self.draft_logits = None
            self.penalty = torch.tensor(proc.repetition_penalty, device=self.device)
            # updated in place as tokens are emitted; unpenalized: a mask that stays empty, for the one graph
            self.round_seen = self.history.seen
            if self.round_seen is None:
                self.round_seen = torch.zeros(decoder.target.vocab, dtype=torch.bool, device=self.device)

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _route(self, draft: CausalLM) -> None:
        """Prefill the draft on the prompt and apply the routing policy to its first-token confidence
        (`adaptive`: no prefill; the draft catches up when a round first speculates)."""
        session = draft.session()
        if self.adaptive is not None:
            self.speculate, self.draft = True, session
            return
        logits = session.feed(self._tensor(self.emitted)[None])[0]  # (V,)
        first = confidence(logits).item()
        self.stats.first_token_confidence = first
        self.speculate = self.routing.speculate_request(first)
        if self.speculate:
            self.draft, self.draft_logits = session, logits
        self.stats.route = "speculative" if self.speculate else "target-only"

    def rounds(self, max_new_tokens: int) -> Iterator[list[int]]:
        produced = 0
        while produced < max_new_tokens:
            k = self._k()
            k = min(k, max_new_tokens - produced - 1)  # leave room for the token every round ends with
            clock = StepClock(self._capture_seconds)
            if k and self.adaptive is not None:
                self._catch_up()
            clock.caught_up()
            propose = self._propose_round if k and self.whole_rounds else self._propose
            proposals, q = propose(k)
            new = self._verify(proposals, q)
            if self.adaptive is not None and produced:  # the first round is the prompt's prefill: no step
                j, accepted = proposals.shape[0], len(new) - 1
                self.adaptive.record(1, 1, self.width, j, accepted, int(accepted < j), *clock.stop())
            produced += len(new)
            yield new

    def _capture_seconds(self) -> float:
        """Seconds both models' compiled calls spent compiling and recording so far (`CausalLM`)."""
        return self.target.lm.capture_seconds + (self.draft.lm.capture_seconds if self.draft is not None else 0.0)

    def _k(self) -> int:
        if not self.speculate:
            return 0
        if self.adaptive is None:
            return self.routing.max_speculative_tokens
        # the first round prefills the prompt, a pass unlike a step: `adaptive` neither decides nor times it
        return self.adaptive.choose(1) if self.target.length else 0

    def _catch_up(self) -> None:
        """Feed the draft what it missed while rounds went without it, but the last emitted token (which
        the round itself feeds): a one-time cost, which `adaptive` counts against probing, not the round."""
        if self.draft is not None and self.draft.length < len(self.emitted) - 1:
            self.draft.feed(self._tensor(self.emitted[self.draft.length : -1])[None])
            self.draft_logits = None

    def _propose(self, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft up to k tokens: (J,) ids and, when sampling, their distributions q (J, V)."""
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        if k and self.lookup is not None:
            assert self.lookup_index is not None
            found = self.lookup.continuation(self.emitted, self.lookup_index, k)
            q = self.lookup.q(found) if found and not self.proc.greedy else None
            return (self._tensor(found), q) if found else (empty, None)
        if k == 0 or self.draft is None:
            return empty, None
        logits = self.draft_logits
        if logits is None:
            logits = self.draft.feed(self._tensor(self.emitted[self.draft.length :])[None])[0]
        self.draft_logits = None
        history = self.history.copy()
        tokens: list[torch.Tensor] = []
        dists: list[torch.Tensor] = []
        for i in range(k):
            if self.routing.checks_each_token and confidence(logits).item() < self.routing.threshold:
                break
            x, q = self._draw(logits[None], history)  # (1,), (1, V) | None
            tokens.append(x)
            if q is not None:
                dists.append(q)
            history.extend(x)
            if i < k - 1:
                logits = self.draft.feed(x.view(1, 1))[0]
        if not tokens:
            return empty, None
        return torch.cat(tokens), (torch.cat(dists) if dists else None)

    def _propose_round(self, k: int) -> tuple[torch.Tensor, None]:
        """Greedy proposals in one draft call: always K = maxSpeculativeTokens of them (one graph), of
        which the first k count; the draft's cache takes all K and is cropped like any rejection."""
        # every round leaves the draft holding all but the last emitted token (a round without
        # proposals, which would not, only ever ends a request)
        assert self.draft is not None and self.draft.length == len(self.emitted) - 1
        last = self._tensor(self.emitted[-1:]).view(1, 1)
        proposals = self.draft.propose(last, self.round_seen, self.penalty, self.routing.max_speculative_tokens)
        return proposals[:k], None

    def _draw(self, logits: torch.Tensor, history: History) -> tuple[torch.Tensor, torch.Tensor | None]:
        context = history.rows(logits.new_empty(0, dtype=torch.long), 1)
        if self.proc.greedy:
            return greedy_tokens(logits, context, self.proc), None
        q = probabilities(logits, context, self.proc)  # (1, V)
        return draw(q, self.generator), q

    def _verify(self, proposals: torch.Tensor, q: torch.Tensor | None) -> list[int]:
        """Score the pending tokens and the J proposals in one target pass; accept a prefix; emit it plus
        one target token. J = 0 is a plain target step."""
        j = proposals.shape[0]
        base = len(self.emitted)
        ids = torch.cat([self._tensor(self.emitted[self.target.length :]), proposals])[None]  # (1, m + J)
        self.width = ids.shape[1]
        if j and self.adaptive is not None:  # a wider pass measured faster: padded (`Adaptive.width`)
            self.width = self.adaptive.width(1, self.width)
        logits = self.target.feed(ids, keep=j + 1, tokens=self.width)  # (J+1, V)
        context = self.history.rows(proposals, j + 1)  # (J+1, V) rows
        if self.proc.greedy:
            best = greedy_tokens(logits, context, self.proc)  # (J+1,)
            accepted = (best[:j] == proposals).int().cumprod(0).sum()
            token = best.gather(0, accepted.view(1))
        else:
            p = probabilities(logits, context, self.proc)
            accepted, token = speculative_accept(p, q, proposals, self.generator)
        outcome = torch.cat([accepted.view(1), proposals, token]).tolist()  # the round's one host sync
        n = outcome[0]
        new = [*outcome[1 : 1 + n], outcome[-1]]
        if self.logprobs is not None:
            record_logprobs(logits[: n + 1], new, *self.logprobs)
        self._advance(base, n, new)
        self.stats.proposed_tokens += j
        self.stats.accepted_tokens += n
        if self.lookup is not None:  # the sequential decoder proposes by lookup or by a draft, never both
            self.stats.lookup_proposed_tokens += j
            self.stats.lookup_accepted_tokens += n
        self.stats.rounds += 1
        self.stats.speculative_rounds += j > 0
        if j:  # `adaptive` starts every request as target-only: its route is whether it ever speculated
            self.stats.route = "speculative"
        return new

    def _advance(self, base: int, accepted: int, new: list[int]) -> None:
        """Append the round's tokens; crop both caches back to the accepted prefix."""
        self.emitted.extend(new)
        self.history.extend(new)
        self.target.truncate(base + accepted)
        if self.draft is not None:
            self.draft.truncate(min(self.draft.length, base + accepted))
