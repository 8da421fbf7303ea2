"""Which inputs a shard answers, and the names of the files it writes.

Shard `i` of `n` takes every input whose position in the input order is `i` modulo `n`: a
deterministic slice that also spreads domains (datasets are often grouped by domain, and output
lengths differ by domain) evenly over the shards.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shard_items(items: Sequence[T], index: int, count: int) -> list[T]:
    """The items of shard `index` of `count`, in input order."""
    check_shard(index, count)
    return list(items[index::count])


def check_shard(index: int, count: int) -> None:
    if count < 1:
        raise ValueError(f"the number of shards must be at least 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1} (the job has {count} shards)")


def shard_index_from_env(count: int) -> int:
    """The shard index of an Indexed Job's pod (`JOB_COMPLETION_INDEX`); 0 when there is only one shard."""
    value = os.environ.get("JOB_COMPLETION_INDEX")
    if value is None:
        if count == 1:
            return 0
        raise ValueError(f"{count} shards: pass --shard-index or set JOB_COMPLETION_INDEX (Indexed Jobs set it)")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"JOB_COMPLETION_INDEX={value!r} is not an integer") from None


def shard_file(index: int, count: int) -> str:
    """`shard-00003-of-00008.jsonl`."""
    return f"shard-{index:05d}-of-{count:05d}.jsonl"


def shard_stats_file(index: int, count: int) -> str:
    """`stats-shard-00003-of-00008.json`."""
    return f"stats-shard-{index:05d}-of-{count:05d}.json"


def partial_file(index: int, count: int) -> str:
    """Where a running shard uploads what it has so far; never listed in the manifest."""
    return f".partial/{shard_file(index, count)}"
