"""Continuous batching with speculative decoding, exact per sequence.

A step is one round for every running sequence: the speculating ones propose (the draft runs batched
over them, `Draft.propose`), then ONE target pass scores every sequence's pending token plus its
proposals — target-only sequences are the rows without proposals — and each sequence accepts its own
prefix by the rule of `speculative.py` (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023): ragged
acceptance is only each sequence lowering its own cache length (`slots.py`). Rows never see each other
(the attention mask is per row), each sequence samples with its own generator and processing, so every
sequence's tokens are distributed exactly as under target-only decoding whatever else is in the batch,
and greedy output equals target-only greedy output (up to float rounding of batched kernels).

Requests join between steps: the prompts of those joining are prefilled together (target and, when
routing needs it, draft) and their first tokens sampled from that pass, so a time to first token is
one prefill plus the step in progress. It leaves when it finishes, is cancelled, or fails (non-finite logits fail that sequence only).

On a GPU, a step in which no sequence proposes and none reads its context is launched before the step
before it is read (`BatchDecoder.overlap`): its input tokens are the ones the step before drew, still on
the device, so the host settles one step (emitting its tokens, admitting and dropping sequences) while
the GPU runs the next, instead of each waiting for the other.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .protocol import RequestStats, TokenLogprob
from .routing import Adaptive, AdaptiveChain, RoutingPolicy, StepClock, Tally
from .sampling import NO_DISTRIBUTION, History, Processing, draw_rows, greedy_tokens, probabilities
from .slots import MIN_WIDTH, Chunk, SlotCache, SlotModel, pow2, upload
from .speculative import record_logprobs, speculative_accept

log = logging.getLogger(__name__)


def finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N,) bool on the device: whether each row of `logits` (N, V) is all finite. NaN and infinities
    carry through a sum, so a row's float32 sum is finite exactly when its entries are, barring an
    overflow that takes logits beyond 1e33. On a CPU the sum costs a twentieth of testing each entry
    (float32), a test that was most of settling a greedy batch (docs/benchmarks.md)."""
    return torch.isfinite(logits.sum(-1, dtype=torch.float32))


def read_rows(logits: torch.Tensor, drawn: torch.Tensor | None = None) -> tuple[list[bool], list[int], list[int]]:
    """Whether each row of `logits` (N, V) is all finite (`finite_rows`), its argmax, and the tokens
    `drawn` (D,) long, in one read for the whole batch. The argmax is a greedy row's token whenever its
    processing reads no context (`Processing.contextual`), so such rows settle without a read of their
    own (on a GPU, a host round trip each)."""
    parts = [finite_rows(logits).long(), logits.argmax(-1)] + ([] if drawn is None else [drawn])
    flat = torch.cat(parts).tolist()
    n = logits.shape[0]
    return [bool(f) for f in flat[:n]], flat[n : 2 * n], flat[2 * n :]


def draws_together(device: torch.device) -> bool:
    """Whether sampled rows draw their tokens together (`BatchDecoder._choices`): on an accelerator, where
    each row drawn alone costs host round trips; not on a CPU, where a row alone stays in cache: drawing
    16 and 64 rows together measured 1.3–1.6× slower there (docs/benchmarks.md)."""
    return device.type != "cpu"


class SequenceFailed(RuntimeError):
    """This sequence cannot go on (e.g. non-finite logits); the rest of the batch is unaffected."""


@dataclass(eq=False)
class Sequence:
    """One request's decoding state. `sink` receives each round's tokens and returns True to stop."""

    prompt: list[int]
    proc: Processing
    budget: int
    """Tokens to generate at most."""
    sink: Callable[[list[int]], bool]
    generator: torch.Generator | None = None
    stats: RequestStats = field(default_factory=RequestStats)
    tokens: list[int] = field(init=False)
    """Prompt and every emitted token."""
    slot: int = -1
    target_length: int = 0
    """Positions of `tokens` in the target's cache: all but the last, or all of them while a step that
    takes the last one in is in flight (`BatchDecoder.overlap`)."""
    draft_length: int = 0
    """Positions of `tokens` the draft holds (the draft's own bookkeeping)."""
    speculate: bool = False
    logprobs: tuple[int, list[TokenLogprob]] | None = None
    """(top alternatives, sink): where each emitted token's log-probability goes, when asked for."""
    history: History | None = None
    """The context `proc` reads (set when the sequence joins, on the target's device)."""
    cancelled: bool = False
    done: bool = False
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    @property
    def produced(self) -> int:
        return len(self.tokens) - len(self.prompt)

    def room(self, k: int) -> int:
        """Proposals this round may hold: leave room for the token every round ends with."""
        return max(0, min(k, self.budget - self.produced - 1))


