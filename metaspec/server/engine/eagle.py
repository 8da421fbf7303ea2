"""The engine's EAGLE-3 draft: proposals from the target's own features, still one target pass a round.

The verify pass computes the target's residual stream at every layer anyway; the target returns the
inputs of the draft's three aux layers at every position it scores (`SlotModel.forward(...,
layers=...)`), and the draft keeps, per sequence, the fused features of the positions it has not
consumed yet (`Draft.observe`). See `metaspec.drafts.eagle3` for the model.

Bookkeeping is the token draft's (`ModelDraft`): `Sequence.draft_length` counts the sequence's tokens
the draft has taken in, and a chunk of tokens is fed at their positions. Internally token x_t becomes
the draft's cache entry at position t − 1, made from the feature at t − 1 and x_t, whose head predicts
x_{t+1} (x_0 has no entry). The feature is the target's when the target has scored position t − 1,
else the draft's own output at t − 2: that is how a round drafts past what the target has seen. An
entry made from the draft's own feature must be made again once the target's is known, so a rewind
goes back to the first of those even when its token was accepted.

The head scores the draft vocabulary only; its logits are spread onto the target's vocabulary with
−inf elsewhere, so every routing and sampling rule reads them as a distribution q that is zero outside
the subset (exactness: `metaspec.drafts.vocabulary`).
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from metaspec.drafts import Eagle3Draft

from .batch import Sequence
from .drafts import ModelDraft
from .slots import MAX_TOKENS, Chunk, PaddedSteps, SlotCache


class FeatureModel:
    """An EAGLE-3 draft run over ragged batches of token chunks against its own `SlotCache`.

    `graphs`: passes of up to `MAX_TOKENS` tokens a sequence (the steps of a round, catch-ups, short
    prompts) run at fixed shapes (`PaddedSteps`), replayed from CUDA graphs on a GPU, as the target's do:
    at a small batch a step is a few dozen short kernels, whose launches cost more than their work.
    """

    def __init__(self, draft: Eagle3Draft, vocab: int, max_length: int, graphs: bool = False) -> None:
        self.draft = draft
        self.vocab = vocab
        weight = draft.norm.weight  # not a linear layer's: those may be packed for the CPU (`pack_linears`)
        self.device, self.dtype = weight.device, weight.dtype
        self.max_length = min(max_length, draft.config.max_position_embeddings)
        self.cache = SlotCache(draft.config.llama_config(), self.max_length, self.dtype, self.device)
        self.targets = draft.target_ids()  # (N,) target id of each draft id
        if int(self.targets.max()) >= vocab:
            raise ValueError(
                f"the draft proposes target ids up to {int(self.targets.max())}; the target scores {vocab}"
            )
        self.features: dict[int, tuple[int, torch.Tensor]] = {}
        """slot -> (first position, fused target features (n, H) from there on)."""
        self.outputs: dict[int, tuple[int, torch.Tensor]] = {}
        """slot -> (entry position, the draft's output feature (H,) there) of the last entry written."""
        self.target_based: dict[int, int] = {}
        """slot -> tokens whose entries were all made from target features."""
        self.padded = PaddedSteps(self.cache, self._body, draft, draft.config.hidden_size) if graphs else None

    @property
    def capture_seconds(self) -> float:
        """Seconds spent capturing CUDA graphs so far: a one-time cost of each new shape, not a step's."""
        return self.padded.capture_seconds if self.padded is not None else 0.0

    def observe(self, slot: int, start: int, fused: torch.Tensor) -> None:
        """The target's fused features (n, H) of positions start.. (later ones replace what was there)."""
        first, old = self.features.get(slot, (start, fused[:0]))
        if first > start:
            first, old = start, fused[:0]
        self.features[slot] = (first, torch.cat([old[: start - first], fused]))

    def forward(self, chunks: list[Chunk]) -> tuple[torch.Tensor, None]:
        """Logits (B, V) over the target's vocabulary after each chunk's last token (−inf outside the
        draft vocabulary; uniform for a chunk holding only a sequence's first token)."""
        entries = [self._entry(c) for c in chunks]
        live = [i for i, e in enumerate(entries) if e is not None]
        if not live:
            return torch.zeros(len(chunks), self.vocab, device=self.device), None
        chunks = [entries[i][0] for i in live]  # type: ignore[index]
        hidden = [entries[i][1] for i in live]  # type: ignore[index]
        length = max(len(c.ids) for c in chunks)
        if self.padded is not None and length <= MAX_TOKENS:
            final, _ = self.padded.forward(chunks, tokens=length, inputs=hidden)  # (B, H): each chunk's last token
        else:
            width = max(c.start + length for c in chunks)
            self.cache.prepare(chunks, width, length)
            # built on the host and copied once: a copy per row would wait for the device every time
            ids = torch.tensor([c.ids + [0] * (length - len(c.ids)) for c in chunks]).to(self.device)
            out, _ = self._body(ids, self.cache._positions, width, (), pad_sequence(hidden, batch_first=True))
            ends = torch.tensor([b * length + len(c.ids) - 1 for b, c in enumerate(chunks)]).to(self.device)
            final = out.index_select(0, ends)
        for c, f in zip(chunks, final, strict=True):
            self.outputs[c.slot] = (c.start + len(c.ids) - 1, f)
        scores = self.draft.logits(final).float()
        spread = scores.new_full((len(chunks), self.vocab), float("-inf")).index_copy_(1, self.targets, scores)
        if len(live) == len(entries):
            return spread, None
        logits = torch.zeros(len(entries), self.vocab, device=self.device)
        logits[live] = spread
        return logits, None

    def chain(self, chunks: list[Chunk], ks: list[int]) -> torch.Tensor | None:
        """Greedy proposals (B, max(ks)) after each chunk in one padded call (`PaddedSteps.chain`): after the
        chunk, each step takes the draft's own output feature and its greedy token; None where padded steps
        do not run them (`graphs` off, a chunk too long, or holding only a sequence's first token). The
        cache takes all but the last of them; each row's `outputs` entry is its `ks[i]`-th step's."""
        if self.padded is None:  # before the entries: the step that follows makes them again
            return None
        entries = [self._entry(c) for c in chunks]
        if None in entries:
            return None
        shifted = [entry[0] for entry in entries]  # type: ignore[index]
        if not self.padded.fits(shifted, max(ks) - 1):
            return None
        features = [entry[1] for entry in entries]  # type: ignore[index]
        tokens, outputs = self.padded.chain(shifted, max(ks), self._greedy, features)
        for row, (c, k) in enumerate(zip(shifted, ks, strict=True)):
            self.outputs[c.slot] = (c.start + len(c.ids) + k - 2, outputs[row, k - 1])
        return tokens

    def _greedy(self, out: torch.Tensor) -> torch.Tensor:
        """The target id of the draft's top token after each output feature (B, H) -> (B,): the argmax of
        `forward`'s logits, the draft's ids ascending as the target's."""
        return self.targets[self.draft.logits(out).argmax(-1)]

    def _body(
        self, ids: torch.Tensor, positions: torch.Tensor, width: int, layers: tuple[int, ...], features: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        """The draft's output features (B·T, H) over `ids` (B, T) with the features they follow (B, T, H),
        attending to cache positions below `width`, causally per row (the cache knows where to write)."""
        mask = self.cache.mask(positions, width)
        out, _ = self.draft.step(features, ids, positions, bias=mask, cache=self.cache)
        return out.flatten(0, 1), None

    def _entry(self, chunk: Chunk) -> tuple[Chunk, torch.Tensor] | None:
        """The chunk as cache entries (tokens x_t at positions t − 1) with their features (T, H)."""
        ids, start = chunk.ids, chunk.start - 1
        if start < 0:
            ids, start = ids[1:], 0
        if not ids:
            return None
        first, fused = self.features.get(chunk.slot, (0, None))
        rows = []
        for position in range(start, start + len(ids)):
            if fused is not None and first <= position < first + fused.shape[0]:
                rows.append(fused[position - first])
                self.target_based[chunk.slot] = position + 2
                continue
            at, output = self.outputs.get(chunk.slot, (-1, None))
            if output is None or at != position - 1:
                raise RuntimeError(f"no feature for draft position {position} of slot {chunk.slot}")
            rows.append(output)
        return Chunk(chunk.slot, start, ids), torch.stack(rows)

    def rewind(self, slot: int, tokens: int, length: int) -> None:
        """Keep the target features the draft still needs: positions tokens − 1 (its next entry) up to
        `length` (the target's accepted positions; features after them came from rejected tokens)."""
        first, fused = self.features.get(slot, (0, None))
        if fused is not None:
            lo = max(tokens - 1 - first, 0)
            self.features[slot] = (first + lo, fused[lo : max(length - first, lo)])

    def move(self, source: int, target: int) -> None:
        self.cache.move(source, target)
        for state in (self.features, self.outputs, self.target_based):
            if source in state:
                state[target] = state.pop(source)

    def clear(self, slot: int) -> None:
        self.cache.clear(slot)
        for state in (self.features, self.outputs, self.target_based):
            state.pop(slot, None)


class FeatureDraft(ModelDraft):
    """A `ModelDraft` over a `FeatureModel`: the target hands it its aux-layer features after each pass."""

    def __init__(self, lm: FeatureModel) -> None:
        super().__init__(lm)  # type: ignore[arg-type]
        self.feature_layers = lm.draft.config.aux_layers

    def observe(self, seqs: list[Sequence], chunks: list[Chunk], features: torch.Tensor) -> None:
        """The target's aux features (Σ chunk lengths, 3·H_target) of every position it just scored."""
        fused = self.lm.draft.fuse(features.to(self.lm.dtype))
        offset = 0
        for seq, chunk in zip(seqs, chunks, strict=True):
            n = len(chunk.ids)
            if seq.speculate or not seq.draft_length:  # not yet admitted, or drafting
                self.lm.observe(chunk.slot, chunk.start, fused[offset : offset + n])
            offset += n

    def lag(self, k: int) -> int:
        """k + 1: a round's entries made from the draft's own features are made again from the target's
        (`rewind`), so after a fully accepted round the draft is behind by its k proposals and the token
        after them, all of which the next round takes in its first step."""
        return k + 1

    def rewind(self, seq: Sequence, length: int) -> None:
        """Back to the accepted prefix, and further back to the first entry made from a draft feature."""
        seq.draft_length = min(seq.draft_length, length, self.lm.target_based.get(seq.slot, 0))
        self.lm.rewind(seq.slot, seq.draft_length, length)

    def move(self, source: int, target: int) -> None:
        self.lm.move(source, target)

    def clear(self, slot: int) -> None:
        self.lm.clear(slot)
