"""The seam between the generator's driver (sharding, resume, stats) and a decoding engine."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Prompt:
    """One prompt, already formatted with `metaspec.prompts.chat_prompt_ids`."""

    id: str
    token_ids: list[int]
    seed: int  # per-prompt sampling seed, see `prompt_seed`


@dataclass(frozen=True)
class Completion:
    id: str
    text: str  # cut before the first stop string; never contains the end-of-turn token
    num_tokens: int  # tokens the engine generated, the terminating EOS/end-of-turn token included
    finish_reason: FinishReason
    generation_time: float  # seconds: this prompt's share of its batch's wall time


class Engine(Protocol):
    """A loaded teacher model that turns prompts into completions."""

    model_name: str
    tokenizer: Any

    def generation_params(self) -> dict[str, Any]:
        """The parameters actually passed to the engine, recorded in every output's metadata."""

    def plan(self, prompts: Sequence[Prompt]) -> list[list[Prompt]]:
        """Split prompts into the batches `generate` is called with (also the units of progress and resume)."""

    def generate(self, batch: Sequence[Prompt]) -> list[Completion]:
        """Completions for one batch, in the batch's order."""


def prompt_seed(seed: int, record_id: str) -> int:
    """A 63-bit seed per (configured seed, record id): a prompt's sample does not depend on which batch,
    shard or restart produced it, and different prompts do not share one random stream."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest occurrence of any stop string, and whether one occurred."""
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True
