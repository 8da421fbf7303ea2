"""The chart under the real helm 3 and helm 4: `helm lint --strict` and `helm template` over every case of
`rendered.CASES` (the docs' values among them), `helm package` and `helm show crds`.

`helm lint` lets `required` and `fail` pass (it renders in a lenient mode), so lint alone proves little: each
case is also rendered, and the chart states its rules in values.schema.json wherever JSON Schema can.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_objects import CHART, HELMS, HelmError, by_kind, container, helm, parse, template
from rendered import ACCEPTED, CASES, Case, chart

from metaspec.api.crd import render_all

DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def lint(version: str, case: Case, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(case.values))
    helm(version, "lint", "--strict", str(CHART), "-f", str(values), *case.args())


def api_server_would_accept(objects: list[dict[str, Any]]) -> None:
    """What the API server checks beyond the OpenAPI schemas (test_manifest_schemas.py checks those)."""
    for obj in objects:
        name, what = obj["metadata"]["name"], f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] == "Service":
            assert len(name) <= 63 and DNS_1035_LABEL.fullmatch(name), f"{what}: not a DNS-1035 label"
        else:
            assert len(name) <= 253 and DNS_1123_SUBDOMAIN.fullmatch(name), f"{what}: not a DNS subdomain"
        for value in obj["metadata"].get("labels", {}).values():
            assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), f"{what}: label value {value!r}"
    for deployment in by_kind(objects, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), "selector"
        ports = container(objects)["ports"]
        for key in ("name", "containerPort"):
            assert len({p[key] for p in ports}) == len(ports), f"a container port {key} repeats: {ports}"


@pytest.mark.parametrize("version", HELMS)
@pytest.mark.parametrize("name", list(CASES))
def test_lint_and_template(name: str, version: str, tmp_path: Path) -> None:
    case = CASES[name]
    if case.refused is None:
        lint(version, case, tmp_path)
        api_server_would_accept(chart(name, version))  # parse() refuses repeated keys
        return
    with pytest.raises(HelmError, match=case.refused):
        chart(name, version)
    if case.lint_refuses:
        with pytest.raises(HelmError, match=case.refused):
            lint(version, case, tmp_path)
    else:  # documents helm's leniency: if lint starts refusing it, make lint_refuses True
        lint(version, case, tmp_path)


@pytest.mark.parametrize("name", ACCEPTED)
def test_helm_3_and_4_render_the_same(name: str) -> None:
    assert chart(name, "helm3") == chart(name, "helm4")


def test_names_fit_for_long_and_odd_release_names() -> None:
    for name in ("long-release-name", "long-fullname-override"):
        names = sorted(s["metadata"]["name"] for s in by_kind(chart(name), "Service"))
        assert all(len(n) <= 63 for n in names) and {n.rsplit("-", 1)[1] for n in names} == {"metrics", "progress"}
    names = sorted(s["metadata"]["name"] for s in by_kind(chart("release-starting-with-a-digit"), "Service"))
    assert names == ["metrics-1st-metaspec", "progress-1st-metaspec"]


def test_labels_merge_without_repeating_keys() -> None:
    objects = chart("pod-and-monitor-labels")
    (deployment,) = by_kind(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "ml" and labels["app.kubernetes.io/part-of"] == "platform"
    assert labels["app.kubernetes.io/name"] == "metaspec"
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["app.kubernetes.io/name"] == "ops"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "metaspec"


def test_values_kubernetes_and_prometheus_accept() -> None:
    pod = by_kind(chart("dotted-names"), "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred.example.com"}]
    assert pod["serviceAccountName"] == "metaspec.operator"
    (monitor,) = by_kind(chart("prometheus-durations"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["interval"] == "1m30s"
    assert container(chart("exponent-quantities"))["resources"]["limits"]["memory"] == "1e9"
    main = container(chart("all-digit-tags-with-set"))
    assert main["image"].endswith(":20240101")
    assert {e["name"]: e.get("value") for e in main["env"]}["METASPEC_IMAGE_TRAINER"].endswith(":2")


@pytest.mark.parametrize("version", HELMS)
def test_package_and_show_crds(version: str, tmp_path: Path) -> None:
    """The packaged chart carries the CRDs, and `helm show crds` gives all five as separate documents."""
    out = helm(version, "package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("metaspec-*.tgz")
    assert archive.name in out
    crds = parse(helm(version, "show", "crds", str(archive)))
    expected = {yaml.safe_load(text)["metadata"]["name"] for text in render_all().values()}
    names = [c["metadata"]["name"] for c in crds]
    assert len(names) == 5 and set(names) == expected | {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    assert all(c["kind"] == "CustomResourceDefinition" for c in crds)
    with_crds = parse(template({}, version=version, extra=("--include-crds",)))
    assert len(by_kind(with_crds, "CustomResourceDefinition")) == 5
