"""Plain LoRA supervised fine-tuning (Hu et al. 2021): the baseline ANIL-MAML is measured against.

Same data path as ANIL-MAML (chat template, prompt masked from the loss, end-of-turn token), same
LoRA adapters, optimizer loop, checkpoints, merge and evaluation; only the objective differs: each
step is one next-token cross-entropy over a shuffled batch of `optimization.batchSize` examples, with
no tasks and no inner loop. Domains and difficulties play no part in training (they still shape the
token statistics the run reports).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import collate
from ..evaluate import body_of
from ..loop import StepStats
from ..losses import chunked_cross_entropy, select_targets
from .common import BatchRecipe, Context, LoraRecipe, batch_share, body_inputs, target_count


class LoraSftRecipe(LoraRecipe, BatchRecipe):
    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.adapt(self.load(torch.device("cpu")).model)

    def train_step(self, scale: float) -> StepStats:
        """This rank's share of the mean next-token loss over the global batch's target tokens (the
        prompt is masked)."""
        examples = self.stream.next()
        mine, weight = batch_share(self.ctx.world, examples)
        batch = collate(mine, self.pad_id)
        loss = self.parallel.run(lambda: self._loss_sum(batch) * (weight / target_count(examples)))
        self.parallel.backward(loss * scale)
        return StepStats(loss.item(), int(batch["attention_mask"].sum() * weight))

    def _loss_sum(self, batch: dict[str, Tensor]) -> Tensor:
        hidden = body_of(self.lm)(**body_inputs(batch, self.ctx.device)).last_hidden_state  # (B, T, D)
        h, y = select_targets(hidden, batch["labels"])  # (N, D), (N,)
        return chunked_cross_entropy(h, y, self.lm.get_output_embeddings(), compile=self.spec.optimization.compile)
