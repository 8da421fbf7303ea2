"""The shipped RBAC rules grant every kind and verb the operator uses, and never Secrets."""

from __future__ import annotations

from metaspec.api import GROUP
from metaspec.operator import rbac
from metaspec.operator.kube import PLURALS, READ_ONLY

#: What kopf itself does with the resources the operator registers handlers and indexes for.
KOPF_WATCHED = [(GROUP, p) for p in ("trainingruns", "teachergenerations", "specserves")] + [
    ("batch", "jobs"),
    ("apps", "deployments"),
]


def test_every_child_kind_and_verb_is_granted():
    for kind, (api_version, plural) in PLURALS.items():
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        verbs = ("get", "list", "watch") if kind == "Pod" else ("get", "list", "patch")
        if kind in ("ConfigMap", "Service", "Job", "Deployment"):
            verbs = ("get", "list", "watch", "create", "patch")
        for verb in verbs:
            assert rbac.allowed(group, plural, verb), f"{verb} {group}/{plural} is not granted"
    for api_version, plural in READ_ONLY.values():
        assert rbac.allowed(api_version.rsplit("/", 1)[0], plural, "get"), f"get {plural} is not granted"


def test_kopf_watches_patches_statuses_and_events_are_granted():
    for group, plural in KOPF_WATCHED:
        for verb in ("list", "watch", "patch"):
            assert rbac.allowed(group, plural, verb), f"{verb} {group}/{plural}"
    for plural in ("trainingruns", "teachergenerations", "specserves"):
        assert rbac.allowed(GROUP, f"{plural}/status", "patch")
    assert rbac.allowed("", "events", "create")
    assert rbac.allowed("apiextensions.k8s.io", "customresourcedefinitions", "watch")


def test_secrets_are_never_granted():
    assert not any(rbac.allowed("", "secrets", verb) for verb in ("get", "list", "watch"))
    assert all("secrets" not in rule["resources"] for rule in rbac.cluster_rules())


def test_namespaced_rules_leave_out_cluster_scoped_resources():
    resources = {r for rule in rbac.namespaced_rules() for r in rule["resources"]}
    assert "jobs" in resources and "customresourcedefinitions" not in resources
