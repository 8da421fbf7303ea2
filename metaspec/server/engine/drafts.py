"""Drafts for the batch decoder: a small causal LM of the target's vocabulary (`ModelDraft`)."""

from __future__ import annotations

import torch

from .batch import Draft, Proposal, Sequence
from .sampling import draw, greedy_tokens, probabilities
from .slots import Chunk, SlotCache, SlotModel


class ModelDraft(Draft):
    """A causal LM drafting token by token, batched over the speculating sequences.

    Each round starts by catching the draft up on the sequence's tokens it has not seen (the last
    emitted token, or more after rounds it sat out), then drafts one position per batched forward. The
    draft takes its proposals except the last one: a fully accepted round leaves it two tokens behind.
    """

    def __init__(self, lm: SlotModel) -> None:
        self.lm = lm
        self.max_length = lm.max_length
        self.chained = True
        """Propose a round whose sequences all decode greedily (no context-dependent transforms, no
        `per-token` threshold) in one call (`SlotModel.chain`): with `graphs`, its k steps replay as one
        CUDA graph, with one host sync for the round instead of one a step."""
        self.left_on_device = True
        """Leave such a round's proposals on the device when the batch decoder can take them from there
        (`greedy_round`): the host reads them with the target's pass over them, one read a round, not two."""

    @property
    def capture_seconds(self) -> float:  # type: ignore[override]
        return self.lm.capture_seconds

    def admit(self, seqs: list[Sequence]) -> list[float]:
        logits, _ = self.lm.forward([Chunk(seq.slot, 0, seq.prompt) for seq in seqs])
        for seq in seqs:
            seq.draft_length = len(seq.prompt)
        return torch.softmax(logits.float(), dim=-1).amax(-1).tolist()

    def catch_up(self, seqs: list[Sequence], ks: list[int], then: list[int] | None = None) -> None:
        behind = [s for s, k in zip(seqs, ks, strict=True) if k and len(s.tokens) - s.draft_length > self.lag(k)]
        if behind:
            self.lm.forward([Chunk(s.slot, s.draft_length, s.tokens[s.draft_length : -1]) for s in behind])
            for seq in behind:
                seq.draft_length = len(seq.tokens) - 1

    def lag(self, k: int) -> int:
        """Tokens a sequence can be behind when a round of k proposals starts in steady state: the round's
        own catch-up, which `catch_up` leaves to the round. Two: a fully accepted round leaves the draft
        two tokens behind (it takes its proposals but the last)."""
        return 2

    def greedy_round(self, seqs: list[Sequence], k: int) -> torch.Tensor | None:
        return self._chain(seqs, [k] * len(seqs)) if self.left_on_device else None

    def _chain(self, seqs: list[Sequence], ks: list[int]) -> torch.Tensor | None:
        """A greedy round of `ks[i]` proposals after each of `seqs` in one call (`chained`), on the device
        (len(seqs), max(ks)): None where one call does not run it."""
        plain = all(s.proc.greedy and not s.proc.contextual for s in seqs)  # each step's token is the argmax
        if not (self.chained and plain and min(ks) > 0):
            return None
        chained = self.lm.chain([Chunk(s.slot, s.draft_length, s.tokens[s.draft_length :]) for s in seqs], ks)
        if chained is not None:
            for seq, k in zip(seqs, ks, strict=True):
                seq.draft_length = len(seq.tokens) + k - 1
        return chained

    def propose(
        self, seqs: list[Sequence], ks: list[int], threshold: float | None, then: list[int] | None = None
    ) -> list[Proposal]:
        chained = self._chain(seqs, ks) if threshold is None else None
        if chained is not None:
            return [Proposal(row[:k]) for row, k in zip(chained.tolist(), ks, strict=True)]
        chunks = [Chunk(s.slot, s.draft_length, s.tokens[s.draft_length :]) for s in seqs]
        logits, _ = self.lm.forward(chunks)
        for seq in seqs:
            seq.draft_length = len(seq.tokens)
        out = [Proposal() for _ in seqs]
        histories = []
        for seq in seqs:
            assert seq.history is not None  # set when it joined
            histories.append(seq.history.copy())
        empty = torch.empty(0, dtype=torch.long, device=logits.device)
        dists: list[list[torch.Tensor]] = [[] for _ in seqs]
        rows = list(range(len(seqs)))  # the sequence of each row of `logits`
        for i in range(max(ks)):
            drawing = rows
            if threshold is not None:  # read before drawing: the decision never depends on a sample
                confident = (torch.softmax(logits.float(), dim=-1).amax(-1) >= threshold).tolist()
                drawing = [r for r, ok in zip(rows, confident, strict=True) if ok]
            at = {r: n for n, r in enumerate(rows)}
            best = logits.argmax(-1).tolist()  # greedy without context-dependent transforms needs nothing more
            for r in drawing:
                seq, row = seqs[r], logits[at[r] : at[r] + 1]
                context = histories[r].rows(empty, 1)
                if seq.proc.greedy:
                    token = best[at[r]] if context is None else int(greedy_tokens(row, context, seq.proc))
                else:
                    q = probabilities(row, context, seq.proc)  # (1, V)
                    token = int(draw(q, seq.generator))
                    dists[r].append(q)
                out[r].tokens.append(token)
                histories[r].extend([token])
            rows = [r for r in drawing if i < ks[r] - 1]
            if not rows:
                break
            chunks = [Chunk(seqs[r].slot, seqs[r].draft_length, out[r].tokens[-1:]) for r in rows]
            logits, _ = self.lm.forward(chunks)
            for r in rows:
                seqs[r].draft_length += 1
        for proposal, q in zip(out, dists, strict=True):
            proposal.q = torch.cat(q) if q else None
        return out

    def move(self, source: int, target: int) -> None:
        self.lm.cache.move(source, target)

    def caches(self) -> list[SlotCache]:
        return [self.lm.cache]

    def clear(self, slot: int) -> None:
        self.lm.cache.clear(slot)
