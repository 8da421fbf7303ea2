"""Every label and annotation key the operator reads or writes, in one place."""

from __future__ import annotations

from metaspec.api import GROUP

# Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "metaspec-operator"

# Which resource a child belongs to: the operator maps child events back to their owner with these.
KIND = f"{GROUP}/kind"
OWNER = f"{GROUP}/owner"  # the owning resource's name
GENERATION = f"{GROUP}/generation"
ROLE = f"{GROUP}/role"  # which child of its owner: `config`, `job`, `server`, `service`, `rendezvous`

# Annotations.
CONFIG_HASH = f"{GROUP}/config-hash"  # sha256 of config.json: a changed config rolls the pods
SPEC_HASH = f"{GROUP}/spec-hash"  # sha256 of the Deployment spec the operator last applied
TARGET_DIGEST = f"{GROUP}/target-digest"
DRAFT_DIGEST = f"{GROUP}/draft-digest"
POKED_BY = f"{GROUP}/dependency-changed"  # set on dependents when a dependency's phase changes

#: kopf's own bookkeeping annotations live under this prefix (`<prefix>/last-handled-configuration`).
KOPF_PREFIX = f"operator.{GROUP}"

# Set by Kubernetes on a Job's pods: selects a multi-node run's pods for its rendezvous Service.
JOB_NAME = "batch.kubernetes.io/job-name"
JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # a pod annotation of Indexed Jobs

# Kueue: a Job or Deployment with this label is admitted through the named LocalQueue.
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"


def owner_labels(kind: str, name: str, component: str, generation: int | None = None) -> dict[str, str]:
    """Labels of every child of a resource; `generation` only on per-generation children (Jobs)."""
    labels = {
        NAME: "metaspec",
        INSTANCE: name,
        COMPONENT: component,
        PART_OF: "metaspec",
        MANAGED_BY: MANAGER,
        KIND: kind,
        OWNER: name,
    }
    if generation is not None:
        labels[GENERATION] = str(generation)
    return labels


def selector(kind: str, name: str) -> dict[str, str]:
    """The labels that select one resource's pods."""
    return {KIND: kind, OWNER: name}
