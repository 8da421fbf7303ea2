"""The PersistentVolumeClaim of a shared model cache, when `storage.modelCache.size` asks for one."""

from __future__ import annotations

from typing import Any

from metaspec.api import Resource
from metaspec.operator import labels as L


def build_model_cache_claim(resource: Resource) -> dict[str, Any] | None:
    """The claim `storage.modelCache.claimName` to create when the namespace has none; None when the spec
    does not ask for one (no `size`: the claim is the user's).

    It has no owner: every run of the namespace that names it shares it, and deleting them keeps it (a
    cache that went with its first user would be downloaded again by the next)."""
    cache = resource.spec.storage.model_cache
    if cache is None or cache.claim_name is None or cache.size is None:
        return None
    access = cache.access_mode or "ReadWriteMany"
    spec: dict[str, Any] = {"accessModes": [access], "resources": {"requests": {"storage": cache.size}}}
    if cache.storage_class_name is not None:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": cache.claim_name,
            "namespace": resource.metadata.namespace,
            "labels": {L.MANAGED_BY: L.MANAGER, L.ROLE: "model-cache"},
        },
        "spec": spec,
    }
