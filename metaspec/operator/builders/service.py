"""The Service in front of a SpecServe's pods, and the in-cluster URL it gives the API."""

from __future__ import annotations

from typing import Any

from metaspec.api import SpecServe
from metaspec.operator import labels as L
from metaspec.operator.builders.names import child_metadata


def build_service(serve: SpecServe) -> dict[str, Any]:
    spec = serve.spec.service
    labels = {**L.owner_labels(serve.kind, serve.metadata.name, serve.component), L.ROLE: "service"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(serve, serve.metadata.name, labels),
        "spec": {
            "type": spec.type,
            "selector": L.selector(serve.kind, serve.metadata.name),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_url(serve: SpecServe, cluster_domain: str) -> str:
    """Base URL of the OpenAI-compatible API inside the cluster."""
    meta = serve.metadata
    return f"http://{meta.name}.{meta.namespace}.svc.{cluster_domain}:{serve.spec.service.port}/v1"
