"""Pod pieces every child shares: the container contract, volumes, S3 and Hub credentials, security,
scheduling."""

from __future__ import annotations

from typing import Any

from metaspec.api import Resource
from metaspec.api.sources import ModelSource
from metaspec.artifacts.uri import PVC_ROOT
from metaspec.operator.settings import OperatorSettings
from metaspec.pipeline import claims
from metaspec.progress import TOKEN_ENV, URL_ENV, endpoint
from metaspec.runtime import CONFIG_PATH, MODEL_CACHE_ENV, SCRATCH_ENV, TERMINATION_MESSAGE_PATH

CONFIG_DIR, CONFIG_FILE = CONFIG_PATH.rsplit("/", 1)
#: The pod's scratch (`METASPEC_CACHE`): staging, checkpoints, shard state; never shared.
CACHE_DIR = "/var/cache/metaspec"
#: The model cache (`METASPEC_MODEL_CACHE`): an emptyDir, or `storage.modelCache.claimName` shared by runs.
MODEL_CACHE_DIR = "/var/cache/metaspec-models"
MODEL_CACHE_VOLUME = "model-cache"
PROGRESS_TOKEN_DIR = "/var/run/secrets/metaspec.dev/progress"
#: Lifetime of the progress token (seconds); the kubelet renews it at 80% of that.
PROGRESS_TOKEN_SECONDS = 3600
CONTAINER = "main"
#: The pod-spec fields `scheduling` may set.
SCHEDULING_FIELDS = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "serviceAccountName",
    "imagePullSecrets",
)


def command(component: str) -> list[str]:
    """`metaspec <component> --config FILE`: the whole contract; never through a shell."""
    verb = {"trainer": "train", "generator": "generate", "server": "serve"}[component]
    return ["metaspec", verb, "--config", CONFIG_PATH]


def s3_env(resource: Resource) -> list[dict[str, Any]]:
    """S3 settings as environment: credentials by reference to the Secret (the operator never reads it)."""
    storage = resource.spec.storage
    env: list[dict[str, Any]] = []
    if storage.secret_ref is not None:
        secret = storage.secret_ref.name
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            ref = {"name": secret, "key": key, **({"optional": True} if optional else {})}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if storage.region:
        env += [
            {"name": "AWS_REGION", "value": storage.region},
            {"name": "AWS_DEFAULT_REGION", "value": storage.region},
        ]
    return env


def model_sources(resource: Resource) -> list[ModelSource]:
    """The models a resource reads: base model, teacher, or target and draft."""
    spec = resource.spec
    found = (getattr(spec, name, None) for name in ("base_model", "model", "target", "draft"))
    return [source for source in found if isinstance(source, ModelSource)]


def hf_env(resource: Resource) -> list[dict[str, Any]]:
    """`HF_TOKEN` by reference to the Secret named on the model sources (one per pod; the API checks it)."""
    refs = [s.hf_token_secret_ref for s in model_sources(resource) if s.hf_token_secret_ref is not None]
    if not refs:
        return []
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": refs[0].name, "key": refs[0].key}}}]


