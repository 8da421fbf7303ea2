"""`TeacherGeneration`: batch generation of teacher outputs, one pod per shard."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from ._base import GREEDY_BELOW, MIN_FACTOR, ArtifactUri, CacheOutcomes, DatasetUri, Model, Status
from .sources import ModelSource
from .workload import STATUS_COLUMNS, Dtype, JobSpec, Resource

#: The seed's fix for runaway teacher outputs: chat-turn markers that end an answer.
SEED_STOP_STRINGS = ["<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "\nUser:", "\nHuman:"]


class Sampling(Model):
    """Sampling parameters. Defaults are the seed's fix for 84% of greedy outputs hitting the length limit."""

    temperature: float = Field(
        0.3, ge=0, le=10, description=f"Softmax temperature; 0 (and anything below {GREEDY_BELOW:g}) is greedy."
    )
    max_tokens: int = Field(512, ge=1, le=131072, description="Maximum new tokens per output.")
    repetition_penalty: float = Field(
        1.2, ge=MIN_FACTOR, le=10, description=f"CTRL-style repetition penalty (at least {MIN_FACTOR:g}); 1 disables."
    )
    top_p: float = Field(1.0, ge=MIN_FACTOR, le=1, description=f"Nucleus sampling mass (at least {MIN_FACTOR:g}).")
    top_k: int | None = Field(None, ge=1, description="Sample from the k most likely tokens only.")
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: list(SEED_STOP_STRINGS),
        max_length=32,
        description="Strings that end an output (not included in it). The model's EOS/end-of-turn tokens always stop.",
    )
    seed: int = Field(0, ge=0, description="Sampling seed; the same seed gives the same outputs.")
    n: int = Field(
        1,
        ge=1,
        le=64,
        description="Outputs per prompt, each drawn with a seed of its own. With n > 1 each input `id` gives "
        "the records `<id>#0` … `<id>#<n-1>`.",
    )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @model_validator(mode="after")
    def _draws(self) -> Sampling:
        if self.n > 1 and self.greedy:
            raise ValueError("`n` > 1 needs `temperature` > 0: greedy outputs of one prompt are all the same")
        return self


class GenerationDataset(Model):
    uri: DatasetUri = Field(
        description="Prompts: JSONL or Parquet records `{id, input}`, or chat records `{messages}` (the "
        "conversation to answer; a final assistant turn is left out); `domain` and `difficulty` are optional."
    )
    max_examples: int | None = Field(None, ge=1, description="Use only the first N records.")


class GenerationOutput(Model):
    uri: ArtifactUri = Field(description="Prefix that receives the shard files, `stats.json` and the manifest.")


class Quality(Model):
    min_natural_stop_rate: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Share of outputs that must end naturally (EOS or stop string) rather than at "
        "`maxTokens`; below it `QualityCheckPassed` is False.",
    )
    fail_on_quality: bool = Field(
        False, description="Fail the resource (not just the condition) when the quality check fails."
    )


class TeacherGenerationSpec(JobSpec):
    model: ModelSource = Field(description="The teacher model.")
    dataset: GenerationDataset = Field(description="Prompts to answer.")
    output: GenerationOutput = Field(description="Where outputs go.")
    engine: Literal["vllm", "transformers"] = Field(
        "vllm", description="`vllm` (production) or `transformers` (fallback, CPU-capable)."
    )
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling parameters.")
    shards: int = Field(
        1, ge=1, le=1024, description="Indexed Job completions: the input is split in this many shards."
    )
    parallelism: int | None = Field(None, ge=1, le=1024, description="Shards running at once (default: all).")
    tensor_parallel_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="GPUs per vLLM instance (default: all of the shard's `resources.gpus`, so a shard uses "
        "every GPU it is given; 1 on CPU). The `transformers` engine uses one GPU.",
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM's share of GPU memory.")
    max_model_len: int | None = Field(None, ge=16, description="vLLM context length (prompt + output).")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts per `generate` call (transformers engine).")
    dtype: Dtype = Field("auto", description="Weights dtype: `auto` is bfloat16 on GPU, float32 on CPU.")
    quality: Quality = Field(default_factory=Quality, description="Quality gate.")

    @model_validator(mode="after")
    def _fits(self) -> TeacherGenerationSpec:
        if self.max_model_len is not None and self.sampling.max_tokens >= self.max_model_len:
            raise ValueError("`sampling.maxTokens` must be smaller than `maxModelLen` (room for the prompt)")
        if self.engine == "vllm" and (self.tensor_parallel_size or 1) > max(self.resources.gpus, 1):
            raise ValueError("`tensorParallelSize` cannot exceed `resources.gpus`")
        return self


