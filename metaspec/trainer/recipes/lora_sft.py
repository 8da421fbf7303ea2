"""Plain LoRA supervised fine-tuning (Hu et al. 2021): the baseline ANIL-MAML is measured against.

Same data path as ANIL-MAML (chat template, prompt masked from the loss, end-of-turn token), same
LoRA adapters, optimizer loop, checkpoints, merge and evaluation; only the objective differs: each
step is one next-token cross-entropy over a shuffled batch of `optimization.batchSize` examples, with
no tasks and no inner loop. Domains and difficulties play no part in training (they still shape the
token statistics the run reports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import collate
from ..evaluate import body_of, evaluation_loss
from ..loop import StepStats
from ..losses import chunked_cross_entropy, select_targets
from ..models import load_model
from .common import BatchStream, Context, apply_lora, body_inputs, finish_lora, load_datasets


class LoraSftRecipe:
    units_per_step = 1
    adapter_dir = "adapter"

    def __init__(self, ctx: Context):
        spec = ctx.run.spec
        self.ctx, self.spec = ctx, spec
        loaded = load_model(spec.base_model, ctx.cache, ctx.device, ctx.dtype)
        self.base_digest = loaded.digest
        self.tokenizer = loaded.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        self.data = load_datasets(ctx, self.tokenizer)
        self.model = apply_lora(loaded.model, spec)
        self.lm = self.model.get_base_model()
        if spec.optimization.gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.stream = BatchStream(self.data.train, spec.optimization.batch_size, spec.optimization.seed)

    @property
    def units_per_epoch(self) -> int:
        return len(self.stream)

    def train_step(self, scale: float) -> StepStats:
        """Mean next-token loss over the batch's target tokens (the prompt is masked)."""
        batch = collate(self.stream.next(), self.pad_id)
        hidden = body_of(self.lm)(**body_inputs(batch, self.ctx.device)).last_hidden_state  # (B, T, D)
        h, y = select_targets(hidden, batch["labels"])  # (N, D), (N,)
        loss = chunked_cross_entropy(h, y, self.lm.get_output_embeddings()) / y.numel()
        (loss * scale).backward()
        return StepStats(loss.item(), int(batch["attention_mask"].sum()))

    def evaluate(self) -> float:
        return evaluation_loss(self.lm, self.data.evaluation, self.pad_id, self.spec.evaluation.batch_size)

    def sampler_state(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def finish(self, out: Path, eval_loss: float | None) -> dict[str, Any]:
        """Adapter, perplexities of base/LoRA/merged, merged model; `eval_loss` is the loop's evaluation
        of the weights the model now holds (the best ones)."""
        lora_loss = self.evaluate() if eval_loss is None else eval_loss
        return finish_lora(self.model, self.tokenizer, self.data, self.spec, out, lora_loss)

    @property
    def model_dir(self) -> str | None:
        return "merged" if self.spec.output.merge else None
