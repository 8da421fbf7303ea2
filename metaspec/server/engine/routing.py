"""Routing policies: when to speculate. None of them changes the output distribution.

Speculative sampling emits, at every position, a token distributed exactly as the target's p given
the tokens emitted so far — whether a draft token was proposed there or not, and whatever the draft's
q is (Leviathan et al. 2023, Theorem 1; Chen et al. 2023). So any rule that decides *whether* to
propose a draft token at a position, using only information available before that position's token
is sampled (the emitted prefix and the draft's own distribution there), leaves the output exact:

- `always` / `never`: fixed decisions.
- `first-token`: decided once from the draft's distribution for the first token, a function of the
  prompt alone; then the whole request is plain speculative sampling or plain target sampling.
- `per-token`: at each drafting position the draft's confidence is read *before* a token is drawn
  from q; a low confidence ends the round, and that position's token then comes from the target's p
  (as the bonus token or as a one-token target step). The decision never looks at a target sample.

Load: `maxSpeculativeBatch` turns speculation off for a step whose batch holds more sequences than
that (vLLM's `disable_by_batch_size`). A decode step is memory-bound at small batches — reading the
weights costs the same for 1 token as for k + 1, which is what speculation exploits — and compute-bound
at large ones, where verifying k + 1 tokens per sequence costs about k + 1 times a plain step while
the draft's accepted tokens cannot make up for it. The batch size at a step depends on other requests
only, never on this sequence's next token, so the cut-off keeps every policy exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metaspec.api.serving import Routing

PolicyName = Literal["first-token", "per-token", "always", "never"]


@dataclass(frozen=True)
class RoutingPolicy:
    """A `spec.routing` as the decoding loop uses it."""

    policy: PolicyName = "first-token"
    threshold: float = 0.7
    """Draft max-probability needed to speculate (`confidenceThreshold`)."""
    max_speculative_tokens: int = 5
    """Draft tokens proposed per round at most (k)."""
    max_speculative_batch: int | None = None
    """Largest batch (running sequences) at which a step speculates; None: any."""

    @classmethod
    def of(cls, routing: Routing) -> RoutingPolicy:
        return cls(
            routing.policy, routing.confidence_threshold, routing.max_speculative_tokens, routing.max_speculative_batch
        )

    def speculates_at(self, batch: int) -> bool:
        """Whether a step over `batch` running sequences drafts at all."""
        return self.max_speculative_batch is None or batch <= self.max_speculative_batch

    @property
    def uses_draft(self) -> bool:
        return self.policy != "never"

    def speculate_request(self, first_confidence: float) -> bool:
        """Whether the request decodes speculatively, given the draft's first-token confidence."""
        if self.policy == "first-token":
            return first_confidence >= self.threshold
        return self.policy != "never"

    @property
    def checks_each_token(self) -> bool:
        """`per-token`: each drafting step needs the draft's confidence (one device sync per step)."""
        return self.policy == "per-token"
