"""SpecServe: resolve target and draft, run a Deployment + Service, report what is actually served."""

from __future__ import annotations

from typing import Any

import kopf

from metaspec import pipeline
from metaspec import status as R
from metaspec.api import GROUP, InvalidResource, Resource, SpecServe, conditions
from metaspec.operator import labels as L
from metaspec.operator import status as S
from metaspec.operator import writes
from metaspec.operator.builders import (
    build_configmap,
    build_deployment,
    build_service,
    build_vllm_deployment,
    service_url,
)
from metaspec.operator.builders.pod import SCHEDULING_FIELDS
from metaspec.operator.handlers import children, indexes
from metaspec.operator.handlers import common as C
from metaspec.operator.kube import Target

#: Condition: whether the API needs a key. False with reason `ExposedWithoutAPIKey` (and a Warning
#: Event) when a NodePort or LoadBalancer Service exposes a server that needs none.
API_KEY_REQUIRED = "APIKeyRequired"
EXPOSED_WITHOUT_KEY = "ExposedWithoutAPIKey"

#: Pod-spec fields a template may stop setting; a merge patch must null them to remove them.
_OPTIONAL_POD_FIELDS = (*SCHEDULING_FIELDS, "initContainers")


def api_key_condition(resource: SpecServe) -> tuple[bool, str, str]:
    """(status, reason, message) of the `APIKeyRequired` condition."""
    spec = resource.spec
    ref = spec.auth.api_key_secret_ref
    if ref is not None:
        return True, "APIKeyConfigured", f"the API needs a key from Secret {ref.name!r}"
    if spec.service.type != "ClusterIP":
        return (
            False,
            EXPOSED_WITHOUT_KEY,
            f"service.type {spec.service.type} exposes the API outside the cluster and it needs no key: anyone "
            "who reaches it can generate; set spec.auth.apiKeySecretRef",
        )
    return False, "NoAPIKey", "the API needs no key; anything that reaches the ClusterIP Service can call it"


def desired(ctx: C.Context, resource: SpecServe, resolved: SpecServe, digests: dict[str, Any]) -> tuple[dict, dict]:
    """(ConfigMap, Deployment) for the resolved config; the ConfigMap is named by the config's hash."""
    digest = R.config_hash(R.render_config(resolved))
    config_map = build_configmap(resource, resolved, f"{resource.metadata.name}-{digest[:10]}")
    name = config_map["metadata"]["name"]
    if resource.spec.engine == "vllm":
        parts = {"target": resolved.spec.target, "draft": resolved.spec.draft}
        uris = {role: source.uri for role, source in parts.items() if source is not None}
        deployment = build_vllm_deployment(resolved, ctx.settings, name, digest, uris, digests)
    else:
        deployment = build_deployment(resolved, ctx.settings, name, digest, digests)
    spec_digest = R.config_hash(deployment["spec"])
    deployment["metadata"]["annotations"] = {L.SPEC_HASH: spec_digest}
    return config_map, deployment


