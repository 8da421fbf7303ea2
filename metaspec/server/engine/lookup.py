"""Prompt lookup: proposals copied from text already seen, no draft model (Saxena 2023; vLLM's `ngram`).

The last n tokens of a sequence (n from `max_match` down to `min_match`) are looked up among its
earlier tokens, prompt and output alike; at the most recent earlier occurrence, the tokens that followed
it are the proposals. With `history` > 0 the replica also keeps the tokens of its last finished requests
(`history` of them to twice that) and looks there when the sequence itself has no match of that length, as
suffix decoding does across requests (Oliaro et al. 2024): answers in a fixed format, or to the same
questions, then speed each other up. Answers that quote their prompt, code that repeats its
identifiers and formats that repeat their skeleton are where it pays; a proposal costs only its share
of the verify pass.

Exactness: a proposal is a fixed token, i.e. a draft distribution q that puts all its mass on it. Under
greedy decoding the target's argmax decides as for any draft; under sampling the rejection rule accepts
x with probability min(1, p(x) / q(x)) = p(x) and otherwise draws from the residual max(p − q, 0), which
is p without x, renormalised: the emitted token is distributed as p (`speculative.speculative_accept`).
Other requests' text changes how fast a request decodes, never what it emits.

With a draft model as well (`LookupFirstDraft`), lookup proposes where it finds a match and the draft
everywhere else: a repeated frame or quoted number costs no draft step, new text still gets proposals.

An index maps every n-gram of a token list to the position after its latest occurrence, extended as the
list grows (a sequence's tokens only ever grow: rejected proposals never enter them), so a lookup costs
`max_match − min_match + 1` dictionary reads per source and a round costs nothing on the accelerator.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from metaspec.api.serving import PromptLookup

from .batch import Draft, Proposal, Sequence
from .drafts import ModelDraft
from .slots import Chunk, SlotCache

#: Ends each finished request in the shared history: no n-gram crosses it, no proposal runs past it.
_END = -1


@dataclass
class _Index:
    """n-gram (as a tuple) -> the position after its latest occurrence, over `tokens[:covered]`."""

    min_match: int
    max_match: int
    grams: dict[tuple[int, ...], int] = field(default_factory=dict)
    covered: int = 0

    def find(self, tokens: list[int], key: tuple[int, ...]) -> int | None:
        """Where what followed `key`'s latest occurrence in `tokens` starts, after indexing what is new
        (every n-gram that something follows: those ending before the last token)."""
        for end in range(self.covered, len(tokens)):
            for n in range(self.min_match, min(self.max_match, end) + 1):
                self.grams[tuple(tokens[end - n : end])] = end
        self.covered = max(self.covered, len(tokens))
        return self.grams.get(key)


class Lookup:
    """What both decoders share: the settings, the replica's history of finished requests, and the
    lookup itself over a request's tokens and its own `_Index` (`index()`)."""

    def __init__(self, settings: PromptLookup, vocab: int, device: torch.device) -> None:
        self.settings = settings
        self.vocab = vocab
        self.device = device
        self._past: list[int] = []
        """The latest finished requests' tokens, each followed by `_END`: up to twice `settings.history`
        tokens (dropping the oldest requests leaves at most `settings.history`)."""
        self._past_index = self.index()

    def renewed(self) -> Lookup:
        """The same settings with a history of its own."""
        return Lookup(self.settings, self.vocab, self.device)

    def index(self) -> _Index:
        """A request's own index (one per request, grown as its tokens grow)."""
        return _Index(self.settings.min_match, self.settings.max_match)

    def continuation(self, tokens: list[int], own: _Index, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix."""
        for n in range(min(self.settings.max_match, len(tokens)), self.settings.min_match - 1, -1):
            key = tuple(tokens[-n:])
            if (start := own.find(tokens, key)) is not None:
                return tokens[start : start + k]
            if self._past and (start := self._past_index.find(self._past, key)) is not None:
                found = self._past[start : start + k]
                if _END in found:
                    found = found[: found.index(_END)]
                if found:
                    return found
        return []

    def q(self, tokens: list[int]) -> torch.Tensor:
        """The proposals' draft distributions (J, V): all of each row's mass on its token."""
        q = torch.zeros(len(tokens), self.vocab, device=self.device)
        q[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
        return q

    def finish(self, tokens: list[int]) -> None:
        """Keep a finished request's tokens for the others (with `history`); once they pass twice `history`,
        drop the oldest requests down to `history` (re-indexing then costs what indexing them did)."""
        history = self.settings.history
        if not history:
            return
        self._past += [*tokens, _END]
        if len(self._past) > 2 * history:
            cut = self._past.index(_END, len(self._past) - history - 1) + 1
            self._past, self._past_index = self._past[cut:], self.index()


class LookupDraft(Draft):
    """The batch decoder's prompt lookup: each sequence's own index, one `Lookup` for the replica."""

    arms = ("lookup",)

    def __init__(self, settings: PromptLookup, vocab: int, max_length: int, device: torch.device) -> None:
        self.lookup = Lookup(settings, vocab, device)
        self.max_length = max_length
        self._own: weakref.WeakKeyDictionary[Sequence, _Index] = weakref.WeakKeyDictionary()

    def admit(self, seqs: list[Sequence]) -> list[float | None]:
        """No model, no confidence (the spec refuses `first-token` and `per-token` with prompt lookup)."""
        return [None for _ in seqs]

    def propose(
        self, seqs: list[Sequence], ks: list[int], threshold: float | None, then: list[int] | None = None
    ) -> list[Proposal]:
        proposals = []
        for seq, tokens in zip(seqs, self.continuations(seqs, ks), strict=True):
            q = self.lookup.q(tokens) if tokens and not seq.proc.greedy else None
            proposals.append(Proposal(tokens, q, lookup=True))
        return proposals

    def continuations(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        """What lookup finds after each sequence, up to `ks` tokens (the same until its tokens change)."""
        found = []
        for seq, k in zip(seqs, ks, strict=True):
            own = self._own.setdefault(seq, self.lookup.index())
            found.append(self.lookup.continuation(seq.tokens, own, k) if k else [])
        return found

    def finish(self, seq: Sequence) -> None:
        self.lookup.finish(seq.tokens)


class LookupFirstDraft(Draft):
    """Prompt lookup and a draft model together: each round, a sequence proposes what lookup finds after
    a match of at least `minMatch` tokens (no draft step), or else what the draft proposes.

    The draft model follows every sequence all the same: it takes in the tokens lookup's rounds added the
    next time it drafts (a feature-level draft with the target's features of those positions, which it
    keeps until then), so its proposals are what it would propose alone. Each proposal carries its own
    q (lookup's puts all its mass on the token), so exactness holds round by round as for either alone.
    Under `adaptive` each proposer decides for itself (`AdaptiveChain`), with its own k: lookup's 0
    leaves every sequence to the draft, the draft's 0 leaves only lookup's proposals.
    """

    arms = ("lookup", "draft")

    def __init__(self, lookup: LookupDraft, model: ModelDraft) -> None:
        self.lookup, self.model = lookup, model
        self.feature_layers = model.feature_layers
        self.max_length = model.max_length

    @property
    def capture_seconds(self) -> float:  # type: ignore[override]
        return self.model.capture_seconds

    def admit(self, seqs: list[Sequence]) -> list[float | None]:
        return list(self.model.admit(seqs))

    def catch_up(self, seqs: list[Sequence], ks: list[int], then: list[int] | None = None) -> None:
        """The draft's catch-up, for the sequences it will draft for: where lookup finds nothing."""
        left = _left(self.lookup.continuations(seqs, ks), ks, then)
        self.model.catch_up([seqs[i] for i, _ in left], [k for _, k in left])

    def propose(
        self, seqs: list[Sequence], ks: list[int], threshold: float | None, then: list[int] | None = None
    ) -> list[Proposal]:
        """Lookup's proposals, up to `ks`; the draft's where it found none, up to `then` (None: `ks`)."""
        proposals = self.lookup.propose(seqs, ks, None)
        left = _left([p.tokens for p in proposals], ks, then)
        if left:
            made = self.model.propose([seqs[i] for i, _ in left], [k for _, k in left], threshold)
            for (i, _), proposal in zip(left, made, strict=True):
                proposals[i] = proposal
        return proposals

    def observe(self, seqs: list[Sequence], chunks: list[Chunk], features: torch.Tensor) -> None:
        self.model.observe(seqs, chunks, features)

    def rewind(self, seq: Sequence, length: int) -> None:
        self.model.rewind(seq, length)

    def move(self, source: int, target: int) -> None:
        self.model.move(source, target)

    def caches(self) -> list[SlotCache]:
        return self.model.caches()

    def finish(self, seq: Sequence) -> None:
        self.lookup.finish(seq)
        self.model.finish(seq)

    def clear(self, slot: int) -> None:
        self.model.clear(slot)


def _left(found: list[list[int]], ks: list[int], then: list[int] | None) -> list[tuple[int, int]]:
    """(index, limit) of each sequence the draft behind lookup proposes for: where lookup `found` nothing
    and its limit (`then`, None: `ks`) allows."""
    limits = ks if then is None else then
    return [(i, k) for i, (tokens, k) in enumerate(zip(found, limits, strict=True)) if k and not tokens]
