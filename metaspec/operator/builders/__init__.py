"""Pure builders, one module per child kind: a validated (and resolved) resource to a manifest dict."""

from .claim import build_model_cache_claim
from .configmap import build_configmap
from .deployment import build_deployment, build_vllm_deployment
from .job import build_job
from .names import generation_name, owner_reference
from .service import build_rendezvous_service, build_service, service_url

__all__ = [
    "build_configmap",
    "build_deployment",
    "build_job",
    "build_model_cache_claim",
    "build_rendezvous_service",
    "build_service",
    "build_vllm_deployment",
    "generation_name",
    "owner_reference",
    "service_url",
]
