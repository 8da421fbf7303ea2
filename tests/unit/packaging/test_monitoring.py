"""The chart's monitoring objects (SpecServe PodMonitor, PrometheusRule, Grafana dashboard ConfigMap), as the
real helm renders them: off by default, selecting the pods the operator really builds, and querying only
series that are really exported.

The operator's names are checked here against its registry's exposition (what its `/metrics` serves); the
SpecServe names the dashboard queries are checked against the real servers' `/metrics` in
tests/integration/server (both engines), and every serving name a rule queries must be on the dashboard.
"""

from __future__ import annotations

import json
import re

import httpx
import kubernetes_validate
import promql_parser
import pytest
import yaml
from chart_objects import REPO, blocks, by_kind
from prometheus_client import start_http_server
from rendered import chart, operator_objects

from metaspec.api import API_VERSION
from metaspec.api.crd import render_all
from metaspec.operator import labels as L
from metaspec.operator import metrics as operator_metrics
from metaspec.operator.builders.deployment import VLLM_SERVER_MODULE
from metaspec_testing.monitoring import DASHBOARD, dashboard_queries, exported_metrics, queried_metrics, rule_queries

OBSERVABILITY = REPO / "docs" / "observability.md"


def _names(queries: list[str]) -> set[str]:
    return set().union(*(queried_metrics(q) for q in queries))


def test_monitoring_is_off_by_default() -> None:
    objects = chart("defaults")
    assert not {"PodMonitor", "PrometheusRule", "ServiceMonitor"} & {o["kind"] for o in objects}
    assert not [c for c in by_kind(objects, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]


@pytest.mark.parametrize(
    ("case", "namespaces"), [("docs-observability", {"any": True}), ("monitoring", {"matchNames": ["ml"]})]
)
def test_pod_monitor_scrapes_the_specserve_pods_of_both_engines(case: str, namespaces: dict) -> None:
    (monitor,) = by_kind(chart(case), "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == ("kps" if case == "monitoring" else "prometheus")
    assert monitor["spec"]["namespaceSelector"] == namespaces, "the watched namespaces"
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    owner = "__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", L.OWNER)
    assert endpoint["relabelings"] == [{"sourceLabels": [owner], "targetLabel": "specserve"}]
    engines = set()
    for source, obj in operator_objects():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]
        assert (selector.items() <= pod["metadata"]["labels"].items()) == (obj["kind"] == "Deployment"), source
        if obj["kind"] == "Deployment":
            (main,) = pod["spec"]["containers"]
            assert endpoint["port"] in {p["name"] for p in main["ports"]}, source
            engines.add("vllm" if VLLM_SERVER_MODULE in main.get("command", []) else "metaspec")
    assert engines == {"metaspec", "vllm"}


def test_dashboard_config_map_carries_the_dashboard_for_the_sidecar() -> None:
    (config_map,) = [
        c for c in by_kind(chart("monitoring"), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    meta = config_map["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1" and meta["annotations"] == {"grafana_folder": "ML"}
    assert meta["namespace"] == "monitoring"
    assert json.loads(config_map["data"]["metaspec.json"]) == json.loads(DASHBOARD.read_text())


def test_rules_are_valid_and_take_their_thresholds_from_the_values() -> None:
    (rule_object,) = by_kind(chart("monitoring"), "PrometheusRule")
    rules = {r["alert"]: r for group in rule_object["spec"]["groups"] for r in group["rules"]}
    assert set(rules) == {
        "MetaspecRunFailed",
        "MetaspecQualityGateFailed",
        "MetaspecReconcileErrors",
        "MetaspecServingQueueSaturated",
        "MetaspecServingKVCacheFull",
    }
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])  # raises on what Prometheus would refuse
    saturated = rules["MetaspecServingQueueSaturated"]
    assert saturated["expr"].endswith("> 4") and saturated["for"] == "5m"


def test_dashboard_and_rules_query_only_exported_metrics() -> None:
    """Every query parses as PromQL; the operator's names are in what its `/metrics` serves (the endpoint
    `metaspec.operator.metrics.serve` starts, over the operator's registry); the rules' serving names are all
    on the dashboard."""
    assert operator_metrics.RECONCILES  # imported: its series are in the registry
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        operator = exported_metrics(httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").text)
    finally:
        server.shutdown()
        thread.join()
    dashboard = _names(dashboard_queries())
    rules = _names(rule_queries(chart("monitoring")))
    queried = dashboard | rules
    ours = {n for n in queried if n.startswith("metaspec_operator_")}
    assert ours and ours <= operator, sorted(ours - operator)
    assert rules - ours <= dashboard, sorted(rules - ours - dashboard)
    assert {n for n in dashboard if n.startswith("vllm:")}, "the gateway's names and vLLM's own"


def test_hpa_example_scales_a_specserve_on_waiting_requests() -> None:
    (block,) = [b for b in blocks(OBSERVABILITY, "yaml") if "HorizontalPodAutoscaler" in b]
    adapter, hpa = yaml.safe_load_all(block)
    kubernetes_validate.validate(hpa, kubernetes_validate.latest_version(), strict=True)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (API_VERSION, "SpecServe")
    (crd_text,) = [text for name, text in render_all().items() if "specserves" in name]
    (version,) = yaml.safe_load(crd_text)["spec"]["versions"]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    (rule,) = adapter["rules"]["custom"]
    assert queried_metrics(rule["seriesQuery"]) == {"vllm:num_requests_waiting"}
    assert queried_metrics(rule["seriesQuery"]) <= _names(dashboard_queries())
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
