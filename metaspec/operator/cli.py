"""`metaspec operator`: run the kopf operator (peering, liveness endpoint, JSON logs, metrics)."""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Sequence

import kopf

from metaspec.operator.handlers import Context
from metaspec.operator.handlers.lifecycle import kopf_settings


async def run(
    memo: Context,
    namespaces: Sequence[str] = (),
    peering: str | None = None,
    mandatory_peering: bool = False,
    liveness: str | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set: all namespaces when `namespaces` is empty."""
    await kopf.operator(
        registry=kopf.get_default_registry(),
        settings=kopf_settings(peering, mandatory_peering),
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=liveness,
        memo=memo,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaspec operator", description=__doc__)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    where.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    peer = parser.add_mutually_exclusive_group()
    peer.add_argument(
        "--peering",
        help="kopf peering object keeping one replica active (required to exist); by default `metaspec` "
        "is used when kopf's peering CRDs are installed",
    )
    peer.add_argument("--standalone", action="store_true", help="no peering: for a single replica")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL ('' disables)")
    parser.add_argument("--log-format", choices=["json", "plain", "full"], default="json", help="log format")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    log_format = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}
    kopf.configure(verbose=args.verbose, log_format=log_format[args.log_format], log_refkey="object")
    peering = None if args.standalone else args.peering or "metaspec"
    mandatory = args.peering is not None
    asyncio.run(run(Context(), args.namespace, peering, mandatory, liveness=args.liveness or None))
    return 0
