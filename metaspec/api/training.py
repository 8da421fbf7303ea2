"""`TrainingRun`: ANIL-MAML LoRA fine-tuning of a base model, or causal-LM training of a draft."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ._base import ArtifactUri, CacheOutcomes, DatasetUri, Model, Resources, Status
from .serving import ThresholdCalibration
from .sources import JobSource, ModelSource
from .workload import STATUS_COLUMNS, Dtype, JobSpec, Resource

#: Fields of Hugging Face loaders that load a quantized model; spelled out so the refusal can say why.
QUANTIZED_KEYS = (
    "loadIn4bit",
    "loadIn8bit",
    "load_in_4bit",
    "load_in_8bit",
    "quantization",
    "quantizationConfig",
)
_QUANTIZED_NAME = re.compile(r"(gptq|awq|bnb|bitsandbytes|[-_.](int[48]|[48]bit|nf4|fp4)([-_./]|$)|gguf)", re.I)
QUANTIZED_REASON = (
    "training on quantized weights breaks after merging (the LoRA delta is learned against the "
    "dequantization error and the merged model degrades); train on the bf16/fp16/fp32 base and "
    "quantize only after merging"
)
#: A module name or suffix (`q_proj`, `model.layers.0.mlp`): no spaces, bounded.
ModuleName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
SEED_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class BaseModelSource(ModelSource):
    """The model training starts from. Full-precision weights only."""

    dtype: Dtype = Field("auto", description="Training dtype: `auto` is bfloat16 on GPU and float32 on CPU.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_quantized(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in QUANTIZED_KEYS:
                if key in data:
                    raise ValueError(f"`{key}`: quantized base models are refused: {QUANTIZED_REASON}")
            if str(data.get("dtype", "")).lower() in {"int4", "int8", "nf4", "fp4", "fp8", "float8"}:
                raise ValueError(f"`dtype: {data['dtype']}` is quantized: {QUANTIZED_REASON}")
            if isinstance(data.get("uri"), str) and _QUANTIZED_NAME.search(data["uri"]):
                raise ValueError(f"`uri` {data['uri']!r} names a quantized model: {QUANTIZED_REASON}")
        return data


class DatasetSource(Model):
    """Training data: records `{id, input, output}` or chat records `{messages}`; `domain` and `difficulty`
    are optional."""

    uri: DatasetUri | None = Field(
        None,
        description="A JSONL or Parquet file, or a prefix of `*.jsonl`/`*.parquet` shards (with a manifest); "
        "`builtin://train` is the bundled set.",
    )
    from_: JobSource | None = Field(
        None, alias="from", description="Use the outputs of this `TeacherGeneration` once it has succeeded."
    )
    skip_invalid: bool = Field(
        False, description="Skip invalid lines (and report their count) instead of failing before training."
    )
    max_examples: int | None = Field(None, ge=1, description="Use only the first N valid examples.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSource:
        if self.uri is not None and self.from_ is not None:
            raise ValueError("give either `uri` or `from`, not both")
        if self.uri is None and self.from_ is None:
            raise ValueError("give one of `uri` or `from`")
        if self.from_ is not None and (self.from_.teacher_generation is None or self.from_.training_run):
            raise ValueError("`from` of a dataset must name a `teacherGeneration`")
        return self


class Evaluation(Model):
    uri: DatasetUri = Field("builtin://eval", description="Held-out JSONL set for evaluation loss and perplexity.")
    max_examples: int | None = Field(None, ge=1, description="Evaluate on the first N examples only.")
    batch_size: int = Field(8, ge=1, le=1024, description="Sequences per evaluation forward pass.")


class Lora(Model):
    r: int = Field(64, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(128, gt=0, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: list(SEED_TARGET_MODULES),
        min_length=1,
        max_length=64,
        description="Module names (suffixes) that get LoRA adapters.",
    )


class Anil(Model):
    """ANIL-MAML (Raghu et al. 2020): the inner loop adapts only the head, the outer loop all LoRA weights."""

    inner_steps: int = Field(2, ge=0, le=100, description="SGD steps on the support loss per task.")
    inner_lr: float = Field(5e-3, gt=0, le=10, description="Learning rate of the inner (head) SGD steps.")
    support_size: int = Field(4, ge=1, le=1024, description="Examples per task's support set.")
    query_size: int = Field(4, ge=1, le=1024, description="Examples per task's query set.")
    tasks_per_batch: int = Field(1, ge=1, le=1024, description="Tasks whose query losses are averaged per step.")
    adapt_modules: list[ModuleName] = Field(
        default_factory=lambda: ["lm_head"], min_length=1, description="Modules adapted in the inner loop."
    )
    first_order: bool = Field(False, description="Drop second-order terms through the inner loop (FOMAML).")
    support_mix: str = Field(
        "3:1",
        pattern=r"^[0-9]+:[0-9]+$",
        description="Easy:hard ratio within support and query sets, e.g. `3:1`.",
    )
    head_delta_rank: int | None = Field(
        None,
        ge=1,
        description="Adapt a rank-r delta of the head instead of the full head (cheaper for big vocabularies).",
    )
    balance: Literal["samples", "tokens"] = Field(
        "samples",
        description="How easy and hard examples weigh in each set's loss. `samples`: every target token "
        "alike, so long hard answers dominate by tokens. `tokens`: examples are weighted so that easy and hard "
        "target tokens carry `supportMix`'s shares of the loss.",
    )

    @property
    def mix(self) -> tuple[int, int]:
        easy, hard = (int(x) for x in self.support_mix.split(":"))
        return easy, hard

    @field_validator("support_mix")
    @classmethod
    def _nonzero_mix(cls, value: str) -> str:
        if all(int(x) == 0 for x in value.split(":")):
            raise ValueError("at least one side of the easy:hard mix must be positive")
        return value


class Optimization(Model):
    outer_lr: float = Field(2e-4, gt=0, le=1, description="AdamW learning rate of the LoRA (outer) update.")
    epochs: float = Field(1, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(4, ge=1, le=4096, description="Sequences per step (lora-sft, causal-lm).")
    max_seq_length: int = Field(
        2048, ge=16, le=1_048_576, description="Tokens per sequence; longer ones are truncated."
    )
    gradient_accumulation: int = Field(1, ge=1, le=4096, description="Steps (or task batches) per optimizer update.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps with linear warm-up.")
    weight_decay: float = Field(
        0.0, ge=0, le=1, description="AdamW weight decay (decoupled: each step scales weights by 1 − lr·decay)."
    )
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="Gradient clipping norm.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule.")
    early_stopping_patience: int = Field(
        2, ge=0, description="Evaluations without improvement before stopping; 0 disables early stopping."
    )
    eval_steps: int = Field(50, ge=1, description="Evaluate every N optimizer steps.")
    checkpoint_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer (one graph that every layer reuses) and, for lora-sft "
        "and anil-maml, the loss over each chunk of output-head logits: the first steps pay a one-off "
        "compile of tens of seconds, later steps fuse the element-wise work around the matmuls (2.0x the "
        "checkpointed LoRA step on an H200 for an 8B model). Needs a C++ compiler on CPU.",
    )
    seed: int = Field(42, ge=0, description="Seed of sampling, dropout and initialisation.")


class Draft(Model):
    """How a causal-lm draft model is made."""

    architecture: Literal["layers", "eagle3"] = Field(
        "layers",
        description="`layers`: a causal LM of its own (see `initFrom`). `eagle3`: a feature-level draft "
        "(EAGLE-3) over `baseModel`, the target: one decoder layer reading the target's hidden states at "
        "three depths, fused by a linear layer, trained with the target as teacher; saved in the layout "
        "vLLM's `method: eagle3` loads.",
    )
    vocabulary: int | None = Field(
        None,
        ge=16,
        le=1_048_576,
        description="Rows of the draft's head: the N most frequent tokens of the training outputs plus the "
        "special tokens (FR-Spec / EAGLE-3 draft vocabulary). Verification uses the target's full "
        "distribution, so output is unchanged. Unset: the whole vocabulary.",
    )
    unroll: int = Field(
        3,
        ge=1,
        le=8,
        description="`eagle3`: draft steps unrolled per position in training (EAGLE-3's training-time "
        "test: steps after the first read the draft's own output features). 1: teacher forcing only.",
    )
    init_from: Literal["pretrained", "target"] = Field(
        "pretrained",
        description="`pretrained`: fine-tune `baseModel` as it is. `target`: derive the draft from "
        "`baseModel` (a target model): its embeddings, first `numLayers` layers, final norm and head.",
    )
    num_layers: int | None = Field(None, ge=1, le=512, description="Layers kept when deriving from the target.")
    objective: Literal["next-token", "distill"] = Field(
        "next-token",
        description="`next-token`: cross-entropy on teacher text. `distill`: KL to the target's logits "
        "(needs `initFrom: target` or `architecture: eagle3`).",
    )
    distill_temperature: float = Field(1.0, ge=0.01, le=100, description="Softmax temperature of `distill`.")

    @model_validator(mode="after")
    def _consistent(self) -> Draft:
        if self.architecture == "eagle3":
            if self.init_from != "pretrained" or self.num_layers is not None:
                raise ValueError("`architecture: eagle3` is built over `baseModel` (the target): leave out "
                                 "`initFrom` and `numLayers`")  # fmt: skip
            return self
        if self.unroll != 3:
            raise ValueError("`unroll` applies only to `architecture: eagle3`")
        if self.init_from == "target" and self.num_layers is None:
            raise ValueError("`numLayers` is required with `initFrom: target`")
        if self.init_from == "pretrained" and self.num_layers is not None:
            raise ValueError("`numLayers` applies only with `initFrom: target`")
        if self.objective == "distill" and self.init_from != "target":
            raise ValueError("`objective: distill` needs `initFrom: target` (the target is the teacher)")
        return self


class TrainingOutput(Model):
    uri: ArtifactUri = Field(description="Prefix that receives adapter, merged model, checkpoints and metrics.")
    merge: bool = Field(True, description="Merge the LoRA adapter into the base and save the merged model.")
    max_merge_degradation: float = Field(
        0.05,
        ge=0,
        description="Fail the run if merged perplexity exceeds LoRA perplexity by more than this share.",
    )


class TrainingResources(Resources):
    """Compute for each pod, and how many pods train together."""

    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Pods (machines) training together, each with `gpus` GPUs and one training process per "
        "GPU: an Indexed Job of `nodes` pods that meet through a headless Service. The global batch "
        "(`optimization.batchSize`, `anil.tasksPerBatch`) is shared among the `nodes × gpus` processes.",
    )

    @property
    def processes_per_node(self) -> int:
        return max(self.gpus, 1)


class Distributed(Model):
    """How the training processes (`resources.nodes × gpus`) share the model."""

    strategy: Literal["ddp", "fsdp"] | None = Field(
        None,
        description="`ddp`: every process holds the whole model and the gradients are all-reduced. "
        "`fsdp`: FSDP2 (`fully_shard`) shards the parameters, gradients and optimizer state over the "
        "processes, each decoder layer gathered only while it computes (LoRA methods only). Unset: `fsdp` "
        "when several GPUs train a LoRA method whose model and training state do not fit one GPU's free "
        "memory, `ddp` otherwise.",
    )


class TrainingRunSpec(JobSpec):
    resources: TrainingResources = Field(
        default_factory=TrainingResources,
        description="Compute per pod and pods per run; more than one GPU or pod trains data-parallel.",
    )
    method: Literal["anil-maml", "lora-sft", "causal-lm"] = Field(
        "anil-maml",
        description="Training recipe: `anil-maml` (LoRA, meta-learned per domain), `lora-sft` (LoRA, plain "
        "supervised fine-tuning: the baseline), `causal-lm` (full training of a draft model).",
    )
    base_model: BaseModelSource = Field(description="Model to train. Full precision only.")
    dataset: DatasetSource = Field(description="Training data.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Held-out evaluation set.")
    lora: Lora = Field(default_factory=Lora, description="LoRA adapters (anil-maml, lora-sft).")
    anil: Anil = Field(default_factory=Anil, description="Inner/outer loop settings (anil-maml).")
    optimization: Optimization = Field(default_factory=Optimization, description="Optimizer and schedule.")
    draft: Draft = Field(default_factory=Draft, description="Draft construction (causal-lm).")
    output: TrainingOutput = Field(description="Where artifacts go.")
    distributed: Distributed = Field(
        default_factory=Distributed, description="How several training processes share the model."
    )

    @model_validator(mode="after")
    def _method_fields(self) -> TrainingRunSpec:
        if self.method != "causal-lm" and self.draft != Draft():
            raise ValueError("`draft` applies only to `method: causal-lm`")
        if self.method == "lora-sft" and self.anil != Anil():
            raise ValueError("`anil` applies only to `method: anil-maml`")
        self._check_shared_batch()
        self._check_fsdp()
        return self

    def _check_fsdp(self) -> None:
        if self.distributed.strategy != "fsdp":
            return
        if self.method == "causal-lm":
            raise ValueError(
                "`distributed.strategy: fsdp` applies to the LoRA methods (`anil-maml`, `lora-sft`); a "
                "`causal-lm` draft is small by design and trains with `ddp`: leave `distributed.strategy` unset"
            )
        if self.optimization.compile:
            raise ValueError(
                "`distributed.strategy: fsdp` does not combine with `optimization.compile` (the compiled layers "
                "would trace FSDP's gather hooks): set `optimization.compile: false` or `distributed.strategy: ddp`"
            )

    def _check_shared_batch(self) -> None:
        """Every training process needs a share of each global batch."""
        processes = self.resources.nodes * self.resources.processes_per_node
        field, size = (
            ("anil.tasksPerBatch", self.anil.tasks_per_batch)
            if self.method == "anil-maml"
            else ("optimization.batchSize", self.optimization.batch_size)
        )
        if size < processes:
            raise ValueError(
                f"`{field}` ({size}) is below the {processes} training processes (resources.nodes × gpus): "
                f"each trains on its share of every batch; raise it to at least {processes}"
            )


class TrainingProgress(Model):
    step: int = Field(0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, description="Optimizer steps planned.")
    epoch: float | None = Field(None, description="Epochs done (fractional).")
    eta_seconds: float | None = Field(
        None, description="Estimated seconds to the last step, while the pod reports (live progress)."
    )
    update_time: str | None = Field(None, description="When the running pod last reported progress (RFC 3339).")


class TrainingMetrics(Model):
    model_config = ConfigDict(extra="allow")

    train_loss: float | None = Field(None, description="Latest training (query) loss.")
    eval_loss: float | None = Field(None, description="Best evaluation loss.")
    perplexity_base: float | None = Field(None, description="Evaluation perplexity of the base model.")
    perplexity_lora: float | None = Field(None, description="Evaluation perplexity with the LoRA adapter.")
    perplexity_merged: float | None = Field(None, description="Evaluation perplexity of the merged model.")
    merge_degradation: float | None = Field(None, description="(merged − LoRA) / LoRA perplexity.")
    perplexity_model: float | None = Field(
        None, description="Evaluation perplexity of the trained model (causal-lm: the draft after training)."
    )
    draft_agreement: float | None = Field(
        None,
        description="`eagle3`: share of held-out positions where the draft's first proposal is the target's "
        "greedy token (greedy acceptance of a round's first proposal).",
    )
    calibration: ThresholdCalibration | None = Field(
        None,
        description="causal-lm drafts cut from their target: the recommended `routing.confidenceThreshold`, "
        "calibrated on the evaluation set (also saved with the draft, where `confidenceThreshold: auto` reads it).",
    )
    hard_token_share: float | None = Field(None, description="Share of training tokens from hard examples.")
    tokens_per_second: float | None = Field(None, description="Training throughput.")


class TrainingArtifacts(Model):
    model: str | None = Field(None, description="The usable model: merged model, or the trained draft.")
    adapter: str | None = Field(None, description="The LoRA adapter.")
    metrics: str | None = Field(None, description="`metrics.json`.")
    last_checkpoint: str | None = Field(None, description="Newest complete checkpoint.")
    manifest_digest: str | None = Field(None, description="sha256 of the output's `_manifest.json`.")
    base_model_digest: str | None = Field(
        None,
        description="The base weights trained from: their `_manifest.json` sha256, or `hf:<commit>` for an `hf://` "
        "model (the exact Hub revision).",
    )


class TrainingRunStatus(Status):
    progress: TrainingProgress | None = Field(None, description="Training progress.")
    metrics: TrainingMetrics | None = Field(None, description="Key metrics.")
    artifacts: TrainingArtifacts | None = Field(None, description="Artifact URIs.")
    resolved_base_model: str | None = Field(None, description="URI the base model was resolved to.")
    resolved_dataset: str | None = Field(None, description="URI the dataset was resolved to.")
    job_name: str | None = Field(None, description="The Job running this generation of the spec.")
    model_cache: CacheOutcomes | None = Field(
        None,
        description="Whether the base model came from the model cache (`hit`) or was downloaded (`miss`), by "
        "URI; models read in place (`file://`, `pvc://`) are not listed.",
    )


class TrainingRun(Resource[TrainingRunSpec, TrainingRunStatus]):
    """A fine-tuning run: ANIL-MAML LoRA on a base model, or causal-LM training of a draft model."""

    plural: ClassVar[str] = "trainingruns"
    short_name: ClassVar[str] = "trun"
    component: ClassVar[str] = "trainer"
    printer_columns: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("Method", "string", ".spec.method"),
        *STATUS_COLUMNS,
        ("Step", "integer", ".status.progress.step"),
        ("Total", "integer", ".status.progress.totalSteps"),
        ("Eval-Loss", "number", ".status.metrics.evalLoss"),
    )
    immutable_spec: ClassVar[tuple[str, ...]] = (
        "method",
        "baseModel",
        "dataset",
        "evaluation",
        "lora",
        "anil",
        "optimization",
        "draft",
        "output",
        "storage",
    )

    kind: Literal["TrainingRun"] = "TrainingRun"
