"""`SpecServe`: the speculative router (target + draft) behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from ._base import (
    MAX_NAME_LENGTH,
    MIN_FACTOR,
    SERVICE_NAME_PATTERN,
    CacheOutcomes,
    Model,
    ObjectMeta,
    SecretRef,
    Status,
)
from .sources import ModelSource
from .workload import STATUS_COLUMNS, Dtype, Resource, WorkloadSpec

#: The threshold of `first-token` and `per-token` when `confidenceThreshold` is left out, and when `auto`
#: finds no calibration in the draft (the seed's choice).
DEFAULT_CONFIDENCE_THRESHOLD = 0.7
#: `confidenceThreshold: auto`: the threshold calibrated on held-out prompts, read from the draft artifact.
AUTO = "auto"
#: The file in a draft's folder that holds its `ThresholdCalibration` (JSON, covered by its manifest).
CALIBRATION_FILE = "calibration.json"
#: The policies that read `confidenceThreshold`: the draft model's confidence (prompt lookup has none).
THRESHOLD_POLICIES = ("first-token", "per-token")


class ThresholdCalibration(Model):
    """A draft's recommended `routing.confidenceThreshold`, calibrated on held-out prompts when it was trained.

    Each held-out prompt gives the draft's first-token confidence, the draft's acceptance rate α on the
    answer (Leviathan et al.'s α at temperature 1: the mean over positions of Σ min(p, q)) and the answer's
    length; with the cost c of one proposal measured on the trainer's device, Leviathan's expected speedup
    of each prompt is the engine's cost model (`metaspec.server.engine.routing.speedup`). The threshold is
    the confidence above which speculating saves the most decoding time over those prompts; 1 when no
    threshold saves any (speculate only where the draft is certain).
    """

    model_config = ConfigDict(extra="allow")  # a newer trainer may add fields an older server ignores

    confidence_threshold: float = Field(gt=0, le=1, description="The recommended `routing.confidenceThreshold`.")
    max_speculative_tokens: int = Field(ge=1, description="k the calibration assumed (proposals per round).")
    cost: float = Field(
        ge=0,
        description="c: one proposal's cost relative to a target decode step (draft step and what it adds to the "
        "verify pass), measured on the trainer's device at batch 1. Serving hardware may differ.",
    )
    prompts: int = Field(ge=0, description="Held-out prompts calibrated on.")
    speculated_share: float = Field(
        ge=0, le=1, description="Share of those prompts whose first-token confidence reaches the threshold."
    )
    predicted_speedup: float = Field(
        gt=0,
        description="Predicted `first-token` throughput over target-only decoding on those prompts with the "
        "threshold (decode time only).",
    )


# Kubernetes' structural schemas cannot type "a number or a string". Left untyped (any JSON value), the
# API server still applies the range to numbers and the pattern to strings (each keyword checks only
# values of its own type); anything else reaches the models, which refuse it naming the field.
ConfidenceThreshold = Annotated[
    float | Literal["auto"],
    WithJsonSchema(
        {"x-kubernetes-preserve-unknown-fields": True, "exclusiveMinimum": 0, "maximum": 1, "pattern": "^auto$"}
    ),
]


class Routing(Model):
    """When to speculate. Every policy keeps the output distribution exact; only speed changes."""

    policy: Literal["adaptive", "first-token", "per-token", "always", "never"] = Field(
        "adaptive",
        description="`adaptive` (default): each replica measures, as it serves, the draft's acceptance rate "
        "and what a verify pass of each width costs at the current batch size, and speculates (choosing k ≤ "
        "maxSpeculativeTokens, and padding short rounds to the width it measured fastest) only while "
        "Leviathan's expected speedup exceeds 1; where the draft does not pay "
        "it costs its probes, each with the draft's catch-up on the request so far, held to about 1% of the "
        "decoding time. With `promptLookup` in front of a draft, each proposer is measured and decided apart, "
        "so lookup can speculate while a draft that does not pay stays off. `first-token`: speculate for the "
        "whole request if the draft's first-token confidence ≥ threshold (0.7 was the seed's choice), else "
        "target only; costs one draft prefill per request. `per-token`: each round drafts while confidence ≥ threshold; costs at "
        "least one draft step per round, even when it stops at once. `always`: k draft steps and a "
        "(k+1)-token verify per round; pays only when the draft's acceptance covers them. `never`: target "
        "only, no draft cost. None changes the output distribution.",
    )
    confidence_threshold: ConfidenceThreshold = Field(
        DEFAULT_CONFIDENCE_THRESHOLD,
        description="Draft max-probability needed to speculate (0 < t ≤ 1): `first-token` and `per-token` only. "
        "`auto`: the threshold the draft's training calibrated on held-out prompts, read from the draft "
        f"artifact's `{CALIBRATION_FILE}` (a causal-lm draft cut from its target publishes one, also in its "
        "TrainingRun's `status.metrics.calibration`); a draft without one is served at "
        f"{DEFAULT_CONFIDENCE_THRESHOLD}, with condition `ConfidenceThresholdCalibrated` False and a Warning "
        "Event (reason `DraftHasNoCalibration`, reported by the serving pods of `engine: metaspec`).",
    )
    max_speculative_tokens: int = Field(5, ge=1, le=64, description="Draft tokens proposed per round (k).")
    # Unset: `adaptive` (the default) finds per batch size whether speculation pays on the replica's own
    # hardware. A fixed default would be hardware-specific: on the 2-core CPU benchmark `always` lost at
    # every batch size (1 and 4: 0.28× and 0.31× target-only, docs/benchmarks.md), which would make it 0.
    max_speculative_batch: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="Speculate only while at most this many sequences decode together; above it every "
        "sequence decodes target-only (a large batch is compute-bound, where verifying k + 1 tokens per "
        "sequence costs about k + 1 plain steps). Unset: at any batch size. 0: never.",
    )

    @field_validator("confidence_threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: object) -> object:
        """One message for every bad value, instead of one per member of the union."""
        if value == AUTO or (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1):
            return value
        raise ValueError(f"must be a number with 0 < t ≤ 1, or `{AUTO}`; got {value!r}")


class ServeSampling(Model):
    """Defaults for requests that leave a parameter out, and the limits every request must respect."""

    temperature: float = Field(
        1.0,
        ge=0,
        le=10,
        description="Temperature of requests that leave it out. 1 by default, OpenAI's own default, so "
        "clients get the sampling they expect from any OpenAI-compatible server; 0 makes such requests "
        "greedy. Both engines apply it (vLLM through `--override-generation-config`).",
    )
    top_p: float = Field(
        1.0, ge=MIN_FACTOR, le=1, description=f"Default nucleus mass (at least {MIN_FACTOR:g}, like a request's)."
    )
    repetition_penalty: float = Field(
        1.0, ge=MIN_FACTOR, le=10, description=f"Default repetition penalty (at least {MIN_FACTOR:g})."
    )
    max_tokens: int = Field(256, ge=1, description="Default `max_tokens`.")
    max_tokens_limit: int = Field(2048, ge=1, description="Largest `max_tokens` a request may ask for.")
    max_prompt_tokens: int = Field(4096, ge=1, description="Longest prompt accepted, in tokens.")
    # 16: on the 2-core CPU benchmark (docs/benchmarks.md, 2026-12-05, unloaded) batching streamed 2.2×,
    # 3.5× and 4.6× the batch-1 engine's tokens at 4, 16 and 64 clients, but 64 put the p95 time to first
    # token at 20 s (a 64-prompt prefill) against 2.6 s at 16; the GPU stage (`bench/gpu.sh serving-load`)
    # measures the knee where memory, not the prefill, bounds it.
    max_concurrency: int = Field(
        16,
        ge=1,
        le=1024,
        description="Requests decoded at once per replica: the batch of the metaspec engine's continuous "
        "batching (1: one request at a time), `--max-num-seqs` of vLLM. More "
        "raises throughput until a step is compute-bound, and each sequence holds its KV cache.",
    )
    max_queue: int = Field(64, ge=0, le=100000, description="Requests waiting beyond that; more get 429.")

    @model_validator(mode="after")
    def _limits(self) -> ServeSampling:
        if self.max_tokens > self.max_tokens_limit:
            raise ValueError("`maxTokens` exceeds `maxTokensLimit`")
        return self


#: Environment variables that carry the API keys into the server container: `METASPEC_API_KEY_0`,
#: `METASPEC_API_KEY_1`, ..., one per entry of `auth.apiKeySecretRef.keys`, set from the Secret.
API_KEY_ENV = "METASPEC_API_KEY"
#: vLLM's own variable for its one API key (`engine: vllm`).
VLLM_API_KEY_ENV = "VLLM_API_KEY"
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]


class ApiKeySecretRef(SecretRef):
    keys: list[SecretKey] = Field(
        default_factory=lambda: ["api-key"],
        min_length=1,
        max_length=8,
        description="Keys of the Secret's data, each holding one API key; any of them is accepted (two "
        "let a key be rotated without downtime). `engine: vllm` takes exactly one.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> ApiKeySecretRef:
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("`keys` lists a key twice")
        return self

    def environment(self) -> list[tuple[str, str]]:
        """(variable, Secret key) for each API key."""
        return [(f"{API_KEY_ENV}_{i}", key) for i, key in enumerate(self.keys)]


class Auth(Model):
    """Who may call the API."""

    api_key_secret_ref: ApiKeySecretRef | None = Field(
        None,
        description="Secret holding the API keys. When set, every API route (`/v1/*`, `/tokenize`, "
        "`/detokenize`) needs `Authorization: Bearer KEY`; the probes (`/health`, `/healthz`, `/readyz`) "
        "and `/version` stay open. Unset: no authentication, so keep `service.type: ClusterIP` (the "
        "operator warns when a NodePort or LoadBalancer Service exposes an unauthenticated server). "
        "The operator never reads the Secret.",
    )
    protect_metrics: bool = Field(
        False, description="Require the API key on `/metrics` too (Prometheus then needs the key)."
    )


class ServiceSpec(Model):
    port: int = Field(8000, ge=1, le=65535, description="Service port.")
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type.")


class RolloutSpec(Model):
    max_surge: int = Field(0, ge=0, description="Extra pods during a rollout; 0 avoids needing 2× GPUs.")
    max_unavailable: int = Field(1, ge=0, description="Pods that may be down during a rollout.")

    @model_validator(mode="after")
    def _progress(self) -> RolloutSpec:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("`maxSurge` and `maxUnavailable` cannot both be 0")
        return self


#: vLLM server options `spec.vllm.extraArgs` may set. The builder sets the rest itself (model, host, port,
#: speculation, dtype, limits, load format, trust), and options that read files or run code are left out.
VLLM_EXTRA_ARGS = frozenset(
    {
        "block-size",
        "cpu-offload-gb",
        "enable-auto-tool-choice",
        "enable-chunked-prefill",
        "enable-log-requests",
        "enable-prefix-caching",
        "gpu-memory-utilization",
        "kv-cache-dtype",
        "max-log-len",
        "max-num-batched-tokens",
        "no-enable-chunked-prefill",
        "no-enable-prefix-caching",
        "pipeline-parallel-size",
        "quantization",
        "reasoning-parser",
        "swap-space",
        "tool-call-parser",
        "uvicorn-log-level",
    }
)


def _extra_arg(arg: str) -> str:
    name, _, value = arg.removeprefix("--").partition("=")
    if not arg.startswith("--") or name not in VLLM_EXTRA_ARGS:
        raise ValueError(f"{arg!r} is not one of the allowed vLLM options: --{', --'.join(sorted(VLLM_EXTRA_ARGS))}")
    if value.startswith("-") or "$(" in value:
        raise ValueError(f"{arg!r}: a value may not start with '-' or contain '$('")
    return arg


class VllmOptions(Model):
    """How vLLM's server runs a `SpecServe` with `engine: vllm`."""

    speculative_method: Literal["draft_model", "eagle3", "ngram"] = Field(
        "draft_model",
        description="vLLM's speculation: `draft_model` (the draft is a small model with the target's "
        "tokenizer), `eagle3` (the draft is an EAGLE-3 head), `ngram` (prompt lookup: no draft model).",
    )
    extra_args: list[Annotated[str, Field(pattern=r"^--[a-z][a-z0-9-]*(=.*)?$"), AfterValidator(_extra_arg)]] = Field(
        default_factory=list,
        max_length=32,
        description="More vLLM server options, each `--name` or `--name=value`, from an allow-list "
        "(e.g. `--enable-prefix-caching`, `--kv-cache-dtype=fp8`, `--max-num-batched-tokens=8192`).",
    )


class PromptLookup(Model):
    """Proposals copied from the request itself (prompt lookup decoding; vLLM's `ngram` method)."""

    min_match: int = Field(1, ge=1, le=16, description="Shortest suffix of the sequence that is looked up (n).")
    max_match: int = Field(5, ge=1, le=16, description="Longest suffix looked up; the longest match wins.")
    history: int = Field(
        0,
        ge=0,
        le=1 << 18,
        description="Tokens of the latest finished requests (prompt and output) each replica keeps and also "
        "looks in, after the request's own tokens: answers in a fixed format or to recurring questions then "
        "speed each other up. Its index takes about 100 bytes per token and match length (16384 tokens, "
        "matches of 1-5 tokens: about 8 MB), up to twice that before the oldest requests are dropped. Other "
        "requests' text changes how fast a request decodes, never what it emits; where tenants must not "
        "learn about each other's text, keep 0 (the default): timing can tell whether a continuation was "
        "seen before.",
    )

    @model_validator(mode="after")
    def _range(self) -> PromptLookup:
        if self.min_match > self.max_match:
            raise ValueError(f"`minMatch` ({self.min_match}) must not exceed `maxMatch` ({self.max_match})")
        return self


class SpecServeSpec(WorkloadSpec):
    target: ModelSource = Field(description="The model whose distribution is served.")
    draft: ModelSource | None = Field(None, description="The draft model; same tokenizer as the target.")
    prompt_lookup: PromptLookup | None = Field(
        None,
        description="Speculate without a draft model: the last n tokens of a sequence (maxMatch ≥ n ≥ "
        "minMatch, longest first) are looked up in its prompt and output so far, and the tokens that "
        "followed their latest earlier occurrence are proposed. Pays where answers repeat their context "
        "(extraction, code edits, templated formats) and costs only the verify pass's extra tokens; the "
        "output distribution is unchanged. Under the `adaptive`, `always` or `never` policies (the others "
        "read a draft model's confidence, which lookup's proposals lack). With a `draft` too, lookup proposes where it finds a match and "
        "the draft everywhere else (raise `minMatch` to leave more to the draft). With `engine: vllm` it "
        "sets `vllm.speculativeMethod: ngram`'s prompt_lookup_min/max, without a draft.",
    )
    routing: Routing = Field(default_factory=Routing, description="Speculation policy.")
    engine: Literal["metaspec", "vllm"] = Field(
        "metaspec",
        description="`metaspec`: our router with confidence routing. `vllm`: vLLM's own OpenAI server and "
        "speculative decoding (`spec.vllm`; no routing policy, every request speculates).",
    )
    vllm: VllmOptions = Field(default_factory=VllmOptions, description="vLLM's options (`engine: vllm`).")
    replicas: int = Field(1, ge=0, le=1000, description="Server pods (scale subresource).")
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="The Service in front of the pods.")
    auth: Auth = Field(default_factory=Auth, description="API keys the server requires.")
    sampling: ServeSampling = Field(default_factory=ServeSampling, description="Sampling defaults and limits.")
    dtype: Dtype = Field("auto", description="Weights dtype: `auto` is bfloat16 on GPU, float32 on CPU.")
    compile: bool = Field(
        True,
        description="On GPU, CUDA graphs. In batches (`sampling.maxConcurrency` above 1) the decode steps and "
        "verify passes of the target and the steps of a draft (separate or `eagle3`) are captured at padded batch sizes "
        "and lengths as they come and replayed, and so is the prefill of prompts up to 256 tokens; where the image "
        "has Liger-Kernel (the `cuda` extra), its fused RMSNorm, rotary embedding and SwiGLU run inside those "
        "graphs. At "
        "`maxConcurrency` 1 with no draft, the same graphs where Liger-Kernel is there (faster at a batch of one "
        "than the static cache below); with a separate draft or `promptLookup`, or with no draft and no "
        "Liger-Kernel: a static KV cache + `torch.compile`; that cache holds "
        "`sampling.maxPromptTokens + sampling.maxTokensLimit + k + 1` positions and every attention reads "
        "all of them: keep those limits tight, or the verify pass eats the speculation's gain. An `eagle3` "
        "draft, and a draft behind `promptLookup`, are served in batches at any `maxConcurrency`, graphs "
        "included. No effect on CPU. With `engine: vllm`, false runs vLLM eagerly (`--enforce-eager`: no "
        "compile, no CUDA graphs).",
    )
    served_model_name: str | None = Field(
        None,
        max_length=253,
        # It is a command-line argument of vLLM's server: a leading '-' would read as an option.
        pattern=r"^[^-\s]\S*$",
        description="Model name in the API (no spaces, not starting with '-'); the resource name by default.",
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rolling update settings.")

    @model_validator(mode="after")
    def _one_token(self) -> SpecServeSpec:
        refs = {(r.name, r.key) for s in (self.target, self.draft) if s and (r := s.hf_token_secret_ref)}
        if len(refs) > 1:
            raise ValueError(
                "`target.hfTokenSecretRef` and `draft.hfTokenSecretRef` differ: a pod has one `HF_TOKEN`; "
                "give both the same Secret key (one token with access to both models)"
            )
        return self

    @model_validator(mode="after")
    def _engine(self) -> SpecServeSpec:
        if self.engine == "vllm":
            self._check_vllm()
            return self
        if self.vllm != VllmOptions():
            raise ValueError("`vllm` applies to `engine: vllm` only")
        if self.prompt_lookup is not None and self.routing.policy in THRESHOLD_POLICIES:
            raise ValueError(
                f"`routing.policy: {self.routing.policy}` reads a draft model's confidence; with "
                "`promptLookup` use `adaptive`, `always` or `never`"
            )
        return self

    def _check_vllm(self) -> None:
        if self.sampling.repetition_penalty != 1:
            raise ValueError(
                "`sampling.repetitionPenalty` must be 1 with `engine: vllm`: vLLM silently skips "
                "speculative decoding for requests with a repetition penalty"
            )
        if self.draft is not None and self.vllm.speculative_method == "ngram":
            raise ValueError(
                "`draft` with `vllm.speculativeMethod: ngram`: vLLM proposes by prompt lookup alone, "
                "with no draft model (a draft behind prompt lookup needs `engine: metaspec`)"
            )
        if self.draft is None and self.vllm.speculative_method != "ngram":
            raise ValueError("`draft` is required with `engine: vllm`, except with `vllm.speculativeMethod: ngram`")
        if self.prompt_lookup is not None and self.vllm.speculative_method != "ngram":
            raise ValueError("`promptLookup` with `engine: vllm` needs `vllm.speculativeMethod: ngram`")
        ref = self.auth.api_key_secret_ref
        if ref is not None and len(ref.keys) > 1:
            raise ValueError(
                "`auth.apiKeySecretRef.keys` must list one key with `engine: vllm`: vLLM reads one API key "
                f"from {VLLM_API_KEY_ENV}"
            )
        default = Routing()
        for name, field in (("policy", "routing.policy"), ("confidence_threshold", "routing.confidenceThreshold")):
            if getattr(self.routing, name) != getattr(default, name):
                raise ValueError(f"`{field}` is not used by `engine: vllm` (vLLM speculates on every request)")


class ServedModel(Model):
    uri: str = Field(description="Resolved model URI.")
    digest: str | None = Field(
        None,
        description="sha256 of the model's `_manifest.json`; for `hf://` models `hf:<commit>`, the exact Hub "
        "revision. A branch or tag reads `hf:<branch>` until a serving pod reports the commit it loaded.",
    )


class SpecServeStatus(Status):
    replicas: int | None = Field(None, description="Pods of the current Deployment.")
    ready_replicas: int | None = Field(None, description="Pods ready to serve.")
    selector: str | None = Field(None, description="Label selector of the pods (scale subresource).")
    url: str | None = Field(None, description="In-cluster base URL of the OpenAI-compatible API.")
    target: ServedModel | None = Field(None, description="What is served as the target.")
    draft: ServedModel | None = Field(None, description="What is served as the draft.")
    deployment_name: str | None = Field(None, description="The Deployment serving this resource.")
    model_cache: CacheOutcomes | None = Field(
        None,
        description="Whether the served models came from the model cache, by URI, as the newest serving pods "
        "(`replicas` of them) report once loaded: `hit` when each found it there, `miss` when one downloaded "
        "it; models read in place (`file://`, `pvc://`) are not listed. `engine: metaspec` only.",
    )


class ServeMeta(ObjectMeta):
    """A SpecServe's name also names its Service, and Service names must start with a letter (DNS-1035)."""

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=SERVICE_NAME_PATTERN)]


class SpecServe(Resource[SpecServeSpec, SpecServeStatus]):
    """A speculative-decoding server (target + draft) with an OpenAI-compatible API."""

    plural: ClassVar[str] = "specserves"
    short_name: ClassVar[str] = "ss"
    component: ClassVar[str] = "server"
    printer_columns: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("Policy", "string", ".spec.routing.policy"),
        *STATUS_COLUMNS,
        ("Replicas", "integer", ".status.readyReplicas"),
        ("URL", "string", ".status.url"),
    )

    kind: Literal["SpecServe"] = "SpecServe"
    metadata: ServeMeta
