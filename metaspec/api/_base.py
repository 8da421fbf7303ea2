"""Building blocks shared by the three resources: the wire model, URIs, names, conditions, storage, compute."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from metaspec.artifacts.uri import Uri, valid_bucket

GROUP = "metaspec.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Child objects are named `<cr-name>-g<generation>[-suffix]`; Job names feed the `job-name` label
#: (63 characters) and pod names, so CR names are kept short enough for every derived name.
MAX_NAME_LENGTH = 45
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A SpecServe's name is also its Service's name: a DNS-1035 label, which starts with a letter.
SERVICE_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: Label values (63 characters at most; alphanumerics with `-_.` inside), as the API server checks them.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: Label and annotation keys, extended resource names: `[prefix/]name` (a DNS subdomain prefix).
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
#: Temperatures below this sample greedily (vLLM's threshold): dividing float32 logits by a subnormal
#: temperature overflows them, the softmax turns NaN and the sampler emits the last token id forever.
GREEDY_BELOW = 1e-5
#: The smallest `topP` and repetition penalty: below it the nucleus is empty or the penalised logits
#: overflow. 1e-6 < 1/vocabulary for any real vocabulary: `topP` at the bound means "top token only".
MIN_FACTOR = 1e-6
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class Model(BaseModel):
    """Base of every spec/status model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=True,
    )

    def dump(self) -> dict[str, Any]:
        """The wire form: camelCase keys, `None` fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


#: A bare `org/name`: how vLLM and KServe users write a Hub model. Read as a relative path it would
#: fail far from its cause, so model URIs refuse it and name both spellings that are meant.
_BARE_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _check_uri(schemes: tuple[str, ...]):
    def check(value: str) -> str:
        # Any case: `S3://b/k` is a mistyped scheme, not a relative path named `S3:`.
        match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
        scheme = match.group(1) if match else "file"
        if scheme not in schemes:
            raise ValueError(
                f"unsupported URI scheme {scheme!r} in {value!r}: use one of "
                + ", ".join(f"{s}://" for s in schemes)
                + (" or a local path" if "file" in schemes else "")
            )
        if scheme == "s3" and not valid_bucket(value[5:].split("/", 1)[0]):
            raise ValueError(
                f"malformed S3 URI {value!r}: expected s3://<bucket>/<key> with a valid bucket name (3-63 "
                "lowercase letters, digits, '.' and '-', starting and ending with a letter or digit, no '..', "
                "not an IP address)"
            )
        if scheme == "pvc" and not re.match(rf"^pvc://{NAME_PATTERN[1:-1]}(/.*)?$", value):
            raise ValueError(f"malformed PVC URI {value!r}: expected pvc://<claim>/<path>")
        if scheme == "pvc" and ".." in value.split("/"):
            raise ValueError(f"{value!r}: '..' may not leave the claim")
        if scheme == "hf" and not re.match(
            r"^hf://[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(@[A-Za-z0-9_][\w./-]*)?$", value
        ):
            raise ValueError(f"malformed Hub URI {value!r}: expected hf://<org>/<name> or hf://<org>/<name>@<revision>")
        if any(c in value for c in "\n\r\x00"):
            raise ValueError("URI contains control characters")
        if scheme in ARTIFACT_SCHEMES:
            Uri.parse(value)  # the same rules the components apply: no query, no option, a hub repository
        if value.startswith("-"):
            # Handed to commands as an argument (`--model <model>` of vLLM's server), it would read as an option.
            raise ValueError(f"{value!r} starts with '-': give a path such as ./{value} or file://")
        return value

    return AfterValidator(check)


def _not_bare_hub_id(value: str) -> str:
    if _BARE_HUB_ID.match(value):
        raise ValueError(
            f"{value!r} reads as a Hugging Face model id: write hf://{value} for the Hub, "
            f"or ./{value} (or file://) for a local folder"
        )
    return value


ARTIFACT_SCHEMES = ("s3", "file")
MODEL_SCHEMES = ("s3", "file", "hf", "pvc")
DATASET_SCHEMES = ("s3", "file", "pvc", "builtin")

#: Where an artifact is written: `s3://bucket/prefix`, `file:///path` or a path.
ArtifactUri = Annotated[str, Field(min_length=1, max_length=1024), _check_uri(ARTIFACT_SCHEMES)]
#: Where a model is read: `s3://…`, `file:///path` or a path, `hf://org/name[@revision]`, `pvc://claim/path`.
ModelUri = Annotated[
    str, Field(min_length=1, max_length=1024), _check_uri(MODEL_SCHEMES), AfterValidator(_not_bare_hub_id)
]
#: Where data is read: `s3://…`, `file:///path` or a path, `pvc://claim/path`, `builtin://<split>`.
DatasetUri = Annotated[str, Field(min_length=1, max_length=1024), _check_uri(DATASET_SCHEMES)]
#: A Kubernetes object name (RFC 1123 label).
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=NAME_PATTERN)]
#: A label value, e.g. a Kueue queue name copied to a label.
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
#: A Kubernetes quantity such as `16Gi` or `500m`.
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")]


class Phase(StrEnum):
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    READY = "Ready"


class Condition(Model):
    """One status condition, in the shape of KEP-1623 (`metav1.Condition`)."""

    type: str = Field(description="Condition type in CamelCase, e.g. `Ready`, `DependenciesReady`.")
    status: Literal["True", "False", "Unknown"] = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable details of the last transition.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="The `.metadata.generation` the condition was set for.")


def now() -> str:
    """The current time in the RFC 3339 form Kubernetes uses."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SecretRef(Model):
    name: ObjectName = Field(description="Name of a Secret in the resource's namespace.")


