"""The Helm chart: CRDs, values schema, RBAC and the rendered manifests.

No `helm` binary can be installed here (ENVIRONMENT.md), so the templates are rendered with the test-only
Go-template renderer in `gotemplate.py` (the subset of Go templates and Helm functions the chart uses; it
is stricter than Helm about missing values). Where `helm` is on PATH, `helm lint` and `helm template`
run as well; otherwise those two tests are skipped with the reason.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_objects import CHART, NAMESPACE, SCHEMA, VALUES, by_kind, container, env, render, values
from gotemplate import TemplateError, render_chart

from metaspec.api.crd import render_all
from metaspec.operator import rbac

REPO = Path(__file__).resolve().parents[3]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def load_sync():
    spec = importlib.util.spec_from_file_location("deploy_sync", REPO / "deploy" / "sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_crds_are_the_generated_ones() -> None:
    for name, text in render_all().items():
        assert (CHART / "crds" / name).read_text() == text == (REPO / "crds" / name).read_text(), name
    assert load_sync().main(["--check"]) == 0, "generated deploy files are stale: run `make deploy-sync`"


def test_chart_ships_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()))
    assert {d["spec"]["names"]["plural"] for d in docs} == {"kopfpeerings", "clusterkopfpeerings"}


def test_versions_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION


def test_values_validate_against_schema() -> None:
    jsonschema.validate(VALUES, SCHEMA)


def _objects_with_properties(node: Any, path: str = "$"):
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _objects_with_properties(value, f"{path}.{key}")


def test_schema_refuses_unknown_keys() -> None:
    for path, node in _objects_with_properties(SCHEMA):
        assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
    misspelt = copy.deepcopy(VALUES)
    misspelt["operator"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(misspelt, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        values(operator__image__pullPolicy="Sometimes")


def test_default_render_objects() -> None:
    objects = render(values())
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "Deployment", "Service"]
    )
    for obj in objects:
        assert obj["metadata"]["name"].startswith("metaspec")
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_cluster_role_is_exactly_the_operator_rules() -> None:
    (role,) = by_kind(render(values()), "ClusterRole")
    assert role["rules"] == rbac.cluster_rules()
    (binding,) = by_kind(render(values()), "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "metaspec", "namespace": NAMESPACE}]


def test_no_rendering_grants_secrets_or_wildcards() -> None:
    for vals in (values(), values(watch__allNamespaces=False, watch__namespaces=["ml"])):
        for obj in render(vals):
            for rule in obj.get("rules", []):
                assert "secrets" not in rule["resources"], f"{obj['kind']} grants Secrets"
                assert "*" not in rule["resources"] + rule["verbs"] + rule["apiGroups"]


def test_operator_deployment() -> None:
    objects = render(values())
    (deployment,) = by_kind(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == "metaspec"
    assert pod["securityContext"]["runAsNonRoot"] is True
    main = container(objects)
    assert main["image"] == f"ghcr.io/metaspec/operator:{VERSION}"
    assert main["args"][:2] == ["operator", "--all-namespaces"]
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    liveness = next(a for a in main["args"] if a.startswith("--liveness="))
    assert liveness == f"--liveness=http://0.0.0.0:{ports['healthz']}/healthz"
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert env(main)["METASPEC_METRICS_PORT"] == str(ports["metrics"])
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_component_images_reach_the_operator_settings() -> None:
    """The env the chart sets is what `OperatorSettings.from_env` reads (names coordinated with settings.py)."""
    from metaspec.operator import settings as settings_module

    main = container(render(values(components__trainer={"repository": "reg.example/trainer", "tag": "v9"})))
    variables = env(main)
    assert all(name.startswith("METASPEC_") or name == "POD_ID" for name in variables)
    settings = settings_module.OperatorSettings.from_env(variables)
    assert settings.images == {
        "trainer": "reg.example/trainer:v9",
        "generator": f"ghcr.io/metaspec/generator:{VERSION}",
        "server": f"ghcr.io/metaspec/server:{VERSION}",
    }
    assert settings.vllm_image == "vllm/vllm-openai:v0.11.0"
    assert settings.run_as_user == 1000 and settings.metrics_port == 8080
    assert settings.image_pull_policy == "IfNotPresent" and settings.startup_seconds == 1800
    known = {f"METASPEC_{name.upper()}" for name in settings_module.OperatorSettings.__dataclass_fields__}
    known |= {f"METASPEC_IMAGE_{c.upper()}" for c in settings.images}
    assert set(variables) - {"POD_ID"} <= known, "the chart sets variables the operator does not read"


def test_watched_namespaces_get_roles() -> None:
    objects = render(values(watch__allNamespaces=False, watch__namespaces=["ml", "research"]))
    roles = by_kind(objects, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"ml", "research"}
    assert all(r["rules"] == rbac.namespaced_rules() for r in roles)
    bindings = by_kind(objects, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"ml", "research"}
    assert all(b["subjects"][0]["namespace"] == NAMESPACE for b in bindings)
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert cluster_role["rules"] == [r.dump() for r in rbac.RULES if r.cluster_scoped]
    granted = cluster_role["rules"] + roles[0]["rules"]
    assert sorted(map(str, granted)) == sorted(map(str, rbac.cluster_rules())), "split rules lose or add a grant"
    args = container(objects)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=ml", "--namespace=research"]
    peerings = by_kind(objects, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"ml", "research"}
    assert not by_kind(objects, "ClusterKopfPeering")


def test_namespace_list_must_not_be_empty() -> None:
    with pytest.raises(TemplateError, match=r"watch\.namespaces"):
        render(values(watch__allNamespaces=False))


def test_service_monitor_and_metrics_switches() -> None:
    objects = render(values(metrics__serviceMonitor__enabled=True, metrics__serviceMonitor__labels={"release": "kps"}))
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (service,) = by_kind(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    quiet = render(values(metrics__enabled=False, metrics__serviceMonitor__enabled=True))
    assert not by_kind(quiet, "Service") and not by_kind(quiet, "ServiceMonitor")
    main = container(quiet)
    assert env(main)["METASPEC_METRICS_PORT"] == "0"
    assert [p["name"] for p in main["ports"]] == ["healthz"]


def test_rbac_and_service_account_switches() -> None:
    objects = render(values(rbac__create=False, serviceAccount__create=False, serviceAccount__name="ops"))
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} & {
        o["kind"] for o in objects
    }
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    with pytest.raises(TemplateError, match=r"serviceAccount\.name"):
        render(values(serviceAccount__create=False))


def test_operator_pod_overrides() -> None:
    digest = "sha256:" + "a" * 64
    objects = render(
        values(
            operator__image__digest=digest,
            operator__replicas=2,
            operator__nodeSelector={"node-role": "system"},
            operator__tolerations=[{"key": "system", "operator": "Exists"}],
            operator__extraEnv=[{"name": "METASPEC_CLUSTER_DOMAIN", "value": "corp.local"}],
            fullnameOverride="ms",
        )
    )
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["name"] == "ms" and deployment["spec"]["replicas"] == 2
    assert pod["containers"][0]["image"] == f"ghcr.io/metaspec/operator@{digest}"
    assert pod["nodeSelector"] == {"node-role": "system"} and pod["tolerations"][0]["key"] == "system"
    assert env(pod["containers"][0])["METASPEC_CLUSTER_DOMAIN"] == "corp.local"


def test_notes_render() -> None:
    notes = render_chart(CHART, values(watch__allNamespaces=False, watch__namespaces=["ml"]))["templates/NOTES.txt"]
    assert "in: ml." in notes and "rollout status deployment/metaspec" in notes


HELM = shutil.which("helm")
needs_helm = pytest.mark.skipif(HELM is None, reason="no `helm` binary on PATH (none is installable here)")


@needs_helm
def test_helm_lint() -> None:
    result = subprocess.run([HELM, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
def test_helm_template_matches_the_test_renderer() -> None:
    result = subprocess.run(
        [HELM, "template", "metaspec", str(CHART), "--namespace", NAMESPACE], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    helm_objects = [d for d in yaml.safe_load_all(result.stdout) if d and d.get("kind") != "CustomResourceDefinition"]
    key = lambda o: (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""))  # noqa: E731
    assert sorted(helm_objects, key=key) == sorted(render(values()), key=key)


@pytest.mark.parametrize("watch", [{}, {"watch__allNamespaces": False, "watch__namespaces": ["ml", "research"]}])
def test_operator_cli_accepts_the_rendered_args(watch: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`metaspec operator` parses the chart's args. Running kopf needs an API server, so `run` is replaced
    by a recorder (the one stand-in here) and `asyncio.run` by a no-op."""
    from metaspec.operator import cli

    seen: dict[str, Any] = {}

    def record(memo, namespaces=(), peering=None, mandatory_peering=False, liveness=None, **_):
        seen.update(namespaces=list(namespaces), peering=peering, liveness=liveness)

    monkeypatch.setattr(cli, "run", record)
    monkeypatch.setattr(cli.asyncio, "run", lambda _: None)
    monkeypatch.setattr(cli.kopf, "configure", lambda **_: None)
    main = container(render(values(**watch, operator__verbose=True)))
    assert main["args"][0] == "operator"
    assert cli.main(main["args"][1:]) == 0
    liveness = f"http://0.0.0.0:{VALUES['operator']['livenessPort']}/healthz"
    assert seen == {"namespaces": watch.get("watch__namespaces", []), "peering": "metaspec", "liveness": liveness}
