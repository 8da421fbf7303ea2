"""The local executor: the pipeline YAML a cluster would get, run as subprocesses on this machine.

One implementation, two executors: dependencies, cycles, reference resolution and conditions come
from `metaspec.pipeline`, exactly as in the operator. Where the operator creates a Job, this runs
`metaspec <component> --config FILE` with the same rendered config, reads the same termination-message
summary, and keeps the resulting status in `STATE_DIR/state.json` instead of the API server.

Each stage runs once its references have succeeded. A succeeded stage whose rendered config (and the
artifacts it consumes) did not change is not run again; an interrupted one is run again and resumes
from its own checkpoints (the trainer) or written shard prefix (the generator).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metaspec import pipeline
from metaspec.api import (
    InvalidResource,
    Phase,
    Resource,
    SpecServe,
    TeacherGeneration,
    TrainingRun,
    now,
    parse_resource,
)
from metaspec.artifacts import (
    MANIFEST,
    ArtifactError,
    Uri,
    is_complete,
    list_files,
    read_bytes,
    read_manifest,
    store_for,
    verify_artifact,
)
from metaspec.local import strict_yaml
from metaspec.local.display import LiveDisplay, parse_progress_line
from metaspec.local.processes import Child, terminate_group
from metaspec.local.state import State, StateLock, load_state, pid_alive, save_state
from metaspec.local.storage import Storage, ensure_buckets, open_storage, seed_bundled_model
from metaspec.runtime import EXIT_PERMANENT, EXIT_QUALITY

#: Files of a finished stage copied next to the state for `metaspec report` (small by construction).
REPORT_FILES = {
    "TrainingRun": ("metrics.json", "history.jsonl"),
    "TeacherGeneration": ("stats.json",),
}
MAX_COPIED_BYTES = 64 * 2**20
SUCCEEDED_CONDITION = "Complete"
QUALITY_CONDITION = "QualityCheckPassed"


class PipelineError(ValueError):
    """A pipeline file that cannot run: bad YAML, invalid resources, duplicate names, cycles."""


def load_pipeline(path: Path) -> list[Resource]:
    """Every resource of a (multi-document) YAML file, validated by the api models, in file order."""
    try:
        documents = [d for d in strict_yaml.load_all(Path(path).read_text(encoding="utf-8")) if d is not None]
    except FileNotFoundError:
        raise PipelineError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise PipelineError(f"{path} is a directory: give the pipeline's YAML file") from None
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise PipelineError(f"{path} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path} is not valid YAML: {e}") from None
    except RecursionError:
        raise PipelineError(f"{path} is nested too deeply to be a pipeline") from None
    resources: list[Resource] = []
    errors: list[str] = []
    for number, body in enumerate(documents, start=1):
        meta = body.get("metadata") if isinstance(body, dict) else None
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        kind = body.get("kind", "?") if isinstance(body, dict) else "?"
        where = f"{path} document {number} ({kind if isinstance(kind, str) else '?'} {name})"
        if not isinstance(body, dict):
            errors.append(f"{where}: expected a mapping with apiVersion, kind, metadata, spec")
            continue
        try:
            resources.append(parse_resource(body, where=where))
        except InvalidResource as e:
            errors.append(str(e))
    seen: set[tuple[str, str]] = set()
    for r in resources:
        if pipeline.key(r) in seen:
            errors.append(f"{path}: {r.kind} {r.metadata.name!r} is defined twice")
        seen.add(pipeline.key(r))
    if not resources and not errors:
        errors.append(f"{path} holds no resources")
    if errors:
        raise PipelineError("\n".join(errors))
    try:
        return pipeline.topological_order(resources)
    except ValueError as e:
        raise PipelineError(f"{path}: {e}") from None


@dataclass
class RunOptions:
    state_dir: Path = Path(".metaspec")
    s3_endpoint: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    serve: bool = False  # keep SpecServe servers running until interrupted
    report: bool = False  # run the demo benchmark and write the report at the end
    stop_grace: float = 120  # seconds a stage gets to checkpoint after SIGTERM
    bench_prompts: int = 3  # demo benchmark: prompts per difficulty (easy and hard)
    bench_max_tokens: int = 32  # demo benchmark: tokens per answer
    claims: dict[str, Path] = field(default_factory=dict)  # `pvc://<claim>/…` read from these host folders


@dataclass
class Server:
    """A running SpecServe router."""

    resource: SpecServe
    child: Child
    url: str
    config: Path


@dataclass
class LocalRun:
    """One `metaspec local run`: owns the state directory while it runs."""

    pipeline_path: Path
    options: RunOptions
    display: LiveDisplay = field(default_factory=LiveDisplay)
    state: State = field(default_factory=State)
    resources: list[Resource] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    storage: Storage | None = None
    _dirty: bool = False
    _saved_at: float = 0.0

    @property
    def state_dir(self) -> Path:
        return self.options.state_dir

    def run(self) -> int:
        """Run the pipeline; 0 when every resource succeeded (or serves), 1 otherwise."""
        self.resources = load_pipeline(self.pipeline_path)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        link_claims(self.resources, self.options.claims, self.claims_dir)
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            with StateLock(self.state_dir):
                self._open_state()
                try:
                    return self._run_locked()
                finally:
                    self._stop_servers()
                    self.state.runner_pid = None
                    self.state.s3_pid = None
                    self._save(force=True)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _open_state(self) -> None:
        self.state = load_state(self.state_dir)
        _stop_leftovers(self.state)
        self.state.pipeline = str(Path(self.pipeline_path).resolve())
        self.state.runner_pid = os.getpid()
        self.state.embedded_s3 = self.options.s3_endpoint is None
        for r in self.resources:
            rs = self.state.resource(r.kind, r.metadata.name)
            if rs.phase in (Phase.RUNNING, Phase.READY):
                rs.status["phase"] = Phase.PENDING.value
                rs.status["message"] = "interrupted: resumes from its newest checkpoint"
            rs.pid = None
            rs.url = None
        known = {f"{r.kind}/{r.metadata.name}" for r in self.resources}
        self.state.resources = {k: v for k, v in self.state.resources.items() if k in known}
        self._save(force=True)

    def _run_locked(self) -> int:
        with open_storage(self.state_dir, self.options.s3_endpoint) as storage:
            self.storage = storage
            self.state.s3_endpoint = storage.endpoint
            self.state.s3_pid = storage.server.process.pid if storage.server else None
            self._save(force=True)
            self.display.say(f"artifacts: {storage.endpoint} ({self._s3_description()})")
            ensure_buckets(self.resources)
            seed_bundled_model(self.resources, say=self.display.say)
            with self.display:
                for resource in self.resources:
                    self._execute(resource)
                    self._refresh(force=True)
            ok = all(
                self.state.resource(*pipeline.key(r)).phase in (Phase.SUCCEEDED, Phase.READY) for r in self.resources
            )
            self._print_endpoints()
            if self.options.report:
                self._bench_and_report()
            if self.options.serve and self.servers:
                self._serve_forever()
            return 0 if ok else 1

    def _s3_description(self) -> str:
        if self.storage and self.storage.server:
            return f"embedded SeaweedFS, data in {self.state_dir / 's3'}"
        return "external S3, credentials from AWS_* variables"

    # --- the state as the operator would see it -------------------------------------------------

    def _lookup(self, kind: str, name: str) -> Resource | None:
        for r in self.resources:
            if pipeline.key(r) == (kind, name):
                return self._with_status(r)
        return None

    def _with_status(self, resource: Resource) -> Resource:
        status = self.state.resource(*pipeline.key(resource)).status
        return type(resource).model_validate({**resource.dump(), "status": status or None})

    def _set_status(self, resource: Resource, **fields: Any) -> None:
        rs = self.state.resource(*pipeline.key(resource))
        rs.status.update({k: v for k, v in fields.items()})
        rs.status["observedGeneration"] = resource.metadata.generation
        self._dirty = True

    def _condition(self, resource: Resource, type_: str, status: bool, reason: str, message: str = "") -> None:
        current = self._with_status(resource).status
        conditions = pipeline.set_condition(
            current.conditions if current else [], type_, status, reason, message, resource.metadata.generation
        )
        self._set_status(resource, conditions=[c.dump() for c in conditions])

    def _save(self, force: bool = False) -> None:
        if force or (self._dirty and time.monotonic() - self._saved_at > 2):
            save_state(self.state_dir, self.state)
            self._dirty = False
            self._saved_at = time.monotonic()

    def _refresh(self, force: bool = False) -> None:
        self.display.update(self.state)
        self._save(force)

    # --- one resource ----------------------------------------------------------------------------

    def _execute(self, resource: Resource) -> None:
        rs = self.state.resource(*pipeline.key(resource))
        check = pipeline.check_dependencies(resource, self._lookup)
        if not check.ready:
            phase = Phase.FAILED if check.failed else Phase.WAITING
            self._condition(resource, pipeline.DEPENDENCIES_READY, False, check.reason, check.message)
            self._set_status(resource, phase=phase.value, message=check.message)
            return
        self._condition(resource, pipeline.DEPENDENCIES_READY, True, check.reason, check.message)
        rendered = pipeline.resolve(resource, check.resolved)
        digest = config_digest(rendered, check.resolved)
        if isinstance(resource, SpecServe):
            self._start_server(rendered, check.resolved)
            return
        if rs.phase == Phase.SUCCEEDED and rs.config_digest == digest and self._output_complete(resource):
            self._set_status(resource, message=rs.status.get("message") or "done")
            self.display.say(f"{rs.key}: succeeded before with the same config; reusing its artifacts")
            return
        if rs.config_digest not in (None, digest) and rs.phase != Phase.PENDING:
            self.display.say(f"{rs.key}: config or inputs changed since the last run; running it again")
        rs.config_digest = digest
        rs.progress = {}
        self._set_status(
            resource,
            phase=Phase.RUNNING.value,
            message="",
            startTime=now(),
            completionTime=None,
            **_resolved_fields(rendered),
        )
        if isinstance(resource, TrainingRun):
            self._run_training(rendered)
        else:
            self._run_generation(rendered)

    def _output_complete(self, resource: Resource) -> bool:
        """Whether the stage's output is whole: every file present with its size and sha256. One that
        fails loses its manifest, so that the stage runs again and rewrites what is missing or damaged."""
        artifact = pipeline.artifact_of(self._with_status(resource))
        if artifact is None:
            return False
        try:
            verify_artifact(artifact.uri)
        except ArtifactError as e:
            if is_complete(artifact.uri):
                self.display.say(f"{resource.kind}/{resource.metadata.name}: its output fails verification ({e})")
                manifest = Uri.of(artifact.uri).join(MANIFEST)
                store_for(manifest).delete(manifest)
            return False
        return True

    def _stage_dir(self, resource: Resource) -> Path:
        path = self.state_dir / "stages" / f"{resource.kind.lower()}-{resource.metadata.name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _stage_env(self, summary: Path) -> dict[str, str]:
        env = {
            "METASPEC_CACHE": str(self.cache_dir),
            **os.environ,
            **(self.storage.env if self.storage else {}),
            "METASPEC_TERMINATION_MESSAGE_PATH": str(summary),
            "METASPEC_PVC_ROOT": str(self.claims_dir),
            "METASPEC_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        if self.storage and self.storage.server:
            # the embedded server lives and dies with this runner: once it is unreachable the run is
            # over, and a stage checkpointing on SIGTERM must not wait a minute for it
            env.setdefault("METASPEC_S3_RETRY_SECONDS", "3")
        if self.options.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    @property
    def claims_dir(self) -> Path:
        """`pvc://` claims as links to host folders (`--claim NAME=DIR`), as pods see mounted claims."""
        return self.state_dir / "claims"

    @property
    def cache_dir(self) -> Path:
        """Downloaded models, shared by the stages (keyed by manifest digest, so never stale)."""
        return Path(os.environ.get("METASPEC_CACHE") or self.state_dir / "cache")

    def _device_args(self) -> list[str]:
        return [] if self.options.device == "auto" else ["--device", self.options.device]

    def _run_component(self, resource: Resource, argv: list[str], summary: Path) -> tuple[int, dict[str, Any]]:
        """Run one component process to its end; returns its exit code and termination summary."""
        rs = self.state.resource(*pipeline.key(resource))
        summary.unlink(missing_ok=True)
        rs.attempts += 1
        rs.log = str(self._stage_dir(resource) / "log.txt")

        def on_line(line: str) -> None:
            if parse_progress_line(line, rs.progress):
                self._dirty = True

        child = Child([sys.executable, "-m", "metaspec.cli", *argv], Path(rs.log), self._stage_env(summary), on_line)
        rs.pid = child.pid
        self._save(force=True)
        try:
            while child.poll() is None:
                self._refresh()
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.display.say(f"{rs.key}: stopping (SIGTERM; it checkpoints and resumes on the next run)")
            child.stop(self.options.stop_grace)
            self._set_status(resource, phase=Phase.PENDING.value, message="interrupted: resumes on the next run")
            rs.pid = None
            raise
        code = child.wait()
        rs.pid = None
        return code, _read_summary(summary, child)

    def _run_training(self, resource: TrainingRun) -> None:
        stage = self._stage_dir(resource)
        config = _write_config(stage / "config.json", resource)
        for attempt in range(resource.spec.backoff_limit + 1):
            argv = ["train", "--config", str(config), "--work-dir", str(stage / "work"), *self._device_args()]
            code, summary = self._run_component(resource, argv, stage / "summary.json")
            if code == 0 or code in (EXIT_PERMANENT, EXIT_QUALITY) or attempt == resource.spec.backoff_limit:
                break
            self.display.say(f"TrainingRun/{resource.metadata.name}: exit {code}, retrying (resumes from checkpoint)")
        self._finish(resource, code, summary)

    def _run_generation(self, resource: TeacherGeneration) -> None:
        """One process per shard, one after another (a local machine runs them sequentially)."""
        stage = self._stage_dir(resource)
        config = _write_config(stage / "config.json", resource)
        n = resource.spec.shards
        summaries: list[dict[str, Any]] = []
        code = 0
        for index in range(n):
            argv = ["generate", "--config", str(config), "--shard-index", str(index), "--num-shards", str(n)]
            argv += ["--work-dir", str(stage / "work"), "--no-progress", *self._device_args()]
            for attempt in range(resource.spec.backoff_limit + 1):
                code, summary = self._run_component(resource, argv, stage / f"summary-{index}.json")
                if code in (0, EXIT_PERMANENT, EXIT_QUALITY) or attempt == resource.spec.backoff_limit:
                    break
            summaries.append(summary)
            self._set_status(resource, shards={"total": n, "succeeded": index + (code in (0, EXIT_QUALITY))})
            if code not in (0, EXIT_QUALITY):
                break
        self._finish(resource, code, merge_shard_summaries(summaries))

    def _finish(self, resource: Resource, code: int, summary: dict[str, Any]) -> None:
        """The status after the component exited, from its exit code and summary (as the operator does)."""
        rs = self.state.resource(*pipeline.key(resource))
        status = status_from_summary(resource, rs.status, summary)
        verdict = summary.get("quality") if isinstance(resource, TeacherGeneration) else None
        quality_failed = code == EXIT_QUALITY or (isinstance(verdict, dict) and verdict.get("passed") is False)
        if quality_failed and isinstance(resource, TeacherGeneration):
            rs.status = status
            self._condition(resource, QUALITY_CONDITION, False, "NaturalStopRateTooLow", summary.get("message", ""))
            status = rs.status
        elif isinstance(resource, TeacherGeneration) and code == 0:
            rs.status = status
            self._condition(resource, QUALITY_CONDITION, True, "QualityCheckPassed")
            status = rs.status
        succeeded = code == 0
        status["phase"] = (Phase.SUCCEEDED if succeeded else Phase.FAILED).value
        status["completionTime"] = now()
        if not succeeded:
            status["message"] = summary.get("message") or f"exit code {code}; see {rs.log}"
        rs.status = status
        reason = "Succeeded" if succeeded else summary.get("reason", f"ExitCode{code}")
        self._condition(resource, SUCCEEDED_CONDITION, succeeded, reason, status.get("message", ""))
        if succeeded:
            self._copy_report_files(resource)
        self._refresh(force=True)
        if not succeeded:
            self.display.say(f"{rs.key} failed: {status['message']}\n  log: {rs.log}")

    def _copy_report_files(self, resource: Resource) -> None:
        """Keep the small result files next to the state so `metaspec report` needs no S3 server."""
        output = resource.spec.output.uri
        dest = self._stage_dir(resource) / "artifacts"
        dest.mkdir(exist_ok=True)
        try:
            names = [(n, size) for n, size in list_files(output) if "/" not in n]
        except ArtifactError as e:
            self.display.say(f"{resource.kind}/{resource.metadata.name}: cannot list {output}: {e}")
            return
        wanted = REPORT_FILES.get(resource.kind, ())
        for name, size in names:
            teacher_output = isinstance(resource, TeacherGeneration) and name.endswith(".jsonl")
            if (name in wanted or teacher_output) and size <= MAX_COPIED_BYTES:
                (dest / name).write_bytes(read_bytes(f"{output.rstrip('/')}/{name}"))

    # --- serving -----------------------------------------------------------------------------------

    def _start_server(self, resource: SpecServe, resolved: dict[str, pipeline.Resolved]) -> None:
        from metaspec.local.serving import start_server

        stage = self._stage_dir(resource)
        config = _write_config(stage / "config.json", resource)
        rs = self.state.resource(*pipeline.key(resource))
        self._set_status(resource, phase=Phase.RUNNING.value, message="loading target and draft", startTime=now())
        self._refresh(force=True)
        served = {
            part: {"uri": artifact.uri, "digest": artifact.digest or _digest(artifact.uri)}
            for part, artifact in ((p.removeprefix("spec."), a) for p, a in resolved.items())
        }
        for part in ("target", "draft"):
            source = getattr(resource.spec, part)
            if part not in served and source is not None and source.uri:
                served[part] = {"uri": source.location, "digest": source.hub_digest or _digest(source.uri)}
        rs.log = str(stage / "log.txt")
        try:
            child, url = start_server(
                config,
                Path(rs.log),
                self._stage_env(stage / "summary.json"),
                [*self._device_args(), "--work-dir", str(self.cache_dir / "serve")],
                resource.spec.service.port,
            )
        except RuntimeError as e:
            self._set_status(resource, phase=Phase.FAILED.value, message=str(e), **served)
            self._condition(resource, "Ready", False, "ServerFailed", str(e))
            self.display.say(f"{rs.key} failed: {e}\n  log: {rs.log}")
            return
        rs.pid, rs.url = child.pid, url
        self.servers.append(Server(resource, child, url, config))
        self._set_status(resource, phase=Phase.READY.value, message="", url=url, readyReplicas=1, replicas=1, **served)
        self._condition(resource, "Ready", True, "ServerReady")

    def _print_endpoints(self) -> None:
        from metaspec.local.serving import usage_snippet

        for server in self.servers:
            name = server.resource.spec.served_model_name or server.resource.metadata.name
            self.display.say(usage_snippet(server.url, name))

    def _bench_and_report(self) -> None:
        from metaspec.local import demo_bench, report

        if self.servers:
            server = self.servers[0]
            results = demo_bench.run(
                server.resource,
                server.url,
                server.config,
                self._stage_env(server.config.parent / "bench-summary.json"),
                [*self._device_args(), "--work-dir", str(self.cache_dir / "serve")],
                self.options.bench_prompts,
                self.options.bench_max_tokens,
            )
            path = self.state_dir / "bench" / "demo-bench.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
            self.state.bench = str(path)
            self.display.say(demo_bench.table(results))
        self._save(force=True)
        out = report.write_report(self.state_dir)
        self.state.report = str(out)
        self._save(force=True)
        self.display.say(f"report: {out}")

    def _serve_forever(self) -> None:
        self.display.say("serving; Ctrl-C (or `metaspec local stop`) stops the server")
        try:
            while all(s.child.poll() is None for s in self.servers):
                time.sleep(1)
        except KeyboardInterrupt:
            return
        self.display.say("a server exited; see its log")

    def _stop_servers(self) -> None:
        for server in self.servers:
            server.child.stop(10)
            self._set_status(
                server.resource,
                phase=Phase.SUSPENDED.value,
                message="stopped with `metaspec local run`; it serves again on the next run",
                readyReplicas=0,
            )
            rs = self.state.resource(*pipeline.key(server.resource))
            rs.pid = None
            rs.url = None
        self.servers = []


# --- pure helpers ----------------------------------------------------------------------------------


def link_claims(resources: list[Resource], folders: dict[str, Path], root: Path) -> None:
    """Link each claim the pipeline names to its host folder under `root`; a claim without one is refused."""
    needed = {claim: r for r in resources for claim in pipeline.claims(r)}
    missing = [f"{claim} (used by {r.kind} {r.metadata.name})" for claim, r in needed.items() if claim not in folders]
    if missing:
        raise PipelineError(
            f"no host folder for the claims {', '.join(missing)}: give `--claim NAME=DIR` for each pvc:// claim"
        )
    for claim, folder in folders.items():
        if not Path(folder).is_dir():
            raise PipelineError(f"--claim {claim}={folder}: {folder} is not a directory")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for claim, folder in folders.items():
        (root / claim).symlink_to(Path(folder).resolve(), target_is_directory=True)


def config_digest(rendered: Resource, resolved: dict[str, pipeline.Resolved]) -> str:
    """What a stage's result depends on: its rendered config and the exact artifacts it consumes."""
    body = {"config": rendered.dump(), "inputs": {k: [v.uri, v.digest] for k, v in sorted(resolved.items())}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_config(path: Path, resource: Resource) -> Path:
    body = resource.dump()
    body.pop("status", None)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1))
    os.replace(tmp, path)
    return path


