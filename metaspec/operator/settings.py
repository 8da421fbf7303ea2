"""Operator settings: read once from the environment (`METASPEC_*`), passed to builders and handlers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version

_REGISTRY = "ghcr.io/metaspec"


def _release() -> str:
    try:
        return version("metaspec")
    except PackageNotFoundError:
        return "latest"


def _default_images() -> dict[str, str]:
    """Images are tagged with the operator's own version so a release runs components it was tested with."""
    return {c: f"{_REGISTRY}/{c}:{_release()}" for c in ("trainer", "generator", "server")}


@dataclass(frozen=True)
class OperatorSettings:
    """What a cluster administrator may tune; each field has a `METASPEC_<FIELD>` environment variable."""

    images: dict[str, str] = field(default_factory=_default_images)
    """Default image per component (`trainer`, `generator`, `server`); a resource's `pod.image` wins.
    `METASPEC_IMAGE_TRAINER` etc. override one."""

    vllm_image: str = "vllm/vllm-openai:v0.32.0"
    """Image of `SpecServe` pods with `engine: vllm` (vLLM's own OpenAI server)."""

    fetch_image: str = ""
    """Image of the init container that pulls models for vLLM (`metaspec artifacts pull`); the
    server image when empty."""

    image_pull_policy: str = "IfNotPresent"
    """Pull policy when a resource does not set one."""

    run_as_user: int = 1000
    """UID the components run as (the images' non-root user)."""

    startup_seconds: int = 1800
    """How long a server may take to load its models before the startup probe gives up (seconds):
    an 8B model from S3 takes minutes, so the default is generous."""

    metrics_port: int = 8080
    """Port of the Prometheus `/metrics` endpoint (0 disables it)."""

    resync_seconds: float = 60.0
    """How often every unfinished resource is reconciled again from its children and dependencies
    (seconds). kopf's event handlers do not retry: a change they lost to an API error is picked up
    by the next resync at the latest."""

    progress_port: int = 8082
    """Port of the progress endpoint running pods post to (0 disables it)."""

    progress_url: str = ""
    """Base URL pods reach the progress endpoint at, e.g. `http://metaspec.metaspec-system.svc:8082`
    (the chart sets it); empty: pods do not report progress."""

    progress_audience: str = "metaspec.dev/progress"
    """Audience of the service-account tokens pods present: a token minted for anything else (the API
    server, another service) is refused, and this one is good for nothing but progress reports."""

    progress_seconds: float = 20.0
    """Least time between two live-progress status writes of one run (seconds): with many runs the
    API server sees at most `runs / progress_seconds` such writes per second."""

    progress_writes_per_second: float = 10.0
    """Ceiling on live-progress status writes per second over all runs: beyond
    `progress_writes_per_second * progress_seconds` reporting runs, each run's updates space out."""

    cluster_domain: str = "cluster.local"
    """DNS domain of the cluster, for the in-cluster URL in a SpecServe's status."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            value = env.get(f"METASPEC_{f.name.upper()}")
            if value is not None and f.name != "images":
                kwargs[f.name] = type(getattr(cls(), f.name))(value)
        images = _default_images()
        for component in images:
            images[component] = env.get(f"METASPEC_IMAGE_{component.upper()}", images[component])
        return cls(images=images, **kwargs)

    def image(self, component: str, override: str | None) -> str:
        return override or self.images[component]