def runtime_env() -> list[dict[str, Any]]:
    """Where components keep scratch, models and logs when the root filesystem is read-only. Hub
    snapshots go to the model cache (ours and vLLM's downloads alike); the rest of `HF_HOME` is scratch."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": SCRATCH_ENV, "value": CACHE_DIR},
        {"name": MODEL_CACHE_ENV, "value": MODEL_CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
        {"name": "HF_HUB_CACHE", "value": f"{MODEL_CACHE_DIR}/hf"},
        {"name": "METASPEC_LOG_FORMAT", "value": "json"},
        {"name": "METASPEC_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def volumes(resource: Resource, config_map: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): the config, /tmp, scratch, the model cache, a RAM-backed /dev/shm."""
    res = resource.spec.resources
    vols = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {"sizeLimit": res.cache_size}},
        model_cache_volume(resource),
        # PyTorch data loaders and NCCL share tensors through /dev/shm; the runtime's default is 64Mi.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shared_memory}},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if config_map is not None:
        vols.insert(0, {"name": "config", "configMap": {"name": config_map}})
        mounts.insert(0, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    # `pvc://` models and data are read in place: the claim is mounted read-only, nothing is copied.
    for i, claim in enumerate(claims(resource)):
        vols.append({"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"claim-{i}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    return vols, mounts


def model_cache_volume(resource: Resource) -> dict[str, Any]:
    """The model cache: `storage.modelCache.claimName` (read-write, shared with every pod that names it),
    or an emptyDir of `resources.cacheSize` that lives as long as the pod."""
    claim = resource.spec.storage.model_cache_claim
    if claim is not None:
        return {"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
    return {"name": MODEL_CACHE_VOLUME, "emptyDir": {"sizeLimit": resource.spec.resources.cache_size}}


def progress_channel(resource: Resource, settings: OperatorSettings, container: dict[str, Any]) -> list[dict]:
    """Let `container` report to the operator's progress endpoint (a run's progress, a server's loaded
    models): the token's mount and the endpoint go into it; returns the pod volumes this needs (none
    when reporting is off).

    The token is projected for this pod and the progress audience only: it is useless against the API
    server, and the operator maps it back to this pod's own resource (`metaspec.operator.progress`).
    """
    if not settings.progress_url:
        return []
    meta = resource.metadata
    token = {
        "audience": settings.progress_audience,
        "expirationSeconds": PROGRESS_TOKEN_SECONDS,
        "path": "token",
    }
    container["volumeMounts"].append({"name": "progress-token", "mountPath": PROGRESS_TOKEN_DIR, "readOnly": True})
    container["env"] += [
        {"name": URL_ENV, "value": endpoint(settings.progress_url, meta.namespace, resource.plural, meta.name)},
        {"name": TOKEN_ENV, "value": f"{PROGRESS_TOKEN_DIR}/token"},
    ]
    return [{"name": "progress-token", "projected": {"sources": [{"serviceAccountToken": token}]}}]


def compute(resource: Resource) -> dict[str, Any]:
    """Container `resources`: requests equal limits so the pods are predictable (Guaranteed when all set)."""
    res = resource.spec.resources
    limits: dict[str, Any] = {}
    if res.gpus:
        limits[res.gpu_resource_name] = str(res.gpus)
    if res.cpu:
        limits["cpu"] = res.cpu
    if res.memory:
        limits["memory"] = res.memory
    return {"requests": dict(limits), "limits": limits} if limits else {}


def container_security(read_only_root: bool = True) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security(settings: OperatorSettings) -> dict[str, Any]:
    uid = settings.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}


def scheduling(resource: Resource) -> dict[str, Any]:
    """The pod-spec fields a resource's `pod` overrides set, left out when unset."""
    pod = resource.spec.pod
    spec: dict[str, Any] = {
        "nodeSelector": pod.node_selector or None,
        "tolerations": [t.dump() for t in pod.tolerations] or None,
        "affinity": pod.affinity.dump() if pod.affinity else None,
        "priorityClassName": pod.priority_class_name,
        "serviceAccountName": pod.service_account_name,
        "imagePullSecrets": [{"name": n} for n in pod.image_pull_secrets] or None,
    }
    return {k: v for k, v in spec.items() if v is not None}


def container(
    resource: Resource, settings: OperatorSettings, config_map: str | None, read_only_root: bool = True
) -> dict[str, Any]:
    """The component's container: `metaspec <component> --config`, env, mounts, compute, security."""
    pod = resource.spec.pod
    _, mounts = volumes(resource, config_map)
    return {
        "name": CONTAINER,
        "image": settings.image(resource.component, pod.image),
        "imagePullPolicy": pod.image_pull_policy or settings.image_pull_policy,
        "command": command(resource.component),
        "env": runtime_env() + s3_env(resource) + hf_env(resource),
        "volumeMounts": mounts,
        "resources": compute(resource),
        "securityContext": container_security(read_only_root),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # The summary file when the component wrote one, the log tail when it crashed before that.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def template_metadata(resource: Resource, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    pod = resource.spec.pod
    meta: dict[str, Any] = {"labels": {**pod.labels, **labels}}
    if pod.annotations or annotations:
        meta["annotations"] = {**pod.annotations, **annotations}
    return meta


def kubelet_literal(text: str) -> str:
    """`text` as the kubelet must pass it on unchanged.

    The kubelet expands `$(NAME)` in a container's command, args and env values from the container's
    environment, so a spec string such as `$(AWS_SECRET_ACCESS_KEY)` would become the secret; `$$` is
    its escape for a literal `$`. Applied to every string there, since no builder means an expansion.
    """
    return text.replace("$", "$$")


def _literal(container: dict[str, Any]) -> dict[str, Any]:
    out = dict(container)
    for key in ("command", "args"):
        if key in out:
            out[key] = [kubelet_literal(a) for a in out[key]]
    if "env" in out:
        out["env"] = [{**e, "value": kubelet_literal(e["value"])} if "value" in e else e for e in out["env"]]
    return out


def pod_spec(
    resource: Resource,
    settings: OperatorSettings,
    containers: list[dict[str, Any]],
    config_map: str | None,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The pod spec of `containers`; the one place containers enter a pod, so every string the kubelet
    would expand is escaped here (`kubelet_literal`)."""
    vols, _ = volumes(resource, config_map)
    init = {"initContainers": [_literal(c) for c in init_containers]} if init_containers else {}
    return {
        **init,
        "containers": [_literal(c) for c in containers],
        "volumes": vols,
        "securityContext": pod_security(settings),
        # Components talk only to S3 and, for servers, their clients; no API access is needed.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        **scheduling(resource),
    }