@dataclass
class Proposal:
    """A sequence's draft tokens for one round, and their distributions q (J, V) when sampling."""

    tokens: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None
    accepted: int = 0
    """How many of `tokens` the target accepted (set when the round settles)."""
    lookup: bool = False
    """Proposed by prompt lookup (not by a draft model): counted apart in `RequestStats`."""


@dataclass
class _InFlight:
    """A target-only step launched and not read yet (`BatchDecoder.overlap`)."""

    batch: list[Sequence]
    starts: list[int]
    """The position each row took in."""
    logits: torch.Tensor
    """(B, V): each row's."""
    features: torch.Tensor | None
    """(B, ·): the target's inputs of the draft's `feature_layers` at each row, for `Draft.observe` when
    the step is read (a feature-level draft's state follows what the host has read)."""
    tokens: torch.Tensor
    """(B,) long on the device: each row's token, argmax or drawn (-1: no distribution to draw from)."""
    host: torch.Tensor
    """(2, B) long on the host: whether each row's logits are finite, and `tokens`, once `ready` has passed."""
    ready: torch.cuda.Event | None
    """Recorded after the copy to `host` (None on a CPU, where `host` is ready at once)."""

    @classmethod
    def launch(
        cls,
        batch: list[Sequence],
        chunks: list[Chunk],
        logits: torch.Tensor,
        features: torch.Tensor | None,
        draws: tuple[list[int], torch.Tensor | None],
    ) -> _InFlight:
        """A launched step's tokens: each row's argmax, but the rows that drew (`draws`: rows, tokens); and the
        copy of them and of the rows' finiteness to the host started, behind the work queued so far."""
        tokens = logits.argmax(-1)
        members, drawn = draws
        if drawn is not None:
            tokens[upload(members, logits.device)] = drawn
        host = torch.stack([finite_rows(logits).long(), tokens])
        starts = [c.start for c in chunks]
        if host.device.type != "cuda":
            return cls(batch, starts, logits, features, tokens, host, None)
        ready = torch.cuda.Event()
        host = host.to("cpu", non_blocking=True)
        ready.record()
        return cls(batch, starts, logits, features, tokens, host, ready)


