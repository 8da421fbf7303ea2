"""What every resource declares about itself and repeats in its spec.

`Resource` is a whole custom resource, typed by its spec and status, with the facts the CRD and the
operator take from it (plural, printer columns, immutable fields). `WorkloadSpec` holds the fields
every spec has (storage, compute, pod overrides, suspension, queue); `JobSpec` adds the knobs of the
resources that run as a Job.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ._base import API_VERSION, LabelValue, Model, ObjectMeta, Resources, Status, Storage
from .pod import PodOverrides

#: Weights dtype: `auto` is bfloat16 on GPU and float32 on CPU.
Dtype = Literal["bfloat16", "float16", "float32", "auto"]


class WorkloadSpec(Model):
    """Fields every resource's spec has."""

    storage: Storage = Field(default_factory=Storage, description="S3 endpoint and credentials.")
    resources: Resources = Field(default_factory=Resources, description="Compute per pod.")
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Pod scheduling and image overrides.")
    suspend: bool = Field(
        False,
        description="Keep the resource but run nothing: a Job is created suspended (a running one is "
        "suspended), a server scales to zero.",
    )
    queue_name: LabelValue | None = Field(
        None, description="Kueue LocalQueue; copied to the `kueue.x-k8s.io/queue-name` label."
    )


class JobSpec(WorkloadSpec):
    """Fields of the resources that run as a Job."""

    backoff_limit: int = Field(
        3,
        ge=0,
        le=100,
        description="Pod retries for transient failures (per shard of an Indexed Job). A TrainingRun on several "
        "nodes restarts the training processes of all its nodes together, up to this many times.",
    )
    active_deadline_seconds: int | None = Field(None, ge=1, description="Wall-clock limit of the Job.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the finished Job after this.")


#: The `kubectl get` columns every resource shows after its own first one: its phase, whether it is
#: Ready, and why.
STATUS_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Phase", "string", ".status.phase"),
    ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
    ("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason'),
)

SpecT = TypeVar("SpecT", bound=WorkloadSpec)
StatusT = TypeVar("StatusT", bound=Status)


class Resource(BaseModel, Generic[SpecT, StatusT]):
    """A whole custom resource: `apiVersion`, `kind`, `metadata`, `spec`, `status`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    plural: ClassVar[str]
    short_name: ClassVar[str]
    component: ClassVar[str]
    #: `kubectl get` columns: (name, type, JSON path); the CRD adds Age.
    printer_columns: ClassVar[tuple[tuple[str, str, str], ...]]
    #: Spec fields fixed once the work started (a CEL rule in the CRD): what is produced (the model, data,
    #: method and their settings; a generation's dtype and context length change its outputs) and where
    #: it is stored (`storage`: a changed endpoint would leave the checkpoints or shards already written
    #: behind). The rest (suspend, scheduling, resources, queue, retries) may change. SpecServe specs
    #: stay mutable: a change rolls the Deployment.
    immutable_spec: ClassVar[tuple[str, ...]] = ()

    api_version: Literal["metaspec.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    metadata: ObjectMeta
    kind: str
    spec: SpecT
    status: StatusT | None = None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
