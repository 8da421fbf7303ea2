"""The RBAC rules the operator needs: the single source for the Helm chart and the Kustomize base.

Every API call the operator makes (handlers, status mirroring, events, peering) must be granted
here; `tests/unit/operator/test_rbac.py` checks the builders' kinds and the handlers' verbs against it.
The operator never reads Secrets: pods get S3 credentials through `secretKeyRef`/`envFrom`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metaspec.api import GROUP, RESOURCES

#: Namespaced permissions (a Role per watched namespace, or a ClusterRole bound cluster-wide).
_READ = ("get", "list", "watch")
_CHILD = ("get", "list", "watch", "create", "patch", "update", "delete")


@dataclass(frozen=True)
class Rule:
    """One PolicyRule: API group, resources, verbs."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    cluster_scoped: bool = False
    #: Needed only when watching all namespaces (a cluster-scoped peering object, the namespace list).
    all_namespaces_only: bool = False

    def dump(self) -> dict[str, Any]:
        return {"apiGroups": [self.api_group], "resources": list(self.resources), "verbs": list(self.verbs)}

    def allows(self, api_group: str, resource: str, verb: str) -> bool:
        return api_group == self.api_group and resource in self.resources and verb in self.verbs


#: The kinds users create; the chart aggregates access to them into Kubernetes' `view`/`edit`/`admin` roles.
USER_KINDS = tuple(cls.plural for cls in RESOURCES.values())

RULES: tuple[Rule, ...] = (
    # The three CRDs: watched, patched (kopf's progress annotations and finalizers), status written.
    Rule(GROUP, USER_KINDS, (*_READ, "patch", "update")),
    Rule(GROUP, tuple(f"{plural}/status" for plural in USER_KINDS), ("get", "patch", "update")),
    # Children.
    Rule("batch", ("jobs",), _CHILD),
    Rule("apps", ("deployments",), _CHILD),
    Rule("", ("configmaps", "services"), _CHILD),
    # Model-cache claims a spec asks for (`storage.modelCache.size`): created once, shared, never changed.
    Rule("", ("persistentvolumeclaims",), ("create",)),
    # Termination-message summaries of finished pods, read into the CR status.
    Rule("", ("pods",), _READ),
    # Events on every transition (kopf posts core/v1 events; events.k8s.io for newer tooling).
    Rule("", ("events",), ("create", "patch")),
    Rule("events.k8s.io", ("events",), ("create", "patch")),
    # kopf peering: one active operator among replicas (namespaced and cluster-wide peering objects).
    Rule("kopf.dev", ("kopfpeerings",), ("get", "list", "watch", "patch")),
    Rule(
        "kopf.dev",
        ("clusterkopfpeerings",),
        ("get", "list", "watch", "patch"),
        cluster_scoped=True,
        all_namespaces_only=True,
    ),
    # The progress endpoint has the API server check the tokens pods present (operator/progress.py) and
    # follows a serving pod's ReplicaSet to its Deployment.
    Rule("authentication.k8s.io", ("tokenreviews",), ("create",), cluster_scoped=True),
    Rule("apps", ("replicasets",), ("get",)),
    # kopf's resource discovery watches CRDs to notice the metaspec CRDs appear.
    Rule("apiextensions.k8s.io", ("customresourcedefinitions",), _READ, cluster_scoped=True),
    # kopf lists namespaces when run with --all-namespaces (or namespace patterns, which the chart never uses).
    Rule("", ("namespaces",), _READ, cluster_scoped=True, all_namespaces_only=True),
)


def namespaced_rules() -> list[dict[str, Any]]:
    """Rules for a Role (one watched namespace)."""
    return [r.dump() for r in RULES if not r.cluster_scoped]


def cluster_rules() -> list[dict[str, Any]]:
    """Rules for the operator's ClusterRole when it watches all namespaces."""
    return [r.dump() for r in RULES]


def cluster_scoped_rules() -> list[dict[str, Any]]:
    """Rules for the operator's ClusterRole when it watches a list of namespaces (a Role in each)."""
    return [r.dump() for r in RULES if r.cluster_scoped and not r.all_namespaces_only]


def allowed(api_group: str, resource: str, verb: str) -> bool:
    """Whether the shipped rules grant `verb` on `api_group/resource`."""
    return any(r.allows(api_group, resource, verb) for r in RULES)


def user_rules(edit: bool) -> list[dict[str, Any]]:
    """Rules for users of the three kinds: read them (view), or also write them (edit, admin)."""
    verbs = [*_READ, *(("create", "update", "patch", "delete", "deletecollection") if edit else ())]
    return [
        {"apiGroups": [GROUP], "resources": list(USER_KINDS), "verbs": verbs},
        {"apiGroups": [GROUP], "resources": [f"{k}/status" for k in USER_KINDS], "verbs": list(_READ)},
    ]
