"""How a global batch is shared among training processes (no process group needed)."""

from __future__ import annotations

import pytest

from metaspec.runtime import PermanentError
from metaspec.trainer.distributed import World


def test_each_rank_takes_every_world_size_th_item():
    items = list(range(7))
    shares = [World(rank=r, size=3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert World().share(items) == items


def test_a_batch_smaller_than_the_world_is_refused_naming_the_field():
    World(rank=1, size=4).check_shareable(4, "spec.anil.tasksPerBatch")
    with pytest.raises(PermanentError, match=r"spec.anil.tasksPerBatch is 3, fewer than the 4 training processes"):
        World(rank=1, size=4).check_shareable(3, "spec.anil.tasksPerBatch")
