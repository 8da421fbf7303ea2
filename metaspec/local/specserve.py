"""SpecServe on this machine: what the operator's Deployment does, as one router process on loopback.

The router gets the same rendered config as the operator's ConfigMap; its status (phase, replicas,
`Ready`, `TargetReady`, `DraftReady`, `Suspended`) comes from `metaspec.status`, as the operator's
comes from its Deployment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaspec import pipeline
from metaspec import status as R
from metaspec.api import Phase, SpecServe, now
from metaspec.api import conditions as C
from metaspec.local.context import Context
from metaspec.local.processes import Child


@dataclass
class Server:
    """A running SpecServe router."""

    resource: SpecServe
    child: Child
    url: str
    config: Path


def _report(ctx: Context, resource: SpecServe, state: R.ServingState, **fields: Any) -> None:
    ctx.replace_status(resource, R.serving_status(resource, {**ctx.of(resource).status, **fields}, state))


def start(ctx: Context, resource: SpecServe, check: pipeline.DependencyCheck) -> Server | None:
    """Start the router for a SpecServe whose references resolved (vLLM's server with `engine: vllm`);
    None when it does not come up."""
    from metaspec.local.serving import start_server
    from metaspec.local.vllm import start_vllm_server

    rendered = pipeline.resolve(resource, check.resolved)
    assert isinstance(rendered, SpecServe)
    stage, config = ctx.stage_dir(rendered), ctx.write_config(rendered)
    rs = ctx.of(resource)
    loading = R.ServingState(Phase.PENDING, C.REPLICAS_NOT_READY, "loading target and draft", 1, 0)
    _report(ctx, resource, loading, startTime=now())
    ctx.refresh(force=True)
    rs.log = str(stage / "log.txt")
    log, env, port = Path(rs.log), ctx.stage_env(rendered, stage / "summary.json"), rendered.spec.service.port
    try:
        if rendered.spec.engine == "vllm":
            uris = {role: source.uri for role in ("target", "draft") if (source := getattr(rendered.spec, role))}
            child, url = start_vllm_server(
                rendered, uris, ctx.cache_dir, log, env, ctx.options.device, port, model_cache=ctx.model_cache(rendered)
            )
        else:
            child, url = start_server(config, log, env, ctx.device_args(), port)
    except RuntimeError as e:
        _report(ctx, resource, R.ServingState(Phase.FAILED, C.SERVER_FAILED, str(e), 1, 0))
        ctx.display.say(f"{rs.key} failed: {e}\n  log: {rs.log}")
        return None
    rs.pid, rs.url = child.pid, url
    _report(ctx, resource, R.ServingState(Phase.READY, C.REPLICAS_READY, "1/1 replicas ready", 1, 1), url=url)
    return Server(rendered, child, url, config)


def print_endpoints(ctx: Context, servers: list[Server]) -> None:
    from metaspec.local.serving import usage_snippet

    for server in servers:
        name = server.resource.spec.served_model_name or server.resource.metadata.name
        ctx.display.say(usage_snippet(server.url, name))


def serve_forever(ctx: Context, servers: list[Server]) -> None:
    ctx.display.say("serving; Ctrl-C (or `metaspec local stop`) stops the server")
    try:
        while all(s.child.poll() is None for s in servers):
            time.sleep(1)
    except KeyboardInterrupt:
        return
    ctx.display.say("a server exited; see its log")


def stop(ctx: Context, servers: list[Server]) -> None:
    """Stop every router; their SpecServes show as scaled to zero until the next run."""
    for server in servers:
        server.child.stop(10)
        message = "stopped with `metaspec local run`; it serves again on the next run"
        _report(ctx, server.resource, R.ServingState(Phase.SUSPENDED, C.SCALED_TO_ZERO, message, 0, 0))
        rs = ctx.of(server.resource)
        rs.pid = None
        rs.url = None
    servers.clear()
