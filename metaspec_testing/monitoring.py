"""What the chart's Grafana dashboard and alert rules query, and what a `/metrics` scrape offers.

Queries are parsed by `promql-parser` (a port of Prometheus's own PromQL parser): a query that Prometheus
would refuse fails here with the parser's message. Grafana's variables are replaced by values of their
kind first, and its `label_values(SELECTOR, label)` variable queries are reduced to the selector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "charts" / "metaspec" / "dashboards" / "metaspec.json"
#: Grafana's interval variables, as durations PromQL reads; `$namespace`-style variables only appear inside
#: label matchers' strings, where any text parses.
_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*\w+\)")
#: The series a metric family of each type exposes (the family's name plus these suffixes).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[str]:
    """Every PromQL query of the dashboard: panel targets (rows' panels included) and variable queries."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    panels = [q for p in dashboard["panels"] for q in (p, *p.get("panels", []))]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            found = _LABEL_VALUES.fullmatch(variable["query"]["query"])
            queries.append(found.group(1) if found else variable["query"]["query"])
    return queries


def rule_queries(objects: Iterable[dict[str, Any]]) -> list[str]:
    """The `expr` of every rule of the PrometheusRule objects among `objects`."""
    return [
        rule["expr"]
        for obj in objects
        if obj["kind"] == "PrometheusRule"
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
    ]


def queried_metrics(query: str) -> set[str]:
    """The metric names `query` selects; raises ValueError (the parser's message) if PromQL refuses it."""
    for variable, value in _INTERVALS.items():
        query = query.replace(variable, value)
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(query), visit)
    return names


def exported_metrics(exposition: str) -> set[str]:
    """The series names a scrape of this `/metrics` text offers, including those of families that have no
    sample yet (a labelled counter before its first increment)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names
