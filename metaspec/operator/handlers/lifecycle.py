"""Operator-wide activities: settings, login (shared with the handlers' own client), metrics, cleanup."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from metaspec.operator import metrics
from metaspec.operator.handlers.common import Context
from metaspec.operator.labels import KOPF_PREFIX
from metaspec.operator.progress import ProgressService


def kopf_settings(peering: str | None, mandatory: bool = False) -> kopf.OperatorSettings:
    """kopf's settings for this operator; `peering=None` runs standalone (no leader election)."""
    settings = kopf.OperatorSettings()
    # kopf's bookkeeping goes to annotations under our prefix; the CRD status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    # Events are posted explicitly on phase transitions; kopf's per-handler chatter would drown them.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "metaspec-operator"
    settings.watching.server_timeout = 300
    settings.peering.standalone = peering is None
    settings.peering.name = peering or "metaspec"
    settings.peering.mandatory = mandatory
    return settings


@kopf.on.startup()
def start_metrics(memo: Context, **_: Any) -> None:
    metrics.serve(memo.settings.metrics_port)


@kopf.on.startup()
async def start_progress(memo: Context, **_: Any) -> None:
    """The endpoint running pods post their progress to (`metaspec.operator.progress`)."""
    if memo.settings.progress_port:
        memo.progress = ProgressService(memo.kube, memo.settings)
        await memo.progress.start(memo.settings.progress_port)


@kopf.on.cleanup()
async def stop_progress(memo: Context, **_: Any) -> None:
    if memo.progress is not None:
        await memo.progress.stop()
        memo.progress = None


@kopf.on.login()
async def login(memo: Context, logger: kopf.Logger, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's default discovery (in-cluster, then kubeconfig), shared with the handlers' client."""

    async def fresh() -> kopf.ConnectionInfo:
        if memo.connection is not None:
            return memo.connection
        info = kopf.login_via_client(logger=logger, settings=settings)
        info = info or kopf.login_with_service_account(settings=settings)
        info = info or kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise kopf.LoginError("no credentials: run in a pod with a service account, or set KUBECONFIG")
        return info

    info = await fresh()
    memo.kube.configure(info, fresh)
    return info


@kopf.on.cleanup()
async def close(memo: Context, **_: Any) -> None:
    await memo.kube.close()
