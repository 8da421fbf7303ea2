"""Thin kopf handlers; importing this package registers them in kopf's default registry."""

from . import children, dependencies, indexes, jobs, lifecycle, resync, specserve
from .common import Context

__all__ = ["Context", "children", "dependencies", "indexes", "jobs", "lifecycle", "resync", "specserve"]
