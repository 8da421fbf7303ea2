"""Prompt lookup: what it proposes, and that decoding with it stays exact in a mixed batch.

Exactness is checked as for model drafts (`test_batch.py`, tiny random Llamas with a vocabulary of 8,
where repeated n-grams are everywhere): greedy completions equal the target's `generate`, sampled ones
pass the G-test against the target's exact distribution, and a broken rejection rule fails it.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter

import pytest
import torch
from test_batch import CASES, VOCAB, check_greedy, decoder, greedy_jobs, mixed_batch, recorded, run
from test_speculative_sampling import ALPHA, exact_distribution, g_test_p_value

from metaspec.api.serving import PromptLookup
from metaspec.server.engine import speculative
from metaspec.server.engine.batch import Sequence
from metaspec.server.engine.drafts import ModelDraft
from metaspec.server.engine.lookup import Lookup, LookupDraft, LookupFirstDraft
from metaspec.server.engine.protocol import RequestStats
from metaspec.server.engine.routing import AdaptiveChain, RoutingPolicy, Tally
from metaspec.server.engine.sampling import Processing
from metaspec.server.engine.slots import SlotModel
from metaspec.server.engine.speculative import CausalLM, SpeculativeDecoder

pytestmark = pytest.mark.usefixtures("one_thread")

#: "1 2 3" followed by the tiny target's own greedy continuation of it, then "1 2 3" again: lookup
#: proposes that continuation, which the target accepts about 60% of the time when sampling at t = 1, so
#: acceptances, rejections and residual draws all occur (the broken-rule test fails without them).
PROMPT = [1, 2, 3, 4, 4, 3, 1, 2, 3]


def lookup(min_match: int = 1, max_match: int = 3, vocab: int = VOCAB, history: int = 0) -> LookupDraft:
    spec = PromptLookup(min_match=min_match, max_match=max_match, history=history)
    return LookupDraft(spec, vocab, 64, torch.device("cpu"))


def finished(draft: LookupDraft, tokens: list[int]) -> None:
    draft.finish(Sequence(tokens, Processing(), 16, lambda new: False))


def proposed(draft: LookupDraft, tokens: list[int], k: int, proc: Processing | None = None) -> list[int]:
    seq = Sequence(tokens, proc or Processing(), 16, lambda new: False)
    return draft.propose([seq], [k], None)[0].tokens


@pytest.mark.parametrize(
    ("tokens", "k", "expected"),
    [
        ([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 3, [7, 5, 1]),  # the latest earlier occurrence
        ([5, 3, 8, 2, 3, 6, 5, 3], 3, [8, 2, 3]),  # "5 3" beats the later "3": the longest match wins
        ([4, 5, 4, 5], 3, [4, 5]),  # what follows the match, up to the sequence's end
        ([1, 2, 3, 4], 3, []),  # nothing repeats
        ([7], 3, []),
    ],
)
def test_proposes_what_followed_the_latest_longest_match(tokens: list[int], k: int, expected: list[int]) -> None:
    assert proposed(lookup(1, 2), tokens, k) == expected


def test_min_match_ignores_shorter_repeats_and_max_match_bounds_the_key() -> None:
    assert proposed(lookup(2, 3), [6, 1, 2, 3, 1], 2) == []  # only "1" repeats
    # "4 1 2 3" repeats, but keys are at most 2 long: the latest "2 3" is followed by 0
    assert proposed(lookup(1, 2), [4, 1, 2, 3, 6, 2, 3, 0, 4, 1, 2, 3], 1) == [0]
    assert proposed(lookup(1, 4), [4, 1, 2, 3, 6, 2, 3, 0, 4, 1, 2, 3], 1) == [6]


def test_the_index_follows_the_sequence_as_it_grows() -> None:
    draft = lookup(1, 2)
    seq = Sequence([3, 1, 4], Processing(), 16, lambda new: False)
    assert draft.propose([seq], [2], None)[0].tokens == []
    seq.tokens += [1, 5]  # "1" now followed by 4 (at 1) and by 5 (at 3), "5" is new
    assert draft.propose([seq], [2], None)[0].tokens == []
    seq.tokens += [3, 1]  # "3 1" seen at the start
    assert draft.propose([seq], [3], None)[0].tokens == [4, 1, 5]


def test_sampled_proposals_carry_their_one_hot_distribution() -> None:
    made = lookup(1, 2, vocab=10).propose(
        [Sequence([2, 9, 4, 2, 9], Processing(1.0), 16, lambda new: False)], [2], None
    )[0]
    assert made.tokens == [4, 2]
    assert made.q is not None and made.q.shape == (2, 10)
    assert made.q.sum(-1).tolist() == [1.0, 1.0] and made.q[0, 4] == 1 and made.q[1, 2] == 1


def test_history_lends_finished_requests_continuations() -> None:
    draft = lookup(1, 2, history=100)
    finished(draft, [5, 6, 1, 2, 3])
    assert proposed(draft, [7, 1, 2], 3) == [3]  # not past the end of the finished request
    assert proposed(draft, [7, 6, 1], 3) == [2, 3]
    assert proposed(draft, [7, 0, 6, 1, 4, 7, 0], 2) == [6, 1]  # its own "7 0" first
    assert proposed(draft, [7, 0, 5, 1, 7, 6, 1], 2) == [2, 3]  # a longer match elsewhere beats its own "1"
    assert proposed(lookup(1, 2), [7, 6, 1], 3) == []  # no history: its own tokens only
    no_history = lookup(1, 2)
    finished(no_history, [5, 6, 1, 2, 3])
    assert proposed(no_history, [7, 6, 1], 3) == []


def test_history_keeps_the_latest_requests_only() -> None:
    draft = lookup(1, 1, history=10)
    for first in range(8):  # requests of 4 tokens (5 with their end): the newest 2-3 fit in 10-20
        finished(draft, [first, 40 + first, 41, 42])
    assert proposed(draft, [0], 2) == [] and proposed(draft, [5], 2) == []
    assert proposed(draft, [7], 2) == [47, 41]
    assert len(draft.lookup._past) <= 20


ROUTINGS = {"always": RoutingPolicy("always", 0.5, 3), "adaptive": RoutingPolicy("adaptive", 0.5, 3)}


@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.parametrize(("penalty", "history"), [(1.0, 0), (1.3, 0), (1.0, 64)])
@pytest.mark.usefixtures("any_k")
def test_greedy_with_lookup_in_a_batch_equals_target_greedy(
    name: str, penalty: float, history: int, tiny_target
) -> None:
    dec = decoder(tiny_target, lookup(history=history), ROUTINGS[name], max_batch=5)
    proposals, accepted = check_greedy(tiny_target, dec, penalty)
    assert 0 < accepted < proposals  # acceptances and rejections both happened


@pytest.mark.parametrize(("case", "history"), [("always-t1", 0), ("adaptive-penalty", 0), ("always-t1", 256)])
@pytest.mark.usefixtures("any_k")
def test_sampling_with_lookup_in_a_mixed_batch_matches_target_distribution(
    case: str, history: int, tiny_target
) -> None:
    """With `history`, a request's proposals also come from the requests that finished before it."""
    routing, proc = CASES[case]
    counts = mixed_batch(tiny_target, lookup(history=history), routing, proc, samples=1500, prompt=PROMPT)
    assert sum(counts.values()) == 1500
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc, PROMPT)) >= ALPHA


