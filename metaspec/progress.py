"""Live progress from a running component to the operator's progress endpoint.

The operator gives each pod of a TrainingRun, TeacherGeneration or (`engine: metaspec`) SpecServe the
URL of its own resource's endpoint (`METASPEC_PROGRESS_URL`) and a projected service-account token
bound to the pod and to the progress audience (`METASPEC_PROGRESS_TOKEN_FILE`; the kubelet rotates it,
so it is read before every post). Runs post their progress as they go; a server posts once, when its
models are loaded, what it serves and whether the model cache had it (`deliver`, retried a while).
Reporting is best effort: a report that cannot be delivered is logged and dropped, no component fails
over it, and a run's termination-message summary stays the final word on the run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from metaspec.runtime import to_json

URL_ENV = "METASPEC_PROGRESS_URL"
TOKEN_ENV = "METASPEC_PROGRESS_TOKEN_FILE"
INTERVAL_ENV = "METASPEC_PROGRESS_SECONDS"
#: Path prefix of the endpoint: `<prefix>/<namespace>/<plural>/<name>`.
PATH = "/v1/progress"
#: Least seconds between two posts of one pod; the operator writes a run's status less often still.
DEFAULT_INTERVAL = 10.0

log = logging.getLogger(__name__)


def endpoint(base: str, namespace: str, plural: str, name: str) -> str:
    """The URL one resource's pods post to."""
    return f"{base.rstrip('/')}{PATH}/{namespace}/{plural}/{name}"


class ProgressPoster:
    """Posts the latest report at most every `interval` seconds, from a background thread.

    `report` never blocks the training or generation loop: a report arriving while the previous one
    is in flight, or sooner than `interval` after it, waits as the pending one (newer replaces older)
    and goes out with the next report that is due.
    """

    def __init__(self, url: str, token_file: Path, interval: float = DEFAULT_INTERVAL, timeout: float = 5.0):
        self.url, self.token_file, self.interval, self.timeout = url, token_file, interval, timeout
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._sent_at = -float("inf")
        self._busy = False
        self._warned: set[str] = set()

    def report(self, fields: dict[str, Any]) -> None:
        with self._lock:
            self._pending = fields
            if self._busy or time.monotonic() - self._sent_at < self.interval:
                return
            body, self._pending, self._busy = self._pending, None, True
            self._sent_at = time.monotonic()
        threading.Thread(target=self._send, args=(body,), name="metaspec-progress", daemon=True).start()

    def _send(self, body: dict[str, Any]) -> None:
        try:
            self.post(body)
        finally:
            with self._lock:
                self._busy = False

    def post(self, body: dict[str, Any]) -> int | None:
        """Send one report now; returns the HTTP status, or None when the endpoint was unreachable."""
        try:
            token = self.token_file.read_text().strip()
            request = urllib.request.Request(
                self.url,
                data=to_json(body).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status
        except urllib.error.HTTPError as e:
            self._warn(str(e.code), f"the operator refused a progress report: {e.code} {e.read()[:300]!r}")
            return e.code
        except (OSError, ValueError) as e:
            self._warn(type(e).__name__, f"could not report progress to {self.url}: {e}")
            return None

    def deliver(self, body: dict[str, Any], attempts: int = 6, pause: float = 2.0) -> bool:
        """Post a one-off report until the endpoint takes it: again, `pause` seconds later and doubling,
        while the operator is unreachable or answers 5xx (restarting, or its API server busy)."""
        for attempt in range(attempts):
            code = self.post(body)
            if code is not None and code < 500:
                return code < 300
            if attempt + 1 < attempts:
                time.sleep(pause * 2**attempt)
        return False

    def _warn(self, key: str, message: str) -> None:
        """Each kind of trouble once at WARNING (a pod's log must not fill with it), then at DEBUG."""
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        log.log(level, message)


def from_env(env: dict[str, str] | None = None) -> ProgressPoster | None:
    """The poster the operator configured for this pod, or None (not in a cluster, or reporting off)."""
    env = dict(os.environ) if env is None else env
    url, token = env.get(URL_ENV), env.get(TOKEN_ENV)
    if not url or not token:
        return None
    return ProgressPoster(url, Path(token), float(env.get(INTERVAL_ENV) or DEFAULT_INTERVAL))
