"""Status writes (compare-and-swap on the resourceVersion) and the Events that announce them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from metaspec.api import Phase, Resource, conditions, now, parse_resource
from metaspec.operator import metrics
from metaspec.operator.kube import ApiError, Kube, Target

log = logging.getLogger(__name__)


def current_status(resource: Resource) -> dict[str, Any]:
    """The status as it is stored: its wire form, `{}` before the first write."""
    return resource.status.dump() if resource.status is not None else {}


def event_ref(resource: Resource) -> dict[str, Any]:
    """The object reference kopf needs to post an Event about `resource`."""
    meta = resource.metadata
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
    }


async def announce(kube: Kube, resource: Resource, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A Kubernetes Event and a metric for each phase transition; an Event when the run reports where its
    models came from (`status.modelCache`)."""
    cache = new.get("modelCache")
    if cache and cache != old.get("modelCache"):
        await _event(kube, resource, "Normal", conditions.MODEL_CACHE, _cache_message(cache))
    threshold = _condition(new, conditions.CONFIDENCE_THRESHOLD_CALIBRATED)
    if (
        threshold
        and threshold["status"] == "False"
        and threshold != _condition(old, conditions.CONFIDENCE_THRESHOLD_CALIBRATED)
    ):
        await _event(kube, resource, "Warning", threshold["reason"], threshold["message"])
    phase = new.get("phase")
    if phase == old.get("phase") and new.get("message") == old.get("message"):
        return
    kind = "Warning" if phase == Phase.FAILED else "Normal"
    # The reason of the condition that explains the phase: what `kubectl get` shows as REASON.
    found = {c["type"]: c for c in new.get("conditions", [])}
    reason = found[conditions.READY]["reason"] if conditions.READY in found else str(phase)
    metrics.TRANSITIONS.labels(resource.kind, phase, reason).inc()
    if phase == Phase.FAILED:
        metrics.FAILURES.labels(resource.kind).inc()
        gate = found.get(conditions.QUALITY_CHECK_PASSED)
        if gate and gate["status"] == "False":
            metrics.QUALITY_FAILURES.labels(resource.kind).inc()
    await _event(kube, resource, kind, reason, f"{phase}: {new.get('message', '')}")


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c.get("type") == type_), None)


def _cache_message(outcomes: dict[str, str]) -> str:
    """`status.modelCache` in words: `s3://a: found in the model cache; hf://b: downloaded into the model cache`."""
    words = {"hit": "found in the model cache", "miss": "downloaded into the model cache"}
    return "; ".join(f"{uri}: {words.get(outcome, outcome)}" for uri, outcome in sorted(outcomes.items()))


async def _event(kube: Kube, resource: Resource, type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(event_ref(resource), type=type_, reason=reason, message=message)
    except LookupError:
        # Outside kopf's per-object handler context (the resync task) kopf has no event queue.
        await post_event(kube, resource, type_, reason, message)


async def post_event(kube: Kube, resource: Resource, type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about `resource`, posted directly; best effort, as kopf's own posting is."""
    meta = resource.metadata
    stamp = now()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.name}.{uuid.uuid4().hex[:16]}", "namespace": meta.namespace},
        "involvedObject": {
            **event_ref(resource)["metadata"],
            "apiVersion": resource.api_version,
            "kind": resource.kind,
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "metaspec-operator"},
        "reportingComponent": "metaspec-operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await kube.create(event)
    except ApiError as e:
        log.warning("could not post an Event about %s %s: %s", resource.kind, meta.name, e)


class Conflict(Exception):
    """The resource changed since its status was computed: compute again from the fresh object."""


async def commit_status(kube: Kube, resource: Resource, version: str | None, new: dict[str, Any]) -> None:
    """Replace the status if the resource is still at `version` (compare-and-swap), then announce.

    Status is computed from several sources (the resource, its Job, its dependencies) by several
    handlers; the version test keeps a stale computation from overwriting a newer one.
    """
    old = current_status(resource)
    if new == old:
        return
    meta = resource.metadata
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "add", "path": "/status", "value": new},
    ]
    try:
        await kube.json_patch(Target(resource.kind, meta.namespace, meta.name, "status"), ops)
    except ApiError as e:
        if e.status in (409, 422):
            raise Conflict(str(e)) from e
        raise
    await announce(kube, resource, old, new)


Compute = Callable[[Resource], Awaitable[dict[str, Any] | None]]


async def update_status(kube: Kube, kind: str, namespace: str, name: str, compute: Compute, tries: int = 5) -> None:
    """Read the resource fresh, compute its new status (None: leave it), commit; again on conflicts."""
    for _ in range(tries):
        body = await kube.get(Target(kind, namespace, name))
        if body is None:
            return
        resource = parse_resource(body)
        new = await compute(resource)
        if new is None:
            return
        try:
            await commit_status(kube, resource, body["metadata"].get("resourceVersion"), new)
            return
        except Conflict:
            continue
    raise kopf.TemporaryError(f"{kind} {name} kept changing while its status was written", delay=1)


async def commit_handled(kube: Kube, body: kopf.Body, resource: Resource, new: dict[str, Any]) -> None:
    """Commit the status computed from the body kopf handed over; a conflict retries the handler."""
    try:
        await commit_status(kube, resource, body["metadata"].get("resourceVersion"), new)
    except Conflict as e:
        raise kopf.TemporaryError("the resource changed meanwhile; reconciling again", delay=0.2) from e
