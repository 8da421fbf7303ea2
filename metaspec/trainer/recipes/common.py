"""What the recipes share: the run's context, its data, a resumable batch stream, LoRA and its finish."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaspec.api import TrainingRun
from metaspec.api.training import Optimization, TrainingRunSpec
from metaspec.drafts.vocabulary import draft_vocabulary, token_counts
from metaspec.prompts import end_of_turn_ids
from metaspec.records import InvalidData
from metaspec.runtime import PermanentError, model_cache_dir

from ..checkpoint import set_trainable, trainable_state
from ..data import IGNORE_INDEX, Example, batches, load_training_data
from ..distributed import DataParallel, World, choose_strategy, fits_device
from ..evaluate import evaluation_loss, perplexity
from ..merge import merge_degradation, merge_lora, save_adapter, save_model
from ..models import LoadedModel, load_model
from ..progress import Reporter


@dataclass
class Context:
    run: TrainingRun
    device: torch.device
    dtype: torch.dtype
    work_dir: Path  # this run's scratch
    reporter: Reporter
    model_cache: Path = field(default_factory=model_cache_dir)  # downloaded models, shared between runs
    world: World = field(default_factory=World)


@dataclass
class Datasets:
    train: list[Example]
    evaluation: list[Example]
    report: dict[str, Any]


def prepare_body(model: torch.nn.Module, optimization: Optimization) -> None:
    """Activation checkpointing and per-layer `torch.compile` as `spec.optimization` asks. `model` is
    the causal LM (not a peft wrapper). Each decoder layer is compiled in place (`Module.compile`), so
    parameter names, checkpoints and DDP see the same module tree."""
    if optimization.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if optimization.compile:
        for layer in decoder_layers(model, "spec.optimization.compile", "compile"):
            layer.compile()


def decoder_layers(model: torch.nn.Module, field: str, what: str) -> torch.nn.ModuleList:
    """The decoder layers of causal LM `model`; a permanent error naming `field` if it has none."""
    layers = getattr(model.get_decoder(), "layers", None) if hasattr(model, "get_decoder") else None
    if not layers:
        raise PermanentError(f"{field}: {type(model).__name__} has no decoder layers to {what}")
    return layers


def load_datasets(ctx: Context, tokenizer: Any) -> Datasets:
    """Training and evaluation examples, tokenized; bad data is a permanent error naming the line."""
    spec = ctx.run.spec
    max_len = spec.optimization.max_seq_length
    try:
        train, report = load_training_data(
            spec.dataset.uri,
            tokenizer,
            max_len,
            skip_invalid=spec.dataset.skip_invalid,
            max_examples=spec.dataset.max_examples,
            evaluation_uri=spec.evaluation.uri,
        )
    except InvalidData as e:
        raise PermanentError(f"spec.dataset: {e}") from None
    try:
        evaluation, _ = load_training_data(
            spec.evaluation.uri, tokenizer, max_len, max_examples=spec.evaluation.max_examples
        )
    except InvalidData as e:
        raise PermanentError(f"spec.evaluation: {e}") from None
    ctx.reporter.on_event(
        f"data: {len(train)} training examples, {len(evaluation)} evaluation examples, "
        f"hard token share {report['stats']['hard_token_share']:.2f}",
        {"train_examples": len(train), "eval_examples": len(evaluation)},
    )
    return Datasets(train, evaluation, report)


def target_count(examples: list[Example]) -> int:
    """Supervised tokens of a batch, counted as `losses.select_targets` selects them (position t
    predicts label t + 1): the global normaliser every rank divides its loss sum by."""
    return sum(label != IGNORE_INDEX for ex in examples for label in ex.labels[1:])


def batch_share(world: World, examples: list[Example]) -> tuple[list[Example], float]:
    """This rank's examples of a global batch and their weight: a rank left without one (the short
    last batch of an epoch) runs the batch's first example at weight 0, so it still joins DDP's
    all-reduce (a collective) and adds nothing to the gradient."""
    mine = world.share(examples)
    return (mine, 1.0) if mine else (examples[:1], 0.0)


def body_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


class BatchStream:
    """Batches of `data.batches`, epoch after epoch, with a resumable position."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.epoch, self.index = 0, 0
        self._epoch_batches = batches(examples, batch_size, seed, 0)

    def __len__(self) -> int:
        return len(self._epoch_batches)

    def next(self) -> list[Example]:
        if self.index >= len(self._epoch_batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._epoch_batches = batches(self.examples, self.batch_size, self.seed, self.epoch)
        self.index += 1
        return self._epoch_batches[self.index - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "examples": len(self.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._epoch_batches = batches(self.examples, self.batch_size, self.seed, self.epoch)


class BaseRecipe:
    """What every recipe holds: its context and spec, the base weights' digest, the tokenizer, the data."""

    units_per_step = 1

    def __init__(self, ctx: Context):
        self.ctx, self.spec = ctx, ctx.run.spec

    def load(self, device: torch.device | None = None) -> LoadedModel:
        """The base model, on `device` (default: the run's); keeps its digest and tokenizer, and the data
        tokenized with that tokenizer."""
        loaded = load_model(self.spec.base_model, self.ctx.model_cache, device or self.ctx.device, self.ctx.dtype)
        self.base_digest: str | None = loaded.digest
        self.tokenizer = loaded.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        self.data = load_datasets(self.ctx, self.tokenizer)
        return loaded

    def unshard(self) -> None:
        """Nothing to gather: only `LoraRecipe`s shard their model."""


class BatchRecipe(BaseRecipe):
    """A recipe whose micro-step is one batch of training examples (`BatchStream`)."""

    def load(self, device: torch.device | None = None) -> LoadedModel:
        loaded = super().load(device)
        optimization = self.spec.optimization
        self.ctx.world.check_shareable(optimization.batch_size, "spec.optimization.batchSize")
        self.stream = BatchStream(self.data.train, optimization.batch_size, optimization.seed)
        return loaded

    @property
    def units_per_epoch(self) -> int:
        return len(self.stream)

    def sampler_state(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


def apply_lora(model: torch.nn.Module, spec: TrainingRunSpec) -> Any:
    """`model` with `spec.lora` adapters (a peft model); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(spec.optimization.seed)  # LoRA A initialisation
    lora = spec.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise PermanentError(f"spec.lora.targetModules: {e}") from None


class LoraRecipe(BaseRecipe):
    """What the LoRA methods (anil-maml, lora-sft) share: the adapters added on the CPU (so their
    initialisation is the same on every device), the model placed by `spec.distributed.strategy`
    (`DataParallel`), evaluation without inner adaptation, and the adapter/merged-model finish."""

    adapter_dir = "adapter"

    def adapt(self, base: torch.nn.Module) -> None:
        """`base` (a causal LM on the CPU) with `spec.lora` adapters, as `self.model`, placed."""
        ctx = self.ctx
        self.model = apply_lora(base, self.spec)
        self.lm = self.model.get_base_model()
        prepare_body(self.lm, self.spec.optimization)
        self.model.train()
        strategy, why = choose_strategy(self.spec.distributed.strategy, self.model, ctx.world)
        layers = decoder_layers(self.lm, "spec.distributed.strategy", "shard") if strategy == "fsdp" else ()
        self.parallel = DataParallel(self.model, ctx.world, strategy, layers, ctx.dtype)
        if ctx.world.distributed:
            ctx.reporter.on_event(
                f"distributed: {strategy} over {ctx.world.size} processes ({why})", {"strategy": strategy}
            )

    def evaluate(self) -> float:
        """Evaluation loss of the LoRA model as it will be used (anil-maml: no inner adaptation)."""
        return self.parallel.evaluate(
            lambda: evaluation_loss(self.lm, self.data.evaluation, self.pad_id, self.spec.evaluation.batch_size)
        )

    def unshard(self) -> None:
        """Under FSDP, every rank joins in gathering the trained adapter; rank 0 puts it on a fresh
        unsharded copy of the base (on its GPU if that fits beside the shards, else on the CPU) that
        `finish` evaluates, merges and saves."""
        if not self.parallel.sharded:
            return
        trained = trainable_state(self.model)
        world = self.ctx.world
        if not world.main:
            return
        base = load_model(self.spec.base_model, self.ctx.model_cache, torch.device("cpu"), self.ctx.dtype).model
        model = apply_lora(base, self.spec)
        set_trainable(model, trained, "the adapter gathered from the shards")
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        device = world.device if fits_device(weights, world.device) else torch.device("cpu")
        self.model, self.lm = model, model.get_base_model()
        self.parallel = DataParallel(model, World(device=device))
        self.ctx.reporter.on_event(f"adapter gathered from the shards; finishing on {device}", {})

    def finish(self, out: Path, eval_loss: float | None) -> dict[str, Any]:
        """Adapter, perplexities of base/LoRA/merged, merged model. Returns metrics; fills `out`.

        `eval_loss` is the loop's evaluation of the weights the model now holds (the best ones).
        """
        lora_loss = self.evaluate() if eval_loss is None else eval_loss
        return finish_lora(self.model, self.tokenizer, self.data, self.spec, out, lora_loss)

    @property
    def model_dir(self) -> str | None:
        return "merged" if self.spec.output.merge else None


def finish_lora(
    model: Any, tokenizer: Any, data: Datasets, spec: TrainingRunSpec, out: Path, lora_loss: float
) -> dict[str, Any]:
    """Adapter, perplexities of base/LoRA/merged, merged model (when merging degrades within the bound).
    Returns metrics; fills `out`. `lora_loss` is the evaluation loss of the weights the model now holds."""
    lm, pad_id, batch_size = model.get_base_model(), tokenizer.pad_token_id, spec.evaluation.batch_size
    with model.disable_adapter():
        base_loss = evaluation_loss(lm, data.evaluation, pad_id, batch_size)
    save_adapter(model, tokenizer, out / "adapter")
    metrics: dict[str, Any] = {"perplexity_base": perplexity(base_loss), "perplexity_lora": perplexity(lora_loss)}
    if spec.output.merge:
        merged = merge_lora(model)
        merged_loss = evaluation_loss(merged, data.evaluation, pad_id, batch_size)
        metrics["perplexity_merged"] = perplexity(merged_loss)
        metrics["merge_degradation"] = merge_degradation(metrics["perplexity_lora"], metrics["perplexity_merged"])
        if metrics["merge_degradation"] <= spec.output.max_merge_degradation:
            save_model(merged, tokenizer, out / "merged")
    return metrics


def training_vocabulary(ctx: Context, train: list[Example], tokenizer: Any, vocab: int) -> torch.Tensor | None:
    """`spec.draft.vocabulary`: the most frequent tokens of the training outputs plus the special
    tokens, as ascending target ids; None for the whole vocabulary."""
    size = ctx.run.spec.draft.vocabulary
    if not size:
        return None
    counts = token_counts(([t for t in ex.labels if t != IGNORE_INDEX] for ex in train), vocab)
    special = {*tokenizer.all_special_ids, *end_of_turn_ids(tokenizer)}
    ids = draft_vocabulary(counts, min(size, vocab), special)
    covered = float(counts[ids].sum() / counts.sum().clamp_min(1))
    ctx.reporter.on_event(
        f"draft vocabulary: {ids.numel()} of {vocab} tokens, {covered:.1%} of training output tokens "
        f"({int((counts > 0).sum())} distinct)",
        {"draft_vocabulary": ids.numel(), "draft_vocabulary_coverage": covered},
    )
    return ids.to(ctx.device)
