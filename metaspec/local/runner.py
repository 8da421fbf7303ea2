"""The local executor: the pipeline YAML a cluster would get, run as subprocesses on this machine.

One implementation, two executors: dependencies, cycles and reference resolution come from
`metaspec.pipeline`, the status (phases, conditions, metrics, the quality gate) from `metaspec.status`,
exactly as in the operator. Where the operator creates a Job, this runs `metaspec <component> --config
FILE` with the same rendered config, reads the same termination-message summary, and keeps the
resulting status in `STATE_DIR/state.json` instead of the API server.

The parts line up with the operator's handlers: `jobs.py` (TrainingRun, TeacherGeneration),
`specserve.py` (SpecServe), `context.py` (what they share); this module is the run itself.

Each stage runs once its references have succeeded. A succeeded stage whose rendered config (and the
artifacts it consumes) did not change is not run again; an interrupted one is run again and resumes
from its own checkpoints (the trainer) or written shard prefix (the generator).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from metaspec import pipeline
from metaspec import status as R
from metaspec.api import Phase, Resource, SpecServe
from metaspec.local import jobs, specserve
from metaspec.local.context import Context, RunOptions
from metaspec.local.loading import link_claims, load_pipeline
from metaspec.local.processes import terminate_group
from metaspec.local.state import State, StateLock, load_state, pid_alive
from metaspec.local.storage import ensure_buckets, open_storage, seed_bundled_model


@dataclass
class LocalRun:
    """One `metaspec local run`: owns the state directory while it runs."""

    pipeline_path: Path
    options: RunOptions
    ctx: Context = field(init=False)
    servers: list[specserve.Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctx = Context(self.options)

    @property
    def state_dir(self) -> Path:
        return self.options.state_dir

    def run(self) -> int:
        """Run the pipeline; 0 when every resource succeeded (or serves), 1 otherwise."""
        self.ctx.resources = load_pipeline(self.pipeline_path)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        link_claims(self.ctx.resources, self.options.claims, self.ctx.claims_dir)
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            with StateLock(self.state_dir):
                self._open_state()
                try:
                    return self._run_locked()
                finally:
                    specserve.stop(self.ctx, self.servers)
                    self.ctx.state.runner_pid = None
                    self.ctx.state.s3_pid = None
                    self.ctx.save(force=True)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _open_state(self) -> None:
        state = self.ctx.state = load_state(self.state_dir)
        _stop_leftovers(state)
        state.pipeline = str(Path(self.pipeline_path).resolve())
        state.runner_pid = os.getpid()
        state.embedded_s3 = self.options.s3_endpoint is None
        for r in self.ctx.resources:
            rs = self.ctx.of(r)
            if rs.phase in (Phase.RUNNING, Phase.READY):
                rs.status["phase"] = Phase.PENDING.value
                rs.status["message"] = "interrupted: resumes from its newest checkpoint"
            rs.pid = None
            rs.url = None
        known = {f"{r.kind}/{r.metadata.name}" for r in self.ctx.resources}
        state.resources = {k: v for k, v in state.resources.items() if k in known}
        self.ctx.save(force=True)

    def _run_locked(self) -> int:
        ctx = self.ctx
        with open_storage(self.state_dir, self.options.s3_endpoint) as storage:
            ctx.storage = storage
            ctx.state.s3_endpoint = storage.endpoint
            ctx.state.s3_pid = storage.server.process.pid if storage.server else None
            ctx.save(force=True)
            where = f"embedded SeaweedFS, data in {self.state_dir / 's3'}" if storage.server else None
            ctx.display.say(
                f"artifacts: {storage.endpoint} ({where or 'external S3, credentials from AWS_* variables'})"
            )
            ensure_buckets(ctx.resources)
            seed_bundled_model(ctx.resources, say=ctx.display.say)
            with ctx.display:
                for resource in ctx.resources:
                    self.execute(resource)
                    ctx.refresh(force=True)
            ok = all(ctx.of(r).phase in (Phase.SUCCEEDED, Phase.READY) for r in ctx.resources)
            specserve.print_endpoints(ctx, self.servers)
            if self.options.report:
                self._bench_and_report()
            if self.options.serve and self.servers:
                specserve.serve_forever(ctx, self.servers)
            return 0 if ok else 1

    def execute(self, resource: Resource) -> None:
        """Bring one resource forward: wait on its references, or run it (as the operator's reconcile)."""
        ctx = self.ctx
        status = ctx.of(resource).status
        check = pipeline.check_dependencies(resource, ctx.lookup)
        if not check.ready:
            ctx.replace_status(resource, R.waiting(resource, status, check))
            return
        ctx.replace_status(resource, R.started(resource, status, check))
        if not isinstance(resource, SpecServe):
            jobs.run(ctx, resource, check)
        elif server := specserve.start(ctx, resource, check):
            self.servers.append(server)

    def _bench_and_report(self) -> None:
        from metaspec.local import demo_bench, report

        ctx = self.ctx
        if self.servers:
            server = self.servers[0]
            results = demo_bench.run(
                server.resource,
                server.url,
                server.config,
                ctx.stage_env(server.resource, server.config.parent / "bench-summary.json"),
                ctx.device_args(),
                self.options.bench_prompts,
                self.options.bench_max_tokens,
            )
            path = self.state_dir / "bench" / "demo-bench.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
            ctx.state.bench = str(path)
            ctx.display.say(demo_bench.table(results))
        ctx.save(force=True)
        out = report.write_report(self.state_dir)
        ctx.state.report = str(out)
        ctx.save(force=True)
        ctx.display.say(f"report: {out}")


def _stop_leftovers(state: State) -> None:
    """Processes of a run that was killed without cleaning up (their PIDs are in the state file)."""
    pids = [r.pid for r in state.resources.values() if r.pid] + ([state.s3_pid] if state.s3_pid else [])
    for pid in pids:
        if pid_alive(pid) and _ours(pid):
            terminate_group(pid, grace=30)


def _ours(pid: int) -> bool:
    """Whether a PID from the state file still names one of our processes (PIDs get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"metaspec" in cmdline or b"weed" in cmdline
