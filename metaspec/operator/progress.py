"""The progress endpoint: running pods post their progress, the operator writes it into their run's status;
serving pods post what they loaded (digests, model-cache hits), which goes into their SpecServe's status.

Why an endpoint the operator serves, rather than the operator polling each pod: a pod needs no port,
no Service and no NetworkPolicy opening, and the operator reaches no pod network address. Why not
give pods write access to their resource's status: RBAC cannot scope a Role to one object's status
for each of thousands of pods, and a pod could then write any field.

Who may report, and what:
- a pod presents a projected service-account token bound to itself and to `progress_audience`; the
  operator has the API server check it (TokenReview with that audience): a token minted for the API
  server or another service, an expired one, or one of a deleted pod is refused;
- the API server vouches for the pod's name and uid; the operator follows the controller owner
  references pod → Job → TrainingRun/TeacherGeneration, or pod → ReplicaSet → Deployment → SpecServe
  (uids checked at each step), and the resource's `status.jobName` or `status.deploymentName`, so a
  pod reports only for the resource whose current Job or Deployment created it, and the URL must name
  that resource;
- a report is a typed `ProgressReport` folded in by the status reducer (`live_progress`), which sets
  progress fields only, and only while the run is Running; for a SpecServe the served digests and
  `modelCache` only, from pods serving what its status names.
The operator needs `create` on `tokenreviews` and `get` on `replicasets` for this, and still never reads
Secrets.

API load: one status write per run per `progress_seconds` at most, and `progress_writes_per_second`
over all runs; one TokenReview (plus a pod and a Job read, or a ReplicaSet and a Deployment read) per
pod per `_IDENTITY_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from metaspec import status as R
from metaspec.api import API_VERSION, RESOURCES, Resource, SpecServe, now
from metaspec.api.summaries import ProgressReport
from metaspec.operator import writes
from metaspec.operator.kube import ApiError, Kube, Target
from metaspec.operator.settings import OperatorSettings
from metaspec.progress import PATH

log = logging.getLogger(__name__)

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
_SA_PREFIX = "system:serviceaccount:"
#: How long a reviewed token is trusted before it is reviewed again (seconds).
_IDENTITY_SECONDS = 60.0
_MAX_IDENTITIES = 10_000
#: TokenReviews in flight at once: garbage tokens cannot flood the API server.
_REVIEWS_AT_ONCE = 4
_REPORTING_KINDS = {cls.plural: kind for kind, cls in RESOURCES.items()}
#: The kinds whose pods a child of each kind runs.
_RUNS = {"Job": ("TrainingRun", "TeacherGeneration"), "Deployment": ("SpecServe",)}
#: Serving pods' reports kept per SpecServe (the newest; one per pod): more than any rollout has replicas.
_SERVING_REPORTS = 64

Key = tuple[str, str, str]  # (kind, namespace, name)


class Refused(Exception):
    """A report the endpoint turns down, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Reporter:
    """A pod the API server vouched for, and the resource it belongs to."""

    kind: str
    namespace: str
    name: str
    uid: str  # the resource's
    child: str  # the Job or Deployment that runs the pod
    pod: str
    slot: int | str  # a Job pod's shard index; a serving pod's name (each replica reports for itself)

    @property
    def key(self) -> Key:
        return (self.kind, self.namespace, self.name)


@dataclass
class RunReports:
    """The latest report of each shard (or serving pod) of one resource, oldest first, and when its status
    was last written."""

    reporter: Reporter
    reports: dict[int | str, ProgressReport] = field(default_factory=dict)
    dirty: bool = False
    written: float = -float("inf")


Write = Callable[[RunReports], Awaitable[bool]]


