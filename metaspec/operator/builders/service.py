"""The Service in front of a SpecServe's pods and the in-cluster URL it gives the API; the headless
Service through which a multi-node TrainingRun's pods find each other."""

from __future__ import annotations

from typing import Any

from metaspec.api import SpecServe, TrainingRun
from metaspec.operator import labels as L
from metaspec.operator.builders.names import child_metadata

#: The port of torch.distributed.run's rendezvous store (c10d), which node 0's launcher hosts.
RENDEZVOUS_PORT = 29500


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


def build_rendezvous_service(run: TrainingRun, job: str) -> dict[str, Any]:
    """Headless Service `job` over the Job's pods: an Indexed Job's pod `i` (whose `subdomain` names
    this Service) resolves as `<job>-<i>.<job>`, so node 0 is the rendezvous address before any pod
    is ready (`publishNotReadyAddresses`). The pattern of JobSet and PyTorchJob."""
    meta = run.metadata
    labels = {**L.owner_labels(run.kind, meta.name, run.component, meta.generation), L.ROLE: "rendezvous"}
    port = {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(run, job, labels),
        "spec": {
            "clusterIP": "None",
            "selector": {L.JOB_NAME: job},
            "publishNotReadyAddresses": True,
            "ports": [port],
        },
    }


def service_url(serve: SpecServe, cluster_domain: str) -> str:
    """Base URL of the OpenAI-compatible API inside the cluster."""
    meta = serve.metadata
    return f"http://{meta.name}.{meta.namespace}.svc.{cluster_domain}:{serve.spec.service.port}/v1"
