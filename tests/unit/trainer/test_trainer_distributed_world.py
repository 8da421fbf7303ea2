"""How a global batch is shared among training processes, how the strategy is chosen, and which failed
rank the launcher reports (no process group needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaspec.runtime import EXIT_PERMANENT, PermanentError
from metaspec.trainer.distributed import FIT_SHARE, World, choose_strategy, training_bytes


def test_each_rank_takes_every_world_size_th_item():
    items = list(range(7))
    shares = [World(rank=r, size=3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert World().share(items) == items


def test_a_batch_smaller_than_the_world_is_refused_naming_the_field():
    World(rank=1, size=4).check_shareable(4, "spec.anil.tasksPerBatch")
    with pytest.raises(PermanentError, match=r"spec.anil.tasksPerBatch is 3, fewer than the 4 training processes"):
        World(rank=1, size=4).check_shareable(3, "spec.anil.tasksPerBatch")


def lora_like() -> nn.Module:
    """A frozen 1000 × 1000 fp32 weight with a trained 1000 × 10 one: 4.0e6 + 4 × 4.0e4 bytes."""
    model = nn.Sequential(nn.Linear(1000, 1000, bias=False), nn.Linear(1000, 10, bias=False))
    model[0].requires_grad_(False)
    return model


def test_training_bytes_count_weights_and_the_trained_ones_gradient_and_adam_moments():
    assert training_bytes(lora_like()) == 4_000_000 + 4 * 40_000


@pytest.mark.parametrize(
    ("free", "expected"), [(10 * 4_160_000, "ddp"), (int(4_160_000 / FIT_SHARE) + 8, "ddp"), (4_160_000, "fsdp")]
)
def test_fsdp_is_chosen_when_the_model_and_its_training_state_exceed_a_gpus_free_share(monkeypatch, free, expected):
    """Unset strategy on GPUs: FSDP once the unsharded need passes FIT_SHARE of the free memory (the
    ranks' verdicts are OR-ed through `World.any`, here the rank's own)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 80 * 2**30))
    monkeypatch.setattr(World, "any", lambda self, flag: flag)
    world = World(rank=0, size=2, device=torch.device("cuda", 0))
    strategy, why = choose_strategy(None, lora_like(), world)
    assert strategy == expected and "GiB of weights and training state" in why


def test_the_strategy_is_never_automatic_on_the_cpu_or_for_one_process_and_a_requested_one_is_kept():
    model = lora_like()
    assert choose_strategy(None, model, World(rank=0, size=2))[0] == "ddp"
    assert choose_strategy(None, model, World(device=torch.device("cuda", 0)))[0] == "ddp"
    assert choose_strategy("fsdp", model, World(rank=0, size=2)) == ("fsdp", "spec.distributed.strategy")


def test_a_rank_a_signal_killed_is_the_cause_not_the_peers_it_took_down(tmp_path):
    """torch stamps a killed rank's failure when its agent notices it, after its peers' collectives failed
    and wrote their error files: the launcher names the killed rank (exit 137), not a peer's exit 1. A
    worker's permanent verdict still outranks the peers the agent then stopped (SIGTERM, or SIGKILL after
    the grace period)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from metaspec.trainer.launcher import _cause

    def failure(rank: int, exitcode: int, timestamp: int) -> ProcessFailure:
        found = ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(tmp_path / "none"))
        found.timestamp = timestamp
        return found

    peer, killed = failure(0, 1, timestamp=10), failure(1, -9, timestamp=12)
    assert _cause(ChildFailedError("train", {0: peer, 1: killed})) == (1, killed)
    verdict = failure(0, EXIT_PERMANENT, timestamp=10)
    for stopped in (failure(1, -15, timestamp=9), failure(1, -9, timestamp=9)):
        assert _cause(ChildFailedError("train", {0: verdict, 1: stopped})) == (0, verdict)
    crash, stopped = failure(0, 1, timestamp=10), failure(1, -15, timestamp=12)  # stopped after the crash
    assert _cause(ChildFailedError("train", {0: crash, 1: stopped})) == (0, crash)
    errors = {0: failure(0, 1, timestamp=11), 1: failure(1, 75, timestamp=10)}  # no signal: the first to fail
    assert _cause(ChildFailedError("train", errors)) == (1, errors[1])
