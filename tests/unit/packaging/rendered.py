"""Every manifest the project ships or creates, rendered by the real tools, for schema checks and scanners.

- the chart: `helm template` over `CASES` (values a user may give, the docs' examples among them);
- the Kustomize bases (`kubectl kustomize`), and the overlay shown in docs/install.md;
- the objects the operator builds for every metaspec resource in `examples/` and the docs.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from chart_objects import KUSTOMIZE, REPO, blocks, kustomize, render

from metaspec.api import API_VERSION, parse_resource
from metaspec.operator.builders import (
    build_configmap,
    build_deployment,
    build_job,
    build_service,
    build_vllm_deployment,
)
from metaspec.operator.settings import OperatorSettings

DOCS = REPO / "docs"


@dataclass(frozen=True)
class Case:
    """Values for `helm template`: a values file (merged over the chart's defaults), `--set` arguments,
    a release name; `refused` is the error helm must give, `lint_refuses` whether `helm lint --strict`
    catches it too (it lets `required` and `fail` pass)."""

    values: dict[str, Any] = field(default_factory=dict)
    release: str = "metaspec"
    set: tuple[str, ...] = ()
    refused: str | None = None
    lint_refuses: bool = True

    def args(self) -> tuple[str, ...]:
        return tuple(a for s in self.set for a in ("--set", s))


def _doc_values(page: str, marker: str, kind: str | None = None, *path: str) -> dict[str, Any]:
    """The chart values in a docs example: the YAML block containing `marker`, its document of `kind`,
    then `path` into it."""
    (block,) = [b for b in blocks(DOCS / page, "yaml") if marker in b]
    node = next(d for d in yaml.safe_load_all(block) if d and d.get("kind") == kind)
    for key in path:
        node = node[key]
    return node


def _cases() -> dict[str, Case]:
    long_release = "r" * 53  # helm's longest release name
    return {
        "defaults": Case(),
        "docs-install-my-values": Case(_doc_values("install.md", "# my-values.yaml")),
        "docs-gitops-argocd": Case(
            _doc_values("gitops.md", "valuesObject", "Application", "spec", "source", "helm", "valuesObject")
        ),
        "docs-gitops-flux": Case(_doc_values("gitops.md", "HelmRelease", "HelmRelease", "spec", "values")),
        "namespaced": Case({"watch": {"allNamespaces": False, "namespaces": ["ml", "ml-staging"]}}),
        "long-release-name": Case(release=long_release),
        "long-fullname-override": Case({"fullnameOverride": "f" * 63}),
        "release-starting-with-a-digit": Case(release="1st"),
        "pod-and-monitor-labels": Case(
            {
                "operator": {"podLabels": {"team": "ml", "app.kubernetes.io/part-of": "platform"}},
                "metrics": {"serviceMonitor": {"enabled": True, "labels": {"app.kubernetes.io/name": "ops"}}},
            }
        ),
        "dotted-names": Case(
            {
                "operator": {"imagePullSecrets": [{"name": "regcred.example.com"}]},
                "serviceAccount": {"name": "metaspec.operator"},
            }
        ),
        "prometheus-durations": Case(
            {"metrics": {"serviceMonitor": {"enabled": True, "interval": "1m30s", "scrapeTimeout": "500ms"}}}
        ),
        "exponent-quantities": Case(
            {"operator": {"resources": {"requests": {"cpu": "100m", "memory": "1e8"}, "limits": {"memory": "1e9"}}}}
        ),
        "all-digit-tags-with-set": Case(set=("operator.image.tag=20240101", "components.trainer.tag=2")),
        "digest": Case({"operator": {"image": {"digest": "sha256:" + "a" * 64}}}),
        "no-rbac-existing-account": Case(
            {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}}
        ),
        "metrics-off": Case({"metrics": {"enabled": False}}),
        "docs-observability": Case(_doc_values("observability.md", "podMonitor:")),
        "monitoring": Case(
            {
                "watch": {"allNamespaces": False, "namespaces": ["ml"]},
                "metrics": {"serviceMonitor": {"enabled": True}},
                "monitoring": {
                    "podMonitor": {"enabled": True, "labels": {"release": "kps"}},
                    "dashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "ML"}},
                    "rules": {"enabled": True, "labels": {"release": "kps"}, "waitingRequests": 4, "for": "5m"},
                },
            }
        ),
        "everything-set": Case(
            {
                "operator": {
                    "replicas": 2,
                    "logFormat": "plain",
                    "verbose": True,
                    "nodeSelector": {"node-role": "system"},
                    "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
                    "priorityClassName": "system-cluster-critical",
                    "podAnnotations": {"example.com/owner": "ml-platform"},
                    "extraEnv": [{"name": "METASPEC_CLUSTER_DOMAIN", "value": "corp.local"}],
                },
                "metrics": {"service": {"type": "NodePort", "port": 9090}},
            }
        ),
        "selector-label-in-pod-labels": Case(
            {"operator": {"podLabels": {"app.kubernetes.io/name": "other"}}},
            refused=r"operator\.podLabels\.app\.kubernetes\.io/name",
            lint_refuses=False,
        ),
        "empty-namespace-list": Case({"watch": {"allNamespaces": False}}, refused="/watch/namespaces"),
        "no-account-name": Case({"serviceAccount": {"create": False}}, refused="/serviceAccount/name"),
        "monitor-without-metrics": Case(
            {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, refused="/metrics/serviceMonitor"
        ),
        "liveness-on-the-metrics-port": Case(
            {"operator": {"livenessPort": 8080}}, refused="declare one port twice", lint_refuses=False
        ),
        "misspelt-key": Case({"operator": {"replica": 2}}, refused="replica"),
    }


CASES = _cases()
ACCEPTED = [name for name, case in CASES.items() if case.refused is None]


def chart(name: str, version: str = "helm3") -> list[dict[str, Any]]:
    case = CASES[name]
    return render(case.values, release=case.release, version=version, extra=case.args())


def _metaspec_documents() -> list[tuple[str, dict[str, Any]]]:
    """(source, document) of every metaspec resource in `examples/` and the docs."""
    found = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        found += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    for page in sorted(DOCS.glob("*.md")):
        for block in blocks(page, "yaml"):
            found += [(page.name, d) for d in yaml.safe_load_all(block) if d and d.get("apiVersion") == API_VERSION]
    return found


SETTINGS = OperatorSettings()


def _children(resource: Any) -> list[dict[str, Any]]:
    name = f"{resource.metadata.name}-g1"
    objects = [build_configmap(resource, resource, name)]
    if resource.kind != "SpecServe":
        return [*objects, build_job(resource, SETTINGS, name)]
    if resource.spec.engine == "vllm":
        uris = {"target": resource.spec.target.uri, "draft": resource.spec.draft.uri}
        deployment = build_vllm_deployment(resource, SETTINGS, name, "hash", uris, {})
    else:
        deployment = build_deployment(resource, SETTINGS, name, "hash", {})
    return [*objects, deployment, build_service(resource)]


def operator_objects() -> list[tuple[str, dict[str, Any]]]:
    """(source, object) the operator creates for every example resource (default settings)."""
    out = []
    for source, doc in _metaspec_documents():
        doc = copy.deepcopy(doc)
        doc["metadata"].update(uid="00000000-0000-0000-0000-000000000001", namespace="ml", generation=1)
        resource = parse_resource(doc)
        out += [(f"{source}:{resource.metadata.name}", o) for o in _children(resource)]
    return out


def _overlay(folder: Path) -> Path:
    """The docs' Kustomize overlay, written beside a copy that points at the base."""
    (block,) = [b for b in blocks(DOCS / "install.md", "yaml") if "overlays/prod" in b]
    overlay = folder / "overlays" / "prod"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(
        block.replace("../../deploy/kustomize", os.path.relpath(KUSTOMIZE, overlay))
    )
    return overlay


def everything(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """{source: objects} of every rendering; also written to `folder`, one file per source, for scanners."""
    sources: dict[str, list[dict[str, Any]]] = {f"chart-{name}": chart(name) for name in ACCEPTED}
    sources["kustomize-crds"] = kustomize(KUSTOMIZE / "crds")
    sources["kustomize"] = kustomize(KUSTOMIZE)
    sources["kustomize-docs-overlay"] = kustomize(_overlay(folder / "overlay"))
    for source, obj in operator_objects():
        sources.setdefault(f"operator-{source.replace(':', '-').replace('.', '-')}", []).append(obj)
    manifests = folder / "manifests"
    manifests.mkdir()
    for source, objects in sources.items():
        (manifests / f"{source}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return sources