class ProgressService:
    """The endpoint (aiohttp, on the operator's event loop) and the rate-limited status writer."""

    def __init__(self, kube: Kube, settings: OperatorSettings, write: Write | None = None):
        self.kube, self.settings = kube, settings
        self.write = write or self.write_status
        self.runs: dict[Key, RunReports] = {}
        self._identities: dict[str, tuple[float, Reporter]] = {}
        self._reviews = asyncio.Semaphore(_REVIEWS_AT_ONCE)
        self._wake = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._flusher: asyncio.Task[None] | None = None

    # ---- lifecycle ----

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024)
        app.router.add_post(PATH + "/{namespace}/{plural}/{name}", self.handle)
        return app

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._flusher = asyncio.create_task(self.flush_forever(), name="metaspec-progress")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- the endpoint ----

    async def handle(self, request: web.Request) -> web.Response:
        try:
            token = _bearer(request.headers.get("Authorization", ""))
            reporter = await self.identify(token)
            _check_target(reporter, request.match_info)
            report = _parse(await request.read())
        except Refused as e:
            headers = {"WWW-Authenticate": 'Bearer realm="metaspec-progress"'} if e.status == 401 else None
            return web.json_response({"error": str(e)}, status=e.status, headers=headers)
        self.record(reporter, report)
        return web.json_response({"accepted": True}, status=202)

    def record(self, reporter: Reporter, report: ProgressReport) -> None:
        """Keep the report as its shard's (or serving pod's) latest; the writer folds it into the status
        when the resource is due."""
        run = self.runs.get(reporter.key)
        if run is None or run.reporter.uid != reporter.uid or run.reporter.child != reporter.child:
            run = self.runs[reporter.key] = RunReports(reporter)
        run.reports.pop(reporter.slot, None)  # newest last: a SpecServe's status follows its newest pods
        run.reports[reporter.slot] = report
        if isinstance(reporter.slot, str) and len(run.reports) > _SERVING_REPORTS:
            run.reports.pop(next(iter(run.reports)))
        run.dirty = True
        self._wake.set()

    # ---- who is reporting ----

    async def identify(self, token: str) -> Reporter:
        """The pod and run behind a token, as the API server vouches for them (cached a minute)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._identities.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self._reviews:
            namespace, pod, pod_uid = await self._review(token)
        reporter = await self._owner(namespace, pod, pod_uid)
        if len(self._identities) >= _MAX_IDENTITIES:
            self._identities = {k: v for k, v in self._identities.items() if v[0] > time.monotonic()}
        self._identities[digest] = (time.monotonic() + _IDENTITY_SECONDS, reporter)
        return reporter

    async def _review(self, token: str) -> tuple[str, str, str]:
        audience = self.settings.progress_audience
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        try:
            review = await self.kube.request("POST", Target("TokenReview", ""), "create", json=body)
        except ApiError as e:
            raise Refused(503, f"the token could not be reviewed now ({e}); try again") from e
        status = review.get("status") or {}
        user = status.get("user") or {}
        if not status.get("authenticated") or audience not in (status.get("audiences") or []):
            raise Refused(401, f"the token is not valid for audience {audience!r}: {status.get('error') or 'refused'}")
        extra = user.get("extra") or {}
        pod, pod_uid = (extra.get(POD_NAME) or [None])[0], (extra.get(POD_UID) or [None])[0]
        username = user.get("username") or ""
        if not username.startswith(_SA_PREFIX) or not pod or not pod_uid:
            raise Refused(403, "only a pod's projected service-account token may report progress")
        return username.removeprefix(_SA_PREFIX).split(":", 1)[0], pod, pod_uid

    async def _owner(self, namespace: str, pod_name: str, pod_uid: str) -> Reporter:
        """pod → Job → run, or pod → ReplicaSet → Deployment → SpecServe, along controller owner
        references whose uids match."""
        pod = await self._get("Pod", namespace, pod_name)
        if pod["metadata"].get("uid") != pod_uid:
            raise Refused(403, f"pod {pod_name} was replaced since its token was issued")
        refs = pod["metadata"].get("ownerReferences") or []
        if any(ref.get("controller") and ref.get("kind") == "ReplicaSet" for ref in refs):
            replica_set = await self._owned(pod, namespace, "apps/v1", "ReplicaSet")
            child = await self._owned(replica_set, namespace, "apps/v1", "Deployment")
            slot: int | str = pod_name
        else:
            child = await self._owned(pod, namespace, "batch/v1", "Job")
            index = ((pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX)) or "0"
            slot = int(index) if index.isdigit() else 0
        ref = _controller(child, API_VERSION, None)
        if ref.get("kind") not in _RUNS[child["kind"]]:
            raise Refused(
                403, f"{child['kind']} {child['metadata']['name']} runs no {' or '.join(_RUNS[child['kind']])}"
            )
        return Reporter(ref["kind"], namespace, ref["name"], ref["uid"], child["metadata"]["name"], pod_name, slot)

    async def _owned(self, obj: dict[str, Any], namespace: str, api_version: str, kind: str) -> dict[str, Any]:
        """`obj`'s controller of `kind`, read back and checked to be the object the reference names (uid)."""
        ref = _controller(obj, api_version, kind)
        owner = await self._get(kind, namespace, ref["name"])
        if owner["metadata"].get("uid") != ref.get("uid"):
            raise Refused(403, f"{obj.get('kind', 'object')} {obj['metadata']['name']} is not {kind} {ref['name']}'s")
        return {**owner, "kind": kind}

    async def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        try:
            found = await self.kube.get(Target(kind, namespace, name))
        except ApiError as e:
            raise Refused(503, f"could not read {kind} {name} now ({e}); try again") from e
        if found is None:
            raise Refused(403, f"{kind} {namespace}/{name} does not exist")
        return found

    # ---- writing the status ----

    def due(self, at: float) -> list[RunReports]:
        """Runs with unwritten reports whose last write is at least `progress_seconds` old, oldest first."""
        interval = self.settings.progress_seconds
        ready = [r for r in self.runs.values() if r.dirty and at - r.written >= interval]
        return sorted(ready, key=lambda r: r.written)

    def _next_due(self, at: float) -> float | None:
        waits = [r.written + self.settings.progress_seconds - at for r in self.runs.values() if r.dirty]
        return max(0.0, min(waits)) if waits else None

    async def flush_forever(self) -> None:
        """Write due runs one at a time, paced to `progress_writes_per_second`."""
        pause = 1.0 / self.settings.progress_writes_per_second
        while True:
            self._wake.clear()
            for run in self.due(time.monotonic()):
                run.dirty, run.written = False, time.monotonic()
                try:
                    keep = await self.write(run)
                except Exception:
                    # The next report retries; the writer must outlive one run's trouble.
                    log.exception("live progress of %s %s was not written", run.reporter.kind, run.reporter.name)
                    keep = True
                if not keep and not run.dirty:
                    self.runs.pop(run.reporter.key, None)
                await asyncio.sleep(pause)
            wait = self._next_due(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def write_status(self, run: RunReports) -> bool:
        """Fold `run`'s reports into its status; False once the resource is gone, runs another child, or
        (a run) no longer takes progress. A SpecServe keeps its pods' reports: later pods' merge with them."""
        reporter = run.reporter
        alive = False

        async def compute(resource: Resource) -> dict[str, Any] | None:
            nonlocal alive
            status = resource.status
            serving = isinstance(resource, SpecServe)
            child = getattr(status, "deployment_name" if serving else "job_name", None)
            if resource.metadata.uid != reporter.uid or child != reporter.child:
                return None
            current = writes.current_status(resource)
            new = R.live_progress(resource, current, dict(run.reports), now())
            alive = serving or new is not current
            return new if new is not current else None

        await writes.update_status(self.kube, reporter.kind, reporter.namespace, reporter.name, compute)
        return alive


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "a bearer token is required: the pod's projected service-account token")
    return token.strip()


def _check_target(reporter: Reporter, match: Any) -> None:
    kind = _REPORTING_KINDS.get(match["plural"])
    if (kind, match["namespace"], match["name"]) != reporter.key:
        raise Refused(
            403,
            f"pod {reporter.pod} belongs to {reporter.kind} {reporter.namespace}/{reporter.name}: it may not "
            f"report for {match['plural']} {match['namespace']}/{match['name']}",
        )


def _controller(obj: dict[str, Any], api_version: str, kind: str | None) -> dict[str, Any]:
    meta = obj["metadata"]
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("apiVersion") == api_version and kind in (None, ref.get("kind")):
            return ref
    raise Refused(403, f"{obj.get('kind', 'object')} {meta.get('name')} has no {kind or api_version} controller")


def _parse(raw: bytes) -> ProgressReport:
    try:
        return ProgressReport.model_validate_json(raw or b"{}")
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise Refused(400, f"invalid progress report: {fields}") from e