class SecretKeyRef(Model):
    """One key of a Secret in the resource's namespace."""

    name: ObjectName = Field(description="Name of a Secret in the resource's namespace.")
    key: str = Field(
        "HF_TOKEN", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key within the Secret."
    )


class ModelCache(Model):
    """Where the pods keep downloaded models: an `emptyDir` per pod, or a PersistentVolumeClaim that
    outlives pods and is shared by every run that names it."""

    claim_name: ObjectName | None = Field(
        None,
        description="A PersistentVolumeClaim of the namespace, mounted read-write as the model cache of every "
        "pod (`/var/cache/metaspec-models`): a model is downloaded once per claim and found there by later "
        "pods, restarts and rollouts. Entries are keyed by manifest digest (Hub models by commit), checked "
        "on every use and filled under a lock, so pods may share it: ReadWriteMany shares it between nodes, "
        "ReadWriteOnce between the pods of one node. Unset: an `emptyDir` of `resources.cacheSize`, filled "
        "again by every new pod.",
    )
    size: Quantity | None = Field(
        None,
        description="Create the claim `claimName` with this capacity when the namespace has none (e.g. `500Gi`). "
        "It belongs to no resource: every run that names it shares it, and it stays when they are deleted. "
        "Unset: the claim must exist.",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] | None = Field(
        None,
        description="Access mode of a created claim (default `ReadWriteMany`): `ReadWriteMany` shares it between "
        "nodes (needs a storage class that offers it: NFS, CephFS, EFS, Filestore, Azure Files); `ReadWriteOnce` "
        "between the pods of one node.",
    )
    storage_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Storage class of a created claim; unset: the cluster's default class.",
    )

    @model_validator(mode="after")
    def _creation_needs_a_claim(self) -> ModelCache:
        if self.claim_name is None and (self.size is not None or self.storage_class_name is not None):
            raise ValueError("`size` and `storageClassName` create the claim `claimName`: give `claimName` too")
        if self.size is None and (self.storage_class_name is not None or self.access_mode is not None):
            raise ValueError(
                "`storageClassName` and `accessMode` apply to a claim metaspec creates: give its `size` too"
            )
        return self


#: Model URI -> `hit` (found in the model cache) or `miss` (downloaded into it), as a run's pods report it.
#: The keys are unconstrained: a structural CRD schema has no `propertyNames`.
CacheOutcomes = dict[str, Literal["hit", "miss"]]


class Storage(Model):
    """Where artifacts are read and written, and the credentials to do it."""

    secret_ref: SecretRef | None = Field(
        None,
        description="Secret whose keys (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally "
        "`AWS_SESSION_TOKEN`) are passed to the pods as environment variables. The operator never "
        "reads it.",
    )
    endpoint: str | None = Field(
        None,
        max_length=512,
        pattern=r"^https?://[^\s]+$",
        description="S3 endpoint URL for S3-compatible stores (MinIO, SeaweedFS, Ceph); empty for AWS.",
    )
    region: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="S3 region, e.g. `us-east-1`."
    )
    model_cache: ModelCache | None = Field(
        None, description="Where downloaded models are kept; unset: an `emptyDir` per pod."
    )

    @property
    def model_cache_claim(self) -> str | None:
        """The PersistentVolumeClaim holding the model cache, None for a per-pod `emptyDir`."""
        return self.model_cache.claim_name if self.model_cache else None


class Resources(Model):
    """Compute for each pod."""

    gpus: int = Field(1, ge=0, le=64, description="GPUs per pod, requested as `gpuResourceName` limits.")
    gpu_resource_name: str = Field(
        "nvidia.com/gpu",
        max_length=253,
        pattern=QUALIFIED_NAME_PATTERN,
        description="Extended resource name of the GPU: `<domain>/<name>` outside `kubernetes.io`.",
    )
    cpu: Quantity | None = Field(None, description="CPU request and limit, e.g. `8`.")
    memory: Quantity | None = Field(None, description="Memory request and limit, e.g. `64Gi`.")
    shared_memory: Quantity = Field(
        "8Gi",
        description="Size of the in-memory `/dev/shm` (PyTorch data loaders and NCCL need more than 64Mi).",
    )
    cache_size: Quantity = Field(
        "100Gi",
        description="Size limit of each `emptyDir` the pod writes: its scratch (staging, checkpoints, shard "
        "state) and, without `storage.modelCache.claimName`, its model cache.",
    )

    @field_validator("gpu_resource_name")
    @classmethod
    def _extended_resource(cls, value: str) -> str:
        # A core resource here would replace the pod's own limit (`memory` of "1") or drop the GPU
        # request (`cpu`): Kubernetes' extended resources are exactly the qualified names outside it.
        domain = value.rpartition("/")[0]
        if not domain or domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
            raise ValueError(
                f"{value!r} is not an extended resource (`<domain>/<name>` outside kubernetes.io, such as "
                "nvidia.com/gpu); core resources (cpu, memory, ephemeral-storage, hugepages-*) are refused"
            )
        return value


class ObjectMeta(BaseModel):
    """The part of `metadata` metaspec reads."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
    namespace: str = "default"
    uid: str | None = None
    generation: int = 1
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Status(Model):
    """Fields every resource reports."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase = Field(Phase.PENDING, description="Coarse lifecycle phase.")
    message: str = Field("", description="Human-readable reason for the phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations of the resource's state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, description="Generation the status was computed for.")
    start_time: str | None = Field(None, description="When the work started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the work finished (RFC 3339).")

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
