"""The Helm chart: CRDs, values schema, RBAC and the manifests `helm template` renders (helm 3 here;
`test_helm_matrix.py` runs helm 3 and helm 4 over every case)."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_objects import CHART, NAMESPACE, SCHEMA, VALUES, HelmError, by_kind, container, env, helm, render, values

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


def _numbers(node: Any, path: str = "$"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("minimum", "maximum", "default") and not isinstance(value, dict | list):
                yield f"{path}.{key}", value
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{path}[{i}]")


def test_crd_bounds_are_numbers_to_yaml_1_1() -> None:
    """`1.0e-06` is a float to YAML 1.2 but a string to YAML 1.1 readers (PyYAML, kubernetes-validate):
    the generator writes positional floats (`0.000001`)."""
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for where, value in _numbers(yaml.safe_load(path.read_text())):
            if where.endswith(("minimum", "maximum")):
                assert isinstance(value, int | float), f"{path.name} {where}: {value!r} is not a number"


def test_chart_ships_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()))
    assert {d["spec"]["names"]["plural"] for d in docs} == {"kopfpeerings", "clusterkopfpeerings"}


def test_versions_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION


def test_values_validate_against_schema() -> None:
    jsonschema.validate(VALUES, SCHEMA)


def _objects_with_properties(node: Any, path: str = "$"):
    """Schema nodes that describe an object, leaving out `if`/`then` conditions (they constrain, not describe)."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            if key not in ("if", "then"):
                yield from _objects_with_properties(value, f"{path}.{key}")


def test_schema_refuses_unknown_keys() -> None:
    for path, node in _objects_with_properties(SCHEMA):
        assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
    misspelt = copy.deepcopy(VALUES)
    misspelt["operator"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(misspelt, SCHEMA)
    with pytest.raises(jsonschema.ValidationError, match="Sometimes"):
        jsonschema.validate(values(operator__image__pullPolicy="Sometimes"), SCHEMA)


def test_default_render_objects() -> None:
    objects = render(values())
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "Deployment"]
        + ["ClusterRole"] * 2  # the users' edit and view roles
        + ["Service"] * 2  # metrics, progress
    )
    for obj in objects:
        assert obj["metadata"]["name"].startswith("metaspec")
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
            assert obj["metadata"]["namespace"] == NAMESPACE


def operator_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (role,) = [r for r in by_kind(objects, "ClusterRole") if "aggregate-to-" not in str(r["metadata"]["labels"])]
    return role


def test_cluster_role_is_exactly_the_operator_rules() -> None:
    role = operator_role(render(values()))
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
    assert main["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}, "no readiness probe"
    assert env(main)["METASPEC_METRICS_PORT"] == str(ports["metrics"])
    assert env(main)["METASPEC_PROGRESS_PORT"] == str(ports["progress"])
    services = {s["spec"]["ports"][0]["targetPort"]: s for s in by_kind(objects, "Service")}
    assert set(services) == {"metrics", "progress"}
    for service in services.values():
        assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    progress = services["progress"]
    url = f"http://{progress['metadata']['name']}.{NAMESPACE}.svc:{progress['spec']['ports'][0]['port']}"
    assert env(main)["METASPEC_PROGRESS_URL"] == url, "pods are sent to the progress Service"


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
    assert settings.vllm_image == "vllm/vllm-openai:v0.32.0"
    assert settings.run_as_user == 1000 and settings.metrics_port == 8080
    assert settings.image_pull_policy == "IfNotPresent" and settings.startup_seconds == 1800
    assert settings.progress_port == 8082 and settings.progress_audience == "metaspec.dev/progress"
    assert settings.progress_seconds == 20 and settings.progress_writes_per_second == 10
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
    cluster_role = operator_role(objects)
    assert cluster_role["rules"] == rbac.cluster_scoped_rules()
    granted = {str(r) for r in cluster_role["rules"] + roles[0]["rules"]}
    assert granted <= {str(r) for r in rbac.cluster_rules()}, "split rules add a grant"
    cluster_wide = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_wide == {"customresourcedefinitions", "tokenreviews"}, (
        "a namespace list needs no cluster peering or namespace list"
    )
    args = container(objects)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=ml", "--namespace=research"]
    peerings = by_kind(objects, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"ml", "research"}
    assert not by_kind(objects, "ClusterKopfPeering")


def test_namespace_list_must_not_be_empty() -> None:
    with pytest.raises(HelmError, match=r"/watch/namespaces"):
        render(values(watch__allNamespaces=False))


def test_service_monitor_and_metrics_switches() -> None:
    objects = render(values(metrics__serviceMonitor__enabled=True, metrics__serviceMonitor__labels={"release": "kps"}))
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    with pytest.raises(HelmError, match="/metrics/serviceMonitor/enabled"):
        render(values(metrics__enabled=False, metrics__serviceMonitor__enabled=True))
    quiet = render(values(metrics__enabled=False, progress__enabled=False))
    assert not by_kind(quiet, "Service") and not by_kind(quiet, "ServiceMonitor")
    main = container(quiet)
    assert env(main)["METASPEC_METRICS_PORT"] == "0" and env(main)["METASPEC_PROGRESS_PORT"] == "0"
    assert env(main)["METASPEC_PROGRESS_URL"] == "", "no progress endpoint: pods get no token and no URL"
    assert [p["name"] for p in main["ports"]] == ["healthz"]


def test_rbac_and_service_account_switches() -> None:
    objects = render(values(rbac__create=False, serviceAccount__create=False, serviceAccount__name="ops"))
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} & {
        o["kind"] for o in objects
    }
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    with pytest.raises(HelmError, match=r"/serviceAccount/name"):
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


