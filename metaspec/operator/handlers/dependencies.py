"""Dependencies react at once: a dependency's phase change pokes its waiting dependents.

The poke is an annotation patch (`metaspec.dev/dependency-changed`): it fires the dependent's own
update handler, with kopf's retries and serialisation per object. A deleted dependency fails the
dependents still waiting for it (`DependencyFailed`); running ones keep what they resolved.
"""

from __future__ import annotations

from typing import Any

import kopf

from metaspec import pipeline
from metaspec import status as R
from metaspec.api import GROUP, Phase, Resource, TeacherGeneration, TrainingRun, conditions
from metaspec.operator import labels as L
from metaspec.operator import writes
from metaspec.operator.handlers import common as C
from metaspec.operator.handlers import indexes
from metaspec.operator.kube import Target

#: Phases a dependent waits for; anything else changes nothing for it.
_DECISIVE = {Phase.SUCCEEDED.value, Phase.FAILED.value}
_NOT_STARTED = {Phase.PENDING.value, Phase.WAITING.value}


def waiting_dependents(kwargs: dict[str, Any], namespace: str, kind: str, name: str) -> list[Resource]:
    """The resources that reference `kind/name` and have not started yet."""
    find = indexes.lookup(kwargs, namespace)
    out = []
    for dep_kind, dep_name in kwargs["dependents_idx"].get((namespace, kind, name), []):
        dependent = find(dep_kind, dep_name)
        if dependent is not None and writes.current_status(dependent).get("phase", Phase.PENDING.value) in _NOT_STARTED:
            out.append(dependent)
    return out


async def _poke(ctx: C.Context, dependent: Resource, why: str) -> None:
    meta = dependent.metadata
    body = {"metadata": {"annotations": {L.POKED_BY: why}}}
    await ctx.kube.patch(Target(dependent.kind, meta.namespace, meta.name), body)


async def _fail_deleted(ctx: C.Context, dependent: Resource, kind: str, name: str) -> None:
    message = f"{kind} {name!r} was deleted before {dependent.kind} {dependent.metadata.name!r} could use it"
    reason = pipeline.DEPENDENCY_FAILED

    async def compute(fresh: Resource) -> dict[str, Any] | None:
        status = writes.current_status(fresh)
        if status.get("phase", Phase.PENDING.value) not in _NOT_STARTED:
            return None
        status = R.with_condition(status, fresh, conditions.DEPENDENCIES_READY, False, reason, message)
        return R.failed(status, fresh, reason, message)

    meta = dependent.metadata
    await writes.update_status(ctx.kube, dependent.kind, meta.namespace, meta.name, compute)


async def dependency_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: C.Context, namespace: str, name: str, **kwargs: Any
) -> None:
    kind = body["kind"]
    phase = (body.get("status") or {}).get("phase")
    deleted = event["type"] == "DELETED"
    if not deleted and phase not in _DECISIVE:
        return
    for dependent in waiting_dependents(kwargs, namespace, kind, name):
        with C.reconciling(dependent.kind):
            if deleted:
                await _fail_deleted(memo, dependent, kind, name)
            else:
                await _poke(memo, dependent, f"{kind}/{name}={phase}")


for _plural in (TrainingRun.plural, TeacherGeneration.plural):
    kopf.on.event(GROUP, _plural, id="dependency_changed")(dependency_changed)
