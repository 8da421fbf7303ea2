"""What every handler shares: the operator context, and the wrapper that sorts a reconcile's errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import kopf

from metaspec.api import Condition, InvalidResource, Phase, Resource, conditions, parse_resource
from metaspec.operator import metrics
from metaspec.operator.kube import ApiError, Kube
from metaspec.operator.progress import ProgressService
from metaspec.operator.settings import OperatorSettings
from metaspec.pipeline import set_condition

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Per-operator state, handed to every handler as kopf's `memo`."""

    settings: OperatorSettings = field(default_factory=OperatorSettings.from_env)
    kube: Kube = field(default_factory=Kube)
    connection: kopf.ConnectionInfo | None = None  # fixed credentials (tests); otherwise kopf's login
    resync: asyncio.Task[None] | None = None  # the periodic resync (handlers/resync.py)
    progress: ProgressService | None = None  # the progress endpoint, while it runs


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
    status = body.get("status") or {}
    if status.get("message") != message:
        generation = body["metadata"].get("generation")
        found = [Condition.model_validate(c) for c in status.get("conditions", [])]
        for type_, value in ((conditions.READY, False), (conditions.FAILED, True)):
            found = set_condition(found, type_, value, conditions.INVALID_SPEC, message, generation)
        patch.setdefault("status", {}).update(
            phase=Phase.FAILED.value,
            message=message,
            observedGeneration=generation,
            conditions=[c.dump() for c in found],
        )
        metrics.TRANSITIONS.labels(body.get("kind"), Phase.FAILED.value, conditions.INVALID_SPEC).inc()
        metrics.FAILURES.labels(body.get("kind")).inc()
        kopf.event(body, type="Warning", reason=conditions.INVALID_SPEC, message=message)
    return None
