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
- `adaptive`: before each step the replica chooses k (0 = target only) from running estimates over
  the rounds it already finished (`Adaptive`): the acceptance rate α and the measured cost of a round
  at each width. Those estimates are functions of earlier rounds' outcomes and of timings, all settled
  before the step begins; a round's k is fixed before its draft proposes or the target samples. Each
  round, given everything before it, emits target-distributed tokens for any k, so the sequence of
  rounds does too: the same argument as for `per-token`, with "the past" widened to the replica's
  past steps (other sequences' rounds included, whose randomness is independent of this one's).

Load: `maxSpeculativeBatch` turns speculation off for a step whose batch holds more sequences than
that (vLLM's `disable_by_batch_size`). A decode step is memory-bound at small batches — reading the
weights costs the same for 1 token as for k + 1, which is what speculation exploits — and compute-bound
at large ones, where verifying k + 1 tokens per sequence costs about k + 1 times a plain step while
the draft's accepted tokens cannot make up for it. The batch size at a step depends on other requests
only, never on this sequence's next token, so the cut-off keeps every policy exact. `adaptive` finds
that point by itself (its cost estimates are per batch size); the cut-off still bounds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil
from typing import Literal

from metaspec.api.serving import (
    AUTO,
    CALIBRATION_FILE,
    DEFAULT_CONFIDENCE_THRESHOLD,
    THRESHOLD_POLICIES,
    Routing,
    ThresholdCalibration,
)

log = logging.getLogger(__name__)

PolicyName = Literal["adaptive", "first-token", "per-token", "always", "never"]


@dataclass(frozen=True)
class RoutingPolicy:
    """A `spec.routing` as the decoding loop uses it."""

    policy: PolicyName = "adaptive"
    threshold: float = 0.7
    """Draft max-probability needed to speculate (`confidenceThreshold`)."""
    max_speculative_tokens: int = 5
    """Draft tokens proposed per round at most (k)."""
    max_speculative_batch: int | None = None
    """Largest batch (running sequences) at which a step speculates; None: any."""
    calibrated: bool | None = None
    """`confidenceThreshold: auto` under a policy that reads it: whether `threshold` is the draft's
    calibrated one (False: the default, the draft has none); None otherwise."""

    @classmethod
    def of(cls, routing: Routing, calibration: ThresholdCalibration | None = None, draft: str = "") -> RoutingPolicy:
        """`routing` with `confidenceThreshold: auto` resolved from the `calibration` saved with the draft
        (named `draft` in the log), or the default threshold when it has none."""
        threshold, calibrated = routing.confidence_threshold, None
        if threshold == AUTO:
            threshold = resolve_threshold(routing, calibration, draft)
            calibrated = calibration is not None if routing.policy in THRESHOLD_POLICIES else None
        return cls(routing.policy, threshold, routing.max_speculative_tokens, routing.max_speculative_batch, calibrated)

    def speculates_at(self, batch: int) -> bool:
        """Whether a step over `batch` running sequences drafts at all."""
        return self.max_speculative_batch is None or batch <= self.max_speculative_batch

    @property
    def uses_draft(self) -> bool:
        return self.policy != "never"

    @property
    def adaptive(self) -> bool:
        """k is chosen step by step from measurements (`Adaptive`); the draft catches up only when used."""
        return self.policy == "adaptive"

    def speculate_request(self, first_confidence: float | None) -> bool:
        """Whether the request decodes speculatively, given the draft's first-token confidence (None: the
        draft has none, e.g. prompt lookup)."""
        if self.policy == "first-token":
            return first_confidence is not None and first_confidence >= self.threshold
        return self.policy != "never"

    @property
    def checks_each_token(self) -> bool:
        """`per-token`: each drafting step needs the draft's confidence (one device sync per step)."""
        return self.policy == "per-token"


def resolve_threshold(routing: Routing, calibration: ThresholdCalibration | None, draft: str) -> float:
    """The threshold `confidenceThreshold: auto` stands for: the draft's calibrated one, else the default."""
    uses = routing.policy in THRESHOLD_POLICIES
    if calibration is None:
        if uses:
            log.warning(
                "routing.confidenceThreshold: auto, but draft %s has no %s (a calibration is published by "
                "TrainingRuns of causal-lm drafts cut from their target): routing %s at the default threshold "
                "%s; set a number to silence this",
                draft or "(none)", CALIBRATION_FILE, routing.policy, DEFAULT_CONFIDENCE_THRESHOLD,
            )  # fmt: skip
        return DEFAULT_CONFIDENCE_THRESHOLD
    if uses:
        log.info(
            "routing.confidenceThreshold: auto = %.4g, calibrated with draft %s (k = %d, c = %.3g; predicted "
            "%.2fx on its held-out prompts)",
            calibration.confidence_threshold, draft, calibration.max_speculative_tokens, calibration.cost,
            calibration.predicted_speedup,
        )  # fmt: skip
        if calibration.max_speculative_tokens != routing.max_speculative_tokens:
            log.warning(
                "the draft's threshold was calibrated for %d speculative tokens, routing.maxSpeculativeTokens is %d",
                calibration.max_speculative_tokens, routing.max_speculative_tokens,
            )  # fmt: skip
    return calibration.confidence_threshold


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a round emits on average with k proposals, each accepted with probability α given the ones
    before it were: (1 − α^(k+1)) / (1 − α) (Leviathan et al. 2023, eq. 1)."""
    if alpha >= 1:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def speedup(alpha: float, k: int, cost: float) -> float:
    """Leviathan et al.'s expected speedup (1 − α^(k+1)) / ((1 − α)(k·c + 1)) of a round with k proposals
    over a target step, where c is the measured cost of one proposal relative to a target step."""
    return expected_tokens(alpha, k) / (k * cost + 1)


@dataclass
class _Bucket:
    """Estimates for the steps whose batch size falls in one power-of-two range."""

    plain: float | None = None
    """Seconds per target-only step (EMA)."""
    times: dict[int, float] = field(default_factory=dict)
    """Per verify width measured (tokens a row in the target's pass: 1 + proposals): a step's time
    relative to a target-only one, as if every sequence of the batch had drafted (EMA)."""
    on: bool = False
    interval: int = 0
    next_probe: int = 0

    def step_time(self, width: int) -> float | None:
        """A step at `width` tokens a row relative to a target-only one: as measured; between measured
        widths, on the line through its neighbours (width 1 costs 1); beyond the widest measured, that
        one's cost per proposal. None before any width was measured."""
        if width in self.times:
            return self.times[width]
        if not self.times:
            return None
        below = max((w for w in self.times if w < width), default=1)
        above = min((w for w in self.times if w > width), default=None)
        low = self.times.get(below, 1.0)
        if above is None:
            return 1 + (low - 1) * (width - 1) / (below - 1)
        return low + (self.times[above] - low) * (width - below) / (above - below)

    def cheapest(self, tokens: int, limit: int) -> int:
        """The width of `tokens`..`limit` a step runs fastest at: `tokens`, or a wider one measured faster."""
        wider = [w for w in self.times if tokens < w <= limit]
        return min([tokens, *wider], key=lambda w: (self.step_time(w), w))


@dataclass
class Adaptive:
    """The `adaptive` policy's running estimates, shared by every sequence of a replica.

    Per step the decoder asks `choose(batch)` for k and `width` for the verify pass's tokens a row, and
    reports what the step did to `record`. The estimates: α, the acceptance rate of a proposal given the
    ones before it were accepted (accepted / (accepted + rejections): the geometric model's maximum
    likelihood), an EMA over proposals; and per batch-size range (1, 2, 3–4, 5–8, ...: a step's cost
    depends on the batch, and speculation stops paying once a step is compute-bound) the time of a
    target-only step and, per verify width (tokens a row: 1 + proposals), the measured time of a step
    relative to it — the draft steps and the longer verify pass together, since on a CPU or at a large
    batch the verify pass grows with its tokens (Leviathan's formula assumes it does not). The time is
    kept per width because it is a step function of the width, not a line: matrix-product kernels
    change at a few rows on a CPU (on one 2-core CPU a pass of 3 tokens cost 2.4 target steps and one of
    5 tokens 1.75), tiles and padded shapes on a GPU. A width not measured yet is predicted from the
    ones that were (`_Bucket.step_time`). k is the one of 1..`max_k` with the best expected tokens per
    unit of time, used only where that exceeds 1; k = 0 otherwise. A k whose width promises more is
    chosen, and so measured. Where a wider pass measured faster, the decoder pads a speculating step to
    it (`width`): proposals that come up short (prompt lookup finds fewer than k) then cost
    what the fastest width costs, and a round of k costs the fastest width of at least k + 1.

    Probing: the arm not chosen is tried now and then — a speculating step while speculation is off
    (to notice a draft that starts paying), a target-only step while it is on (to refresh the time it
    is compared with). The probe interval doubles at each probe, from `min_interval` to `max_interval`
    steps, so a settled decision costs little; a draft that starts paying is noticed within about two
    intervals. A speculating probe is asked for at every step until one proposes: prompt lookup may find
    nothing, and a draft behind it proposes only where lookup found nothing (`AdaptiveChain`).
    Speculation starts only at a predicted gain above 1 + `margin` and stops below 1. The first probe is
    at `max_k`, the widest round: it tests the most proposals, and measures the width where a line
    through k = 1 would be furthest off; the narrower ones are then predicted between a target-only
    step and it.

    A speculating probe costs more than its step: a draft that sat out has to catch up on everything
    its sequences emitted meanwhile (a prefill of the request so far). So a probe drafts for at most
    `probe_rows` of the batch's sequences (the batch decoder picks those the draft has seen most of),
    and the step's time is read as if every sequence had drafted. The decoder reports the catch-up's
    time as `overhead`, kept out of a probe's estimates (a one-time cost) but counted against probing:
    the next probe waits until the probes' losses — the step's time and the overhead beyond what
    target-only steps would have taken for the tokens the probe emitted — stay within `probe_budget` of
    the time decoding, whatever the interval says. The time CUDA graph captures take within a step (a
    step at shapes run for the first time: on an H100 such a probe took 127–169 target steps) is
    neither: a shape is captured once in a replica's life (again only when its caches grow), so it
    says nothing about the draft, and counted against probing, one capture of 150 target steps would
    hold the next probe back for 15,000 steps at a 1% budget. A probe that emitted more than it cost
    lost nothing, and the next one comes at once. The budget is the replica's, not each batch-size
    range's: a probe in one range delays those of every other (under load the batch size moves between
    ranges, and each would otherwise spend it on its own). While speculation is on, a catch-up is part
    of the step it precedes: a draft that proposes every step has next to nothing to catch up on, but
    one behind prompt lookup catches up on what each of lookup's rounds emitted, every time
    (`AdaptiveChain`), a cost of proposing that its estimates must hold. Padding changes only the
    speed: its positions are never attended and their logits never read, and k and the width are
    fixed before the draft proposes.
    """

    max_k: int
    min_interval: int = 16
    max_interval: int = 256
    margin: float = 0.1
    """Predicted gain needed to start speculating (it stops below 1): estimates from a few probes are
    noisy, and a draft that only seems to pay costs more than one that is missed by a little."""
    alpha_memory: float = 20.0
    """Proposals α averages over (its EMA weight per tested proposal is 1 / alpha_memory)."""
    plain_weight: float = 0.1
    """EMA weight of a target-only step's time: those are frequent while speculation is off."""
    probe_budget: float = 0.01
    """Share of decoding time that speculating probes may lose while speculation is off."""
    probe_rows: int = 4
    """Sequences a probe drafts for at most: its catch-up and its longer verify pass stay bounded at any
    batch size (over all 16 sequences of a CPU batch, one probe's catch-up alone cost 3–4 target steps:
    docs/benchmarks.md)."""
    probe_weight: float = 0.25
    """Least EMA weight of a probe's α and of every speculating step's cost: while speculation is off,
    probes are rare and each must count."""
    steps: int = 0
    quiet_until: int = 0
    """Step before which no speculating probe runs, in any range: the probe budget's wait."""
    accepted: float = 0.0
    tested: float = 0.25
    """EMAs of the proposals a step accepted and tested, whose ratio is α. They start as a quarter of a
    rejected proposal, a probe's weight (`probe_weight`): the first probe's acceptance then moves α
    part of the way, not to 1. From nothing, one lucky probe of a poor draft would switch speculation
    on at the longest round, and a fresh replica would pay for rounds of rejected proposals until α
    came down, while a draft that pays is on after a probe or two either way."""
    buckets: dict[int, _Bucket] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return self.accepted / self.tested

    def choose(self, batch: int) -> int:
        """Proposals per sequence for the next step over `batch` sequences (0: target only)."""
        self.steps += 1
        bucket = self._bucket(batch)
        if bucket.plain is None:
            return 0  # the reference time first
        measured = bucket if bucket.times else self._nearest_measured(batch)
        if measured is None:
            return self.max_k  # no proposal measured yet: the widest round first
        gains = ((k, expected_tokens(self.alpha, k) / self._round(measured, k)) for k in range(1, self.max_k + 1))
        k, gain = max(gains, key=lambda x: x[1])
        on = gain > (1 if bucket.on else 1 + self.margin)
        if on != bucket.on:
            bucket.on, bucket.next_probe = on, self.steps + bucket.interval
        elif on and self.steps >= bucket.next_probe:  # a target-only step: the time compared with, refreshed
            bucket.interval = min(2 * bucket.interval, self.max_interval)
            bucket.next_probe = self.steps + bucket.interval
            return 0
        elif not on and self.steps >= max(bucket.next_probe, self.quiet_until):
            return k  # a probe, asked for at every step until one proposes (`record` schedules the next)
        return k if on else 0

    def _round(self, bucket: _Bucket, k: int) -> float:
        """A round of k proposals relative to a target-only step, at the width it runs at."""
        time = bucket.step_time(bucket.cheapest(k + 1, self.max_k + 1))
        assert time is not None  # the bucket has measured a width
        return time

    def speculating(self, batch: int) -> bool:
        """Whether speculation is on at `batch` sequences (a speculating step there is not a probe)."""
        return self._bucket(batch).on

    def width(self, batch: int, tokens: int) -> int:
        """Tokens a row for a step over `batch` sequences whose rows need `tokens` at most (1 + the most
        proposals a row holds): `tokens`, or a wider verify pass measured faster at this batch size (on
        some CPUs a pass of 5 tokens ran faster than one of 3). The padding is never attended and its
        logits are not read, so only the speed changes."""
        bucket = self._bucket(batch)
        return bucket.cheapest(tokens, self.max_k + 1) if bucket.on else tokens

    def record(
        self,
        batch: int,
        rows: int,
        width: int,
        proposed: int,
        accepted: int,
        rejected: int,
        seconds: float,
        overhead: float = 0.0,
    ) -> None:
        """A step over `batch` sequences, `rows` of which proposed, took `seconds` at `width` tokens a row
        and verified `proposed` proposals, of which `accepted` were accepted and `rejected` rounds ended
        in a rejection; `overhead`: seconds the draft took catching up before it, part of the step's
        time while speculation is on, a probe's one-time cost otherwise."""
        bucket = self._bucket(batch)
        if bucket.on:
            seconds, overhead = seconds + overhead, 0.0
        if not proposed:
            bucket.plain = _ema(bucket.plain, seconds, self.plain_weight)
            return
        self.learn(batch, accepted, rejected)
        if not bucket.on and bucket.plain is not None:  # a probe: wait until what it lost is paid for
            lost = seconds + overhead - bucket.plain * (1 + accepted / batch)
            if lost <= 0:  # it paid for itself: the decision is not settled, probe again at once
                bucket.interval, bucket.next_probe = self.min_interval, self.steps + 1
            else:
                wait = self.steps + ceil(lost / (self.probe_budget * bucket.plain))
                bucket.next_probe, self.quiet_until = max(bucket.next_probe, wait), max(self.quiet_until, wait)
        if bucket.plain is not None:  # a probe's few rows stand for the whole batch, each costing as much
            relative = 1 + max(0.0, seconds / bucket.plain - 1) * batch / rows
            bucket.times[width] = _ema(bucket.times.get(width), relative, self.probe_weight)

    def learn(self, batch: int, accepted: int, rejected: int) -> None:
        """The proposals of a step over `batch` sequences fared so (as in `record`), whatever the step cost:
        α moves, and a probe that proposed is done with (the next one comes after the doubled interval)."""
        bucket = self._bucket(batch)
        if not bucket.on:  # a probe: rare, so it counts as much as a probe's cost does
            bucket.interval = min(2 * bucket.interval, self.max_interval)
            bucket.next_probe = self.steps + bucket.interval
        tested = accepted + rejected
        if tested:
            weight = 1 - (1 - 1 / self.alpha_memory) ** tested
            if not bucket.on:
                weight = max(weight, self.probe_weight)
            self.accepted = _ema(self.accepted, accepted, weight)
            self.tested = _ema(self.tested, tested, weight)

    def _bucket(self, batch: int) -> _Bucket:
        key = (batch - 1).bit_length()
        if key not in self.buckets:
            self.buckets[key] = _Bucket(interval=self.min_interval, next_probe=self.steps + self.min_interval)
        return self.buckets[key]

    def _nearest_measured(self, batch: int) -> _Bucket | None:
        """The measured batch-size range nearest `batch`'s, whose costs stand in for its own."""
        key = (batch - 1).bit_length()
        measured = [(abs(k - key), k) for k, b in self.buckets.items() if b.times]
        return self.buckets[min(measured)[1]] if measured else None


@dataclass
class AdaptiveChain:
    """`adaptive` over proposers tried in order, each deciding for itself: prompt lookup, then a draft
    model for the sequences where lookup found nothing (`LookupFirstDraft`). One `Adaptive` per
    proposer (`arms`, in that order) keeps its own α, its own step times per width and its own probes,
    so a lookup that pays stays on while a draft that does not is off, and the reverse. Pooled, they
    would price every proposal at one acceptance rate between the two (on the demo's prompts 32% of
    lookup's proposals were accepted and 8% of the draft's), and `adaptive` would decide within the
    noise of its margin whether to run both or neither.

    A step's time is recorded by the last proposer that ran in it (the draft's steps and the verify
    pass, when the draft proposed for any sequence; the verify pass alone, when lookup only did), and
    its target-only time by all, each proposer's acceptances by itself: each arm's estimates are of
    the rounds it proposes. A target-only step that an arm asks for, to refresh the time it compares
    with, is target-only for every proposer. With one proposer this is `Adaptive` itself.
    """

    arms: list[Adaptive]

    def choose(self, batch: int) -> list[int]:
        """Proposals per sequence for the next step over `batch` sequences, for each proposer (0: not
        this step)."""
        ks = [arm.choose(batch) for arm in self.arms]
        if any(arm.speculating(batch) and not k for arm, k in zip(self.arms, ks, strict=True)):
            return [0] * len(ks)
        return ks

    @property
    def probe_rows(self) -> int:
        return min(arm.probe_rows for arm in self.arms)

    def width(self, batch: int, tokens: int, arm: int) -> int:
        """`Adaptive.width` of the proposer whose step it is (the last one that proposed)."""
        return self.arms[arm].width(batch, tokens)

    def record(
        self, batch: int, rows: int, width: int, tallies: list[Tally], seconds: float, overhead: float = 0.0
    ) -> None:
        """`Adaptive.record`, each proposer's proposals in `tallies` (in `arms` order): the step's time to the
        last one that proposed, the others' acceptances to them (`Adaptive.learn`); with no proposals,
        a target-only step to every arm."""
        timed = max((a for a, tally in enumerate(tallies) if tally.proposed), default=None)
        for a, (arm, tally) in enumerate(zip(self.arms, tallies, strict=True)):
            if timed is None or a == timed:
                arm.record(batch, rows, width, tally.proposed, tally.accepted, tally.rejected, seconds, overhead)
            elif tally.proposed:
                arm.learn(batch, tally.accepted, tally.rejected)


@dataclass
class Tally:
    """One proposer's proposals in a step: tokens proposed, accepted, and rounds ended by a rejection."""

    proposed: int = 0
    accepted: int = 0
    rejected: int = 0


class StepClock:
    """Times a step for `Adaptive.record`: the draft's catch-up before it (`overhead`), then the step
    itself (`seconds`), each without what compiling and capturing CUDA graphs took within it (`captured`:
    the models' seconds of that so far), a cost once a shape that says nothing of a step's."""

    def __init__(self, captured: Callable[[], float]) -> None:
        self._captured = captured
        self._begun = self._now()
        self._caught_up = self._begun

    def _now(self) -> tuple[float, float]:
        return time.perf_counter(), self._captured()

    def caught_up(self) -> None:
        """The catch-up is over; the step starts."""
        self._caught_up = self._now()

    def stop(self) -> tuple[float, float]:
        """(seconds, overhead): the step's and the catch-up's, captures left out."""
        (begun, before), (caught_up, then), (now, after) = self._begun, self._caught_up, self._now()
        return now - caught_up - (after - then), caught_up - begun - (then - before)


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)
