"""The seam between decoding and HTTP: what the server's HTTP layer may ask of an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling, already validated and defaulted by the HTTP layer."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    top_k: int = 0
    """0 (or -1): no top-k."""
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end the completion besides the model's own end tokens (not part of the text)."""
    ignore_eos: bool = False
    """Go on past the model's own end-of-turn/EOS tokens (`stop_token_ids` still stop)."""
    min_tokens: int = 0
    """No end or stop token is drawn before this many tokens are generated."""
    seed: int | None = None
    logprobs: int | None = None
    """Report the target's log-probability of each generated token and of this many alternatives
    (0: the chosen token only); None: none."""


@dataclass(frozen=True)
class TokenLogprob:
    """The target model's log-probability of a generated token, and the most likely tokens there."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class RequestStats:
    """What one request did; returned in the response's `metaspec` field and fed to /metrics."""

    route: Literal["speculative", "target-only"] = "target-only"
    proposed_tokens: int = 0
    accepted_tokens: int = 0
    lookup_proposed_tokens: int = 0
    """Of `proposed_tokens`, those prompt lookup proposed (`promptLookup`); the draft model proposed the rest."""
    lookup_accepted_tokens: int = 0
    """Of `accepted_tokens`, those prompt lookup proposed."""
    rounds: int = 0
    """Target passes (each emits at least one token)."""
    speculative_rounds: int = 0
    """Target passes that verified at least one proposal."""
    first_token_confidence: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds
    decode_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.proposed_tokens if self.proposed_tokens else None


@dataclass
class Delta:
    """A piece of generated text. The last one of a request has `finish_reason` and `stats` set."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """One per token of `token_ids` when the request asked for log-probabilities."""
    finish_reason: Literal["stop", "length"] | None = None
    stats: RequestStats | None = None


class Engine(Protocol):
    model_name: str
    on_step: Callable[[int, bool], None] | None
    """Called after each decoding step with the batch size and whether the draft proposed (metrics)."""

    def ready(self) -> bool:
        """True once target and draft are loaded and checked."""

    def encode_prompt(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a plain completion prompt (with the tokenizer's BOS and such, by default)."""

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of a chat conversation with the generation prompt appended (the chat template)."""

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (special tokens spelled out)."""

    def spell(self, ids: list[int]) -> list[str]:
        """Each token's own text, one per id, as `logprobs` shows tokens."""

    def vocabulary_size(self) -> int:
        """Token ids are below this."""

    def token_chars(self) -> int:
        """The most characters one token can stand for: a prompt longer than `n` times this cannot fit
        in `n` tokens."""

    def max_model_len(self) -> int:
        """Longest prompt + completion the models hold, in tokens."""

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream the completion. Cancelling the iterator (client gone) stops decoding promptly."""
