"""What every handler shares: the operator context, indexes, lookups, idempotent children, status writes."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kopf

from metaspec import pipeline
from metaspec.api import GROUP, RESOURCES, InvalidResource, Phase, Resource, conditions, now, parse_resource
from metaspec.operator import labels as L
from metaspec.operator import metrics
from metaspec.operator.kube import ApiError, Kube, Target, target_of
from metaspec.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

PLURALS = {kind: cls.plural for kind, cls in RESOURCES.items()}


@dataclass
class Context:
    """Per-operator state, handed to every handler as kopf's `memo`."""

    settings: OperatorSettings = field(default_factory=OperatorSettings.from_env)
    kube: Kube = field(default_factory=Kube)
    connection: kopf.ConnectionInfo | None = None  # fixed credentials (tests); otherwise kopf's login
    resync: asyncio.Task[None] | None = None  # the periodic resync (handlers/resync.py)


# ---- indexes: every resource parsed once per event; dependents by what they reference ----


def _parsed(body: kopf.Body) -> Resource | None:
    try:
        return parse_resource(dict(body))
    except InvalidResource:
        return None


def _index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], Resource | None]:
    return {(namespace, name): _parsed(body)}


def _dependents(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    resource = _parsed(body)
    refs = pipeline.references(resource) if resource is not None else []
    return {(namespace, ref.kind, ref.name): (body["kind"], name) for ref in refs}


for _plural in PLURALS.values():
    # kopf passes an index to handlers as the keyword named by its id: `trainingruns_idx`, ...
    kopf.index(GROUP, _plural, id=f"{_plural}_idx")(_index)
    kopf.index(GROUP, _plural, id="dependents_idx")(_dependents)


def lookup(indexes: dict[str, Any], namespace: str) -> pipeline.Lookup:
    """`(kind, name) -> Resource | None` over the operator's indexes of one namespace."""

    def find(kind: str, name: str) -> Resource | None:
        index = indexes[f"{PLURALS[kind]}_idx"]
        found = index.get((namespace, name), [])
        return next(iter(found), None)

    return find


# ---- status and events ----


def event_ref(resource: Resource) -> dict[str, Any]:
    """The object reference kopf needs to post an Event about `resource`."""
    meta = resource.metadata
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
    }


async def announce(kube: Kube, resource: Resource, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A Kubernetes Event and a metric for each phase transition."""
    phase = new.get("phase")
    if phase == old.get("phase") and new.get("message") == old.get("message"):
        return
    metrics.TRANSITIONS.labels(resource.kind, phase).inc()
    kind = "Warning" if phase == Phase.FAILED else "Normal"
    reason = next((c["reason"] for c in reversed(new.get("conditions", [])) if c["type"] != "Suspended"), phase)
    message = f"{reason}: {new.get('message', '')}"
    try:
        kopf.event(event_ref(resource), type=kind, reason=str(phase), message=message)
    except LookupError:
        # Outside kopf's per-object handler context (the resync task) kopf has no event queue.
        await post_event(kube, resource, kind, str(phase), message)


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


def current_status(resource: Resource) -> dict[str, Any]:
    return resource.status.dump() if resource.status is not None else {}


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


# ---- children ----


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


def owner_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the metaspec resource a child belongs to, from its labels."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    kind, name = labels.get(L.KIND), labels.get(L.OWNER)
    return (kind, name) if kind in PLURALS and name else None


# ---- reconcile wrapper ----


class Rejected(Exception):
    """A reconcile that cannot succeed by retrying: the resource fails with this message."""


@contextmanager
def reconciling(kind: str) -> Iterator[None]:
    """Time a reconcile and sort its errors: API trouble is retried, rejections become `Rejected`."""
    with metrics.timed(kind):
        try:
            yield
        except ApiError as e:
            if e.transient or e.status in (401, 403, 404):
                # 403: RBAC may be fixed by an administrator; 404: a namespace or CRD still appearing.
                raise kopf.TemporaryError(str(e), delay=60 if e.status == 403 else 2) from e
            raise Rejected(f"the API server rejected a child object: {e}") from e
        except kopf.PermanentError as e:
            raise Rejected(str(e)) from e


def parse_or_fail(body: kopf.Body, patch: kopf.Patch) -> Resource | None:
    """The resource, or None after staging a Failed status that names the invalid fields.

    The CRD schema refuses most invalid specs; what remains (cross-field rules) is reported here.
    """
    try:
        return parse_resource(dict(body), where=f"{body.get('kind')} {body['metadata'].get('name')}")
    except InvalidResource as e:
        message = str(e)
    if (body.get("status") or {}).get("message") != message:
        patch.setdefault("status", {}).update(
            phase=Phase.FAILED.value, message=message, observedGeneration=body["metadata"].get("generation")
        )
        kopf.event(body, type="Warning", reason=conditions.INVALID_SPEC, message=message)
    return None