class ShardCounts(Model):
    total: int = Field(0, description="Shards in the Job.")
    succeeded: int = Field(0, description="Shards finished.")
    failed: int = Field(0, description="Shard pods failed (retries included).")
    active: int = Field(0, description="Shards running.")


class GenerationStats(Model):
    examples_done: int | None = Field(None, description="Outputs written.")
    examples_total: int | None = Field(None, description="Outputs to write: inputs × `sampling.n`.")
    natural_stop_rate: float | None = Field(None, description="Share of outputs ending naturally.")
    truncated_rate: float | None = Field(None, description="Share of outputs cut at `maxTokens`.")
    mean_output_tokens: float | None = Field(None, description="Mean generated tokens per output.")
    examples_per_second: float | None = Field(None, description="Throughput in examples.")
    tokens_per_second: float | None = Field(None, description="Throughput in generated tokens.")


class GenerationProgress(Model):
    """What the running shards last reported; `stats` holds the live counts and throughputs."""

    eta_seconds: float | None = Field(None, description="Estimated seconds until every reporting shard is done.")
    shards_reporting: int | None = Field(None, description="Shards that have reported progress.")
    update_time: str | None = Field(None, description="When a shard last reported progress (RFC 3339).")


class TeacherGenerationStatus(Status):
    shards: ShardCounts | None = Field(None, description="Shard counts.")
    progress: GenerationProgress | None = Field(None, description="Live progress while the shards run.")
    stats: GenerationStats | None = Field(None, description="Generation statistics.")
    output_uri: str | None = Field(None, description="Prefix holding the outputs once complete.")
    resolved_model: str | None = Field(None, description="URI the teacher model was resolved to.")
    model_digest: str | None = Field(
        None,
        description="The teacher weights generated with: their `_manifest.json` sha256, or `hf:<commit>` for an "
        "`hf://` model (the exact Hub revision); several, comma-separated, when shards loaded different ones "
        "(a branch moved during the run).",
    )
    job_name: str | None = Field(None, description="The Job running this generation of the spec.")
    model_cache: CacheOutcomes | None = Field(
        None,
        description="Whether the teacher came from the model cache, by URI: `hit` when every shard found it "
        "there, `miss` when a shard downloaded it; models read in place (`file://`, `pvc://`) are not listed.",
    )


class TeacherGeneration(Resource[TeacherGenerationSpec, TeacherGenerationStatus]):
    """Batch generation of teacher outputs for a dataset, sharded over an Indexed Job."""

    plural: ClassVar[str] = "teachergenerations"
    short_name: ClassVar[str] = "tg"
    component: ClassVar[str] = "generator"
    printer_columns: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("Engine", "string", ".spec.engine"),
        *STATUS_COLUMNS,
        ("Done", "integer", ".status.stats.examplesDone"),
        ("Total", "integer", ".status.stats.examplesTotal"),
        ("Natural-Stop", "number", ".status.stats.naturalStopRate"),
    )
    immutable_spec: ClassVar[tuple[str, ...]] = (
        "model",
        "dataset",
        "output",
        "engine",
        "sampling",
        "shards",
        "quality",
        "dtype",
        "maxModelLen",
        "storage",
    )

    kind: Literal["TeacherGeneration"] = "TeacherGeneration"
