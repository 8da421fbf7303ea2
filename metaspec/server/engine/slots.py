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
Both dimensions grow on demand (doubling, up to `max_length`), so memory follows what is in flight.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import Cache


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
        self._positions = torch.zeros(0, 0, dtype=torch.long)  # (B, T) where each input token goes
        self._width = 0

    @property
    def capacity(self) -> tuple[int, int]:
        """(slots, positions) allocated now."""
        return (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)

    def reserve(self, slots: int, width: int) -> None:
        """Make room for slots `0..slots-1` and positions `0..width-1` (doubling, up to max_length)."""
        if width > self.max_length:
            raise ValueError(f"a sequence needs {width} cache positions; the cache holds {self.max_length}")
        have_slots, have_width = self.capacity
        if slots <= have_slots and width <= have_width:
            return
        new_slots = max(slots, 2 * have_slots if slots > have_slots else have_slots, 1)
        new_width = min(self.max_length, max(width, 2 * have_width if width > have_width else have_width, 16))
        for tensors in (self.keys, self.values):
            for i in range(self.num_layers):
                # zeros, not empty: a masked position still multiplies its value by 0, and 0 * NaN is NaN
                grown = torch.zeros(new_slots, *self.shape[:1], new_width, self.shape[1], dtype=self.dtype,
                                    device=self.device)  # fmt: skip
                if i < len(tensors):
                    old = tensors[i]
                    grown[: old.shape[0], :, : old.shape[2]] = old
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

    def prepare(self, chunks: list[Chunk], width: int) -> None:
        """Set where the next forward writes (rows padded to the longest chunk) and how far it reads."""
        slots = [c.slot for c in chunks]
        self.reserve(max(slots) + 1, width)
        packed = slots == list(range(len(slots)))
        self._rows = None if packed else torch.tensor(slots, device=self.device)
        length = max(len(c.ids) for c in chunks)
        starts = torch.tensor([c.start for c in chunks], device=self.device)
        self._positions = starts[:, None] + torch.arange(length, device=self.device)  # (B, T)
        self._width = width

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, D) states at each row's positions; return (B, H, width, D) to attend over."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows = self._rows if self._rows is not None else torch.arange(key_states.shape[0], device=self.device)
        index = (rows[:, None], slice(None), self._positions)  # advanced indices first: (B, T, H, D)
        keys[index] = key_states.transpose(1, 2).to(self.dtype)
        values[index] = value_states.transpose(1, 2).to(self.dtype)
        if self._rows is None:
            batch = key_states.shape[0]
            return keys[:batch, :, : self._width], values[:batch, :, : self._width]
        return keys[self._rows, :, : self._width], values[self._rows, :, : self._width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._width

    @property
    def is_compileable(self) -> bool:
        return False


class SlotModel:
    """A causal LM run over ragged batches of chunks against its `SlotCache`.

    `vocab`: logits are cut to the first `vocab` entries (target and draft score the same token set even
    when one pads its embedding matrix). The head runs only on the positions asked for (`Chunk.keep`),
    not on padding: at a vocabulary of 49k the head is a large share of a step's work.
    """

    def __init__(self, model: torch.nn.Module, vocab: int, max_length: int) -> None:
        self.model = model
        self.vocab = vocab
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
        self.cache = SlotCache(model.config, self.max_length, dtype, self.device)
        self._head = model.get_output_embeddings()
        forward = inspect.signature(model.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    def forward(self, chunks: list[Chunk], layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (N, V) of every chunk's last `keep` positions, rows in chunk order (N = Σ keep), and with
        `layers` the input of each of those layers (the residual stream) at *every* position of every
        chunk, concatenated per position: (Σ len(ids), len(layers)·E) in chunk order."""
        length = max(len(c.ids) for c in chunks)
        width = max(c.start + length for c in chunks)
        self.cache.prepare(chunks, width)
        ids = torch.zeros(len(chunks), length, dtype=torch.long)
        for b, c in enumerate(chunks):
            ids[b, : len(c.ids)] = torch.tensor(c.ids)
            ids[b, len(c.ids) :] = c.ids[-1]  # padding: any valid id; its positions are never attended
        ids = ids.to(self.device)
        positions = self.cache._positions  # (B, T)
        keys = torch.arange(width, device=self.device)
        mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, width): causal per row
        cache = {self._cache_arg: self.cache}
        out = self.model.base_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=bool(layers),
            **cache,
        )
        rows = torch.tensor([b for b, c in enumerate(chunks) for _ in range(c.keep)], device=self.device)
        cols = torch.tensor([len(c.ids) - c.keep + i for c in chunks for i in range(c.keep)], device=self.device)
        states = out.last_hidden_state[rows, cols]  # (N, E)
        logits = self._head(states)[:, : self.vocab]  # (N, V)
        if not layers:
            return logits, None
        # hidden_states[i] is the input of layer i (0: the embeddings)
        valid = torch.arange(length)[None, :] < torch.tensor([len(c.ids) for c in chunks])[:, None]  # (B, T)
        features = torch.cat([out.hidden_states[i] for i in layers], dim=-1)  # (B, T, len(layers)·E)
        return logits, features[valid.to(self.device)]
