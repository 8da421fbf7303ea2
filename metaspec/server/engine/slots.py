"""Per-sequence KV slots: one model forward over a ragged batch of sequences.

Why not transformers' own caches: `DynamicCache` and `StaticCache` keep one length for the whole batch,
and its continuous-batching API (`generate_batch`, `ContinuousBatchingManager` over a
`PagedAttentionCache`) owns its scheduler and decodes exactly one token per sequence per step: it has
no way to score k + 1 proposed tokens of one sequence next to a single token of another, nor to rewind
one sequence by its own count of rejected positions. Speculative verification needs both. So each
sequence owns a *slot*: row `s` of a preallocated (slots, kv_heads, length, head_dim) tensor per layer.
A forward pass writes each row's new positions at that row's own offset and attends through a 4D mask
(causal per row), with position ids per row; rejecting positions is lowering the row's length, which
the caller keeps (the next write overwrites them). No kernel of our own: the model's attention (SDPA)
runs unchanged on the mask.

Rows of a batch are slots `0..B-1` in order whenever the caller keeps its sequences packed (the engine
does: a finished sequence's slot takes the last one's), so reading the cache is a view, not a copy.
Both dimensions grow on demand (doubling, up to `max_length`), so memory follows what is in flight;
where steps replay from CUDA graphs the engine allocates them once, up front (`BatchDecoder.reserve`).

A decode step (one new token for every sequence), a verify pass (a few) or the prefill of a short
prompt is the same kernels time after time, and for a small model on a GPU launching them costs more
than running them. `SlotModel(graphs=True)` runs such passes at a few fixed shapes instead
(`PaddedSteps`): the batch, the tokens per row and the positions attended each padded up to a power of
two, and on CUDA each shape captured once into a CUDA graph and replayed.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import Cache

from metaspec.server.engine import kernels

log = logging.getLogger(__name__)


def upload(values: list[int] | list[list[int]], device: torch.device) -> torch.Tensor:
    """`values` as a long tensor on `device`, queued behind the work already there. A copy to a GPU from
    pageable memory synchronises the stream (torch waits for it to finish), so the host would wait for
    every pass already launched (the step in flight, `BatchDecoder.overlap`; the pass whose tokens are
    about to be drawn); from pinned memory the copy is queued like a kernel, and the host goes on."""
    host = torch.tensor(values, dtype=torch.long)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


@dataclass(frozen=True)
class Chunk:
    """One row of a batched forward: write `ids` into `slot` from position `start` on."""

    slot: int
    start: int
    ids: list[int]
    keep: int = 1
    """Logits (and hidden states) wanted for the last `keep` tokens of `ids`."""


class SlotCache(Cache):
    """Keys and values of up to `slots` sequences, `max_length` positions each (see the module doc)."""

    def __init__(self, config: object, max_length: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(layers=[])
        text = getattr(config, "get_text_config", lambda: config)()
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.shape = (heads, dim)
        self.num_layers = text.num_hidden_layers
        self.max_length = max_length
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._rows: torch.Tensor | None = None  # (B,) slots of the batch, or None when it is 0..B-1
        self._writes: torch.Tensor | None = None  # (B, T) the slot each token writes to, when not its row's
        self._positions = torch.zeros(0, 0, dtype=torch.long)  # (B, T) where each input token goes
        self._width = 0
        self._keys = torch.arange(max_length, device=device)  # cache positions, for the masks
        self.allocations = 0
        """How many times the tensors were (re)allocated: what reads them by address must follow."""

    @property
    def capacity(self) -> tuple[int, int]:
        """(slots, positions) allocated now."""
        return (self.keys[0].shape[0] - 1, self.keys[0].shape[2]) if self.keys else (0, 0)

    @property
    def scratch(self) -> int:
        """A row after the slots that no sequence owns: where padding writes (`PaddedSteps`)."""
        return self.capacity[0]

    def nbytes(self, slots: int, width: int) -> int:
        """Bytes the keys and values of `slots` slots (and the scratch row) of `width` positions take."""
        heads, dim = self.shape
        return 2 * self.num_layers * (slots + 1) * heads * width * dim * self.dtype.itemsize

    def reserve(self, slots: int, width: int) -> None:
        """Make room for slots `0..slots-1` and positions `0..width-1` (doubling, up to max_length)."""
        if width > self.max_length:
            raise ValueError(f"a sequence needs {width} cache positions; the cache holds {self.max_length}")
        have_slots, have_width = self.capacity
        if slots <= have_slots and width <= have_width:
            return
        new_slots = max(slots, 2 * have_slots if slots > have_slots else have_slots, 1)
        new_width = min(self.max_length, max(width, 2 * have_width if width > have_width else have_width, 16))
        self.allocations += 1
        for tensors in (self.keys, self.values):
            for i in range(self.num_layers):
                # zeros, not empty: a masked position still multiplies its value by 0, and 0 * NaN is NaN;
                # one row more than the slots: `scratch`
                grown = torch.zeros(
                    new_slots + 1, *self.shape[:1], new_width, self.shape[1], dtype=self.dtype, device=self.device
                )
                if i < len(tensors):
                    old = tensors[i]
                    grown[: old.shape[0] - 1, :, : old.shape[2]] = old[:-1]  # the slots, not the scratch row
                    tensors[i] = grown
                else:
                    tensors.append(grown)

    def clear(self, slot: int) -> None:
        """Zero a slot (after a sequence whose values may be non-finite)."""
        if slot >= self.capacity[0]:
            return
        for tensor in (*self.keys, *self.values):
            tensor[slot].zero_()

    def move(self, source: int, target: int) -> None:
        """Copy slot `source` into `target` (keeping the batch packed when a sequence leaves)."""
        if max(source, target) >= self.capacity[0]:
            return  # never written: nothing to keep
        for tensor in (*self.keys, *self.values):
            tensor[target].copy_(tensor[source])

    def prepare(self, chunks: list[Chunk], width: int, length: int) -> None:
        """Set where the next forward writes (rows padded to `length` tokens) and how far it reads."""
        slots = [c.slot for c in chunks]
        self.reserve(max(slots) + 1, width)
        packed = slots == list(range(len(slots)))
        rows, starts = torch.tensor([slots, [c.start for c in chunks]]).to(self.device)  # one copy
        self._rows = None if packed else rows
        self._writes = None
        self._positions = starts[:, None] + torch.arange(length, device=self.device)  # (B, T)
        self._width = width

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, D) states at each row's positions; return (B, H, width, D) to attend over."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows = self._rows if self._rows is not None else torch.arange(key_states.shape[0], device=self.device)
        writes = self._writes if self._writes is not None else rows[:, None]  # (B, T) or (B, 1)
        index = (writes, slice(None), self._positions)  # advanced indices first: (B, T, H, D)
        keys[index] = key_states.transpose(1, 2).to(self.dtype)
        values[index] = value_states.transpose(1, 2).to(self.dtype)
        if self._rows is None:
            batch = key_states.shape[0]
            return keys[:batch, :, : self._width], values[:batch, :, : self._width]
        return keys[self._rows, :, : self._width], values[self._rows, :, : self._width]

    def mask(self, positions: torch.Tensor, width: int) -> torch.Tensor:
        """(B, 1, T, width): which of the cache positions below `width` each token at `positions` (B, T)
        attends to, those up to its own (causal per row)."""
        return (self._keys[None, None, :width] <= positions[:, :, None])[:, None]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._width

    @property
    def is_compileable(self) -> bool:
        return False


class SlotModel:
    """A causal LM run over ragged batches of chunks against its `SlotCache`.

    `vocab`: logits are cut to the first `vocab` entries (target and draft score the same token set even
    when one pads its embedding matrix). The head runs only on the positions asked for (`Chunk.keep`),
    not on padding: at a vocabulary of 49k the head is a large share of a step's work. `graphs`: passes of
    up to `MAX_TOKENS` tokens a sequence (steps, and the prefill of short prompts) run at fixed shapes
    (`PaddedSteps`), replayed from CUDA graphs on a GPU.
    """

    def __init__(self, model: torch.nn.Module, vocab: int, max_length: int, graphs: bool = False) -> None:
        self.model = model
        self.vocab = vocab
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
        self.cache = SlotCache(model.config, self.max_length, dtype, self.device)
        self._head = model.get_output_embeddings()
        forward = inspect.signature(model.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self.padded = PaddedSteps(self.cache, self._body, model) if graphs else None

    @property
    def capture_seconds(self) -> float:
        """Seconds spent capturing CUDA graphs so far: a one-time cost of each new shape, not a step's."""
        return self.padded.capture_seconds if self.padded is not None else 0.0

    def forward(
        self, chunks: list[Chunk], layers: tuple[int, ...] = (), tokens: int = 1, last: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (N, V) of every chunk's last `keep` positions, rows in chunk order (N = Σ keep), and with
        `layers` the input of each of those layers (the residual stream) at *every* position of every
        chunk, concatenated per position: (Σ len(ids), len(layers)·E) in chunk order. Rows are padded to
        the longest chunk and to at least `tokens`; a ragged pass also runs the head over at least `tokens`
        rows: on some CPUs a matrix product of 2 or 3 rows costs more than one of 5 (`Adaptive.width`).
        `last` (len(chunks), n) long on the device: each chunk's last n tokens, in place of its `ids[-n:]`
        (tokens drawn or proposed on the device that the host has not read yet)."""
        length = max(tokens, *(len(c.ids) for c in chunks))
        if self.padded is not None and length <= MAX_TOKENS:
            states, features = self.padded.forward(chunks, layers, length, last=last)
            return self._head(states)[:, : self.vocab], features
        width = max(c.start + length for c in chunks)
        self.cache.prepare(chunks, width, length)
        ids = torch.zeros(len(chunks), length, dtype=torch.long)
        for b, c in enumerate(chunks):
            ids[b, : len(c.ids)] = torch.tensor(c.ids)
            ids[b, len(c.ids) :] = c.ids[-1]  # padding: any valid id; its positions are never attended
        ids = ids.to(self.device)
        if last is not None:
            ids.view(-1)[torch.tensor(_tails(chunks, last.shape[1], length)).to(self.device)] = last.flatten()
        hidden, features = self._body(ids, self.cache._positions, width, layers, None)
        kept = [b * length + len(c.ids) - c.keep + i for b, c in enumerate(chunks) for i in range(c.keep)]
        padding = kept[-1:] * (tokens - len(kept))  # rows whose logits are dropped
        states = hidden.index_select(0, torch.tensor(kept + padding).to(self.device))
        logits = self._head(states)[: len(kept), : self.vocab]  # (N, V)
        if features is None:
            return logits, None
        valid = torch.arange(length)[None, :] < torch.tensor([len(c.ids) for c in chunks])[:, None]  # (B, T)
        return logits, features[valid.flatten().to(self.device)]

    def chain(self, chunks: list[Chunk], ks: list[int]) -> torch.Tensor | None:
        """Greedy proposals (B, max(ks)) after each chunk, each step taking the previous one's argmax, in one
        padded call (`PaddedSteps.chain`); None where padded steps do not run them (`graphs` off, a chunk
        too long). The cache takes all but the last of them."""
        k = max(ks)
        if self.padded is None or not self.padded.fits(chunks, k - 1):
            return None
        tokens, _ = self.padded.chain(chunks, k, lambda out: self._head(out)[:, : self.vocab].argmax(-1))
        return tokens

    def _body(
        self, ids: torch.Tensor, positions: torch.Tensor, width: int, layers: tuple[int, ...], inputs: None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's body over `ids` (B, T) at `positions` (B, T), attending to cache positions below
        `width`, causally per row (the cache knows where to write: `SlotCache.prepare`): its output
        (B·T, E), and with `layers` their inputs (B·T, len(layers)·E)."""
        out = self.model.base_model(
            input_ids=ids,
            attention_mask=self.cache.mask(positions, width),
            position_ids=positions,
            use_cache=True,
            output_hidden_states=bool(layers),
            **{self._cache_arg: self.cache},
        )
        hidden = out.last_hidden_state.flatten(0, 1)
        if not layers:
            return hidden, None
        # hidden_states[i] is the input of layer i (0: the embeddings)
        return hidden, torch.cat([out.hidden_states[i] for i in layers], dim=-1).flatten(0, 1)


#: Fewest positions a padded step attends to: below that, attention is not worth another shape.
MIN_WIDTH = 64
#: Most tokens a row takes in a padded step: decode steps and verify passes, and prompts up to this
#: length (prefills); longer chunks run eagerly.
MAX_TOKENS = 256
#: Most tokens a padded step takes in all (rows × tokens a row, after padding): more rows than that
#: fit run as several steps.
MAX_STEP_TOKENS = 2048


def _tails(chunks: list[Chunk], n: int, t: int) -> list[int]:
    """Where each chunk's last n tokens sit in a (len(chunks), t) batch of ids, flattened, in chunk order."""
    return [row * t + len(c.ids) - n + i for row, c in enumerate(chunks) for i in range(n)]


def pow2(n: int) -> int:
    """The least power of two ≥ n (n ≥ 1)."""
    return 1 << (n - 1).bit_length()


_Out = TypeVar("_Out")

Body = Callable[
    [torch.Tensor, torch.Tensor, int, tuple[int, ...], torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
]
"""A model's pass over a `SlotCache` whose writes are set: (ids (b, t), positions (b, t), positions attended,
layers, per-token inputs (b, t, D) or None) -> (output (b·t, E), those layers' inputs (b·t, ·) or None)."""


class PaddedSteps:
    """A model's steps over its `SlotCache` at a few fixed shapes, replayed from CUDA graphs on a GPU.

    The model is a `SlotModel` (a target, or a token-level draft) or an EAGLE-3 draft's `FeatureModel`,
    whose pass also takes a vector a token (the feature it extends), given as `inputs`. A step of B
    chunks taking at most `MAX_TOKENS` tokens each (the target's decode steps and verify passes, a
    draft's steps within a round, and the prefill of prompts that join) runs as a batch of b rows of t
    tokens attending to w positions: b the least power of two ≥ B, t the least ≥ the longest chunk, w
    the least ≥ the widest sequence (at least `MIN_WIDTH`, at most the cache's length); as several such
    steps when b·t would pass `MAX_STEP_TOKENS`. Padding (rows B..b-1, and each row's tokens after its
    own) reads the cache but writes only to its `scratch` row, which no sequence owns, and its outputs
    are dropped: every sequence's slot holds exactly what the ragged step writes, and each real token
    attends to exactly what it attends to there. Chunks in slots 0..B-1 (a step over the whole packed
    batch) read the cache's first b rows as a view; others (the prompts joining in the slots after the
    running ones) read their rows gathered, a shape of its own. The graph ends at the model's body: the
    caller runs the head on the positions asked for only, as in the ragged step, and what a graph keeps
    as its output is hidden states, not logits (a 128K vocabulary's logits at 64 rows of 8 tokens would
    be 134 MB per shape).

    On CUDA each shape is captured into a CUDA graph when it first comes (after a warm-up pass on the
    step's own inputs, which writes to the cache what the step writes) and replayed after that; the
    graphs share one memory pool (one runs at a time, and each output is copied out at once). A step's
    token inputs, and the indices that pick its outputs, go to the device in one copy. A graph reads the
    cache at the addresses it was captured with, so when the cache grows (a sequence longer than the
    engine reserved) the graphs are dropped and captured again as shapes come. A draft's greedy round runs
    as one call (`chain`): its step over each sequence's new tokens, then k − 1 one-token steps each fed
    the pick of the step before, captured together; the target's pass over the proposals takes them from
    the device (`forward`'s `last`), and the host reads them with that pass's tokens. Where
    liger-kernel is installed the captured body runs its fused norm, rotary embedding and SwiGLU kernels
    (`kernels`).
    Elsewhere the padded step runs eagerly: the same code, which the CPU tests check against the ragged
    path.
    """

    def __init__(self, cache: SlotCache, body: Body, model: torch.nn.Module, inputs: int = 0) -> None:
        self.cache, self.body = cache, body
        self.capture = cache.device.type == "cuda"
        self.fused = self.capture and kernels.fuse(model)
        """The body runs Liger's fused norm, rotary embedding and SwiGLU kernels (`kernels`)."""
        self.shapes: set[tuple[int, int, int]] = set()
        """Every (b, t, w) run so far."""
        self._runs: dict[tuple, Callable[[], Any]] = {}
        """How each shape runs: (b, t, w, layers returned, packed), or ("chain", b, t, w, k, packed) ->
        its graph's replay (or the step)."""
        self._pool: object = None
        self._allocations = -1
        self.capture_seconds = 0.0
        """Time spent in captures (each with its warm-up pass), all told."""
        # ids, positions and the slot each token writes (b·t each), the outputs kept (states, features)
        # and the slots read (b): one device copy a step
        self._inputs = torch.zeros(6, MAX_STEP_TOKENS, dtype=torch.long, device=cache.device)
        self._vectors = torch.zeros(MAX_STEP_TOKENS, inputs, dtype=cache.dtype, device=cache.device) if inputs else None
        """Each token's input vector, when the body takes them (padding reads what an earlier step left:
        finite, as every vector written is)."""

    def forward(
        self,
        chunks: list[Chunk],
        layers: tuple[int, ...] = (),
        tokens: int = 1,
        inputs: list[torch.Tensor] | None = None,
        last: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The body's output (Σ keep, E) at each chunk's last `keep` tokens, and with `layers` those layers'
        inputs at every token (Σ len(ids), len(layers)·E), in chunk order, for chunks of at most
        `MAX_TOKENS` tokens (rows of at least `tokens`; `inputs`: each chunk's input vectors (len(ids), D)
        when the body takes them; `last`: each chunk's last tokens on the device, as `SlotModel.forward`
        takes them): one padded step, or several when the padded rows would take more than
        `MAX_STEP_TOKENS` (many prompts joining at once)."""
        tokens = max(tokens, *(len(c.ids) for c in chunks))
        rows = MAX_STEP_TOKENS // pow2(tokens)  # a power of two
        if len(chunks) <= rows:
            return self.run(chunks, layers, tokens, inputs, last)
        parts = [
            self.run(
                chunks[i : i + rows],
                layers,
                tokens,
                inputs[i : i + rows] if inputs is not None else None,
                last[i : i + rows] if last is not None else None,
            )
            for i in range(0, len(chunks), rows)
        ]
        states = torch.cat([states for states, _ in parts])
        return states, torch.cat([features for _, features in parts]) if layers else None  # type: ignore[misc]

    def run(
        self,
        chunks: list[Chunk],
        layers: tuple[int, ...],
        tokens: int,
        inputs: list[torch.Tensor] | None = None,
        last: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` for chunks that fit one step: rows of `tokens` (no chunk longer), padded up to a
        power of two."""
        b, t, w, packed = self._load(chunks, tokens, inputs, last=last)
        hidden, features = self._replay((b, t, w, layers, packed), lambda: self._step(b, t, w, layers, packed))
        # indexing copies: what is returned outlives the next replay
        states = hidden.index_select(0, self._inputs[3, : sum(c.keep for c in chunks)])
        if features is None:
            return states, None
        return states, features.index_select(0, self._inputs[4, : sum(len(c.ids) for c in chunks)])

    def chain(
        self,
        chunks: list[Chunk],
        k: int,
        head: Callable[[torch.Tensor], torch.Tensor],
        inputs: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k greedy steps in one call, with no host sync between them (one CUDA graph on a GPU): the step
        over `chunks` (one step's worth, keeping their last token), then k − 1 steps of one token a row,
        each taking the token `head` picks from the row's last output (E,) -> id at the position after
        it, and, when the body takes vectors, that output as its vector. Returns each row's k tokens
        (B, k) and the output each step ended with (B, k, E). The cache takes every step's tokens;
        callers keep the positions their rows need (`ModelDraft.propose`)."""
        assert all(c.keep == 1 for c in chunks), "a chain continues from each chunk's last token"
        b, t, w, packed = self._load(chunks, 1, inputs, reach=k - 1)
        tokens, outputs = self._replay(("chain", b, t, w, k, packed), lambda: self._chain(b, t, w, packed, k, head))
        return tokens[: len(chunks)].clone(), outputs[: len(chunks)].clone()  # outlive the next replay

    def fits(self, chunks: list[Chunk], reach: int = 0) -> bool:
        """Whether `chunks` run as one padded step (`run`), and `reach` positions more after each fit
        the cache (`chain`)."""
        longest = max(len(c.ids) for c in chunks)
        if longest > MAX_TOKENS or len(chunks) > MAX_STEP_TOKENS // pow2(longest):
            return False
        return max(c.start + len(c.ids) for c in chunks) + reach <= self.cache.max_length

    def _load(
        self,
        chunks: list[Chunk],
        tokens: int,
        inputs: list[torch.Tensor] | None,
        reach: int = 0,
        last: torch.Tensor | None = None,
    ) -> tuple[int, int, int, bool]:
        """Set the input buffers for a step over `chunks` (rows of at least `tokens`) attending to `reach`
        positions more after each row's tokens (`last`: each one's last n tokens, on the device); return its
        padded shape (b, t, w) and whether its rows are the cache's first b."""
        n, cache = len(chunks), self.cache
        b, t = pow2(n), pow2(max(tokens, *(len(c.ids) for c in chunks)))
        w = min(max(MIN_WIDTH, pow2(max(c.start + len(c.ids) for c in chunks) + reach)), cache.max_length)
        packed = all(c.slot == row for row, c in enumerate(chunks))
        cache.reserve(b if packed else max(c.slot for c in chunks) + 1, w)
        if cache.allocations != self._allocations:  # new tensors: every graph read the old ones
            self._runs.clear()
            self._pool = None
            self._allocations = cache.allocations
        ids, positions, writes, keep, valid = [], [], [], [], []
        for row in range(b):
            c = chunks[row] if row < n else Chunk(cache.scratch, 0, [])
            ids += c.ids + [0] * (t - len(c.ids))
            positions += [min(c.start + i, w - 1) for i in range(t)]
            writes += [c.slot] * len(c.ids) + [cache.scratch] * (t - len(c.ids))
            if row < n:
                keep += [row * t + i for i in range(len(c.ids) - c.keep, len(c.ids))]
                valid += [row * t + i for i in range(len(c.ids))]
        slots = [c.slot for c in chunks] + [cache.scratch] * (b - n)
        rows = [ids, positions, writes, keep, valid, slots] + (
            [_tails(chunks, last.shape[1], t)] if last is not None else []
        )
        loaded = upload([r + [0] * (b * t - len(r)) for r in rows], cache.device)
        self._inputs[:, : b * t].copy_(loaded[:6])
        if last is not None:  # written where the ids of the tokens it stands for are
            self._inputs[0].index_copy_(0, loaded[6, : last.numel()], last.flatten())
        if self._vectors is not None:
            assert inputs is not None, "this body takes a vector a token"
            self._vectors.index_copy_(0, self._inputs[4, : len(valid)], torch.cat(inputs).to(cache.dtype))
        self.shapes.add((b, t, w))
        return b, t, w, packed

    def _replay(self, key: tuple, step: Callable[[], _Out]) -> _Out:
        """Run `step` (a function of the input buffers) for shape `key`: its graph's replay on CUDA, captured
        the first time the shape comes; else the step itself."""
        run = self._runs.get(key)
        if run is None:
            start = self.capture_seconds
            run = self._runs[key] = self._prepare(step)
            if self.capture:
                log.info("captured a CUDA graph of %s, %.0f ms", _describe(key), 1000 * (self.capture_seconds - start))
        return run()

    def _step(
        self, b: int, t: int, w: int, layers: tuple[int, ...], packed: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The body over the input buffers' first b·t entries."""
        ids, positions, writes = (self._inputs[i, : b * t].view(b, t) for i in range(3))
        cache = self.cache
        cache._writes, cache._positions, cache._width = writes, positions, w
        cache._rows = None if packed else self._inputs[5, :b]
        vectors = self._vectors[: b * t].view(b, t, -1) if self._vectors is not None else None
        return self.body(ids, positions, w, layers, vectors)

    def _chain(
        self, b: int, t: int, w: int, packed: bool, k: int, head: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`chain`'s k steps over the input buffers: (b, k) tokens, (b, k, E) outputs."""
        hidden, _ = self._step(b, t, w, (), packed)  # sets the rows read and the width for every step
        ends = self._inputs[3, :b]  # each row's last token (a padding row: any of the step's)
        out = hidden.index_select(0, ends)  # (b, E)
        position = self._inputs[1, : b * t].index_select(0, ends)[:, None]  # (b, 1)
        writes = self._inputs[5, :b, None]  # each row's slot (a padding row: the scratch row)
        cache = self.cache
        tokens, outputs = [head(out)], [out]
        for _ in range(k - 1):
            position = (position + 1).clamp(max=w - 1)  # a padding row's only: `fits` holds the real ones
            cache._writes, cache._positions = writes, position
            vectors = out[:, None] if self._vectors is not None else None
            out, _ = self.body(tokens[-1][:, None], position, w, (), vectors)
            tokens.append(head(out))
            outputs.append(out)
        return torch.stack(tokens, 1), torch.stack(outputs, 1)

    def _prepare(self, body: Callable[[], _Out]) -> Callable[[], _Out]:
        """How a step (`body`, a function of the input buffers) runs: a graph's replay on CUDA, else the step
        itself; inside `kernels.fused` either way."""

        def step() -> _Out:
            with kernels.fused(self.fused):
                return body()

        if not self.capture:
            return step
        device = self.cache.device
        start = time.perf_counter()
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step()  # warm-up (lazy initialisation stays out of the graph)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = step()
        except RuntimeError as error:  # an op that cannot be captured: run steps eagerly from now on
            log.warning("padded steps run eagerly: capturing a CUDA graph failed: %s", error)
            self.capture = False
            return step
        self._pool = graph.pool()
        took = time.perf_counter() - start
        self.capture_seconds += took

        def replay() -> _Out:
            graph.replay()
            return out

        return replay


def _describe(key: tuple) -> str:
    """A step's shape as the log names it."""
    if key[0] == "chain":
        _, b, t, w, k, _ = key
        return f"{k} chained steps, {b} rows of {t} tokens then of 1, over {w} positions"
    b, t, w = key[:3]
    return f"{b} rows of {t} tokens over {w} positions"
