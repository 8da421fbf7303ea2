from __future__ import annotations

import pytest

from metaspec.generator.sharding import (
    check_shard,
    partial_file,
    shard_file,
    shard_index_from_env,
    shard_items,
    shard_stats_file,
)


@pytest.mark.parametrize(("items", "count"), [(10, 1), (10, 3), (7, 7), (3, 5), (100, 8)])
def test_shards_cover_every_input_exactly_once(items: int, count: int) -> None:
    inputs = [f"id-{i}" for i in range(items)]
    shards = [shard_items(inputs, i, count) for i in range(count)]
    flat = [x for shard in shards for x in shard]
    assert sorted(flat) == sorted(inputs)
    assert len(flat) == len(set(flat))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    for shard in shards:  # each shard keeps the input order
        assert shard == sorted(shard, key=inputs.index)


def test_slices_are_deterministic() -> None:
    inputs = list(range(20))
    assert shard_items(inputs, 1, 4) == shard_items(list(inputs), 1, 4) == [1, 5, 9, 13, 17]


def test_file_names_follow_the_artifact_layout() -> None:
    assert shard_file(3, 8) == "shard-00003-of-00008.jsonl"
    assert shard_stats_file(3, 8) == "stats-shard-00003-of-00008.json"
    assert partial_file(0, 1) == ".partial/shard-00000-of-00001.jsonl"


def test_bad_shard_indexes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"shard index 4 is outside 0\.\.3"):
        check_shard(4, 4)
    with pytest.raises(ValueError, match="at least 1"):
        shard_items([1], 0, 0)


def test_index_comes_from_the_indexed_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert shard_index_from_env(1) == 0
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX"):
        shard_index_from_env(4)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert shard_index_from_env(4) == 2
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "two")
    with pytest.raises(ValueError, match="not an integer"):
        shard_index_from_env(4)