def test_a_broken_rule_is_detected_with_lookup(tiny_target, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawing from p instead of the residual after a rejected proposal favours the proposed token."""
    monkeypatch.setattr(speculative, "residual_distribution", lambda p, q: p)
    routing, proc = CASES["always-t1"]
    counts = mixed_batch(tiny_target, lookup(), routing, proc, samples=1500, prompt=PROMPT)
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc, PROMPT)) < ALPHA


@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.usefixtures("any_k")
def test_a_draft_behind_lookup_drafts_as_it_would_alone(name: str, tiny_target) -> None:
    """A draft equal to the target, behind lookup: every token it proposes is accepted, in sequences where
    lookup's rounds (some proposals rejected) came between its own, so it follows what they emitted."""
    both = LookupFirstDraft(lookup(min_match=2), ModelDraft(SlotModel(tiny_target, VOCAB, 64)))
    drafted, looked_up = recorded(both.model), recorded(both.lookup)
    run(decoder(tiny_target, both, ROUTINGS[name], max_batch=5), greedy_jobs(1.0))
    assert drafted and all(p.accepted == len(p.tokens) for p in drafted)
    assert any(p.accepted < len(p.tokens) for p in looked_up)


def test_adaptive_hands_each_proposer_its_own_proposals(tiny_target, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `adaptive`, lookup and the draft behind it are two arms (`AdaptiveChain`): each step's
    proposals are tallied to the proposer that made them, and the step's time goes to the draft's arm
    exactly when the draft proposed in it, to lookup's when lookup alone did."""
    both = LookupFirstDraft(lookup(min_match=2), ModelDraft(SlotModel(tiny_target, VOCAB, 64)))
    drafted, looked_up = recorded(both.model), recorded(both.lookup)
    dec = decoder(tiny_target, both, ROUTINGS["adaptive"], max_batch=5)
    assert dec.adaptive is not None and len(dec.adaptive.arms) == 2
    steps: list[list[Tally]] = []
    timed: list[int | None] = []
    record = AdaptiveChain.record

    def spy(self: AdaptiveChain, batch: int, rows: int, width: int, tallies: list[Tally], *rest: float) -> None:
        steps.append(tallies)

        def times() -> list[dict]:
            return [{key: dict(b.times) for key, b in arm.buckets.items()} for arm in self.arms]

        before = times()
        record(self, batch, rows, width, tallies, *rest)
        changed = [a for a, (old, new) in enumerate(zip(before, times(), strict=True)) if old != new]
        timed.append(changed[0] if changed else None)
        assert len(changed) <= 1

    monkeypatch.setattr(AdaptiveChain, "record", spy)
    run(dec, greedy_jobs(1.0))
    for arm, made in enumerate((looked_up, drafted)):
        assert sum(t[arm].proposed for t in steps) == sum(len(p.tokens) for p in made) > 0
        assert sum(t[arm].accepted for t in steps) == sum(p.accepted for p in made)
    assert any(arm is not None for arm in timed)
    for tallies, arm in zip(steps, timed, strict=True):
        if arm is not None:  # a width's time moved: the step's last proposer's
            assert tallies[arm].proposed and not any(t.proposed for t in tallies[arm + 1 :])


def test_a_drafts_probe_behind_lookup_leaves_lookup_every_sequence(
    tiny_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`adaptive` with lookup on and the draft off: the draft's probe drafts (and catches up) for at most
    `probe_rows` sequences, while lookup still proposes for every sequence where it finds a match. With
    both on, the draft catches up on the sequences lookup leaves it, never on those lookup serves: a
    catch-up is then part of the draft's own rounds (`Adaptive.record`)."""
    both = LookupFirstDraft(lookup(min_match=1), ModelDraft(SlotModel(tiny_target, VOCAB, 64)))
    drafted, looked_up = recorded(both.model), recorded(both.lookup)
    dec = decoder(tiny_target, both, ROUTINGS["adaptive"], max_batch=6)
    assert dec.adaptive is not None
    lookup_arm, draft_arm = dec.adaptive.arms
    monkeypatch.setattr(dec.adaptive, "choose", lambda batch: [2, 2])
    monkeypatch.setattr(lookup_arm, "speculating", lambda batch: True)
    monkeypatch.setattr(draft_arm, "probe_rows", 2)

    def first(prompt: list[int]) -> int:
        return int(tiny_target(torch.tensor([prompt])).logits[0, -1].argmax())

    # lookup finds nothing after these: their first token is not in the prompt (no match of one token)
    unmatched = [list(p) for p in itertools.permutations(range(VOCAB), 2) if first(list(p)) not in p][:3]
    everywhere = list(range(VOCAB)) * 2  # every token follows an earlier occurrence: lookup always matches
    seqs = [Sequence(p, Processing(), 8, lambda tokens: False) for p in [*unmatched, everywhere, everywhere]]
    dec.add(seqs)
    dec.step()
    assert len(looked_up) == 2 and all(p.tokens for p in looked_up)  # both long sequences, not limited
    assert len(drafted) == 2  # two of the three the draft would propose for
    assert sorted(s.draft_length > 0 for s in seqs[:3]) == [False, True, True]
    assert all(s.draft_length == 0 for s in seqs[3:])
    monkeypatch.setattr(draft_arm, "speculating", lambda batch: True)
    dec.step()
    assert all(s.draft_length == 0 for s in seqs[3:])  # lookup served them again: no catch-up


def sequential(tiny_target, routing: RoutingPolicy, history: int = 0) -> SpeculativeDecoder:
    """The batch-1 decoder (what `maxConcurrency: 1` runs, compiled on a GPU) with prompt lookup."""
    settings = PromptLookup(min_match=1, max_match=3, history=history)
    return SpeculativeDecoder(CausalLM(tiny_target, VOCAB), None, routing, Lookup(settings, VOCAB, torch.device("cpu")))


@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.usefixtures("any_k")
def test_greedy_with_lookup_one_at_a_time_equals_target_greedy(name: str, tiny_target) -> None:
    dec = sequential(tiny_target, ROUTINGS[name], history=64)
    total = RequestStats()
    for prompt in ([*PROMPT, *p] for p in itertools.islice(itertools.permutations(range(VOCAB), 2), 12)):
        expected = tiny_target.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :]
        stats = RequestStats()
        got = [t for chunk in dec.decode(prompt, Processing(), 12, stats, None) for t in chunk]
        assert got[: len(expected)] == expected.tolist(), (prompt, stats)
        assert (stats.lookup_proposed_tokens, stats.lookup_accepted_tokens) == (
            stats.proposed_tokens,
            stats.accepted_tokens,
        )  # every proposal is lookup's
        total.proposed_tokens += stats.proposed_tokens
        total.accepted_tokens += stats.accepted_tokens
    assert 0 < total.accepted_tokens < total.proposed_tokens


def test_sampling_with_lookup_one_at_a_time_matches_target_distribution(tiny_target) -> None:
    routing, proc = CASES["always-t1"]
    dec = sequential(tiny_target, routing)
    generator = torch.Generator().manual_seed(7)
    counts: Counter = Counter()
    total = RequestStats()
    for _ in range(1500):
        tokens = [t for chunk in dec.decode(PROMPT, proc, 3, total, generator) for t in chunk]
        counts[tuple(tokens)] += 1
    assert 0 < total.accepted_tokens < total.proposed_tokens
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc, PROMPT)) >= ALPHA


