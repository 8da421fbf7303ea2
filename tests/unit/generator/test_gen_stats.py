from __future__ import annotations

import statistics

import pytest

from metaspec.api.generation import GenerationStats
from metaspec.generator.stats import compute_stats, distinct_ngrams, generation_stats, has_loop, quantile


def record(i: int, tokens: int, reason: str, output: str = "a fine answer", domain: str = "math") -> dict:
    return {
        "id": str(i),
        "input": "q",
        "output": output,
        "domain": domain,
        "difficulty": "easy",
        "metadata": {
            "teacher_model": "m",
            "generation_params": {},
            "num_tokens_generated": tokens,
            "finish_reason": reason,
            "generation_time": 0.5,
        },
    }


def test_rates_token_statistics_and_throughput() -> None:
    tokens = [3, 10, 7, 100, 20, 5, 8, 9, 12, 100]
    records = [
        record(i, n, "length" if n == 100 else "stop", domain="math" if i < 4 else "coding")
        for i, n in enumerate(tokens)
    ]
    stats = compute_stats(records, examples_total=12, min_natural_stop_rate=0.9)
    assert stats["examplesDone"] == 10 and stats["examplesTotal"] == 12
    assert stats["naturalStopRate"] == pytest.approx(0.8)
    assert stats["truncatedRate"] == pytest.approx(0.2)
    assert stats["meanOutputTokens"] == pytest.approx(statistics.mean(tokens))
    assert stats["medianOutputTokens"] == pytest.approx(statistics.median(tokens))
    assert stats["p95OutputTokens"] == pytest.approx(statistics.quantiles(tokens, n=20, method="inclusive")[-1])
    assert stats["examplesPerSecond"] == pytest.approx(10 / 5.0)
    assert stats["tokensPerSecond"] == pytest.approx(sum(tokens) / 5.0)
    assert stats["byDomain"]["math"] == {"examples": 4, "naturalStopRate": 0.75, "meanOutputTokens": 30.0}
    assert stats["qualityCheckPassed"] is False  # 0.8 < 0.9


def test_quality_passes_at_the_threshold_and_on_empty_shards() -> None:
    records = [record(i, 5, "stop") for i in range(9)] + [record(9, 64, "length")]
    assert compute_stats(records, 10, 0.9)["qualityCheckPassed"] is True
    empty = compute_stats([], 0, 0.9)
    assert empty["qualityCheckPassed"] is True and empty["naturalStopRate"] is None


def test_generation_stats_are_the_status_fields_in_camel_case() -> None:
    stats = compute_stats([record(0, 4, "stop")], 1, 0.9)
    subset = generation_stats(stats)
    assert set(subset) == {f.alias for f in GenerationStats.model_fields.values()}
    assert subset["examplesDone"] == 1 and subset["naturalStopRate"] == 1.0


def test_loops_are_detected_and_ordinary_text_is_not() -> None:
    assert has_loop("Sure. " + "I am a robot and I like it. " * 6)
    assert has_loop("the answer is " + "no " * 30)
    assert not has_loop("It is very, very, very good: a plain answer with a few repeated words, words.")
    prose = "Paris is the capital of France. It lies on the Seine. The city has about two million people."
    assert not has_loop(prose)


def test_distinct_ngrams() -> None:
    assert distinct_ngrams("a b c d e", 4) == 1.0
    assert distinct_ngrams("a b a b a b a b", 4) == pytest.approx(2 / 5)
    assert distinct_ngrams("too short", 4) is None


def test_quantile_interpolates() -> None:
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile([7], 0.95) == 7
    assert quantile([], 0.5) is None
