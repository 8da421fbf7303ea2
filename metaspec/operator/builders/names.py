"""Names and ownership of children: derived from the owner so that re-creating one is idempotent."""

from __future__ import annotations

from typing import Any

from metaspec.api import Resource


def generation_name(resource: Resource) -> str:
    """`<name>-g<generation>`: one Job (and its ConfigMap) per generation of the spec."""
    return f"{resource.metadata.name}-g{resource.metadata.generation}"


def owner_reference(resource: Resource) -> dict[str, Any]:
    """Makes the child garbage-collected with its owner and marks the owner as its controller."""
    if not resource.metadata.uid:
        raise ValueError(f"{resource.kind} {resource.metadata.name} has no metadata.uid: cannot own children")
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "name": resource.metadata.name,
        "uid": resource.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(resource: Resource, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": resource.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(resource)],
    }
