"""TrainingRun and TeacherGeneration: wait for dependencies, run a Job, mirror it into the status."""

from __future__ import annotations

from typing import Any

import kopf

from metaspec import pipeline
from metaspec import status as R
from metaspec.api import GROUP, InvalidResource, Resource, TeacherGeneration, TrainingRun, conditions
from metaspec.api.summaries import FailureSummary
from metaspec.operator import labels as L
from metaspec.operator import status as S
from metaspec.operator import writes
from metaspec.operator.builders import build_configmap, build_job, build_rendezvous_service, generation_name
from metaspec.operator.handlers import children, indexes
from metaspec.operator.handlers import common as C
from metaspec.operator.kube import Target

PLURALS = (TrainingRun.plural, TeacherGeneration.plural)


def job_name(resource: Resource) -> str:
    """The Job of this resource: the one it started (specs are immutable once started), else a new one."""
    status = resource.status
    return status.job_name if status is not None and status.job_name else generation_name(resource)


async def mirror(ctx: C.Context, resource: Resource, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The resource's status from its Job (and, once finished, from its pods' summaries)."""
    state = S.job_state(job)
    status = {**status, "jobName": job["metadata"]["name"]}
    already_final = status.get("phase") == state.phase.value and state.finished
    if not state.finished or already_final:
        return R.observe(resource, status, state)
    pods = await ctx.kube.list("Pod", resource.metadata.namespace, {L.JOB_NAME: job["metadata"]["name"]})
    summaries = S.termination_summaries(pods)
    failures = [FailureSummary.read(summary) for _, summary in summaries]
    results = S.succeeded_summaries(summaries, indexed=isinstance(resource, TeacherGeneration))
    return R.finish(resource, status, state, failures, results)


async def _apply_suspend(ctx: C.Context, resource: Resource, job: dict[str, Any]) -> dict[str, Any]:
    """`spec.suspend` is the one change a started Job takes; the rest of its spec is immutable."""
    want = resource.spec.suspend
    if bool((job.get("spec") or {}).get("suspend")) == want or S.job_state(job).finished:
        return job
    meta = job["metadata"]
    return await ctx.kube.patch(Target("Job", meta["namespace"], meta["name"]), {"spec": {"suspend": want}})


async def reconcile_resource(ctx: C.Context, resource: Resource, find: pipeline.Lookup) -> dict[str, Any]:
    """Bring one TrainingRun/TeacherGeneration forward; returns its new status."""
    meta = resource.metadata
    status = writes.current_status(resource)
    name = job_name(resource)
    # A resource without a Job name in its status has not started: create straight away (409 adopts).
    started = resource.status is not None and resource.status.job_name
    job = await ctx.kube.get(Target("Job", meta.namespace, name)) if started else None
    check = pipeline.check_dependencies(resource, find) if job is None else None
    if check is not None and not check.ready:
        return R.waiting(resource, status, check)
    if check is not None:
        resolved = pipeline.resolve(resource, check.resolved)
        await children.ensure_model_cache(ctx.kube, resource)
        await children.ensure(ctx.kube, resource, build_configmap(resource, resolved, name))
        if isinstance(resource, TrainingRun) and resource.spec.resources.nodes > 1:
            await children.ensure(ctx.kube, resource, build_rendezvous_service(resource, name))
        job = await children.ensure(ctx.kube, resource, build_job(resource, ctx.settings, name))
        status = R.started(resource, status, check)
    assert job is not None
    job = await _apply_suspend(ctx, resource, job)
    return await mirror(ctx, resource, job, status)


async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: C.Context, namespace: str, **kwargs: Any) -> None:
    """create / resume / update / resync: the same level-triggered pass."""
    resource = C.parse_or_fail(body, patch)
    if resource is None or pipeline.is_terminal(resource):
        return
    with C.reconciling(resource.kind):
        try:
            new = await reconcile_resource(memo, resource, indexes.lookup(kwargs, namespace))
        except (C.Rejected, InvalidResource) as e:
            new = R.failed(writes.current_status(resource), resource, conditions.API_REJECTED, str(e))
        await writes.commit_handled(memo.kube, body, resource, new)


for _plural in PLURALS:
    kopf.on.create(GROUP, _plural, id="reconcile")(reconcile)
    kopf.on.resume(GROUP, _plural, id="reconcile")(reconcile)
    kopf.on.update(GROUP, _plural, id="reconcile")(reconcile)


@kopf.on.event("batch", "v1", "jobs", labels={L.MANAGED_BY: L.MANAGER})
async def job_changed(event: kopf.RawEvent, body: kopf.Body, memo: C.Context, namespace: str, **kwargs: Any) -> None:
    """Mirror a Job's progress into its owner's status as it happens."""
    owner = children.owner_of(body)
    if event["type"] == "DELETED" or not body.get("status") or owner is None:
        return
    job = dict(body)

    async def compute(resource: Resource) -> dict[str, Any] | None:
        if pipeline.is_terminal(resource) or job_name(resource) != job["metadata"]["name"]:
            return None
        return await mirror(memo, resource, job, writes.current_status(resource))

    with C.reconciling(owner[0]):
        await writes.update_status(memo.kube, owner[0], namespace, owner[1], compute)
