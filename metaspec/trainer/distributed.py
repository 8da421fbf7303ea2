"""Data parallelism on torch.distributed: one process per device, launched by `torch.distributed.run`.

Every rank builds the same model and draws the same global batch (`optimization.batchSize` sequences,
`anil.tasksPerBatch` tasks) from the same seeded sampler, then trains on its share of it (items r,
r + W, ...). A rank's loss is its share of the global loss (sums normalised by the global target count,
tasks by the global task count), and DDP (`DistributedDataParallel`) all-reduces the gradients during
backward. So W processes take exactly the optimizer step one process takes on the whole batch, every
rank holds the same weights and optimizer state, and a checkpoint written by rank 0 resumes on any
number of processes that the batch can be shared among.

With `spec.distributed.strategy: fsdp` (LoRA methods) the model is sharded instead of replicated:
FSDP2 (`fully_shard`, Zhao et al. 2023, "PyTorch FSDP") shards every decoder layer and then the rest
(embeddings, final norm, head) over the processes; a layer's parameters are all-gathered just before it
computes and freed after, gradients are reduce-scattered, and each rank's AdamW updates only its shard.
The arithmetic is DDP's: the same losses, the same averaged gradients, the same step. Checkpoints hold
full tensors (gathered), so they resume under either strategy and on any number of processes.

The processes are started, and restarted as a group, by `torch.distributed.run` (`launcher.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from metaspec.devices import resolve_device
from metaspec.runtime import PermanentError

T = TypeVar("T")
Strategy = Literal["ddp", "fsdp"]

#: The share of a GPU's free memory that the unsharded model and its training state may fill before
#: `fsdp` is chosen for a run that leaves `spec.distributed.strategy` unset. The rest is for what the
#: estimate leaves out: activations (a 2048-token sequence of an 8B model with checkpointing: ~2 GiB),
#: one chunk of head logits (2 GiB at 128K vocabulary), the CUDA context and the allocator's slack.
FIT_SHARE = 0.7

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


def training_bytes(model: nn.Module) -> int:
    """Bytes one process holds to train `model` unsharded: every parameter, and for each trainable one
    its gradient and AdamW's two moments (all in the parameter's dtype). Activations are not counted."""
    return sum(p.numel() * p.element_size() * (4 if p.requires_grad else 1) for p in model.parameters())


def fits_device(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` fit in `FIT_SHARE` of `device`'s free memory; anything fits on the CPU."""
    return device.type != "cuda" or nbytes <= FIT_SHARE * torch.cuda.mem_get_info(device)[0]


def choose_strategy(requested: Strategy | None, model: nn.Module, world: World) -> tuple[Strategy, str]:
    """`spec.distributed.strategy`; unset, `fsdp` when several GPU processes train and the unsharded
    model with its training state (`training_bytes`) does not fit one of them (`fits_device`), on any
    rank (so all ranks agree), else `ddp`. Never automatic on the CPU. Returns the strategy and why."""
    if requested is not None:
        return requested, "spec.distributed.strategy"
    if not world.distributed or world.device.type != "cuda":
        return "ddp", "default"
    need = training_bytes(model)
    if world.any(not fits_device(need, world.device)):
        return (
            "fsdp",
            f"{need / 2**30:.1f} GiB of weights and training state exceed {FIT_SHARE:.0%} of a GPU's free memory",
        )
    return "ddp", f"{need / 2**30:.1f} GiB of weights and training state fit one GPU"


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP holds `model`'s parameters as shards (DTensors)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded or partial tensor (a collective: every rank must call); a plain one as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class _Closure(nn.Module):
    """Runs a loss closure as its forward, so DDP sees each forward over `model`'s parameters even
    though the recipes call the body and the head separately (the head is applied chunk by chunk)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        return loss_fn()


def _shard(model: nn.Module, layers: Sequence[nn.Module], world: World, dtype: torch.dtype) -> FSDPModule:
    """FSDP2 over `model`: each of `layers` one unit, then the root (`_Closure(model)`) holding the rest.

    Parameters compute in `dtype` when it is half precision (bf16 on GPUs: LoRA's fp32 weights too) and
    gradients are reduced in fp32; the optimizer updates the shards in their own dtype."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(world.device.type, (world.size,))
    half = dtype in (torch.bfloat16, torch.float16)
    policy = MixedPrecisionPolicy(param_dtype=dtype if half else None, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    return fully_shard(_Closure(model), mesh=mesh, mp_policy=policy)


class DataParallel:
    """DDP or FSDP2 over a recipe's trained module; with one process, the closure runs as it is. Moves
    the model to the world's device (FSDP: each rank's shards).

    The recipes call the body and the head separately (the head chunk by chunk, ANIL's through fast
    weights), so the wrapped module is `_Closure`: its forward runs a whole loss closure, during which
    DDP sees the forward and FSDP keeps the root's parameters (embeddings, head) gathered; the decoder
    layers gather their own (`layers`, FSDP only). `backward` multiplies by the world size: DDP and
    FSDP average the ranks' gradients, while each rank's loss is already its share of the global loss,
    so the average times W is the gradient of the whole.
    """

    def __init__(
        self,
        model: nn.Module,
        world: World,
        strategy: Strategy = "ddp",
        layers: Sequence[nn.Module] = (),
        dtype: torch.dtype = torch.float32,
    ):
        self.world = world
        self.sharded = world.distributed and strategy == "fsdp"
        self.wrapped: nn.Module | None = None
        self._sync = True  # FSDP: whether the enclosing `sync_if`s let backward reduce
        if self.sharded:
            self.wrapped = _shard(model, layers, world, dtype)
        else:
            model.to(world.device)
            if world.distributed:
                self.wrapped = DistributedDataParallel(_Closure(model), broadcast_buffers=False, init_sync=False)

    def run(self, fn: Callable[[], T]) -> T:
        """`fn` (a loss closure) as the wrapped module's forward."""
        return self.wrapped(fn) if self.wrapped is not None else fn()

    @torch.no_grad()
    def evaluate(self, fn: Callable[[], T]) -> T:
        """`fn` (an evaluation) with the parameters gathered, and released after it (no backward follows)."""
        if not self.sharded:
            return fn()
        assert isinstance(self.wrapped, FSDPModule)
        try:
            return self.wrapped(fn)
        finally:
            self.wrapped.reshard()

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.world.size).backward()

    @contextmanager
    def sync_if(self, last: bool) -> Iterator[None]:
        """Backwards reduce gradients across ranks only when `last`; the others accumulate them locally
        (every backward of an optimizer step but its last: the accumulated gradients are reduced once)."""
        if isinstance(self.wrapped, FSDPModule):  # nested as DDP's no_sync: an outer "not yet" holds
            outer = self._sync
            self._sync = outer and last
            self.wrapped.set_requires_gradient_sync(self._sync)
            try:
                yield
            finally:
                self._sync = outer
                self.wrapped.set_requires_gradient_sync(outer)
            return
        ddp = self.wrapped if isinstance(self.wrapped, DistributedDataParallel) else None
        with nullcontext() if last or ddp is None else ddp.no_sync():
            yield
