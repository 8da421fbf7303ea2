"""Prompt lookup: proposals copied from the request itself, no draft model (Saxena 2023; vLLM's `ngram`).

The last n tokens of a sequence (n from `max_match` down to `min_match`) are looked up among its
earlier tokens, prompt and output alike; at the most recent earlier occurrence, the tokens that followed
it are the proposals. Answers that quote their prompt, code that repeats its identifiers and formats
that repeat their skeleton are where it pays; a proposal costs only its share of the verify pass.

Exactness: a proposal is a fixed token, i.e. a draft distribution q that puts all its mass on it. Under
greedy decoding the target's argmax decides as for any draft; under sampling the rejection rule accepts
x with probability min(1, p(x) / q(x)) = p(x) and otherwise draws from the residual max(p − q, 0), which
is p without x, renormalised: the emitted token is distributed as p (`speculative.speculative_accept`).

Per sequence, an index maps every n-gram of its tokens to the position after its latest occurrence,
extended as the sequence grows (its tokens only ever grow: rejected proposals never enter them), so a
lookup costs `max_match − min_match + 1` dictionary reads and a round costs nothing on the accelerator.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from .batch import Draft, Proposal, Sequence


@dataclass
class _Index:
    """n-gram (as a tuple) -> the position after its latest occurrence, over `tokens[:covered]`."""

    grams: dict[tuple[int, ...], int] = field(default_factory=dict)
    covered: int = 0


class LookupDraft(Draft):
    """Proposes the continuation of the latest earlier occurrence of the sequence's last n tokens."""

    def __init__(self, vocab: int, min_match: int, max_match: int, max_length: int, device: torch.device) -> None:
        if not 1 <= min_match <= max_match:
            raise ValueError(f"prompt lookup needs 1 ≤ minMatch ≤ maxMatch; got {min_match} and {max_match}")
        self.vocab = vocab
        self.min_match = min_match
        self.max_match = max_match
        self.max_length = max_length
        self.device = device
        self._indexes: weakref.WeakKeyDictionary[Sequence, _Index] = weakref.WeakKeyDictionary()

    def admit(self, seqs: list[Sequence]) -> list[float | None]:
        """No model, no confidence (the spec refuses `first-token` and `per-token` with prompt lookup)."""
        return [None for _ in seqs]

    def propose(self, seqs: list[Sequence], ks: list[int], threshold: float | None) -> list[Proposal]:
        proposals = []
        for seq, k in zip(seqs, ks, strict=True):
            tokens = self._continuation(seq, k)
            q = None
            if tokens and not seq.proc.greedy:  # all of q's mass on each proposed token
                q = torch.zeros(len(tokens), self.vocab, device=self.device)
                q[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
            proposals.append(Proposal(tokens, q))
        return proposals

    def _continuation(self, seq: Sequence, k: int) -> list[int]:
        tokens = seq.tokens
        index = self._indexes.setdefault(seq, _Index())
        # index every n-gram that something follows: those ending before the last token
        for end in range(index.covered, len(tokens)):
            for n in range(self.min_match, min(self.max_match, end) + 1):
                index.grams[tuple(tokens[end - n : end])] = end
        index.covered = len(tokens)
        for n in range(min(self.max_match, len(tokens) - 1), self.min_match - 1, -1):
            start = index.grams.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start : start + k]
        return []
