"""The local executor's memory: one JSON file per state directory, written atomically.

It plays the part the Kubernetes API server plays for the operator: each resource's status (the same
`*Status` models, in wire form), plus what only a local run needs — the digest of the config a stage ran
with (so an unchanged, succeeded stage is not redone), the processes started (so `metaspec local stop`
and a later run can find them) and live progress for `metaspec local status`.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaspec.runtime import to_json

STATE_FILE = "state.json"
LOCK_FILE = "lock"
VERSION = 1


class StateLocked(RuntimeError):
    """Another `metaspec local run` holds this state directory."""


@dataclass
class ResourceState:
    """What the local executor knows about one resource."""

    kind: str
    name: str
    status: dict[str, Any] = field(default_factory=dict)  # the resource's status, wire form (camelCase)
    config_digest: str | None = None  # sha256 of the rendered config the last attempt ran with
    progress: dict[str, Any] = field(default_factory=dict)  # live: done, total, unit, metrics
    attempts: int = 0
    pid: int | None = None  # the running component process, if any
    log: str | None = None  # path of the component's log file
    url: str | None = None  # SpecServe: where it serves

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def phase(self) -> str:
        return self.status.get("phase", "Pending")


@dataclass
class State:
    """The whole state file."""

    pipeline: str = ""
    s3_endpoint: str | None = None
    embedded_s3: bool = True
    runner_pid: int | None = None
    s3_pid: int | None = None
    resources: dict[str, ResourceState] = field(default_factory=dict)
    bench: str | None = None  # path of the demo benchmark's JSON, once run
    report: str | None = None  # path of the last report

    def resource(self, kind: str, name: str) -> ResourceState:
        key = f"{kind}/{name}"
        if key not in self.resources:
            self.resources[key] = ResourceState(kind, name)
        return self.resources[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "pipeline": self.pipeline,
            "s3Endpoint": self.s3_endpoint,
            "embeddedS3": self.embedded_s3,
            "runnerPid": self.runner_pid,
            "s3Pid": self.s3_pid,
            "bench": self.bench,
            "report": self.report,
            "resources": {key: _resource_json(r) for key, r in self.resources.items()},
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> State:
        state = cls(
            pipeline=body.get("pipeline", ""),
            s3_endpoint=body.get("s3Endpoint"),
            embedded_s3=body.get("embeddedS3", True),
            runner_pid=body.get("runnerPid"),
            s3_pid=body.get("s3Pid"),
            bench=body.get("bench"),
            report=body.get("report"),
        )
        for key, r in body.get("resources", {}).items():
            state.resources[key] = ResourceState(
                kind=r["kind"],
                name=r["name"],
                status=r.get("status", {}),
                config_digest=r.get("configDigest"),
                progress=r.get("progress", {}),
                attempts=r.get("attempts", 0),
                pid=r.get("pid"),
                log=r.get("log"),
                url=r.get("url"),
            )
        return state


def _resource_json(r: ResourceState) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "name": r.name,
        "status": r.status,
        "configDigest": r.config_digest,
        "progress": r.progress,
        "attempts": r.attempts,
        "pid": r.pid,
        "log": r.log,
        "url": r.url,
    }


class StateError(ValueError):
    """A state file that cannot be read; the message says how to start over."""


def load_state(state_dir: Path) -> State:
    """The state of `state_dir`; an empty one if it has none yet. StateError when it is unreadable."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return State()
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(body, dict):
            raise TypeError("not a JSON object")
        if body.get("version") != VERSION:
            raise StateError(f"{path} has state version {body.get('version')!r}, expected {VERSION}; delete it")
        state = State.from_json(body)
        _check_types(state)
    except StateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise StateError(f"{path} is damaged ({type(e).__name__}: {e}); delete it to start over") from None
    return state


def _check_types(state: State) -> None:
    def integer(value: Any) -> bool:
        return value is None or (type(value) is int and 0 < value < 2**22)  # a PID (Linux pid_max)

    if not (integer(state.runner_pid) and integer(state.s3_pid)):
        raise TypeError("runnerPid/s3Pid must be process ids")
    for key, r in state.resources.items():
        fields_ok = isinstance(r.kind, str) and isinstance(r.name, str) and type(r.attempts) is int
        if not (fields_ok and isinstance(r.status, dict) and isinstance(r.progress, dict) and integer(r.pid)):
            raise TypeError(f"resource {key!r} has fields of the wrong type")


def save_state(state_dir: Path, state: State) -> None:
    """Write the state file atomically: readers see the old or the new file, never half of one."""
    path = Path(state_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(to_json(state.to_json(), indent=1))
    os.replace(tmp, path)


class StateLock:
    """An exclusive lock on a state directory, held while `metaspec local run` works on it.

    `flock` is released by the kernel when the holder dies, so a killed run never leaves it stale.
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> StateLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise StateLocked(
                f"{self.path.parent} is in use by another `metaspec local run` "
                "(`metaspec local status` shows it; `metaspec local stop` stops it)"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
