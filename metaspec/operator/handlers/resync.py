"""Periodic resync: every unfinished resource is reconciled again every `resync_seconds`.

kopf's event handlers (`job_changed`, `deployment_changed`, `dependency_changed`) are fire-and-forget:
kopf does not retry them, so one API error (a 429 while writing the status, a 500 while poking a
dependent) loses the change they mirror, and a finished Job sends no further event. The resync runs the
same level-triggered pass as the reconcile handlers through `update_status` (fresh read, compare-and-swap
write), so a lost event delays convergence by one period at most and cannot overwrite newer state.

One operator-wide task over kopf's indexes rather than a kopf timer per object: kopf timers and daemons
put a finalizer on every resource, which would block deleting resources while the operator is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from metaspec import pipeline
from metaspec.api import InvalidResource, Resource, SpecServe
from metaspec.operator import writes
from metaspec.operator.handlers import common as C
from metaspec.operator.handlers import indexes as I
from metaspec.operator.handlers.jobs import reconcile_resource
from metaspec.operator.handlers.specserve import reconcile_serve

log = logging.getLogger(__name__)


def unfinished(indexes: dict[str, Any]) -> list[Resource]:
    """Every valid resource the indexes hold that has not succeeded or failed."""
    out = []
    for plural in I.PLURALS.values():
        for found in indexes[f"{plural}_idx"].values():
            out += [r for r in found if r is not None and not pipeline.is_terminal(r)]
    return out


async def resync_one(memo: C.Context, resource: Resource, indexes: dict[str, Any]) -> None:
    """One level-triggered pass over `resource`, read fresh (it may have changed since it was indexed)."""
    meta = resource.metadata
    find = I.lookup(indexes, meta.namespace)

    async def compute(fresh: Resource) -> dict[str, Any] | None:
        if pipeline.is_terminal(fresh):
            return None
        if isinstance(fresh, SpecServe):
            return await reconcile_serve(memo, fresh, find)
        return await reconcile_resource(memo, fresh, find)

    with C.reconciling(resource.kind):
        await writes.update_status(memo.kube, resource.kind, meta.namespace, meta.name, compute)


async def resync_forever(memo: C.Context, indexes: dict[str, Any]) -> None:
    while True:
        await asyncio.sleep(memo.settings.resync_seconds)
        for resource in unfinished(indexes):
            try:
                await resync_one(memo, resource, indexes)
            except (kopf.TemporaryError, C.Rejected, InvalidResource, ValueError) as e:
                # Failures belong to the reconcile handlers; the next period (or event) tries again.
                log.info("resync of %s %s deferred: %s", resource.kind, resource.metadata.name, e)
            except Exception:
                # The safety net must outlive any one resource's trouble (a dropped connection, a bug).
                log.exception("resync of %s %s failed", resource.kind, resource.metadata.name)


@kopf.on.startup()
async def start_resync(memo: C.Context, **indexes: Any) -> None:
    """Start the resync task; kopf hands startup activities its (still filling) live indexes."""
    names = {f"{plural}_idx" for plural in I.PLURALS.values()}
    live = {k: v for k, v in indexes.items() if k in names}
    memo.resync = asyncio.create_task(resync_forever(memo, live), name="metaspec-resync")


@kopf.on.cleanup()
async def stop_resync(memo: C.Context, **_: Any) -> None:
    if memo.resync is not None:
        memo.resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await memo.resync
        memo.resync = None
