"""Children: created idempotently (a 409 adopts ours, refuses another controller's), and their owners."""

from __future__ import annotations

from typing import Any

import kopf

from metaspec.api import Resource
from metaspec.operator import labels as L
from metaspec.operator.builders import build_model_cache_claim
from metaspec.operator.handlers.indexes import PLURALS
from metaspec.operator.kube import ApiError, Kube, target_of


async def ensure(kube: Kube, owner: Resource, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create a child, or adopt the existing one of that name (409): never a second copy.

    An existing object with another controller is refused: it is not ours to change.
    """
    try:
        return await kube.create(manifest)
    except ApiError as e:
        if e.status != 409:
            raise
    existing = await kube.get(target_of(manifest))
    if existing is None:
        raise kopf.TemporaryError(f"{manifest['kind']} {manifest['metadata']['name']} vanished while adopting", delay=1)
    refs = (existing.get("metadata") or {}).get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is not None and controller.get("uid") != owner.metadata.uid:
        raise kopf.PermanentError(
            f"{manifest['kind']} {manifest['metadata']['name']} already exists and is controlled by "
            f"{controller.get('kind')} {controller.get('name')}: rename this {owner.kind} or delete that object"
        )
    existing.setdefault("kind", manifest["kind"])
    return existing


async def ensure_model_cache(kube: Kube, resource: Resource) -> None:
    """Create the model-cache claim the spec asks for, unless the namespace has one of that name (then
    that one is used as it is: it is shared, and may be the user's own)."""
    claim = build_model_cache_claim(resource)
    if claim is None:
        return
    try:
        await kube.create(claim)
    except ApiError as e:
        if e.status != 409:
            raise


def owner_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the metaspec resource a child belongs to, from its labels."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    kind, name = labels.get(L.KIND), labels.get(L.OWNER)
    return (kind, name) if kind in PLURALS and name else None