def test_adaptive_leaves_compiling_out_of_its_step_times(tiny_target, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `compile` a shape's first calls compile and record a CUDA graph instead of replaying it:
    seconds on a GPU, which as a step's time held `adaptive` off. Here torch.compile is stood in for by
    the eager forward over the same static cache, stalled on each shape's first `WARM_CALLS` calls (a
    real compile takes minutes on this CPU; `test_compiled_cuda.py` compiles for real). No step time
    and no probe's overhead that `adaptive` records holds a stall; `capture_seconds` holds them all."""
    stall = 0.5
    lm = CausalLM(tiny_target, VOCAB, static_cache_len=64)
    calls: Counter[int] = Counter()

    def compiled(**kwargs: object) -> object:
        length = kwargs["input_ids"].shape[1]  # type: ignore[attr-defined]
        calls[length] += 1
        if calls[length] <= CausalLM.WARM_CALLS:
            time.sleep(stall)
        return tiny_target(**kwargs)

    lm._compiled = compiled
    settings = PromptLookup(min_match=1, max_match=3)
    dec = SpeculativeDecoder(lm, None, ROUTINGS["adaptive"], Lookup(settings, VOCAB, torch.device("cpu")))
    assert dec.adaptive is not None
    timed: list[float] = []
    record = dec.adaptive.record
    monkeypatch.setattr(dec.adaptive, "record", lambda *a: timed.extend(a[-2:]) or record(*a))
    stats = RequestStats()
    for prompt in ([*PROMPT, *p] for p in itertools.islice(itertools.permutations(range(VOCAB), 2), 4)):
        for _ in dec.decode(prompt, Processing(), 10, stats, None):
            pass
    assert stats.proposed_tokens > 0 and sorted(calls) == [1, lm.compile_max_tokens]  # steps and probes
    assert lm.capture_seconds >= stall * sum(min(n, CausalLM.WARM_CALLS) for n in calls.values())
    assert timed and max(timed) < stall / 2


def test_one_at_a_time_history_keeps_finished_and_stopped_requests_not_failed_ones(
    tiny_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    dec = sequential(tiny_target, ROUTINGS["always"], history=64)
    assert dec.lookup is not None
    for _ in dec.decode([1, 2, 3], Processing(), 4, RequestStats(), None):
        pass
    assert len(dec.lookup._past) == 3 + 4 + 1  # prompt, output, end mark
    rounds = dec.decode([4, 5, 6], Processing(), 8, RequestStats(), None)
    first = next(rounds)
    rounds.close()  # a stop string or a cancelled request: what was emitted is final
    assert dec.lookup._past[-len(first) - 4 : -1] == [4, 5, 6, *first]
    before = list(dec.lookup._past)
    rounds = dec.decode([7, 1, 7], Processing(), 8, RequestStats(), None)
    next(rounds)

    def fail(*args: object, **kwargs: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(dec.target, "forward", fail)  # the decoder fails mid-request
    with pytest.raises(ValueError, match="boom"):
        next(rounds)
    assert dec.lookup._past == before
