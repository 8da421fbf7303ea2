"""Causal-LM training of a draft model on teacher outputs (input → teacher output, prompt masked).

The draft is either `baseModel` itself, fully fine-tuned (`draft.initFrom: pretrained`), or cut from
the target given as `baseModel` (`initFrom: target`, `numLayers: N`: the target's embeddings, first
N layers, final norm and head, so it shares the target's tokenizer by construction). Every weight is
trained, so they are kept in fp32 and the forward runs under bf16/fp16 autocast (mixed precision,
Micikevicius et al. 2018): updated in bf16 itself, an AdamW step of lr·1 on a weight of 0.05 is below
half of bf16's spacing there once the learning rate decays, rounds away, and the draft stops learning.

The objective is next-token cross-entropy on the teacher text, or `distill`: KL divergence to the
target's own next-token distribution at `distillTemperature` (Hinton et al. 2015), which trains on
every logit the target has instead of one sampled token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from metaspec.api.serving import Routing, ThresholdCalibration
from metaspec.drafts.calibration import save_calibration
from metaspec.drafts.vocabulary import save_draft_vocabulary

from ..calibrate import calibrate
from ..data import collate
from ..distributed import DataParallel
from ..evaluate import body_of, evaluation_loss, perplexity
from ..loop import StepStats
from ..losses import LogitsFn, chunked_cross_entropy, chunked_distillation, select_targets
from ..merge import save_model
from ..models import derive_draft
from .common import BatchRecipe, Context, batch_share, body_inputs, prepare_body, target_count, training_vocabulary


class CausalLmRecipe(BatchRecipe):
    adapter_dir = None
    model_dir = "model"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        spec = self.spec
        loaded = self.load()
        self.teacher: torch.nn.Module | None = None
        self.target: torch.nn.Module | None = None  # kept to calibrate the draft's confidence threshold
        if spec.draft.init_from == "target":
            self.model = derive_draft(loaded.model, spec.draft.num_layers).float()
            self.target = loaded.model.eval().requires_grad_(False)
            if spec.draft.objective == "distill":
                self.teacher = self.target
        else:
            self.model = loaded.model.float()
        half = ctx.dtype in (torch.bfloat16, torch.float16)
        self.autocast = torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=half)
        prepare_body(self.model, self.spec.optimization)
        self.model.train()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self.vocabulary = training_vocabulary(ctx, self.data.train, self.tokenizer, vocab)
        self.parallel = DataParallel(self.model, ctx.world)
        # Before any checkpoint is loaded: the draft as it starts, for the before/after comparison.
        self.initial_loss = self.evaluate()

    def train_step(self, scale: float) -> StepStats:
        """This rank's share of the mean loss per target token of the global batch."""
        examples = self.stream.next()
        mine, weight = batch_share(self.ctx.world, examples)
        batch = collate(mine, self.pad_id)
        inputs = body_inputs(batch, self.ctx.device)
        with self.autocast:
            loss = self.parallel.run(
                lambda: self._loss_sum(inputs, batch["labels"]) * (weight / target_count(examples))
            )
        self.parallel.backward(loss * scale)
        return StepStats(loss.item(), int(batch["attention_mask"].sum() * weight))

    def _loss_sum(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Loss summed over the target tokens."""
        hidden = body_of(self.model)(**inputs).last_hidden_state  # (B, T, D)
        h, y = select_targets(hidden, labels)
        head = self._head(self.model)
        if self.teacher is None:
            if self.vocabulary is not None:  # labels as draft ids; a token outside cannot be learnt
                draft_ids = torch.searchsorted(self.vocabulary, y)
                inside = self.vocabulary[draft_ids.clamp_max(self.vocabulary.numel() - 1)] == y
                return chunked_cross_entropy(h[inside], draft_ids[inside], head)
            return chunked_cross_entropy(h, y, head)
        with torch.no_grad():
            teacher_hidden = body_of(self.teacher)(**inputs).last_hidden_state  # (B, T, D)
        h_t, _ = select_targets(teacher_hidden, labels)
        temperature = self.spec.draft.distill_temperature
        return chunked_distillation(h, h_t, head, self._head(self.teacher), temperature)

    def _head(self, model: torch.nn.Module) -> LogitsFn:
        """The model's output layer, over the draft vocabulary's rows only when there is one."""
        head = model.get_output_embeddings()
        if self.vocabulary is None:
            return head
        return lambda h: F.linear(h, head.weight[self.vocabulary])

    def evaluate(self) -> float:
        """Next-token loss on the evaluation set (whatever the training objective)."""
        return evaluation_loss(self.model, self.data.evaluation, self.pad_id, self.spec.evaluation.batch_size)

    def finish(self, out: Path, eval_loss: float | None) -> dict[str, Any]:
        """The trained draft under `out/model`; perplexity before and after training; for a draft cut
        from its target, the confidence threshold calibrated on the evaluation set, saved with the draft.

        `eval_loss` is the loop's evaluation of the weights the model now holds (the best ones).
        """
        save_model(self.model.to(self.ctx.dtype), self.tokenizer, out / self.model_dir)  # served in the run's dtype
        if self.vocabulary is not None:
            save_draft_vocabulary(out / self.model_dir, self.vocabulary)
        final = self.evaluate() if eval_loss is None else eval_loss
        metrics: dict[str, Any] = {
            "perplexity_base": perplexity(self.initial_loss),
            "perplexityModel": perplexity(final),
        }
        if self.target is not None:  # calibrated as served: in the run's dtype
            metrics["calibration"] = self.calibrate(out / self.model_dir)
        return metrics

    def calibrate(self, folder: Path) -> ThresholdCalibration:
        k = Routing().max_speculative_tokens
        assert self.target is not None
        found = calibrate(
            self.target, self.model, self._head(self.model), self.data.evaluation, self.pad_id,
            self.spec.evaluation.batch_size, k, self.vocabulary,
        )  # fmt: skip
        save_calibration(folder, found)
        self.ctx.reporter.on_event(
            f"confidence threshold {found.confidence_threshold:.4g} (k = {k}, c = {found.cost:.3g}): "
            f"{found.speculated_share:.0%} of {found.prompts} held-out prompts speculate, predicted "
            f"{found.predicted_speedup:.2f}x",
            found.dump(),
        )
        return found
