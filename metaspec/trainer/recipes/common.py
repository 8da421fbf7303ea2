"""What both recipes need before training: the run's context, its model and its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metaspec.api import TrainingRun
from metaspec.records import InvalidData
from metaspec.runtime import PermanentError

from ..data import Example, load_training_data
from ..progress import Reporter


@dataclass
class Context:
    run: TrainingRun
    device: torch.device
    dtype: torch.dtype
    work_dir: Path
    reporter: Reporter

    @property
    def cache(self) -> Path:
        return self.work_dir / "cache"


@dataclass
class Datasets:
    train: list[Example]
    evaluation: list[Example]
    report: dict[str, Any]


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


def body_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
