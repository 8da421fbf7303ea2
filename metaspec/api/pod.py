"""Pod overrides: scheduling, image, labels and annotations a resource copies onto its pods.

`tolerations` and `affinity` are typed as the Kubernetes core/v1 API defines them rather than
free-form, so that a misspelt field or a wrong operator is refused naming its path when the resource
is applied (the API server would otherwise refuse only the Job or Deployment made from it), and so
that their size is bounded: every list has a limit, and a pod's whole affinity and annotations are at
most `MAX_AFFINITY_BYTES` and `MAX_ANNOTATION_BYTES` of JSON.

Labels and annotations may not undo what the builders set: keys under metaspec's and Kueue's domains
(ownership, the queue the Job was admitted through) and annotations that configure security profiles
or the node's container runtime (AppArmor, the legacy seccomp keys, CRI-O/containerd/Kata) are refused.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ._base import (
    DNS_SUBDOMAIN_PATTERN,
    GROUP,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    LabelValue,
    Model,
    ObjectName,
)

#: JSON bytes of one pod's affinity: enough for any hand-written rule set, far below the 1 MiB
#: ConfigMap and object limits the whole spec must fit in.
MAX_AFFINITY_BYTES = 64 * 1024

#: JSON bytes of a pod's extra annotations (Kubernetes allows 256 KiB for all of an object's).
MAX_ANNOTATION_BYTES = 64 * 1024
#: Label and annotation domains the builders own: ownership and selectors, the Kueue queue.
RESERVED_DOMAINS = (GROUP, "kueue.x-k8s.io")
#: Annotation keys that set security profiles (AppArmor `container.apparmor.security.beta…`, the
#: legacy `seccomp.security.alpha…` keys) or configure the container runtime.
_HARDENING_ANNOTATION = re.compile(
    r"^(([^/]*\.)?security\.(alpha|beta)\.kubernetes\.io/|io\.(kubernetes|containerd|katacontainers)\.)"
)

QualifiedName = Annotated[str, Field(max_length=316, pattern=QUALIFIED_NAME_PATTERN)]
Values = Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=256)]


class Toleration(Model):
    """`core/v1 Toleration`: lets the pod schedule onto nodes with a matching taint."""

    key: QualifiedName | None = Field(None, description="Taint key; empty with `Exists` matches every taint.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="`Equal` (default) or `Exists`.")
    value: Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)] | None = Field(
        None, description="Taint value to match (`Equal` only)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="How long a `NoExecute` taint is tolerated before eviction."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("`value` must be empty with `operator: Exists`")
        if not self.key and self.operator != "Exists":
            raise ValueError("`operator` must be `Exists` when `key` is empty")
        return self


def _check_values(operator: str, values: list[str]) -> None:
    """The API server's rule: `In`/`NotIn` need values, `Exists`/`DoesNotExist` none, `Gt`/`Lt` one integer."""
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"`values` must not be empty with `operator: {operator}`")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"`values` must be empty with `operator: {operator}`")
    if operator in ("Gt", "Lt") and (len(values) != 1 or not re.fullmatch(r"-?[0-9]{1,18}", values[0])):
        raise ValueError(f"`values` must be one integer with `operator: {operator}`")


class NodeSelectorRequirement(Model):
    key: QualifiedName = Field(description="Node label (or field) key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(description="How to match.")
    values: Values = Field(default_factory=list, description="Values to match.")

    @model_validator(mode="after")
    def _values(self) -> NodeSelectorRequirement:
        _check_values(self.operator, self.values)
        return self


class NodeSelectorTerm(Model):
    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=64, description="Requirements on node labels (ANDed)."
    )
    match_fields: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=64, description="Requirements on node fields (ANDed)."
    )


class NodeSelector(Model):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=32, description="Terms, ORed.")


class PreferredSchedulingTerm(Model):
    weight: int = Field(ge=1, le=100, description="Weight in the range 1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred term.")


class NodeAffinity(Model):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        None, description="Hard node requirements."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=32, description="Soft node preferences."
    )


