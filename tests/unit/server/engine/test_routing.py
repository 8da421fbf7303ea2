"""`adaptive` routing's estimator against scripted steps: known costs and acceptance, no models.

A step's time is scripted as Leviathan's cost model, t = t_plain · (1 + (w − 1)·c) for a verify pass of
w tokens a row (c: a proposal's cost relative to a target step, here a function of the batch size and of
w, so that a pass of 5 tokens may cost less than one of 3, as on some CPUs), and each proposal is
accepted with probability α given the ones before it were. Throughput is tokens over scripted time, so `adaptive`
can be held to the goal itself: never below target-only, close to the best fixed k where one pays.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from metaspec.server.engine.routing import Adaptive, AdaptiveChain, Tally, _Bucket, expected_tokens, speedup

PLAIN = 0.01  # seconds per sequence of a target-only step


def run(
    steps: int,
    alpha: Callable[[int], float],
    cost: Callable[[int, int], float],
    batch: Callable[[int], int] = lambda step: 1,
    seed: int = 0,
    catch_up: float = 0.0,
) -> tuple[list[int], float]:
    """Drive a fresh `Adaptive(5)` for `steps` steps (`alpha` and `batch` of the step number, `cost` of
    the batch size and the verify pass's tokens a row, padded as `Adaptive.width` says; a speculating
    step after a target-only one first costs `catch_up` target steps, the draft catching up): the k
    chosen at each step, and the throughput relative to target-only."""
    adaptive, rng = Adaptive(5), random.Random(seed)
    chosen, tokens, seconds = [], 0, 0.0
    for step in range(steps):
        b = batch(step)
        k = adaptive.choose(b)
        width = adaptive.width(b, k + 1) if k else 1
        overhead = PLAIN * b * catch_up if k and not (chosen and chosen[-1]) else 0.0
        seconds += overhead
        accepted = rejected = 0
        for _ in range(b if k else 0):
            n = 0
            while n < k and rng.random() < alpha(step):
                n += 1
            accepted, rejected = accepted + n, rejected + (n < k)
        took = PLAIN * b * (1 + (width - 1) * cost(b, width))
        noisy = took * rng.uniform(0.95, 1.05)  # timing noise
        adaptive.record(b, b if k else 0, width, k * b, accepted, rejected, noisy, overhead)
        chosen.append(k)
        tokens, seconds = tokens + b + accepted, seconds + took
    return chosen, tokens * PLAIN / seconds


def best_fixed(alpha: float, cost: float) -> float:
    return max(speedup(alpha, k, cost) for k in range(1, 6))


def test_expected_speedup_is_leviathans() -> None:
    assert expected_tokens(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens(1.0, 4) == 5
    assert speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8**5) / (0.2 * 1.4))


@pytest.mark.parametrize("batch", [1, 16])
def test_a_bad_draft_is_switched_off(batch: int) -> None:
    assert best_fixed(0.2, 0.4) < 1
    chosen, gain = run(2000, alpha=lambda s: 0.2, cost=lambda b, k: 0.4, batch=lambda s: batch)
    assert gain >= 0.99  # the probes and the first steps cost under 1%
    assert sum(k > 0 for k in chosen[100:]) <= 40


def test_probes_wait_until_the_drafts_catch_up_is_paid_for() -> None:
    """Each probe first catches the draft up on the request so far (here 10 target steps' worth): the
    probes still cost about `probe_budget` of the time, not one catch-up per doubling interval."""
    chosen, gain = run(3000, alpha=lambda s: 0.0, cost=lambda b, k: 0.4, catch_up=10)
    assert sum(k > 0 for k in chosen) <= 4
    assert gain >= 0.98


def test_the_probe_budget_is_the_replicas_not_each_batch_sizes() -> None:
    """Under load the batch size moves between ranges (here 1 to 16, a new one every step): the
    probes of all ranges together keep to the budget, rather than each range probing on its own."""
    chosen, gain = run(3000, alpha=lambda s: 0.0, cost=lambda b, k: 0.4, batch=lambda s: 1 + s % 16, catch_up=10)
    assert sum(k > 0 for k in chosen) <= 6
    assert gain >= 0.98


def test_one_lucky_probe_does_not_switch_a_fresh_replica_on_at_long_rounds() -> None:
    """α = 0.3 does not pay at c = 0.4. A fresh replica's first probe, at the widest round, has 3 of its
    5 proposals accepted: that moves α part of the way, to rounds of one proposal at most, not five."""
    adaptive = Adaptive(5)
    assert adaptive.choose(1) == 0
    adaptive.record(1, 0, 1, 0, 0, 0, PLAIN)
    assert adaptive.choose(1) == 5
    adaptive.record(1, 1, 6, 5, 3, 1, PLAIN * (1 + 5 * 0.4))
    assert adaptive.choose(1) <= 1
    gains = [run(350, alpha=lambda s: 0.3, cost=lambda b, k: 0.4, seed=seed, catch_up=0.65)[1] for seed in range(100)]
    assert min(gains) >= 0.97


def test_widths_not_measured_are_predicted_from_those_that_were() -> None:
    """Between measured widths, the line through its neighbours (a one-token pass costs one target step);
    beyond the widest measured, that one's cost per proposal."""
    bucket = _Bucket(times={5: 1.6})
    assert bucket.step_time(5) == pytest.approx(1.6)
    assert bucket.step_time(3) == pytest.approx(1.3)
    assert bucket.step_time(6) == pytest.approx(1.75)
    bucket.times[2] = 1.66
    assert bucket.step_time(4) == pytest.approx(1.66 + (1.6 - 1.66) * 2 / 3)
    assert _Bucket().step_time(2) is None


def test_a_step_is_padded_to_a_wider_pass_only_where_one_measured_faster() -> None:
    bucket = _Bucket(times={2: 1.66, 3: 2.4, 4: 2.0, 5: 1.75})
    assert bucket.cheapest(3, 6) == 5 and bucket.cheapest(2, 6) == 2 and bucket.cheapest(3, 4) == 4
    assert bucket.cheapest(6, 6) == 6  # nothing wider measured
    line = _Bucket(times={2: 1.2, 3: 1.4, 4: 1.6, 5: 1.8})
    assert [line.cheapest(w, 6) for w in range(2, 7)] == [2, 3, 4, 5, 6]
    adaptive = Adaptive(5)
    adaptive.buckets[0] = _Bucket(plain=PLAIN, times=dict(bucket.times), on=True)
    assert adaptive.width(1, 3) == 5
    adaptive.buckets[0].on = False  # a probe runs at the width it asks for: that is what it measures
    assert adaptive.width(1, 3) == 3


#: Relative step times of a 2-core CPU's verify passes by tokens a row (SmolLM2, docs/benchmarks.md): a
#: pass of 3 or 4 tokens costs more than one of 5, so no line through a 2-token pass predicts the rounds
#: that pay.
CPU_STEP = {1: 1.0, 2: 1.66, 3: 2.4, 4: 2.0, 5: 1.75, 6: 1.75}


def test_step_times_are_measured_per_width_where_a_line_would_miss_the_rounds_that_pay() -> None:
    """While speculation is off, the probes' budget makes α slow to learn: a run whose first probes are
    unlucky can stay off for hundreds of steps. So the median over seeds is held to the best fixed k,
    and every seed to target-only."""
    cost = lambda b, width: (CPU_STEP[width] - 1) / (width - 1) if width > 1 else 0.0  # noqa: E731
    best = max(expected_tokens(0.6, k) / min(CPU_STEP[w] for w in range(k + 1, 7)) for k in range(1, 6))
    assert expected_tokens(0.6, 1) / CPU_STEP[2] < 1 < 1.3 < best  # k = 1 alone says: never speculate
    runs = [run(1000, alpha=lambda s: 0.6, cost=cost, seed=seed) for seed in range(10)]
    gains = sorted(gain for _, gain in runs)
    assert gains[0] >= 0.97 and gains[len(gains) // 2] >= 0.95 * best
    chosen = [k for ks, _ in runs for k in ks[500:]]
    assert sum(k >= 4 for k in chosen) >= 0.75 * len(chosen)


@pytest.mark.parametrize("batch", [1, 16])
def test_a_good_draft_speculates_with_a_long_round(batch: int) -> None:
    chosen, gain = run(1000, alpha=lambda s: 0.9, cost=lambda b, k: 0.05, batch=lambda s: batch)
    assert gain >= 0.95 * best_fixed(0.9, 0.05)
    assert sum(k == 0 for k in chosen[100:]) <= 10 and min(k for k in chosen[100:] if k) >= 4


def test_a_draft_that_starts_paying_is_noticed_and_one_that_stops_is_dropped() -> None:
    good = lambda s: 0.9 if 500 <= s < 1500 else 0.2  # noqa: E731
    assert best_fixed(0.2, 0.3) < 1 < best_fixed(0.9, 0.3)
    chosen, _ = run(2000, alpha=good, cost=lambda b, k: 0.3)
    assert sum(k > 0 for k in chosen[400:500]) <= 10
    assert sum(k > 0 for k in chosen[1100:1500]) >= 390  # on within two probe intervals (≤ 512 steps)
    assert sum(k > 0 for k in chosen[1700:]) <= 40  # off again, but for a probe that got lucky


def test_speculation_stops_where_the_batch_makes_proposals_expensive() -> None:
    """A proposal costs 0.05 of a step at batch 1 and a whole one at batch 16 (a compute-bound verify)."""
    assert best_fixed(0.7, 1.0) < 1 < best_fixed(0.7, 0.05)
    batch = lambda s: 1 if (s // 200) % 2 == 0 else 16  # noqa: E731
    chosen, _ = run(2000, alpha=lambda s: 0.7, cost=lambda b, k: 0.05 if b == 1 else 1.0, batch=batch)
    small = [k for s, k in enumerate(chosen) if s >= 400 and batch(s) == 1]
    large = [k for s, k in enumerate(chosen) if s >= 400 and batch(s) == 16]
    assert sum(k > 0 for k in small) >= 0.95 * len(small)
    assert sum(k > 0 for k in large) <= 0.05 * len(large)


def run_chain(
    steps: int, found: float, alphas: tuple[float, float], draft_cost: float, seed: int = 0, fixed=None
) -> tuple[list[list[int]], float]:
    """Drive prompt lookup and a draft behind it at batch 1 for `steps` steps: lookup finds a continuation
    at a step with probability `found` (as long as it is asked for), the draft proposes where it found
    none; proposals are accepted with probability `alphas` (lookup's, the draft's) given the ones before
    were. A step costs its verify pass (`CPU_STEP`'s width) plus `draft_cost` target steps per draft
    proposal. `fixed`: the ks of every step instead of `AdaptiveChain`'s. The ks and the throughput
    relative to target-only."""
    chain, rng = AdaptiveChain([Adaptive(5), Adaptive(5)]), random.Random(seed)
    chosen, tokens, seconds = [], 0, 0.0
    for _ in range(steps):
        ks = list(fixed) if fixed else chain.choose(1)
        tallies = [Tally(), Tally()]
        arm = 0 if ks[0] and rng.random() < found else 1 if ks[1] else None
        width, accepted = 1, 0
        if arm is not None:
            k = ks[arm]
            while accepted < k and rng.random() < alphas[arm]:
                accepted += 1
            tallies[arm] = Tally(k, accepted, int(accepted < k))
            width = chain.width(1, k + 1, arm) if not fixed else k + 1
        took = PLAIN * (CPU_STEP[width] + (ks[1] * draft_cost if arm == 1 else 0))
        if not fixed:
            chain.record(1, int(arm is not None), width, tallies, took * rng.uniform(0.95, 1.05))
        chosen.append(ks)
        tokens, seconds = tokens + 1 + accepted, seconds + took
    return chosen, tokens * PLAIN / seconds


def test_each_proposer_decides_for_itself() -> None:
    """Lookup that pays (its proposals accepted at α = 0.75, found at 60% of the steps) in front of a draft
    that does not (α = 0.1 at 0.3 target steps a proposal): lookup stays on and the draft off, so the
    chain does as well as lookup alone, where one estimate for both would average their acceptance.
    The reverse — a lookup whose matches are poor, a draft that pays — turns lookup off."""
    best = max(run_chain(3000, 0.6, (0.75, 0.1), 0.3, fixed=(k, j))[1] for k in range(6) for j in range(6))
    alone = max(run_chain(3000, 0.6, (0.75, 0.1), 0.3, fixed=(k, 0))[1] for k in range(1, 6))
    assert alone > 1.2 and alone >= best - 0.01  # the draft adds nothing
    for seed in range(5):
        chosen, gain = run_chain(3000, 0.6, (0.75, 0.1), 0.3, seed=seed)
        assert gain >= 0.93 * alone
        late = chosen[1000:]
        assert sum(ks[0] > 0 for ks in late) >= 0.95 * len(late) and sum(ks[1] > 0 for ks in late) <= 40
    draft_alone = max(run_chain(3000, 0.6, (0.1, 0.9), 0.05, fixed=(0, k))[1] for k in range(1, 6))
    assert draft_alone > 1.5
    for seed in range(5):
        chosen, gain = run_chain(3000, 0.6, (0.1, 0.9), 0.05, seed=seed)
        assert gain >= 0.93 * draft_alone
        late = chosen[1000:]
        assert sum(ks[0] > 0 for ks in late) <= 40 and sum(ks[1] > 0 for ks in late) >= 0.95 * len(late)