async def apply_deployment(ctx: C.Context, resource: SpecServe, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the Deployment, or update it when what we want changed (a new template rolls the pods)."""
    existing = await children.ensure(ctx.kube, resource, manifest)
    want = manifest["metadata"]["annotations"][L.SPEC_HASH]
    have = ((existing.get("metadata") or {}).get("annotations") or {}).get(L.SPEC_HASH)
    if have == want:
        return existing
    spec = manifest["spec"]
    pod_spec = spec["template"]["spec"]
    # Merge patches keep keys they do not mention: null what this template no longer sets.
    nulls = {k: None for k in _OPTIONAL_POD_FIELDS if k not in pod_spec}
    body = {
        "metadata": {"annotations": {L.SPEC_HASH: want}, "labels": manifest["metadata"]["labels"]},
        "spec": {**spec, "template": {**spec["template"], "spec": {**pod_spec, **nulls}}},
    }
    meta = manifest["metadata"]
    return await ctx.kube.patch(Target("Deployment", meta["namespace"], meta["name"]), body)


def deployment_fields(ctx: C.Context, resource: SpecServe, deployment: dict[str, Any], status: dict) -> dict:
    """Phase, replicas and conditions from the Deployment; where to reach it."""
    meta = resource.metadata
    status = {
        **status,
        "selector": ",".join(f"{k}={v}" for k, v in L.selector(resource.kind, meta.name).items()),
        "url": service_url(resource, ctx.settings.cluster_domain),
        "deploymentName": deployment["metadata"]["name"],
    }
    return R.serving_status(resource, status, S.deployment_state(deployment))


async def reconcile_serve(ctx: C.Context, resource: SpecServe, find: pipeline.Lookup) -> dict[str, Any]:
    """Resolve references; (re)apply ConfigMap, Deployment and Service; report."""
    meta = resource.metadata
    status = writes.current_status(resource)
    check = pipeline.check_dependencies(resource, find)
    if not check.ready:
        status = R.with_condition(status, resource, conditions.DEPENDENCIES_READY, False, check.reason, check.message)
        current = await ctx.kube.get(Target("Deployment", meta.namespace, meta.name))
        if current is not None:
            # Keep serving what was resolved before: a new reference waits, the old model stays up.
            return deployment_fields(ctx, resource, current, status)
        return R.waiting(resource, status, check)
    resolved = pipeline.resolve(resource, check.resolved)
    models = R.served(resource, check.resolved)
    config_map, manifest = desired(ctx, resource, resolved, {k: v.get("digest") for k, v in models.items()})
    await children.ensure_model_cache(ctx.kube, resource)
    await children.ensure(ctx.kube, resource, config_map)
    deployment = await apply_deployment(ctx, resource, manifest)
    await children.ensure(ctx.kube, resource, build_service(resource))
    status = R.started(resource, status, check)
    status = R.with_condition(status, resource, API_KEY_REQUIRED, *api_key_condition(resource))
    return deployment_fields(ctx, resource, deployment, status)


async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: C.Context, namespace: str, **kwargs: Any) -> None:
    resource = C.parse_or_fail(body, patch)
    if resource is None or pipeline.is_terminal(resource):
        return
    assert isinstance(resource, SpecServe)
    with C.reconciling(resource.kind):
        try:
            new = await reconcile_serve(memo, resource, indexes.lookup(kwargs, namespace))
        except (C.Rejected, InvalidResource, ValueError) as e:
            new = R.failed(writes.current_status(resource), resource, conditions.API_REJECTED, str(e))
        _, reason, message = api_key_condition(resource)
        if reason == EXPOSED_WITHOUT_KEY:
            kopf.event(body, type="Warning", reason=reason, message=message)
        await writes.commit_handled(memo.kube, body, resource, new)


kopf.on.create(GROUP, SpecServe.plural, id="reconcile")(reconcile)
kopf.on.resume(GROUP, SpecServe.plural, id="reconcile")(reconcile)
kopf.on.update(GROUP, SpecServe.plural, id="reconcile")(reconcile)


@kopf.on.event("apps", "v1", "deployments", labels={L.MANAGED_BY: L.MANAGER})
async def deployment_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: C.Context, namespace: str, **kwargs: Any
) -> None:
    """Mirror a Deployment's readiness into its SpecServe's status as it happens."""
    owner = children.owner_of(body)
    if event["type"] == "DELETED" or not body.get("status") or owner is None or owner[0] != "SpecServe":
        return
    deployment = dict(body)

    async def compute(resource: Resource) -> dict[str, Any] | None:
        if not isinstance(resource, SpecServe) or pipeline.is_terminal(resource):
            return None
        if resource.status is None or not resource.status.deployment_name:
            # The reconcile that created it has not recorded what it serves yet; it reports the phase
            # itself, so `Ready` never shows before `status.target`/`draft` do.
            return None
        return deployment_fields(memo, resource, deployment, writes.current_status(resource))

    with C.reconciling(owner[0]):
        await writes.update_status(memo.kube, owner[0], namespace, owner[1], compute)