class BatchDecoder:
    """Target + optional draft + routing over a batch of at most `max_batch` sequences.

    Sequences occupy slots `0..n-1` of both caches, in `running` order (packed: see `slots.py`).

    `overlap` (on a GPU): a step where no sequence proposes and none reads its context
    (`Processing.contextual`) or asks for log-probabilities is launched before the previous such step is
    read: its rows' inputs are the previous step's tokens on the device (`SlotModel.forward`'s `last`),
    and the previous step is settled (a feature-level draft observing its pass then) while it runs.
    A sequence's tokens therefore reach the host one step later than they are drawn, and a sequence
    that ended (an end token) runs one step more than it needs, its row thrown away. Anything that
    needs what the host has not read yet (a draft's proposals, an `adaptive` probe, a request that reads
    its context) first settles the step in flight. Each sequence draws what it draws step by step:
    the same pass, the same generator, one draw a step.
    """

    def __init__(self, target: SlotModel, draft: Draft | None, routing: RoutingPolicy, max_batch: int) -> None:
        if routing.uses_draft and draft is None:
            raise ValueError(f"routing policy {routing.policy!r} needs a draft model")
        self.target = target
        self.draft = draft
        self.routing = routing
        self.max_batch = max_batch
        self.running: list[Sequence] = []
        self.overlap = target.device.type == "cuda"
        self._in_flight: _InFlight | None = None
        self.adaptive: AdaptiveChain | None = None
        if routing.adaptive and draft is not None:  # one `Adaptive` a proposer (`Draft.arms`)
            self.adaptive = AdaptiveChain([Adaptive(routing.max_speculative_tokens) for _ in draft.arms])

    @property
    def max_length(self) -> int:
        """Longest sequence (prompt + completion) every model holds, with room for a round's proposals."""
        lengths = [self.target.max_length]
        if self.draft is not None and self.routing.uses_draft:
            lengths.append(self.draft.max_length)
        return min(lengths) - self.routing.max_speculative_tokens - 1

    def reserve(self, positions: int, budget: int) -> int:
        """Allocate the caches for `max_batch` sequences (the padded steps' rows: the next power of two) of
        `positions` positions each (the next power of two, at most each cache's `max_length`), or of as many
        as fit in `budget` bytes (a power of two, at least `MIN_WIDTH`), so that serving does not grow
        them: on a GPU every growth drops the CUDA graphs, each captured again as its shape comes (under
        load, a stall of hundreds of milliseconds). A sequence longer than that still grows them. Returns
        the positions reserved a sequence."""
        caches = [self.target.cache] + (
            self.draft.caches() if self.draft is not None and self.routing.uses_draft else []
        )
        slots, width = pow2(self.max_batch), pow2(positions)
        while width > MIN_WIDTH and sum(c.nbytes(slots, min(width, c.max_length)) for c in caches) > budget:
            width //= 2
        for cache in caches:
            cache.reserve(slots, min(width, cache.max_length))
        return min(width, max(c.max_length for c in caches))

    # joining and leaving

    @torch.inference_mode()
    def add(self, seqs: list[Sequence]) -> None:
        """Prefill `seqs` together (one target pass, one draft pass), route them, emit their first tokens;
        they join the next step."""
        for seq in seqs:
            seq.slot = len(self.running)
            self.running.append(seq)
            prompt = upload(seq.prompt, self.target.device)  # no wait for the step in flight
            seq.history = History(seq.proc, self.target.vocab, prompt)
        drafting = self.draft is not None and self.routing.uses_draft
        chunks = [Chunk(seq.slot, 0, seq.prompt) for seq in seqs]
        try:
            logits, features = self.target.forward(chunks, self._layers())
            for seq in seqs:
                seq.target_length = len(seq.prompt)
            if self.draft is not None and drafting:  # after the target: a feature-level draft reads its pass
                if features is not None:
                    self.draft.observe(seqs, chunks, features)
                self._admit(seqs)
        except Exception as error:  # nothing to attribute to one request
            for seq in seqs:
                self._fail(seq, error)
            self._drop_finished()
            return
        proposals = [Proposal() for _ in seqs]
        chosen, finite = self._choices(seqs, proposals, logits, list(range(len(seqs) + 1)))
        for i, seq in enumerate(seqs):
            seq.stats.route = "speculative" if seq.speculate and self.adaptive is None else "target-only"
            self._settle_safely(seq, logits[i : i + 1], proposals[i], finite[i], chosen[i])
        self._drop_finished()

    def _admit(self, seqs: list[Sequence]) -> None:
        """Route the joining sequences. `adaptive` leaves a token-level draft's prefill to the first step
        that speculates on the sequence (its catch-up), so a replica that never speculates never runs the
        draft, and a probe pays only for the few sequences it drafts for (`_drafting`)."""
        if self.adaptive is not None and self.draft is not None and not self.draft.feature_layers:
            for seq in seqs:
                seq.speculate = True
            return
        assert self.draft is not None
        for seq, first in zip(seqs, self.draft.admit(seqs), strict=True):
            seq.stats.first_token_confidence = first
            seq.speculate = self.routing.speculate_request(first)

    def _fail(self, seq: Sequence, error: BaseException) -> None:
        log.warning("sequence failed: %s", error)
        seq.error, seq.done = error, True
        self.target.cache.clear(seq.slot)
        if self.draft is not None:
            self.draft.clear(seq.slot)

    def _drop_finished(self) -> None:
        """Remove finished/cancelled sequences, moving the last ones into their slots (stay packed)."""
        for seq in [s for s in self.running if s.done or s.cancelled]:
            if self.draft is not None and seq.error is None:
                self.draft.finish(seq)
            last = self.running.pop()
            if last is not seq:
                self.running[seq.slot] = last
                self.target.cache.move(last.slot, seq.slot)
                if self.draft is not None:
                    self.draft.move(last.slot, seq.slot)
                last.slot = seq.slot
            seq.slot = -1

    # one step

    @torch.inference_mode()
    def step(self) -> tuple[int, bool]:
        """One round for every running sequence: (batch size, whether the draft proposed)."""
        self._drop_finished()
        if not self.running:
            self._in_flight = None  # none of its rows is running: nothing to read
            return 0, False
        batch = list(self.running)
        ks = self._ks(len(batch))
        if self.overlap and not any(ks) and self._overlaps(batch):
            return self._overlapped(batch)
        if self._in_flight is not None:  # what follows reads what the host has not: settle it first
            self._land(self._in_flight)
            self._in_flight = None
            self._drop_finished()
            batch = list(self.running)
            if not batch:
                return 0, False
        drafting, limits = self._drafting(batch, ks)
        clock = StepClock(self._capture_seconds)
        if self.adaptive is not None and self.draft is not None:  # timed apart: see `Adaptive.record`
            self.draft.catch_up(drafting, *limits)
        clock.caught_up()
        proposals, pending = self._propose(batch, drafting, limits)
        speculative = any(p.tokens for p in proposals)
        width = 1 + max(len(p.tokens) for p in proposals)  # tokens a row in the target's pass
        if speculative and self.adaptive is not None:
            timed = max(self._arm(p) for p in proposals if p.tokens)  # the step is the last proposer's
            width = self.adaptive.width(len(batch), width, timed)
        chunks = [
            Chunk(s.slot, s.target_length, s.tokens[s.target_length :] + p.tokens, keep=len(p.tokens) + 1)
            for s, p in zip(batch, proposals, strict=True)
        ]
        try:
            logits, features = self.target.forward(chunks, self._layers(), tokens=width, last=pending)
        except Exception as error:  # the pass as a whole failed: nothing to attribute to one sequence
            for seq in batch:
                self._fail(seq, error)
            self._drop_finished()
            return len(batch), speculative
        for seq, chunk in zip(batch, chunks, strict=True):
            seq.target_length += len(chunk.ids)  # what is rejected is taken back as the round settles
        if features is not None and self.draft is not None:
            self.draft.observe(batch, chunks, features)
        offsets = [0]
        for chunk in chunks:
            offsets.append(offsets[-1] + chunk.keep)
        chosen, finite = self._choices(batch, proposals, logits, offsets, pending=pending)
        for i, (seq, proposal, lo, hi) in enumerate(zip(batch, proposals, offsets, offsets[1:], strict=False)):
            self._settle_safely(seq, logits[lo:hi], proposal, finite[i], chosen[i])
        if self.adaptive is not None:
            self._record(batch, width, proposals, *clock.stop())
        self._drop_finished()
        return len(batch), speculative

    def _overlaps(self, batch: list[Sequence]) -> bool:
        """Whether a target-only step over `batch` may run before the host has read the step before
        (`overlap`): none of its sequences reads its context or asks for log-probabilities."""
        return not any(seq.proc.contextual or seq.logprobs is not None for seq in batch)

    def _layers(self) -> tuple[int, ...]:
        """The target layers whose inputs a pass hands the draft (`Draft.feature_layers`), when it drafts."""
        return self.draft.feature_layers if self.draft is not None and self.routing.uses_draft else ()

    def _overlapped(self, batch: list[Sequence]) -> tuple[int, bool]:
        """A target-only step over `batch` launched on the tokens of the step in flight, still on the device
        (those that joined since bring theirs from the host); then the step in flight is settled while
        this one runs, and this one is in flight."""
        clock = StepClock(self._capture_seconds)
        previous, device = self._in_flight, self.target.device
        # a sequence that the step in flight takes to its budget runs once more (its row thrown away) at
        # its last position, not past it: the step attends to no more positions than its live rows need
        chunks = [
            Chunk(s.slot, min(s.target_length, len(s.prompt) + s.budget - 2), s.tokens[s.target_length :] or [0])
            for s in batch
        ]
        last = None
        if previous is not None:
            rows = {seq: row for row, seq in enumerate(previous.batch)}
            sources = upload([[rows.get(s, -1) for s in batch], [c.ids[-1] for c in chunks]], device)
            drawn = previous.tokens.clamp(min=0)[sources[0].clamp(min=0)]  # a row without a draw: any id
            last = torch.where(sources[0] >= 0, drawn, sources[1])[:, None]  # (B, 1): each row's last token
        self._in_flight = None
        proposals = [Proposal() for _ in batch]
        try:
            logits, features = self.target.forward(chunks, self._layers(), last=last)
        except Exception as error:  # the pass as a whole failed: nothing to attribute to one sequence
            if previous is not None:
                self._land(previous)
            for seq in batch:
                self._fail(seq, error)
            self._drop_finished()
            return len(batch), False
        for seq in batch:
            seq.target_length += 1
        offsets = list(range(len(batch) + 1))
        draws = self._draws(batch, proposals, logits, offsets)
        if len(draws[0]) == sum(not seq.proc.greedy for seq in batch):  # every row's token is on the device
            self._in_flight = _InFlight.launch(batch, chunks, logits, features, draws)
        if previous is not None:
            self._land(previous)
        if self._in_flight is None:  # a sampled row draws alone: read this step now (`_choices`)
            if features is not None and self.draft is not None:
                self.draft.observe(batch, chunks, features)
            chosen, finite = self._choices(batch, proposals, logits, offsets, draws)
            for i, seq in enumerate(batch):
                self._settle_safely(seq, logits[i : i + 1], proposals[i], finite[i], chosen[i])
        if self.adaptive is not None and previous is not None:  # a step's time once steps overlap: launch to read
            self._record(batch, 1, proposals, *clock.stop())
        self._drop_finished()
        return len(batch), False

    def _land(self, step: _InFlight) -> None:
        """Settle a step launched by `_overlapped`: its rows whose sequences are still running and not
        done (one that ended in the step before ran once more; one cancelled meanwhile has left)."""
        if step.ready is not None:
            step.ready.synchronize()  # this step's copy, not the step launched after it
        finite, tokens = step.host.tolist()
        live = [row for row, seq in enumerate(step.batch) if seq.slot >= 0 and not seq.done]
        if step.features is not None and self.draft is not None and live:  # in the slots they hold now
            seqs = [step.batch[row] for row in live]
            starts = [step.starts[row] for row in live]
            chunks = [
                Chunk(seq.slot, start, seq.tokens[start : start + 1]) for seq, start in zip(seqs, starts, strict=True)
            ]
            self.draft.observe(seqs, chunks, step.features[upload(live, step.features.device)])
        for row in live:
            seq = step.batch[row]
            self._settle_safely(seq, step.logits[row : row + 1], Proposal(), bool(finite[row]), [tokens[row]])

    def _capture_seconds(self) -> float:
        """Seconds the target and the draft spent capturing CUDA graphs so far."""
        return self.target.capture_seconds + (self.draft.capture_seconds if self.draft is not None else 0.0)

    def _drafting(self, batch: list[Sequence], ks: list[int]) -> tuple[list[Sequence], list[list[int]]]:
        """The sequences that propose this step, and for each proposer (`ks`: its proposals per sequence)
        how many each may propose. A proposer's `adaptive` probe (proposing while it is off) proposes for
        at most `Adaptive.probe_rows` of them, those the draft has seen most of: a draft that sat out
        catches up on what each emitted meanwhile, so a probe over the whole batch would cost a prefill
        of every running request, and its α and cost per proposal are read as well from a few rows."""
        rows = [s for s in batch if s.speculate and s.room(max(ks))] if any(ks) else []
        limits = [[s.room(k) for s in rows] for k in ks]
        if self.adaptive is None or len(rows) <= self.adaptive.probe_rows:
            return rows, limits
        lag = sorted(rows, key=lambda s: len(s.tokens) - s.draft_length)[: self.adaptive.probe_rows]
        for arm, k, limit in zip(self.adaptive.arms, ks, limits, strict=True):
            if k and not arm.speculating(len(batch)):
                limit[:] = [n if s in lag else 0 for s, n in zip(rows, limit, strict=True)]
        kept = [i for i in range(len(rows)) if any(limit[i] for limit in limits)]
        return [rows[i] for i in kept], [[limit[i] for i in kept] for limit in limits]

    def _ks(self, batch: int) -> list[int]:
        """Proposals per speculating sequence this step, for each proposer of the draft (`Draft.arms`):
        `maxSpeculativeTokens`, or `adaptive`'s choices; none above `maxSpeculativeBatch` (see
        `RoutingPolicy.speculates_at`)."""
        if self.draft is None:
            return [0]
        if not self.routing.uses_draft or not self.routing.speculates_at(batch):
            return [0] * len(self.draft.arms)
        if self.adaptive is not None:
            return self.adaptive.choose(batch)
        return [self.routing.max_speculative_tokens] * len(self.draft.arms)

    def _arm(self, proposal: Proposal) -> int:
        """The proposer of `proposal`: its index in `Draft.arms`."""
        assert self.draft is not None
        return self.draft.arms.index("lookup" if proposal.lookup else "draft")

    def _record(
        self, batch: list[Sequence], width: int, proposals: list[Proposal], seconds: float, catch_up: float
    ) -> None:
        """Tell `adaptive` what the step at `width` tokens a row cost, what the draft's catch-up before it
        cost, and how its proposals fared (`Proposal.accepted`, which `_settle` has just set; a failed
        sequence's proposals say nothing about the draft)."""
        assert self.adaptive is not None
        tallies = [Tally() for _ in self.adaptive.arms]
        for seq, proposal in zip(batch, proposals, strict=True):
            if not proposal.tokens:
                continue
            tally = tallies[self._arm(proposal)]
            tally.proposed += len(proposal.tokens)
            if seq.error is None:
                tally.accepted += proposal.accepted
                tally.rejected += proposal.accepted < len(proposal.tokens)
        rows = sum(bool(p.tokens) for p in proposals)
        self.adaptive.record(len(batch), rows, width, tallies, seconds, catch_up)

    def _choices(
        self,
        seqs: list[Sequence],
        proposals: list[Proposal],
        logits: torch.Tensor,
        offsets: list[int],
        draws: tuple[list[int], torch.Tensor | None] | None = None,
        pending: torch.Tensor | None = None,
    ) -> tuple[list[list[int] | None], list[bool]]:
        """What the batch can choose for its sequences at once, sequence i's rows being
        `logits[offsets[i]:offsets[i+1]]`, and whether those rows are all finite (`read_rows`).

        A greedy sequence whose processing reads no context (`Processing.contextual`) takes each row's
        argmax, read with the finiteness for the whole batch. On an accelerator (`draws_together`), a
        sampled one without proposals and without context draws its token together with every such row
        of the same processing (`_draws`), and the draws are read with the rest: one host round trip for
        the whole step (`draws`: those draws, when made already). The rest (None) choose in `_settle` (on a
        GPU, a host round trip or more each). Proposals still on the device (`pending`, `_propose`) are
        read in the same read, into the proposals' placeholders."""
        if draws is None:
            draws = self._draws(seqs, proposals, logits, offsets) if draws_together(logits.device) else ([], None)
        members, drawn = draws
        extra = [t for t in (drawn, None if pending is None else pending.flatten()) if t is not None]
        finite_all, best, tokens = read_rows(logits, torch.cat(extra) if extra else None)
        if pending is not None:
            k, proposed = pending.shape[1], tokens[len(members) :]
            for i, proposal in enumerate(proposals):
                proposal.tokens = proposed[i * k : (i + 1) * k]
            tokens = tokens[: len(members)]
        finite = [all(finite_all[lo:hi]) for lo, hi in itertools.pairwise(offsets)]
        chosen: list[list[int] | None] = [None] * len(seqs)
        for i, (seq, lo, hi) in enumerate(zip(seqs, offsets, offsets[1:], strict=False)):
            if seq.proc.greedy and not seq.proc.contextual and finite[i]:
                chosen[i] = best[lo:hi]
        for i, token in zip(members, tokens, strict=True):
            chosen[i] = [token]
        return chosen, finite

    def _draws(
        self, seqs: list[Sequence], proposals: list[Proposal], logits: torch.Tensor, offsets: list[int]
    ) -> tuple[list[int], torch.Tensor | None]:
        """Tokens drawn together for the sampled sequences without proposals and without context: each
        processing's rows at once (`draw_rows`), each row from its own generator. Returns the sequences
        drawn for and their tokens on the device, in that order. A row with non-finite logits draws too
        (its sequence then fails in `_settle_safely`); the uniform it takes from its generator is its
        last. A processing whose draw fails is left out (its sequences choose in `_settle`, where what
        fails fails its own sequence only)."""
        together: dict[Processing, list[int]] = {}
        for i, (seq, proposal) in enumerate(zip(seqs, proposals, strict=True)):
            if not (seq.proc.greedy or seq.proc.contextual or proposal.tokens):
                together.setdefault(seq.proc, []).append(i)
        members: list[int] = []
        drawn: list[torch.Tensor] = []
        for proc, group in together.items():
            rows = logits[upload([offsets[i] for i in group], logits.device)]  # (R, V)
            try:
                drawn.append(draw_rows(probabilities(rows, None, proc), [seqs[i].generator for i in group]))
            except Exception:
                log.warning("drawing %d rows together failed; each draws alone", len(group), exc_info=True)
                continue
            members += group
        return members, torch.cat(drawn) if drawn else None

    def _settle_safely(
        self, seq: Sequence, logits: torch.Tensor, proposal: Proposal, finite: bool, chosen: list[int] | None
    ) -> None:
        """`_settle`, failing this sequence only when its logits are not finite or settling raises."""
        try:
            if not finite:
                raise SequenceFailed("the target's logits are not finite for this sequence")
            self._settle(seq, logits, proposal, chosen)
        except Exception as error:  # this sequence only
            self._fail(seq, error)

    def _propose(
        self, batch: list[Sequence], drafting: list[Sequence], limits: list[list[int]]
    ) -> tuple[list[Proposal], torch.Tensor | None]:
        """Proposals for each sequence of `drafting`, up to its `limits` for each proposer (`_drafting`);
        none for the others. When every sequence of the batch proposes k tokens, greedily, from one
        proposer, the draft may leave them on the device (`Draft.greedy_round`): then each proposal holds
        k placeholders, and the device tokens (B, k) come too, for the target's pass to take in and
        `_choices` to read with its own tokens. The host does not wait for the draft's round before it
        sets up and launches that pass."""
        proposals = [Proposal() for _ in batch]
        if self.draft is None or not drafting:
            return proposals, None
        threshold = self.routing.threshold if self.routing.checks_each_token else None
        try:
            k = limits[0][0]
            if len(limits) == 1 and len(drafting) == len(batch) and threshold is None and set(limits[0]) == {k}:
                pending = self.draft.greedy_round(drafting, k)
                if pending is not None:
                    return [Proposal([0] * k) for _ in batch], pending
            made = self.draft.propose(drafting, limits[0], threshold, *limits[1:])
        except Exception as error:  # a draft failure costs speed, never output: decode target-only
            log.warning("draft proposal failed, decoding this step without it: %s", error)
            return proposals, None
        for seq, proposal in zip(drafting, made, strict=True):
            proposals[seq.slot] = proposal  # slots are the batch's rows (packed)
        return proposals, None

    def _settle(self, seq: Sequence, logits: torch.Tensor, proposal: Proposal, chosen: list[int] | None) -> None:
        """Accept a prefix of `proposal` from the target's logits (J+1, V), emit, and rewind the caches.
        `chosen`: the target's token at each of the J+1 positions, when the batch chose them (`_choices`)."""
        j = len(proposal.tokens)
        assert seq.history is not None
        if chosen is not None and not seq.proc.greedy:  # drawn with the batch: no proposals
            if chosen[0] < 0:
                raise ValueError(NO_DISTRIBUTION)
            accepted, token = 0, chosen[0]
        elif seq.proc.greedy:
            best = chosen
            if best is None:
                proposed = torch.tensor(proposal.tokens, dtype=torch.long, device=logits.device)
                best = greedy_tokens(logits, seq.history.rows(proposed, j + 1), seq.proc).tolist()  # (J+1,)
            accepted = 0
            while accepted < j and best[accepted] == proposal.tokens[accepted]:
                accepted += 1
            token = best[accepted]
        else:
            proposed = torch.tensor(proposal.tokens, dtype=torch.long, device=logits.device)
            p = probabilities(logits, seq.history.rows(proposed, j + 1), seq.proc)  # (J+1, V)
            n, x = speculative_accept(p, proposal.q, proposed, seq.generator)
            accepted, token = int(n), int(x)
        proposal.accepted = accepted
        new = [*proposal.tokens[:accepted], token]
        base = len(seq.tokens)
        seq.tokens.extend(new)
        seq.target_length -= j - accepted  # the rejected proposals (the pass wrote every one)
        if self.draft is not None and seq.speculate:
            self.draft.rewind(seq, base + accepted)
        seq.history.extend(new)
        if seq.logprobs is not None:
            record_logprobs(logits[: accepted + 1], new, *seq.logprobs)
        stats = seq.stats
        stats.rounds += 1
        stats.speculative_rounds += j > 0
        stats.proposed_tokens += j
        stats.accepted_tokens += accepted
        if proposal.lookup:
            stats.lookup_proposed_tokens += j
            stats.lookup_accepted_tokens += accepted
        if j:  # `adaptive` admits every sequence as target-only: its route is whether it ever speculated
            stats.route = "speculative"
        stop = seq.sink(new)
        seq.done = stop or seq.produced >= seq.budget


