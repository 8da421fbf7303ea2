"""Thin kopf handlers; importing this package registers them in kopf's default registry."""

from . import dependencies, jobs, lifecycle, resync, specserve
from .common import Context

__all__ = ["Context", "dependencies", "jobs", "lifecycle", "resync", "specserve"]
