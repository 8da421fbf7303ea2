"""Data parallelism on torch.distributed: one process per device, launched by `torch.distributed.run`.

Every rank builds the same model and draws the same global batch (`optimization.batchSize` sequences,
`anil.tasksPerBatch` tasks) from the same seeded sampler, then trains on its share of it (items r,
r + W, ...). A rank's loss is its share of the global loss (sums normalised by the global target count,
tasks by the global task count), and DDP (`DistributedDataParallel`) all-reduces the gradients during
backward. So W processes take exactly the optimizer step one process takes on the whole batch, every
rank holds the same weights and optimizer state, and a checkpoint written by rank 0 resumes on any
number of processes that the batch can be shared among.

The launcher side (`launch`) is `torch.distributed.run` itself, the module behind `torchrun`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from metaspec.devices import resolve_device
from metaspec.runtime import EXIT_TRANSIENT, TERMINATION_MESSAGE_ENV, PermanentError, termination_message_path

T = TypeVar("T")


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
        dist.init_process_group("nccl", device_id=torch_device)
    else:
        dist.init_process_group("gloo")
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


def launched() -> bool:
    """Whether this process is a worker `torch.distributed.run` started."""
    return "LOCAL_RANK" in os.environ


def rank_summary(path: Path, rank: int) -> Path:
    """Where worker `rank` writes its summary; the launcher adopts one as the container's."""
    return path.with_name(f"{path.name}.rank-{rank}")


def launch(cli_argv: list[str], nproc_per_node: int, nnodes: int) -> int:
    """`python -m metaspec.cli <cli_argv>` in `nproc_per_node` processes under `torch.distributed.run`
    (torchrun's own module); returns the exit code the container should exit with.

    One node: a standalone rendezvous on this machine. Several: a static one at `PET_MASTER_ADDR:
    PET_MASTER_PORT` with this node's rank in `PET_NODE_RANK` (torchrun reads its options from those
    variables; the operator sets them). The launcher, not torchrun's CLI, is the container's process so
    that a worker's exit code reaches the Job unchanged (torchrun exits 1 for any failure, which would
    turn a permanent error into retries) along with that worker's summary.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    rendezvous = ["--standalone"] if nnodes == 1 else []
    options = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", *rendezvous, "--max-restarts=0"]
    summary = termination_message_path()
    with tempfile.TemporaryDirectory(prefix="metaspec-ranks-") as ranks:
        os.environ[TERMINATION_MESSAGE_ENV] = str(Path(ranks) / "summary")  # the workers' (`rank_summary`)
        try:
            run(parse_args([*options, "--module", "metaspec.cli", *cli_argv]))
            rank, code = 0, 0
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -9: killed, 137
        except SignalException:  # SIGTERM: the workers got it too; rank 0 checkpointed before exiting
            rank, code = 0, EXIT_TRANSIENT
        finally:
            os.environ[TERMINATION_MESSAGE_ENV] = str(summary)
        _adopt_summary(Path(ranks) / "summary", rank, summary)
    return code


def _adopt_summary(workers: Path, rank: int, summary: Path) -> None:
    """Worker `rank`'s summary when this node ran it, else this node's lowest rank's, as the container's."""
    written = sorted(workers.parent.glob(f"{workers.name}.rank-*"), key=lambda p: int(p.name.rpartition("-")[2]))
    chosen = rank_summary(workers, rank)
    source = chosen if chosen.is_file() else next(iter(written), None)
    if source is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(source.read_text())
