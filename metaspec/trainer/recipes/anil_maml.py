"""ANIL-MAML LoRA fine-tuning (Finn et al. 2017; Raghu et al. 2020).

Per task (one domain's support and query sets): the LoRA model's body runs once over both sets, as
one batch (`set_features`); the head's fast weights take `innerSteps` SGD steps on the support loss
from the cached support hidden states; the query loss through the adapted head is backpropagated into
every LoRA parameter (`meta.task_loss`). The loop averages `tasksPerBatch` tasks per micro-step and
`gradientAccumulation` micro-steps per AdamW update. What is saved is the LoRA adapter (and the model
merged with it): the fast weights live only inside a task and are never written anywhere.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metaspec.runtime import PermanentError

from ..data import Example, Task, TaskSampler, collate
from ..evaluate import body_of
from ..loop import StepStats
from ..losses import select_targets, token_weights
from ..meta import head_projection, output_head, task_loss
from .common import Context, LoraRecipe, body_inputs


def set_features(
    lm: torch.nn.Module,
    sets: tuple[tuple[Example, ...], ...],
    pad_id: int,
    device: torch.device,
    weights: tuple[tuple[float, ...], ...] | None = None,
    together: bool = True,
) -> list[tuple[torch.Tensor, ...]]:
    """Per set: the hidden states of its supervised positions (N, D) and their labels (N,); with
    `weights` (per set, one per example), also their tokens' loss weights (N,).

    `together`: one body pass over every set, one batch as a LoRA SFT step runs them (a pass per set
    made the 8B ANIL step 6% slower on an H100: docs/benchmarks.md). Otherwise a pass per set, for
    first-order ANIL: no gradient reaches the support features, and a pass of their own needs no backward."""
    if not together:
        each = weights or (None,) * len(sets)
        return [
            set_features(lm, (s,), pad_id, device, None if w is None else (w,))[0]
            for s, w in zip(sets, each, strict=True)
        ]
    flat = None if weights is None else tuple(w for set_weights in weights for w in set_weights)
    batch = collate([ex for examples in sets for ex in examples], pad_id, flat)
    hidden = body_of(lm)(**body_inputs(batch, device)).last_hidden_state  # (B, T, D)
    features, start = [], 0
    for examples in sets:
        rows = slice(start, start + len(examples))
        start = rows.stop
        labels = batch["labels"][rows]
        h, y = select_targets(hidden[rows], labels)
        if weights is None:
            features.append((h, y))
        else:
            features.append((h, y, token_weights(labels, batch["example_weights"][rows]).to(h.device)))
    return features


class AnilMamlRecipe(LoraRecipe):
    def __init__(self, ctx: Context):
        super().__init__(ctx)
        spec = self.spec
        self.units_per_step = spec.anil.tasks_per_batch
        loaded = self.load(torch.device("cpu"))
        self._check_adapt_modules(loaded.model)
        self.adapt(loaded.model)
        anil = spec.anil
        ctx.world.check_shareable(anil.tasks_per_batch, "spec.anil.tasksPerBatch")
        try:
            self.sampler = TaskSampler(
                self.data.train,
                anil.support_size,
                anil.query_size,
                anil.mix,
                seed=spec.optimization.seed,
                balance=anil.balance,
            )
        except ValueError as e:
            raise PermanentError(f"spec.anil: {e}") from None
        self._tasks = iter(self.sampler)
        hidden = self.lm.get_output_embeddings().weight.shape[1]
        self.proj = (
            head_projection(hidden, anil.head_delta_rank, spec.optimization.seed) if anil.head_delta_rank else None
        )

    def _check_adapt_modules(self, model: torch.nn.Module) -> None:
        head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
        if self.spec.anil.adapt_modules != [head_name]:
            raise PermanentError(
                f"spec.anil.adaptModules: ANIL adapts only the output head; set it to [{head_name!r}] "
                f"(got {self.spec.anil.adapt_modules})"
            )

    @property
    def units_per_epoch(self) -> int:
        return len(self.sampler)

    def _next_task(self):
        task = next(self._tasks, None)
        if task is None:  # the epoch is over: the sampler has rolled over to the next one
            self._tasks = iter(self.sampler)
            task = next(self._tasks)
        return task

    def _task_loss(self, task: Task) -> torch.Tensor:
        anil = self.spec.anil
        weights = (task.support_weights, task.query_weights) if anil.balance == "tokens" else None
        support, query = set_features(
            self.lm, (task.support, task.query), self.pad_id, self.ctx.device, weights, together=not anil.first_order
        )
        head = output_head(self.lm, self.proj)
        steps, lr = anil.inner_steps, anil.inner_lr
        return task_loss(head, support, query, steps, lr, anil.first_order, compile=self.spec.optimization.compile)

    def train_step(self, scale: float) -> StepStats:
        """This rank's tasks of the global batch (every rank draws the whole batch, keeps its share):
        their query losses' share of the batch mean. Tasks are never split, so token balancing
        (`balance: tokens`) weighs each set exactly as one process does.

        Under FSDP every forward gathers each layer on all ranks together, so every rank runs the same
        number of tasks: a rank with fewer repeats its first task at weight 0 (ceil(T / W) per rank)."""
        per_batch = self.spec.anil.tasks_per_batch
        world = self.ctx.world
        tasks = [(task, 1.0) for task in world.share([self._next_task() for _ in range(per_batch)])]
        if self.parallel.sharded:
            tasks += [(tasks[0][0], 0.0)] * (math.ceil(per_batch / world.size) - len(tasks))
        losses, tokens = [], 0
        for i, (task, weight) in enumerate(tasks):
            with self.parallel.sync_if(i == len(tasks) - 1):  # per task: one task's graph in memory at a time
                loss = self.parallel.run(lambda task=task: self._task_loss(task))
                self.parallel.backward(loss * (weight * scale / per_batch))
            if weight:
                losses.append(loss.item())
                tokens += sum(ex.n_tokens for ex in task.support + task.query)
        return StepStats(sum(losses) / per_batch, tokens)

    def sampler_state(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        try:
            self.sampler.load_state_dict(state)
        except ValueError as e:
            raise PermanentError(f"cannot resume: {e}") from None
        self._tasks = iter(self.sampler)
