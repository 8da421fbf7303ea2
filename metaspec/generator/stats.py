"""Statistics of teacher outputs and the quality gate on them.

Computed from the records alone (not from timers of a particular attempt), so a resumed shard and a
re-run of the merge give the same numbers. Throughput is per engine instance: generated examples
and tokens over the summed `generation_time` of the records, each record carrying its share of its
batch's wall time.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from metaspec.api.generation import GenerationStats

Body = dict[str, Any]

#: A run of one to `LOOP_MAX_PERIOD` words repeated back to back over at least `LOOP_MIN_WORDS`
#: words (and at least three times) is a degenerate loop, the failure mode of greedy decoding
#: without a repetition penalty that the seed hit.
LOOP_MAX_PERIOD = 30
LOOP_MIN_WORDS = 24
_WORD = re.compile(r"\w+|[^\w\s]")


def compute_stats(records: Sequence[Body], examples_total: int, min_natural_stop_rate: float) -> dict[str, Any]:
    """Statistics of a shard or of the whole output, with the quality check's verdict."""
    tokens = sorted(r["metadata"]["num_tokens_generated"] for r in records)
    seconds = sum(r["metadata"]["generation_time"] for r in records)
    stopped = sum(r["metadata"]["finish_reason"] == "stop" for r in records)
    n = len(records)
    natural = stopped / n if n else None
    stats: dict[str, Any] = {
        "examplesDone": n,
        "examplesTotal": examples_total,
        "naturalStopRate": natural,
        "truncatedRate": (n - stopped) / n if n else None,
        "meanOutputTokens": sum(tokens) / n if n else None,
        "medianOutputTokens": quantile(tokens, 0.5),
        "p95OutputTokens": quantile(tokens, 0.95),
        "maxOutputTokens": tokens[-1] if tokens else None,
        "generatedTokens": sum(tokens),
        "generationSeconds": seconds,
        "examplesPerSecond": n / seconds if seconds else None,
        "tokensPerSecond": sum(tokens) / seconds if seconds else None,
        "loopRate": sum(has_loop(r["output"]) for r in records) / n if n else None,
        "distinct4": _mean([distinct_ngrams(r["output"], 4) for r in records]),
        "byDomain": _by_domain(records),
        "minNaturalStopRate": min_natural_stop_rate,
        "qualityCheckPassed": natural is None or natural >= min_natural_stop_rate,
    }
    return stats


def generation_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The subset the operator copies into `status.stats` (`GenerationStats`, camelCase)."""
    fields = {info.alias or name for name, info in GenerationStats.model_fields.items()}
    return GenerationStats.model_validate({k: v for k, v in stats.items() if k in fields}).dump()


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def words(text: str) -> list[str]:
    """Words and punctuation marks: a tokenizer-free unit for repetition heuristics (not for counting tokens)."""
    return _WORD.findall(text.lower())


def has_loop(text: str) -> bool:
    """Whether some span of words repeats back to back long enough to be a degenerate loop."""
    tokens = words(text)
    for period in range(1, min(LOOP_MAX_PERIOD, len(tokens) // 3) + 1):
        run = 0  # consecutive positions i with tokens[i] == tokens[i + period]
        for i in range(len(tokens) - period):
            run = run + 1 if tokens[i] == tokens[i + period] else 0
            if run + period >= max(3 * period, LOOP_MIN_WORDS):
                return True
    return False


def distinct_ngrams(text: str, n: int) -> float | None:
    """Distinct n-grams over all n-grams of one output (distinct-n, Li et al. 2016); 1 is no repetition."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _by_domain(records: Sequence[Body]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Body]] = defaultdict(list)
    for r in records:
        groups[r.get("domain") or "unlabelled"].append(r)
    return {
        domain: {
            "examples": len(group),
            "naturalStopRate": sum(r["metadata"]["finish_reason"] == "stop" for r in group) / len(group),
            "meanOutputTokens": sum(r["metadata"]["num_tokens_generated"] for r in group) / len(group),
        }
        for domain, group in sorted(groups.items())
    }
