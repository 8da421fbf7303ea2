"""What a component reports when it exits: the JSON summary in its termination message.

The component writes it with `metaspec.runtime.write_summary` (camelCase or snake_case keys); the
executor that ran it (the operator from the pod's termination message, `metaspec local` from a file)
reads it into these models and folds it into the resource's status (`metaspec.status`).

A summary is read leniently: unknown keys are ignored (a component may report more than the status
shows) and an invalid part is dropped with a warning, so one bad number never hides the rest.
"""

from __future__ import annotations

import logging
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._base import CacheOutcomes, Model
from .generation import GenerationStats
from .serving import ServedModel
from .training import TrainingArtifacts, TrainingMetrics, TrainingProgress

log = logging.getLogger(__name__)


def _known_keys(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the keys `model` does not know (kept all when the model allows extras)."""
    if model.model_config.get("extra") == "allow":
        return data
    names = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
    return {k: v for k, v in data.items() if k in names}


class Summary(Model):
    """Base of the summaries: unknown keys ignored, invalid parts dropped by `read`."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def read(cls, data: Any) -> Self:
        """The summary from a component's JSON object; an invalid field is dropped with a warning."""
        if not isinstance(data, dict):
            return cls()
        kept: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = next((k for k in (field.alias, name) if k and k in data), None)
            if key is None:
                continue
            value = data[key]
            nested = next((a for a in getattr(field.annotation, "__args__", ()) if isinstance(a, type)), None)
            if isinstance(value, dict) and nested is not None and issubclass(nested, BaseModel):
                value = _known_keys(nested, value)
            try:
                cls.model_validate({key: value})
            except ValidationError as e:
                log.warning("ignoring an invalid %s in a component summary: %s", key, e)
                continue
            kept[key] = value
        return cls.model_validate(kept)


class FailureSummary(Summary):
    """What any component says about how it ended (`run_component` writes the failure fields)."""

    exit_code: int | None = Field(None, description="The main container's exit code.")
    reason: str | None = Field(None, description="The error's type, e.g. `PermanentError`.")
    message: str | None = Field(None, description="The error, or the log tail when no summary was written.")
    error_kind: str | None = Field(None, description="`permanent`, `quality`, `transient` or `unexpected`.")

    @property
    def failed(self) -> bool:
        return self.exit_code not in (0, None)


class TrainingSummary(Summary):
    """A TrainingRun's result. A dependent starts from `artifacts.model`, so a trainer must report it."""

    artifacts: TrainingArtifacts | None = Field(None, description="Artifact URIs.")
    metrics: TrainingMetrics | None = Field(None, description="Key metrics.")
    progress: TrainingProgress | None = Field(None, description="Training progress.")
    model_cache: CacheOutcomes | None = Field(None, description="Model URI -> `hit` or `miss` in the model cache.")


class ProgressReport(Model):
    """What a running component posts to the operator's progress endpoint (`metaspec.progress`): a run's
    pods their progress, a serving pod what it loaded once its models are in memory.

    Unknown keys are ignored (a newer component may report more); a known key with a wrong type or a
    negative count refuses the whole report, naming the field.
    """

    model_config = ConfigDict(extra="ignore")

    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(None, ge=0, allow_inf_nan=False, description="Epochs done.")
    loss: float | None = Field(None, allow_inf_nan=False, description="Latest training loss.")
    eval_loss: float | None = Field(None, allow_inf_nan=False, description="Best evaluation loss so far.")
    tokens_per_second: float | None = Field(None, ge=0, allow_inf_nan=False, description="Throughput.")
    examples_done: int | None = Field(None, ge=0, description="Outputs written by this shard.")
    examples_total: int | None = Field(None, ge=0, description="Outputs this shard writes (inputs × `sampling.n`).")
    examples_per_second: float | None = Field(None, ge=0, allow_inf_nan=False, description="Throughput.")
    eta_seconds: float | None = Field(None, ge=0, allow_inf_nan=False, description="Estimated seconds left.")
    target: ServedModel | None = Field(None, description="A serving pod's target, as loaded: URI and digest.")
    draft: ServedModel | None = Field(None, description="A serving pod's draft, as loaded: URI and digest.")
    model_cache: CacheOutcomes | None = Field(
        None, description="A serving pod's models: URI -> `hit` or `miss` in the model cache."
    )
    confidence_threshold: float | None = Field(
        None, gt=0, le=1, description="A serving pod's `routing.confidenceThreshold: auto`, as resolved."
    )
    threshold_calibrated: bool | None = Field(
        None, description="Whether that threshold is the draft's calibrated one (false: the default)."
    )


class QualityVerdict(Summary):
    passed: bool = Field(description="Whether the shard's outputs passed the quality gate.")
    message: str = Field("", description="Why, in words.")


class ShardSummary(Summary):
    """One TeacherGeneration shard's result."""

    output_uri: str | None = Field(None, description="Prefix the shard wrote to (default: `spec.output.uri`).")
    stats: GenerationStats | None = Field(None, description="This shard's statistics.")
    quality: QualityVerdict | None = Field(None, description="The shard's own quality verdict.")
    model_digest: str | None = Field(
        None, description="The teacher weights this attempt loaded: manifest sha256, or `hf:<commit>`."
    )
    model_cache: CacheOutcomes | None = Field(None, description="Model URI -> `hit` or `miss` in the model cache.")