def test_notes_render(tmp_path: Path) -> None:
    """Helm renders NOTES.txt only on install, which needs a cluster: a copy of the chart makes it a
    named template and prints it from a manifest with `helm template --show-only`."""
    chart = tmp_path / "metaspec"
    shutil.copytree(CHART, chart)
    templates = chart / "templates"
    notes = (templates / "NOTES.txt").read_text()
    (templates / "_notes.tpl").write_text('{{- define "notes" -}}\n' + notes + "{{- end -}}\n")
    (templates / "notes.yaml").write_text('notes: {{ include "notes" . | toJson }}\n')
    vals = ("--set", "watch.allNamespaces=false", "--set", "watch.namespaces={ml}")
    out = helm("helm3", "template", "metaspec", str(chart), "--show-only", "templates/notes.yaml", *vals)
    notes = yaml.safe_load(out)["notes"]
    assert "in: ml." in notes and "rollout status deployment/metaspec" in notes


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


#: Short names other popular operators' CRDs take; `kubectl get <short>` would be ambiguous beside them.
TAKEN_SHORT_NAMES = {"tr": "Tekton TaskRun", "pr": "Tekton PipelineRun", "t": "Tekton Task", "p": "Tekton Pipeline"}


def test_short_names_do_not_collide() -> None:
    for text in render_all().values():
        names = yaml.safe_load(text)["spec"]["names"]
        for short in names["shortNames"]:
            assert short not in TAKEN_SHORT_NAMES, f"{names['kind']}: `{short}` is {TAKEN_SHORT_NAMES[short]}'s"


def test_user_roles_aggregate_into_edit_and_view() -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(render(values()), "ClusterRole")}
    edit, view = roles["metaspec-edit"], roles["metaspec-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["rules"] == rbac.user_rules(edit=True) and view["rules"] == rbac.user_rules(edit=False)
    assert "create" in edit["rules"][0]["verbs"] and set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    assert not {"metaspec-edit", "metaspec-view"} & {
        r["metadata"]["name"] for r in by_kind(render(values(rbac__aggregateUserRoles=False)), "ClusterRole")
    }


def test_values_describe_the_vllm_image_as_the_builder_uses_it() -> None:
    """The operator sets the vLLM container's command (`python3 -m vllm.entrypoints.openai.api_server`), not
    the image's entrypoint."""
    from metaspec.operator.builders.deployment import vllm_args

    assert vllm_args.__name__ and "*vllm_args(" in (REPO / "metaspec/operator/builders/deployment.py").read_text()
    text = (CHART / "values.yaml").read_text()
    comment = text[: text.index("  vllm:\n")].rsplit("# --", 1)[1]
    assert "command" in comment and "entrypoint is used" not in comment, comment
