"""The Kubernetes operator (kopf): handlers, child-object builders, status mirroring, RBAC."""