class Draft:
    """What the batch decoder asks of a draft (the seam for new kinds of drafts).

    A draft keeps its own per-sequence state, in the sequence's `slot` of whatever cache it holds and in
    `Sequence.draft_length`. `feature_layers`: after each target pass (the prefill before `admit`, each
    verify pass) the inputs of these target layers at every position it scored are handed to `observe`
    (feature-level drafts condition on them).
    """

    feature_layers: tuple[int, ...] = ()
    arms: tuple[str, ...] = ("draft",)
    """Its proposers in the order it tries them: "lookup" (prompt lookup), "draft" (a model); each
    `Proposal.lookup` says which one made it. `adaptive` decides for each (`AdaptiveChain`)."""
    max_length: int
    capture_seconds: float = 0.0
    """Seconds its model spent capturing CUDA graphs so far (a one-time cost of each new shape)."""

    def admit(self, seqs: list[Sequence]) -> list[float | None]:
        """Take in the prompts; return the draft's first-token confidences (for `first-token` routing; None
        from a draft without a distribution of its own)."""
        raise NotImplementedError

    def catch_up(self, seqs: list[Sequence], ks: list[int], then: list[int] | None = None) -> None:
        """Take in what `seqs` emitted while the draft sat out, but for what a round takes in itself in
        steady state (a token draft's last one or two tokens, a feature-level draft's up to k + 1:
        `ModelDraft.lag`), so that the round itself costs what it does in steady state: for those of them
        that `propose` with the same limits will draft for."""

    def propose(
        self, seqs: list[Sequence], ks: list[int], threshold: float | None, then: list[int] | None = None
    ) -> list[Proposal]:
        """Up to `ks[i]` tokens after `seqs[i].tokens`; with a `threshold`, a sequence stops proposing at
        the first position where the draft's confidence is below it (read before drawing that token).
        A draft of two proposers (`arms`) takes the second one's limits as `then` (None: `ks`)."""
        raise NotImplementedError

    def greedy_round(self, seqs: list[Sequence], k: int) -> torch.Tensor | None:
        """k greedy proposals after each of `seqs` (all decoding greedily, without context-dependent
        transforms), left on the device (len(seqs), k): the host reads them with the target's pass over
        them, which takes them in from there. None where this draft proposes otherwise (then `propose`)."""
        return None

    def observe(self, seqs: list[Sequence], chunks: list[Chunk], features: torch.Tensor) -> None:
        """The target's `feature_layers` inputs (Σ len(ids), len(layers)·E) of every position the pass
        scored, in chunk order."""

    def rewind(self, seq: Sequence, length: int) -> None:
        """Positions from `length` on are rejected."""
        seq.draft_length = min(seq.draft_length, length)

    def move(self, source: int, target: int) -> None:
        """The sequence in slot `source` now lives in slot `target`."""

    def caches(self) -> list[SlotCache]:
        """The per-sequence caches it keeps (`BatchDecoder.reserve` sizes them)."""
        return []

    def finish(self, seq: Sequence) -> None:
        """`seq` leaves the batch, finished or cancelled (not failed), its tokens final."""

    def clear(self, slot: int) -> None:
        """The sequence in `slot` failed: forget what it left."""
