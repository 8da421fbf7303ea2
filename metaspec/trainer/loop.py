"""The optimizer loop the recipes share: AdamW, schedule, accumulation, clipping, evaluation, early
stopping, best weights, checkpoints, resume and SIGTERM.

A recipe says how to compute one micro-step's loss and the evaluation loss; everything about steps,
time and persistence lives here, so the recipes checkpoint and resume the same way.

Under data parallelism (`distributed`) every rank runs this loop in lockstep on the same weights:
step statistics, the stop request and the evaluation loss are reduced over ranks so every rank takes
the same decisions, and only rank 0 writes checkpoints (under FSDP every rank first takes part in
gathering the shards).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from metaspec.api.training import Optimization
from metaspec.artifacts import Uri
from metaspec.runtime import PermanentError, TransientError, check_provenance, spec_digest

from .checkpoint import (
    Checkpoint,
    checkpoint_uri,
    latest_checkpoint,
    load_optimizer_state,
    load_trainable,
    optimizer_state,
    save_trainable,
    set_python_rng_state,
    set_rng_state,
    trainable_state,
    write_checkpoint,
)
from .distributed import DataParallel, World, full, local
from .progress import Reporter


@dataclass
class StepStats:
    loss: float  # the micro-step's mean loss (unscaled)
    tokens: int  # tokens the body processed (prompt + target, no padding)
    extra: dict[str, float] = field(default_factory=dict)


class Recipe(Protocol):
    """One training method (`recipes/`): what the loop optimizes and what the run publishes."""

    model: nn.Module  # its parameters with requires_grad are what the loop optimizes
    parallel: DataParallel  # how `train_step`'s backward reaches the other ranks
    units_per_step: int  # sampling units one micro-step consumes (anil-maml: tasks per batch), for epochs
    adapter_dir: str | None  # the output's subdirectory `finish` saves a LoRA adapter in, if any
    model_dir: str | None  # the output's subdirectory holding the usable model, if `finish` saved one
    base_digest: str | None  # which base weights exactly: manifest digest, or `hf:<commit>`

    @property
    def units_per_epoch(self) -> int:
        """Micro-steps in one pass over the data."""

    def train_step(self, scale: float) -> StepStats:
        """Forward and backward of this rank's share of one micro-step, gradients scaled by `scale`;
        its loss and tokens are this rank's share (summed over ranks, the micro-step's)."""

    def evaluate(self) -> float:
        """Mean evaluation loss per target token."""

    def sampler_state(self) -> dict[str, Any]: ...

    def load_sampler_state(self, state: dict[str, Any]) -> None: ...

    def unshard(self) -> None:
        """After training, on every rank: if `parallel` shards the model, gather the trained weights
        into an unsharded model on rank 0, the one `finish` then uses."""

    def finish(self, out: Path, eval_loss: float | None) -> dict[str, Any]:
        """Save what the run publishes under `out`; the metrics of the result (perplexities)."""


@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    best_eval_loss: float | None = None
    best_step: int | None = None
    stale_evals: int = 0
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # recipe values that must survive a resume


def lr_lambda(kind: str, warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then cosine/linear decay to zero, or constant."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)

    return factor


class Diverged(PermanentError):
    """Training produced a non-finite loss, gradient or weight: no retry fixes that, and nothing
    is checkpointed or published from it (the run fails with reason `Diverged`)."""


class TrainLoop:
    def __init__(
        self,
        recipe: Recipe,
        opt: Optimization,
        *,
        output: Uri,
        work_dir: Path,
        config: dict[str, Any],
        reporter: Reporter,
        world: World | None = None,
    ):
        self.recipe, self.opt, self.output, self.config, self.reporter = recipe, opt, output, config, reporter
        self.world = world or World()
        work_dir.mkdir(parents=True, exist_ok=True)
        self.staging = work_dir / "staging"
        self.cache = work_dir / "cache"
        self.best_path = work_dir / "best.safetensors"
        self.params = [p for p in recipe.model.parameters() if p.requires_grad]
        per_update = recipe.units_per_step * opt.gradient_accumulation
        self.units_per_step = recipe.units_per_step
        self.total_steps = opt.max_steps or max(1, math.ceil(opt.epochs * recipe.units_per_epoch / per_update))
        self.optimizer = torch.optim.AdamW(self.params, lr=opt.outer_lr, weight_decay=opt.weight_decay)
        warmup = round(opt.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(opt.scheduler, warmup, self.total_steps)
        )
        self.state = LoopState()
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Uri | None = None
        self._stop_requested = False

    def request_stop(self) -> None:
        """Checkpoint after the current step and stop with a transient error (SIGTERM does this)."""
        self._stop_requested = True

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint, if any."""
        checkpoint = latest_checkpoint(self.output, self.cache)
        if checkpoint is None:
            return False
        saved = json.loads((checkpoint.path / "config.json").read_text())
        check_provenance(
            str(checkpoint.uri),
            {"configDigest": spec_digest(saved["kind"], saved["spec"])},
            {"configDigest": spec_digest(self.config["kind"], self.config["spec"]), "inputs": {}},
        )
        self._restore(checkpoint)
        self.reporter.on_event(f"resumed from {checkpoint.uri}", {"step": checkpoint.step})
        return True

    def _restore(self, checkpoint: Checkpoint) -> None:
        load_trainable(self.recipe.model, checkpoint.path / "trainable.safetensors")
        load_optimizer_state(self.optimizer, checkpoint.load_torch("optimizer.pt"))
        self.scheduler.load_state_dict(checkpoint.load_torch("scheduler.pt"))
        set_rng_state(checkpoint.load_torch("rng.pt"))
        state = checkpoint.state
        set_python_rng_state(state.pop("python_rng"))
        self.recipe.load_sampler_state(state.pop("sampler"))
        self.state = LoopState(**state)
        self.history = checkpoint.history
        self.best_path.unlink(missing_ok=True)
        best = checkpoint.path / "best.safetensors"
        if best.is_file():
            self.best_path.write_bytes(best.read_bytes())
        elif self.state.best_step == self.state.step:
            save_trainable(self.recipe.model, self.best_path)
        self.last_checkpoint = checkpoint.uri
        self.world.seed_rank(self.opt.seed, self.state.step)  # rank 0's generator state is the one saved

    def run(self) -> None:
        """Train to `total_steps` or early stop; the model ends holding the best evaluated weights."""
        with self._sigterm_checkpoints():
            self.reporter.on_start(self.total_steps, self.state.step)
            while self.state.step < self.total_steps and not self.state.stopped_early:
                self._step()
                # SIGTERM on any rank stops every rank after the same step (one checkpoint, by rank 0)
                if self.world.any(self._stop_requested):
                    self.checkpoint()
                    self.world.barrier()  # no rank exits (and has the launcher stop the others) mid-upload
                    raise TransientError(f"stopped at step {self.state.step} (SIGTERM); checkpoint written")
                if self.state.step % self.opt.checkpoint_steps == 0 and self.state.step < self.total_steps:
                    self.checkpoint()
        if self.state.best_step is not None and self.state.best_step != self.state.step:
            load_trainable(self.recipe.model, self.best_path)

    @contextmanager
    def _sigterm_checkpoints(self):
        """Kubernetes sends SIGTERM before killing a preempted pod: finish the step, checkpoint, exit."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _step(self) -> None:
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        stats = [self._micro_step(i) for i in range(self.opt.gradient_accumulation)]
        extras = list(stats[0].extra)
        loss, tokens, *extra = self.world.sum(  # the ranks' shares: the step's figures
            [
                sum(s.loss for s in stats) / len(stats),
                sum(s.tokens for s in stats),
                *(sum(s.extra[k] for s in stats) / len(stats) for k in extras),
            ]
        )
        grad_norm = float(full(torch.nn.utils.clip_grad_norm_(self.params, self.opt.max_grad_norm)))
        lr = self.scheduler.get_last_lr()[0]
        self._check_finite(f"loss {loss}, gradient norm {grad_norm}", math.isfinite(loss * grad_norm))
        self.optimizer.step()
        self._check_finite("the updated weights", self._weights_finite())
        self.scheduler.step()
        self.state.step += 1
        elapsed = time.perf_counter() - started
        tokens = int(tokens)
        self.state.tokens += tokens
        self.state.train_seconds += elapsed
        record: dict[str, Any] = {
            "step": self.state.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "tokens_per_second": tokens / elapsed,
            "epoch": self.state.step
            * self.units_per_step
            * self.opt.gradient_accumulation
            / self.recipe.units_per_epoch,
        }
        record.update(zip(extras, extra, strict=True))
        if self.state.step % self.opt.eval_steps == 0 or self.state.step == self.total_steps:
            record["eval_loss"] = self._evaluate()
        self.history.append(record)
        self.reporter.on_step(record)

    def _micro_step(self, index: int) -> StepStats:
        """DDP all-reduces the gradients in the last micro-step's backward only (accumulated before)."""
        with self.recipe.parallel.sync_if(index == self.opt.gradient_accumulation - 1):
            return self.recipe.train_step(1 / self.opt.gradient_accumulation)

    def _weights_finite(self) -> bool:
        finite = bool(torch.stack([local(p).isfinite().all() for p in self.params]).all())
        return not self.world.any(not finite) if self.recipe.parallel.sharded else finite

    def _check_finite(self, what: str, finite: bool) -> None:
        if not finite:
            raise Diverged(
                f"training diverged at step {self.state.step + 1}: {what} not finite; nothing is published. "
                "Lower spec.optimization.outerLr or weightDecay, or spec.lora.alpha (or anil.innerLr)"
            )

    def _evaluate(self) -> float:
        loss = self.world.mean(self.recipe.evaluate())
        self._check_finite(f"evaluation loss {loss}", math.isfinite(loss))
        s = self.state
        if s.best_eval_loss is None or loss < s.best_eval_loss:
            s.best_eval_loss, s.best_step, s.stale_evals = loss, s.step, 0
            save_trainable(self.recipe.model, self.best_path)
        else:
            s.stale_evals += 1
            patience = self.opt.early_stopping_patience
            if patience and s.stale_evals >= patience:
                s.stopped_early = True
                self.reporter.on_event(
                    f"early stop at step {s.step}: {s.stale_evals} evaluations without improvement "
                    f"(best {s.best_eval_loss:.4f} at step {s.best_step})",
                    {"step": s.step, "best_step": s.best_step},
                )
        return loss

    def checkpoint(self) -> Uri:
        """Rank 0 writes the checkpoint (the state is the same on every rank, gathered from the shards
        under FSDP); every rank returns its URI."""
        s = self.state
        gather = self.world.main or self.recipe.parallel.sharded
        trainable = trainable_state(self.recipe.model) if gather else {}
        optimizer = optimizer_state(self.optimizer) if gather else {}
        if not self.world.main:
            self.last_checkpoint = checkpoint_uri(self.output, s.step)
            return self.last_checkpoint
        best = self.best_path if s.best_step is not None and s.best_step != s.step else None
        self.last_checkpoint = write_checkpoint(
            self.output,
            self.staging,
            s.step,
            trainable=trainable,
            optimizer=optimizer,
            scheduler=self.scheduler,
            state={**asdict(s), "sampler": self.recipe.sampler_state()},
            history=self.history,
            config=self.config,
            best=best,
        )
        self.reporter.on_event(f"checkpoint {self.last_checkpoint}", {"step": s.step})
        return self.last_checkpoint

    @property
    def tokens_per_second(self) -> float | None:
        return self.state.tokens / self.state.train_seconds if self.state.train_seconds else None
