"""The real operator against an in-memory Kubernetes API (kmock's emulator), for tests and benchmarks.

kmock serves discovery, list, watch, create, merge-patch and delete over real HTTP; it runs no
controllers. `Cluster` adds what the API server itself would do on writes (uid, generation,
creationTimestamp) and leaves the rest (Job controller, kubelet) to its caller, which plays them by
patching statuses. The operator runs in a background thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx
import jsonpatch
import kopf
from kmock import KubernetesEmulator, KubernetesError, KubernetesObjectNotFoundError, ResourceInfo, Server, action

from metaspec.api import API_VERSION, RESOURCES, SpecServe, now
from metaspec.operator.handlers import Context
from metaspec.operator.kube import Kube, Target

#: (apiVersion/plural, kind, namespaced, subresources) of everything the operator touches.
RESOURCES = [
    *(
        (f"{API_VERSION}/{cls.plural}", kind, True, {"status", "scale"} if cls is SpecServe else {"status"})
        for kind, cls in RESOURCES.items()
    ),
    ("batch/v1/jobs", "Job", True, {"status"}),
    ("apps/v1/deployments", "Deployment", True, {"status", "scale"}),
    ("apps/v1/replicasets", "ReplicaSet", True, {"status"}),
    ("v1/configmaps", "ConfigMap", True, set()),
    ("v1/persistentvolumeclaims", "PersistentVolumeClaim", True, set()),
    ("v1/services", "Service", True, {"status"}),
    ("v1/pods", "Pod", True, {"status"}),
    ("v1/events", "Event", True, set()),
    ("v1/namespaces", "Namespace", False, set()),
    ("authentication.k8s.io/v1/tokenreviews", "TokenReview", False, set()),
    # Without it kopf's resource observer waits forever and never starts watching.
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, set()),
]
_SERVING: ContextVar[Any] = ContextVar("serving")
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


#: Header the test side sends (`Cluster.http`): its requests play kubectl and the controllers, never faulted.
CLIENT_HEADER = "X-Metaspec-Test-Client"
_REASONS = {409: "Conflict", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


@dataclass(frozen=True)
class Fault:
    """What happens to one API request: delayed, refused before it is applied, or applied with its answer lost.

    `applied=True` with a `status` is the nastiest case for a client: the write took effect, but the
    client sees an error (a connection cut after the server committed, or a 409 on a retried create).
    """

    delay: float = 0.0
    status: int | None = None
    applied: bool = False


#: Decides the fault (or none) for each request the operator makes; may also act (kill the operator).
FaultPolicy = Callable[[Any], Fault | None]


class ApiServer(KubernetesEmulator):
    """kmock's emulator plus the API server's own bookkeeping on writes, and fault injection.

    uid, creationTimestamp and generation on create; a new resourceVersion on every write (kopf
    guards its JSON patches with a resourceVersion test); generation bumped by spec changes.
    `faults` (None: none) is asked about every resource request except the test client's own.

    Built on kmock's public API: its reactions, `objects`, and the two hooks a subclass has, the
    entry point `__call__` and `_handle`, which kmock's emulator documents for special treatment of
    fields (the emulator stores a write before any reaction sees it, so the bookkeeping and the
    faults that refuse a write before it is applied can only go there).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._version = 0
        self.faults: FaultPolicy | None = None
        self._watches: set[asyncio.Task[Any]] = set()
        #: Tokens this API server would accept: token -> (service account, pod name, pod uid, audience).
        self.tokens: dict[str, tuple[str, str, str, str]] = {}
        # kmock answers a request for one object by scanning every stored object for it; these
        # reactions (ahead of its fallbacks) look the object up by its key instead.
        self[action.FETCH] << self._fetched
        self[action.CREATE] << self._created
        self[action.UPDATE] << self._written
        self[action.DELETE] << self._written

    def review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A TokenReview's status, as the API server computes it for projected service-account tokens."""
        found = self.tokens.get(spec.get("token") or "")
        wanted = spec.get("audiences") or []
        if found is None or (wanted and found[3] not in wanted):
            return {"authenticated": False, "error": "[invalid bearer token, token audiences are invalid]"}
        account, pod, uid, audience = found
        extra = {"authentication.kubernetes.io/pod-name": [pod], "authentication.kubernetes.io/pod-uid": [uid]}
        user = {"username": f"system:serviceaccount:{account}", "uid": str(uuid.uuid4()), "extra": extra}
        return {"authenticated": True, "user": user, "audiences": [audience]}

    def drop_watches(self) -> int:
        """Cut every open watch stream (as an API server restart or a load balancer would)."""
        tasks = [t for t in self._watches if not t.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.query.get("watch") != "true":
            return await super().__call__(raw_request)
        # A watch is streamed by its request's own task: cancelling the task cuts the connection.
        task = asyncio.current_task()
        assert task is not None
        self._watches.add(task)
        try:
            return await super().__call__(raw_request)
        finally:
            self._watches.discard(task)

    def __iter__(self) -> Iterator[Any]:
        # kmock picks the reaction for a request by filtering its whole request history for it, which
        # makes every request cost O(requests so far). The fallbacks this server uses have no
        # count-based slicing, so the request being served is all the history they need to see.
        current = _SERVING.get(None)
        if current is not None:
            yield current
        else:
            yield from super().__iter__()

    async def _handle(self, request: Any) -> Any:
        _SERVING.set(request)
        if request.resource is not None and request.resource.plural == "tokenreviews":
            # A review is answered, never stored (as the API server does).
            body = request.data if isinstance(request.data, dict) else {}
            return aiohttp.web.json_response({**body, "status": self.review(body.get("spec") or {})}, status=201)
        fault = self._fault(request)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None and not fault.applied:
            raise _injected(fault.status)
        self._bookkeep(request)
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as e:
            # The API server answers a failed resourceVersion test with 422, which kopf retries later.
            raise KubernetesError(status=422, reason="Invalid", message=str(e)) from e
        if fault is not None and fault.status is not None:
            raise _injected(fault.status)
        return response

    def _fault(self, request: Any) -> Fault | None:
        if self.faults is None or request.resource is None:
            return None
        if any(key.lower() == CLIENT_HEADER.lower() for key in request.headers):
            return None
        return self.faults(request)

    def _bookkeep(self, request: Any) -> None:
        if request.resource is not None and request.action in (action.CREATE, action.UPDATE):
            self._version += 1
            version = str(self._version)
            if request.action == action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1, resourceVersion=version)
                if "name" not in meta and "generateName" in meta:
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
            elif isinstance(request.data, list):
                request.data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
            elif isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if "spec" in request.data and request.subresource is None:
                    meta["generation"] = self._generation(request) + 1

    def _stored(self, request: Any, namespace: str | None = None, name: str | None = None) -> Any:
        """The stored object a request names (None: none), found by its key; a create names it in its body."""
        key = (request.resource, request.namespace or namespace, request.name or name)
        return self.objects[key] if key in self.objects else None  # noqa: SIM401 (not a Mapping)

    def _fetched(self, request: Any) -> dict[str, Any]:
        found = self._stored(request)
        if found is None or found.deleted:
            raise KubernetesObjectNotFoundError()
        return found.raw

    def _created(self, request: Any) -> dict[str, Any]:
        meta = request.data.get("metadata", {})
        return self._stored(request, meta.get("namespace"), meta.get("name")).last.raw

    def _written(self, request: Any) -> dict[str, Any]:
        # The state the write left, or the last one before a deletion.
        return self._stored(request).last.raw

    def _generation(self, request: Any) -> int:
        found = self._stored(request)
        return 0 if found is None or found.deleted else dict(found).get("metadata", {}).get("generation", 1)


