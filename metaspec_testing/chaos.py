"""Fault trials of the real operator against the API emulator: kills, API errors, dropped watches.

One trial applies a whole pipeline (the shape of `examples/pipeline.yaml`) to a fresh namespace while
`Kubelet` plays the Job controller, the kubelets and the Deployment controller (pods with summaries,
Jobs Complete, Deployments ready) and a fault policy of the emulator hurts the operator: SIGKILL at
chosen write requests (`KillAt`), or seeded errors and delays (`ApiErrors`). The operator runs as its
own process (`metaspec operator`), restarted whenever it died. Afterwards `check` states what must hold:
exactly one child per resource generation, every resource converged, every reported fact in its status.

Shared by `tests/reliability/` (a few trials) and `bench/reliability_operator.py` (many).
"""

from __future__ import annotations

import copy
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kmock import action

from metaspec.operator import labels as L
from metaspec_testing.emulator import Cluster, Fault

TR, TG, SS = "TrainingRun", "TeacherGeneration", "SpecServe"
#: The phase each kind ends in when all went well.
DONE = {TR: "Succeeded", TG: "Succeeded", SS: "Ready"}
_WRITES = {action.CREATE, action.UPDATE, action.DELETE}
#: The operator's settings in trials: a short resync period, so that lost events heal within a trial.
OPERATOR_ENV = {"METASPEC_RESYNC_SECONDS": "2"}


def is_write(request: Any) -> bool:
    """A write of the operator that matters for its state (Events are fire-and-forget)."""
    return request.action in _WRITES and request.resource.plural != "events"


