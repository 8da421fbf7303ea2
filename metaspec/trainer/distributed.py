"""Data parallelism on torch.distributed: one process per device, launched by `torch.distributed.run`.

Every rank builds the same model and draws the same global batch (`optimization.batchSize` sequences,
`anil.tasksPerBatch` tasks) from the same seeded sampler, then trains on its share of it (items r,
r + W, ...). A rank's loss is its share of the global loss (sums normalised by the global target count,
tasks by the global task count), and DDP (`DistributedDataParallel`) all-reduces the gradients during
backward. So W processes take exactly the optimizer step one process takes on the whole batch, every
rank holds the same weights and optimizer state, and a checkpoint written by rank 0 resumes on any
number of processes that the batch can be shared among.

The processes are started, and restarted as a group, by `torch.distributed.run` (`launcher.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from metaspec.devices import resolve_device
from metaspec.runtime import PermanentError

T = TypeVar("T")

#: The longest a collective (all-reduce, barrier) waits for the other ranks before failing this one. A
#: hung peer (a stuck GPU, a partitioned node) then ends the attempt within this time, and torchrun
#: restarts the group (`launcher.py`); a peer that dies is noticed sooner, by its agent or its pod's
#: replacement joining the rendezvous. On GPUs NCCL's watchdog enforces it (TORCH_NCCL_ASYNC_ERROR_HANDLING,
#: on by default, aborts the process); gloo raises. The longest waits in a healthy run are rank 0's
#: checkpoint upload and, before the first step, the slowest rank's model download: a node that needs
#: more than this longer than its peers to fetch the base model fails the first attempt, and the restart
#: finds the model in its cache.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(
        default_factory=lambda: torch.device("cpu")
    )  # where collectives' tensors live (cuda for NCCL)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, artifacts and the summary."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items of a global batch: r, r + W, r + 2W, ..."""
        return list(items[self.rank :: self.size])

    def check_shareable(self, count: int, field: str) -> None:
        """Every rank needs at least one item of each global batch (DDP's backward is collective)."""
        if count < self.size:
            raise PermanentError(
                f"{field} is {count}, fewer than the {self.size} training processes (GPUs × nodes): every "
                f"process trains on its share of each batch; raise {field} to at least {self.size} "
                "(a multiple of it keeps the processes evenly loaded)"
            )

    def seed_rank(self, seed: int, step: int = 0) -> None:
        """Ranks other than 0 draw dropout from a generator of their own (rank 0 keeps the run's)."""
        if self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank + step)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0

    def mean(self, value: float) -> float:
        """The same value on every rank, so decisions taken on it (early stopping) agree."""
        return self.sum([value])[0] / self.size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_world(device: str | None) -> World:
    """Join the process group `torch.distributed.run` set up in the environment (`WORLD_SIZE`,
    `RANK`, `LOCAL_RANK`, `MASTER_ADDR`/`MASTER_PORT`); without it, a world of one on `device`.
    On GPUs each process takes `cuda:<local rank>` and NCCL; on CPU, gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    torch_device = resolve_device(device)
    if size == 1:
        return World(device=torch_device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
        dist.init_process_group("nccl", device_id=torch_device, timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, torch_device)


class _Closure(nn.Module):
    """Runs a loss closure as its forward, so DDP sees each forward over `model`'s parameters even
    though the recipes call the body and the head separately (the head is applied chunk by chunk)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        return loss_fn()


class DataParallel:
    """DDP over a recipe's trained module; with one process, the closure runs as it is.

    `backward` multiplies by the world size: DDP averages the ranks' gradients, while each rank's loss
    is already its share of the global loss, so the average times W is the gradient of the whole.
    """

    def __init__(self, model: nn.Module, world: World):
        self.world = world
        self.ddp = (
            DistributedDataParallel(_Closure(model), broadcast_buffers=False, init_sync=False)
            if world.distributed
            else None
        )

    def loss(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self.ddp(loss_fn) if self.ddp is not None else loss_fn()

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.world.size).backward()

    @contextmanager
    def sync_if(self, last: bool) -> Iterator[None]:
        """Backwards inside all-reduce only when `last`; the others accumulate gradients locally (every
        backward of an optimizer step but its last: DDP then reduces the accumulated gradients once)."""
        with nullcontext() if last or self.ddp is None else self.ddp.no_sync():
            yield