class RecordingKube(Kube):
    """The operator's own client, noting the (api group, resource[/subresource], verb) of every call."""

    def __init__(self, calls: set[tuple[str, str, str]]) -> None:
        super().__init__()
        self.calls = calls

    async def request(
        self, method: str, target: Target, verb: str, collection: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        self.calls.add((target.group, target.resource(), verb))
        return await super().request(method, target, verb, collection, **kwargs)


class Cluster:
    """An emulated API server plus the operator: in a thread of this process, or as its own process.

    The thread shares this process's event loop machinery and registry (fast, for most tests); the
    process (`start_operator_process`) is the real `metaspec operator` command, which can be SIGKILLed.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.memo: Context | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="emulator", daemon=True)
        self._stop: threading.Event | None = None
        self._operator: threading.Thread | None = None
        self._emulator: Any = None
        self.http: httpx.Client | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="metaspec-emulator-"))
        #: (api group, resource[/subresource], verb) of every call the in-thread operator made: RBAC tests read it.
        self.calls: set[tuple[str, str, str]] = set()

    # ---- lifecycle ----

    def start(self) -> Cluster:
        self._thread.start()
        self._call(self._serve())
        self.http = httpx.Client(base_url=self.url, timeout=30, headers={CLIENT_HEADER: "1"})
        return self

    @property
    def api(self) -> ApiServer:
        """The emulated API server: its `faults` policy, `drop_watches()`, stored objects."""
        return self._emulator

    async def _serve(self) -> None:
        emulator = ApiServer()
        for path, kind, namespaced, subresources in RESOURCES:
            emulator.resources[path] = ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subresources
            )
        self._emulator = await emulator.__aenter__()
        self._server = await Server(emulator).__aenter__()
        self.url = str(self._server.url).rstrip("/")

    def start_operator(self, timeout: float = 30, **settings: Any) -> Context:
        """Start (or restart) the operator in its own thread and event loop; `settings` override
        `OperatorSettings` fields (the metrics and progress endpoints are off unless given a port).

        Its own loop, because kopf cancels every task of its loop that it did not have before it
        started, which would include the emulator's connection handlers.
        """
        from metaspec.operator.cli import run

        self.memo = Context(connection=kopf.ConnectionInfo(server=self.url), kube=RecordingKube(self.calls))
        self.memo.settings = replace(self.memo.settings, **{"metrics_port": 0, "progress_port": 0, **settings})
        ready, stop = threading.Event(), threading.Event()
        memo = self.memo

        def main() -> None:
            asyncio.run(run(memo, stop_flag=stop, ready_flag=ready))

        self._stop = stop
        self._operator = threading.Thread(target=main, name="operator", daemon=True)
        self._operator.start()
        if not ready.wait(timeout):
            raise TimeoutError("the operator did not become ready")
        return self.memo

    def stop_operator(self) -> None:
        if self._operator is None or self._stop is None:
            return
        self._stop.set()
        self._operator.join(30)
        self._operator = None

    def start_operator_process(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `metaspec operator` as a child process (all namespaces), logging to `operator.log`.

        It finds the emulator through a kubeconfig, as it would find a real cluster; it is not waited
        for: the caller watches the API for its effects.
        """
        kubeconfig = self._workdir / "kubeconfig"
        kubeconfig.write_text(_KUBECONFIG.format(url=self.url))
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "METASPEC_METRICS_PORT": "0",
            "METASPEC_PROGRESS_PORT": "0",
            **(env or {}),
        }
        command = [sys.executable, "-m", "metaspec.cli", "operator", "--standalone", "-A", "--liveness", ""]
        with (self._workdir / "operator.log").open("ab") as log:
            self.process = subprocess.Popen([*command, "--log-format", "full"], env=env, stdout=log, stderr=log)
        return self.process

    def kill_operator_process(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    @property
    def operator_log(self) -> str:
        path = self._workdir / "operator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop_operator()
        self.kill_operator_process()
        if self.http is not None:
            self.http.close()

        async def down() -> None:
            await self._server.__aexit__(None, None, None)
            await self._emulator.__aexit__(None, None, None)

        self._call(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def drop_watches(self) -> int:
        """Cut every open watch stream; returns how many were cut."""

        async def drop() -> int:
            return self.api.drop_watches()

        return self._call(drop())

    def _call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # ---- the API, as a client (and the API server's own bookkeeping on writes) ----

    def apply(self, obj: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        obj = {**obj, "metadata": {"namespace": namespace, **obj["metadata"]}}
        return self._json("POST", _path(obj["kind"], namespace), obj)

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        assert self.http is not None
        response = self.http.get(_path(kind, namespace, name))
        return None if response.status_code == 404 else _ok(response)

    def list(self, kind: str, namespace: str = "default") -> list[dict[str, Any]]:
        return self._json("GET", _path(kind, namespace)).get("items", [])

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        return self._json("PATCH", _path(kind, namespace, name), body)

    def patch_status(self, kind: str, name: str, status: dict[str, Any], namespace: str = "default") -> dict:
        return self._json("PATCH", _path(kind, namespace, name) + "/status", {"status": status})

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        self._json("DELETE", _path(kind, namespace, name))

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.http is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        return _ok(self.http.request(method, path, json=body, headers=headers))

    # ---- playing the controllers ----

    def run_pod(
        self, job: dict[str, Any], exit_code: int, summary: dict[str, Any] | None, index: int | None = None
    ) -> dict[str, Any]:
        """A finished pod of `job` (what the Job controller and kubelet would leave behind)."""
        message = summary if isinstance(summary, str) else ("" if summary is None else json.dumps(summary))
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {"name": "main", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
            ],
        }
        return self.apply(_pod(job, index, status), job["metadata"]["namespace"])

    def start_pod(self, job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        """A running pod of `job`, owned by it as the Job controller's pods are."""
        status = {"phase": "Running", "containerStatuses": [{"name": "main", "state": {"running": {}}}]}
        return self.apply(_pod(job, index, status), job["metadata"]["namespace"])

    def start_serving_pod(self, deployment: dict[str, Any], replica_set: dict[str, Any] | None = None) -> dict:
        """A running pod of `deployment`, through a ReplicaSet as the Deployment controller makes them:
        `replica_set` when given (another pod of the same rollout), else a new one owned by `deployment`."""
        meta, namespace = deployment["metadata"], deployment["metadata"]["namespace"]
        if replica_set is None:
            template = deployment["spec"]["template"]
            owner = {**_controller_ref(deployment), "apiVersion": "apps/v1", "kind": "Deployment"}
            replica_set = self.apply(
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": f"{meta['name']}-{uuid.uuid4().hex[:10]}",
                        "labels": template["metadata"].get("labels", {}),
                        "ownerReferences": [owner],
                    },
                    "spec": {"replicas": 1, "selector": deployment["spec"]["selector"], "template": template},
                },
                namespace,
            )
        rs = replica_set["metadata"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{rs['name']}-{uuid.uuid4().hex[:5]}",
                "labels": replica_set["spec"]["template"]["metadata"].get("labels", {}),
                "ownerReferences": [{**_controller_ref(replica_set), "apiVersion": "apps/v1", "kind": "ReplicaSet"}],
            },
            "spec": replica_set["spec"]["template"]["spec"],
            "status": {"phase": "Running", "containerStatuses": [{"name": "main", "state": {"running": {}}}]},
        }
        return self.apply(pod, namespace)

    def issue_token(self, pod: dict[str, Any], audience: str) -> str:
        """The projected service-account token the kubelet would mount into `pod` for `audience`.

        The emulated API server's TokenReview accepts it for that audience and vouches for the pod's
        name and uid, as a real API server does for pod-bound tokens.
        """
        meta = pod["metadata"]
        account = f"{meta['namespace']}:{pod['spec'].get('serviceAccountName') or 'default'}"
        token = uuid.uuid4().hex
        self.api.tokens[token] = (account, meta["name"], meta["uid"], audience)
        return token

    def finish_job(self, job: dict[str, Any], succeeded: bool, message: str = "") -> dict[str, Any]:
        """Patch a Job's status to Complete or Failed, as the Job controller would."""
        meta, completions = job["metadata"], job["spec"].get("completions", 1)
        condition = {
            "type": "Complete" if succeeded else "Failed",
            "status": "True",
            "reason": "" if succeeded else "PodFailurePolicy",
            "message": message,
            "lastTransitionTime": now(),
        }
        status = {
            "startTime": now(),
            "conditions": [condition],
            "succeeded": completions if succeeded else 0,
            "failed": 0 if succeeded else 1,
        }
        if succeeded:
            status["completionTime"] = now()
        return self.patch_status("Job", meta["name"], status, meta["namespace"])

    def wait_for(self, what: Callable[[], Any], timeout: float = 20, message: str = "") -> Any:
        """Poll `what` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = what()
            if result:
                return result
            time.sleep(0.05)
        raise TimeoutError(message or f"timed out after {timeout}s waiting for {what}")

    def status(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        return (self.get(kind, name, namespace) or {}).get("status") or {}

    def phase(self, kind: str, name: str, namespace: str = "default") -> str | None:
        return self.status(kind, name, namespace).get("phase")

    def condition(self, kind: str, name: str, namespace: str, type_: str) -> dict[str, Any]:
        return next(c for c in self.status(kind, name, namespace)["conditions"] if c["type"] == type_)

    def wait_phase(self, kind: str, name: str, namespace: str, phase: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until the resource reaches `phase`; returns its status."""
        self.wait_for(
            lambda: self.phase(kind, name, namespace) == phase,
            timeout,
            message=f"{kind} {name} to be {phase}, is {self.status(kind, name, namespace)}",
        )
        return self.status(kind, name, namespace)

    def wait_get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.wait_for(lambda: self.get(kind, name, namespace), message=f"{kind} {name} to exist")


_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{{name: emulator, cluster: {{server: "{url}"}}}}]
users: [{{name: emulator, user: {{}}}}]
contexts: [{{name: emulator, context: {{cluster: emulator, user: emulator}}}}]
current-context: emulator
"""


def _controller_ref(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"name": meta["name"], "uid": meta["uid"], "controller": True}


def _pod(job: dict[str, Any], index: int | None, status: dict[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    suffix = f"-{index}" if index is not None else ""
    template = job["spec"]["template"]["metadata"]
    annotations = {"batch.kubernetes.io/job-completion-index": str(index)} if index is not None else {}
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"], "controller": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}{suffix}-{uuid.uuid4().hex[:5]}",
            "labels": {**template.get("labels", {}), "batch.kubernetes.io/job-name": meta["name"]},
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": job["spec"]["template"]["spec"],
        "status": status,
    }


def _injected(status: int) -> KubernetesError:
    return KubernetesError(status=status, reason=_REASONS.get(status, "Injected"), message="injected fault")


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    return Target(kind, namespace, name).path()


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()