class LabelSelectorRequirement(Model):
    key: QualifiedName = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How to match.")
    values: Values = Field(default_factory=list, description="Values to match.")

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        _check_values(self.operator, self.values)
        return self


class LabelSelector(Model):
    match_labels: dict[QualifiedName, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=64, description="Labels that must match exactly."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=64, description="Requirements (ANDed)."
    )


class PodAffinityTerm(Model):
    label_selector: LabelSelector | None = Field(None, description="Pods this term refers to.")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces the pods may be in.")
    namespaces: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=64, description="Namespaces the pods may be in."
    )
    topology_key: Annotated[str, Field(min_length=1, max_length=316, pattern=QUALIFIED_NAME_PATTERN)] = Field(
        description="Node label whose value defines co-location."
    )
    match_label_keys: list[QualifiedName] = Field(default_factory=list, max_length=64, description="Label keys.")
    mismatch_label_keys: list[QualifiedName] = Field(default_factory=list, max_length=64, description="Label keys.")


class WeightedPodAffinityTerm(Model):
    weight: int = Field(ge=1, le=100, description="Weight in the range 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(Model):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=32, description="Hard requirements."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=32, description="Soft preferences."
    )


class Affinity(Model):
    """`core/v1 Affinity`."""

    node_affinity: NodeAffinity | None = Field(None, description="Node affinity rules.")
    pod_affinity: PodAffinity | None = Field(None, description="Co-locate with pods.")
    pod_anti_affinity: PodAffinity | None = Field(None, description="Keep away from pods.")

    @model_validator(mode="after")
    def _bounded(self) -> Affinity:
        size = len(json.dumps(self.dump()))
        if size > MAX_AFFINITY_BYTES:
            raise ValueError(f"affinity is {size} bytes of JSON; at most {MAX_AFFINITY_BYTES} are accepted")
        return self


def _check_key(key: str) -> None:
    # `re.match` with `$` would accept a trailing newline: the whole key must match.
    if len(key) > 316 or not re.fullmatch(QUALIFIED_NAME_PATTERN, key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise ValueError(f"key {key!r} is not a valid label/annotation key ([prefix/]name, name ≤ 63 chars)")


def _reserved(key: str) -> bool:
    domain = key.rpartition("/")[0]
    return any(domain == d or domain.endswith("." + d) for d in RESERVED_DOMAINS)


class PodOverrides(Model):
    """Scheduling and image settings copied onto every pod the resource creates."""

    image: str | None = Field(
        None, max_length=512, pattern=r"^[^\s]+$", description="Container image; the operator's default otherwise."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy of the container."
    )
    image_pull_secrets: list[ObjectName] = Field(
        default_factory=list, max_length=16, description="Names of Secrets used to pull the image."
    )
    node_selector: dict[str, LabelValue] = Field(default_factory=dict, description="Pod `nodeSelector`.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Pod `tolerations`.")
    affinity: Affinity | None = Field(None, description="Pod `affinity`.")
    priority_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Pod `priorityClassName`."
    )
    service_account_name: ObjectName | None = Field(None, description="Pod `serviceAccountName`.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    labels: dict[str, LabelValue] = Field(default_factory=dict, description="Extra pod labels.")

    @field_validator("node_selector")
    @classmethod
    def _qualified_keys(cls, value: dict[str, str]) -> dict[str, str]:
        # Keys the API server would refuse on the child; the CRD schema cannot check map keys.
        for key in value:
            _check_key(key)
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            _check_key(key)
            if _reserved(key):
                raise ValueError(f"label {key!r} is set by metaspec (ownership, `spec.queueName`): refused")
        return value

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            _check_key(key)
            if _reserved(key):
                raise ValueError(f"annotation {key!r} is set by metaspec or Kueue: refused")
            if _HARDENING_ANNOTATION.match(key):
                raise ValueError(
                    f"annotation {key!r} sets a security profile or configures the container runtime, "
                    "which would undo the pod's hardening: refused"
                )
        size = len(json.dumps(value))
        if size > MAX_ANNOTATION_BYTES:
            raise ValueError(f"annotations are {size} bytes of JSON; at most {MAX_ANNOTATION_BYTES} are accepted")
        return value