class Recorder:
    """Records the operator's requests (method, path) and injects nothing."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: Any) -> Fault | None:
        self.requests.append((request.method.value, request.url.path))
        return None

    def writes(self, method: str, path_part: str) -> list[str]:
        return [path for m, path in self.requests if m == method and path_part in path]


class KillAt:
    """SIGKILL the operator process when it sends its n-th write into `namespace`, for each n in `points`.

    The write itself lands (`applied`) or not, as the seed chose per point: a kill just after the API
    server committed the write and a kill just before it reached it are both real.
    """

    def __init__(self, cluster: Cluster, namespace: str, points: dict[int, bool]):
        self.cluster = cluster
        self.namespace = namespace
        self.points = points
        self.writes = 0
        self.kills: list[tuple[int, str, bool]] = []  # (n, what, applied)

    def __call__(self, request: Any) -> Fault | None:
        if not is_write(request) or request.namespace != self.namespace:
            return None
        self.writes += 1
        applied = self.points.get(self.writes)
        process = self.cluster.process
        if applied is None or process is None or process.poll() is not None:
            return None
        process.send_signal(signal.SIGKILL)
        process.wait(10)  # dead before the API server answers: no later write of it can land
        self.kills.append((self.writes, f"{request.method.value} {request.url.path}", applied))
        return Fault(status=503, applied=applied)


@dataclass
class ApiErrors:
    """Seeded API trouble on the operator's requests: conflicts, throttling, server errors, slowness.

    Writes may fail after they were applied (the answer is lost); creates get 409 as if a retry found
    its own object; status writes get 409 conflicts; watch requests fail to start now and then.
    """

    rng: random.Random
    error_rate: float = 0.15
    delay_rate: float = 0.1
    max_delay: float = 0.5
    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, request: Any) -> Fault | None:
        delay = self.rng.uniform(0.05, self.max_delay) if self.rng.random() < self.delay_rate else 0.0
        if self.rng.random() >= self.error_rate:
            return Fault(delay=delay) if delay else None
        if request.action == action.CREATE:
            status, applied = self.rng.choice([(409, True), (409, False), (500, True), (503, False), (429, False)])
        elif request.action == action.UPDATE and request.subresource == "status":
            status, applied = self.rng.choice([(409, False), (500, True), (503, False), (429, False)])
        elif request.action == action.WATCH:
            status, applied = self.rng.choice([500, 503, 429]), False
        else:
            status, applied = self.rng.choice([500, 503, 429]), request.action in _WRITES and self.rng.random() < 0.5
        key = f"{status} on {request.action.name.lower()}" + (" (applied)" if applied else "")
        self.counts[key] = self.counts.get(key, 0) + 1
        return Fault(delay=delay, status=status, applied=applied)


class Kubelet:
    """The controllers kmock's emulator lacks, for one namespace: finishes Jobs, readies Deployments.

    Every Job succeeds with the summary a component would write; `reported` keeps what was reported
    so that `check` can find it again in the statuses (anything missing is data lost).
    """

    def __init__(self, cluster: Cluster, namespace: str):
        self.cluster = cluster
        self.namespace = namespace
        self.finished: set[str] = set()
        self.reported: dict[str, dict[str, Any]] = {}

    def step(self) -> None:
        for job in self.cluster.list("Job", self.namespace):
            if job["metadata"]["name"] not in self.finished:
                self._finish(job)
        for deployment in self.cluster.list("Deployment", self.namespace):
            meta, status = deployment["metadata"], deployment.get("status") or {}
            if status.get("observedGeneration") != meta.get("generation"):
                ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
                status = {**ready, "observedGeneration": meta.get("generation")}
                self.cluster.patch_status("Deployment", meta["name"], status, self.namespace)

    def _finish(self, job: dict[str, Any]) -> None:
        labels = job["metadata"]["labels"]
        kind, owner = labels[L.KIND], labels[L.OWNER]
        if kind == TR:
            model = f"s3://artifacts/{self.namespace}/{owner}/model"
            summary = {"artifacts": {"model": model, "manifestDigest": f"sha-{owner}"}, "progress": {"step": 10}}
            self.cluster.run_pod(job, 0, summary)
            self.reported[owner] = {"model": model, "digest": f"sha-{owner}"}
        else:
            shards = job["spec"].get("completions", 1)
            for index in range(shards):
                stats = {"examplesDone": 10 + index, "examplesTotal": 10 + index, "naturalStopRate": 0.95}
                self.cluster.run_pod(job, 0, {"outputUri": f"s3://artifacts/{owner}", "stats": stats}, index=index)
            self.reported[owner] = {"examples": sum(10 + i for i in range(shards))}
        self.cluster.finish_job(job, succeeded=True)
        self.finished.add(job["metadata"]["name"])


@dataclass
class Trial:
    """What one trial did and found."""

    namespace: str
    seconds: float = 0.0
    restarts: int = 0
    converged: bool = False
    violations: list[str] = field(default_factory=list)
    data_lost: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def survived(self) -> bool:
        return self.converged and not self.violations and self.data_lost == 0


def run_pipeline(
    cluster: Cluster,
    docs: list[dict[str, Any]],
    namespace: str,
    rng: random.Random,
    timeout: float = 90,
    disturb: Callable[[], None] | None = None,
) -> Trial:
    """Apply `docs`, play the controllers, restart the operator whenever it dies, until `check` passes.

    Not converged within `timeout`: some resource is stuck; the trial keeps the last violations found.
    """
    trial, kubelet = Trial(namespace), Kubelet(cluster, namespace)
    start = time.monotonic()
    for doc in docs:
        cluster.apply(copy.deepcopy(doc), namespace)
    while time.monotonic() - start < timeout:
        if cluster.process is None or cluster.process.poll() is not None:
            time.sleep(rng.uniform(0, 1.0))  # jobs go on finishing while no operator runs
            kubelet.step()
            cluster.start_operator_process(OPERATOR_ENV)
            trial.restarts += 1
        kubelet.step()
        if disturb is not None:
            disturb()
        trial.violations, trial.data_lost = check(cluster, docs, namespace, kubelet)
        if not trial.violations and not trial.data_lost:
            trial.converged = True
            break
        time.sleep(0.2)
    trial.seconds = time.monotonic() - start
    return trial


def check(cluster: Cluster, docs: list[dict[str, Any]], namespace: str, kubelet: Kubelet) -> tuple[list[str], int]:
    """(violated invariants, facts reported by the components but missing from the statuses)."""
    problems: list[str] = []
    owners = {
        (d["kind"], d["metadata"]["name"]): cluster.get(d["kind"], d["metadata"]["name"], namespace) for d in docs
    }
    problems += _children(cluster, namespace, owners)
    lost = 0
    for (kind, name), body in owners.items():
        status, meta = (body or {}).get("status") or {}, (body or {}).get("metadata") or {}
        if status.get("phase") != DONE[kind]:
            problems.append(f"{kind} {name} is stuck in {status.get('phase')}: {status.get('message')}")
        if status.get("observedGeneration") != meta.get("generation"):
            problems.append(f"{kind} {name}: observedGeneration {status.get('observedGeneration')}")
        lost += _missing_facts(kind, name, status, kubelet.reported, docs)
    return problems, lost


def _children(cluster: Cluster, namespace: str, owners: dict[tuple[str, str], Any]) -> list[str]:
    """Exactly one Job (+ its ConfigMap) per TrainingRun/TeacherGeneration generation; one server set."""
    problems = []
    uids = {name: (body or {}).get("metadata", {}).get("uid") for (_, name), body in owners.items()}
    want_jobs = sorted(f"{name}-g1" for kind, name in owners if kind != SS)
    servers = [name for kind, name in owners if kind == SS]
    for kind, want in (("Job", want_jobs), ("Deployment", servers), ("Service", servers)):
        have = sorted(o["metadata"]["name"] for o in cluster.list(kind, namespace))
        if have != want:
            problems.append(f"{kind}s {have}, expected {want}")
    config_maps = cluster.list("ConfigMap", namespace)
    per_owner: dict[str, int] = {}
    for obj in [*config_maps, *cluster.list("Job", namespace), *cluster.list("Deployment", namespace)]:
        meta = obj["metadata"]
        owner = meta["labels"][L.OWNER]
        if [r["uid"] for r in meta.get("ownerReferences", [])] != [uids.get(owner)]:
            problems.append(f"{obj.get('kind', 'child')} {meta['name']} is not owned by {owner}'s uid")
    for obj in config_maps:
        owner = obj["metadata"]["labels"][L.OWNER]
        per_owner[owner] = per_owner.get(owner, 0) + 1
    if any(n != 1 for n in per_owner.values()) or len(per_owner) != len(owners):
        problems.append(f"ConfigMaps per owner {per_owner}, expected one each")
    return problems


def _missing_facts(kind: str, name: str, status: dict, reported: dict[str, dict], docs: list[dict]) -> int:
    """How many of the facts the (played) components reported did not make it into the status."""
    facts = reported.get(name, {})
    if kind == TR:
        artifacts = status.get("artifacts") or {}
        return int(artifacts.get("model") != facts.get("model")) + int(
            artifacts.get("manifestDigest") != facts.get("digest")
        )
    if kind == TG:
        return int((status.get("stats") or {}).get("examplesDone") != facts.get("examples"))
    spec = next(d["spec"] for d in docs if d["metadata"]["name"] == name)
    lost = 0
    for role in ("target", "draft"):
        source = (spec.get(role) or {}).get("from", {}).get("trainingRun")
        if source is not None:
            served = status.get(role) or {}
            want = reported.get(source, {})
            lost += int(served.get("uri") != want.get("model")) + int(served.get("digest") != want.get("digest"))
    return lost


class WatchDropper:
    """Cut every watch stream every `period` seconds (call it from the trial loop)."""

    def __init__(self, cluster: Cluster, period: float):
        self.cluster = cluster
        self.period = period
        self.dropped = 0
        self._next = time.monotonic() + period

    def __call__(self) -> None:
        if time.monotonic() >= self._next:
            self.dropped += self.cluster.drop_watches()
            self._next = time.monotonic() + self.period


#: Kill points are drawn from the first writes of a pipeline run into its namespace (a fault-free run
#: makes about 30; fewer reach every point in every trial).
PIPELINE_WRITES = 24


def kill_trial(cluster: Cluster, docs: list[dict[str, Any]], namespace: str, seed: int, kills: int = 3) -> Trial:
    """A pipeline with the operator SIGKILLed at `kills` seeded write requests."""
    rng = random.Random(seed)
    points = {n: rng.random() < 0.5 for n in rng.sample(range(1, PIPELINE_WRITES + 1), kills)}
    policy = KillAt(cluster, namespace, points)
    cluster.api.faults = policy
    try:
        trial = run_pipeline(cluster, docs, namespace, rng)
    finally:
        cluster.api.faults = None
    trial.faults = {f"kill at write {n} ({what}, {'applied' if a else 'lost'})": 1 for n, what, a in policy.kills}
    return trial


def error_trial(
    cluster: Cluster,
    docs: list[dict[str, Any]],
    namespace: str,
    seed: int,
    drop_every: float = 1.0,
    error_rate: float = 0.15,
) -> Trial:
    """A pipeline under seeded API errors and slow answers, with every watch cut every `drop_every` s."""
    rng = random.Random(seed)
    policy = ApiErrors(random.Random(seed + 1), error_rate=error_rate)
    dropper = WatchDropper(cluster, drop_every)
    cluster.api.faults = policy
    try:
        trial = run_pipeline(cluster, docs, namespace, rng, timeout=120, disturb=dropper)
    finally:
        cluster.api.faults = None
    trial.faults = {**policy.counts, "watch streams cut": dropper.dropped}
    return trial
