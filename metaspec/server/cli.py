"""`metaspec serve --config FILE`: the SpecServe container's entry point.

The HTTP server listens first and the models load in a background thread, so `/healthz` (liveness)
answers during a long load while `/readyz` stays 503 until both models are loaded and checked. A load
that fails (unreachable storage, mismatched tokenizers) stops the server with the runtime's exit code.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from metaspec import progress
from metaspec.api import SpecServe
from metaspec.artifacts import cache_outcomes
from metaspec.runtime import CONFIG_PATH, PermanentError, load_config, model_cache_dir, run_component, setup_logging

if TYPE_CHECKING:
    import uvicorn

    from .engine import SpeculativeEngine

log = logging.getLogger("metaspec.server")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="metaspec serve", description="run a SpecServe's speculative router")
    parser.add_argument(
        "--config", type=Path, default=Path(CONFIG_PATH), help=f"SpecServe JSON (default {CONFIG_PATH})"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: the resource's spec.service.port)")
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=model_cache_dir(),
        help="where models are downloaded, shared with other runs (default: $METASPEC_MODEL_CACHE)",
    )
    parser.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda when available)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging()
    return run_component("server", lambda: serve(args))


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .engine import SpeculativeEngine
    from .serving import ServerSettings

    resource = load_config(args.config, SpecServe)
    if resource.spec.engine != "metaspec":
        raise PermanentError(
            f"{args.config}: spec.engine is {resource.spec.engine!r}; `metaspec serve` runs the metaspec engine "
            "only (vLLM's draft-model speculation is served by vLLM's own OpenAI server)"
        )
    settings = ServerSettings.from_resource(resource)
    engine = SpeculativeEngine.from_spec(resource.spec, settings.model_name, args.model_cache, device=args.device)
    app = create_app(engine, settings)
    port = args.port or resource.spec.service.port
    # in-flight generations get 20 s to finish on SIGTERM: inside Kubernetes' default 30 s grace period
    config = uvicorn.Config(app, host=args.host, port=port, log_config=None, timeout_graceful_shutdown=20)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []
    loader = threading.Thread(
        target=_load, args=(engine, server, failure, args.model_cache), name="metaspec-load", daemon=True
    )
    loader.start()
    _run_until_terminated(server)
    engine.close()
    if failure:
        raise failure[0]
    return 0


def _run_until_terminated(server: uvicorn.Server) -> None:
    """Serve until SIGTERM/SIGINT. uvicorn shuts down gracefully, then re-raises the signal into the
    previous handler; a SIGTERM handler of ours makes that a normal return, so the engine is closed
    and the exit code is 0 (a pod being stopped has not failed)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: log.info("stopped by SIGTERM"))
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load(engine: SpeculativeEngine, server: uvicorn.Server, failure: list[BaseException], model_cache: Path) -> None:
    """Load the models once the server listens, then report them; on failure record the error and stop
    the server."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    try:
        engine.load()
        log.info("models loaded: ready to serve %s", engine.model_name)
    except BaseException as error:
        failure.append(error)
        server.should_exit = True
        return
    _report_loaded(engine, model_cache)


def _report_loaded(engine: SpeculativeEngine, model_cache: Path) -> None:
    """Tell the operator what this pod serves (each model's URI and digest: a Hub branch's commit),
    whether the model cache had it and what `confidenceThreshold: auto` resolved to, for its SpecServe's
    status; nothing outside a cluster."""
    poster = progress.from_env()
    if poster is None:
        return
    report: dict[str, object] = {role: {"uri": m.uri, "digest": m.digest} for role, m in engine.served.items()}
    if cached := cache_outcomes(model_cache):
        report["modelCache"] = cached
    if engine.routing.calibrated is not None:  # `confidenceThreshold: auto`, and the policy reads it
        report["confidenceThreshold"] = engine.routing.threshold
        report["thresholdCalibrated"] = engine.routing.calibrated
    poster.deliver(report)