def _resolved_fields(resource: Resource) -> dict[str, Any]:
    if isinstance(resource, TrainingRun):
        return {"resolvedBaseModel": resource.spec.base_model.uri, "resolvedDataset": resource.spec.dataset.uri}
    if isinstance(resource, TeacherGeneration):
        return {"resolvedModel": resource.spec.model.uri}
    return {}


def _digest(uri: str) -> str | None:
    try:
        return read_manifest(uri).digest
    except ArtifactError:
        return None


def _read_summary(path: Path, child: Child) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
        return body if isinstance(body, dict) else {}
    except FileNotFoundError:
        return {"message": "the component wrote no summary; last log lines:\n" + child.tail(8)}
    except ValueError:
        return {"message": f"unreadable summary in {path}"}


def status_from_summary(resource: Resource, status: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The resource's status with the component's summary folded in: summary keys that are status
    fields (`metrics`, `artifacts`, `progress`, `stats`, `outputUri`…) are copied; the executor keeps
    ownership of phase and conditions."""
    model = type(resource).model_fields["status"].annotation.__args__[0]
    copied = {k: v for k, v in summary.items() if k not in ("phase", "conditions")}
    try:
        return model.model_validate({**status, **copied}).dump()
    except ValueError as e:
        return {**status, "message": f"the component's summary does not fit the status: {e}"}


def merge_shard_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The TeacherGeneration summary of sequentially run shards: the last shard completed the output
    and judged all of it (`mergedStats`, as in the generator's own protocol), so its verdict counts."""
    last = dict(summaries[-1]) if summaries else {}
    if "mergedStats" in last:
        last["stats"] = last["mergedStats"]
    return last


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
