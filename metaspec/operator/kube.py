"""A small async Kubernetes REST client for the handlers' own calls, on kopf's connection info.

kopf watches and patches the resources it handles; children (ConfigMaps, Jobs, Deployments, Services),
pods and other resources' statuses are written here. Every call goes through `Kube.request`, so a
test can wrap it and list exactly which (group, resource, verb) the operator uses.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from metaspec.api import API_VERSION, RESOURCES

#: kind -> (apiVersion, plural) of everything the operator reads or writes directly.
PLURALS = {
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "Pod": ("v1", "pods"),
    "Job": ("batch/v1", "jobs"),
    "Deployment": ("apps/v1", "deployments"),
    **{kind: (API_VERSION, cls.plural) for kind, cls in RESOURCES.items()},
}

#: Kinds the operator only creates: Events posted outside kopf's handler context (best effort), and
#: TokenReviews of the tokens pods report progress with (cluster-scoped: an empty namespace), and the
#: model-cache claims it creates when a spec asks (kept when a claim of that name exists).
CREATE_ONLY = {
    "Event": ("v1", "events"),
    "TokenReview": ("authentication.k8s.io/v1", "tokenreviews"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
}
#: Kinds the operator only reads: the ReplicaSet between a serving pod and its Deployment, followed when
#: the pod reports to the progress endpoint.
READ_ONLY = {"ReplicaSet": ("apps/v1", "replicasets")}
_KINDS = {**PLURALS, **CREATE_ONLY, **READ_ONLY}


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, message: str):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}")

    @property
    def transient(self) -> bool:
        """Worth retrying: throttling, server trouble, conflicts on update."""
        return self.status in (409, 429) or self.status >= 500


@dataclass(frozen=True)
class Target:
    """Where one object (or a collection) lives in the API."""

    kind: str
    namespace: str
    name: str | None = None
    subresource: str | None = None

    @property
    def group(self) -> str:
        api_version = _KINDS[self.kind][0]
        return api_version.rsplit("/", 1)[0] if "/" in api_version else ""

    def path(self) -> str:
        api_version, plural = _KINDS[self.kind]
        root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        scope = ["namespaces", self.namespace] if self.namespace else []
        parts = [root, *scope, plural, self.name, self.subresource]
        return "/".join(p for p in parts if p)

    def resource(self) -> str:
        plural = _KINDS[self.kind][1]
        return f"{plural}/{self.subresource}" if self.subresource else plural


def target_of(obj: dict[str, Any]) -> Target:
    meta = obj["metadata"]
    return Target(obj["kind"], meta["namespace"], meta["name"])


Login = Callable[[], Awaitable[kopf.ConnectionInfo]]


class Kube:
    """Create, get, list, merge-patch, one session per event loop; re-logs in once on 401."""

    def __init__(self) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._login: Login | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmp: list[str] = []

    def configure(self, info: kopf.ConnectionInfo, login: Login | None = None) -> None:
        self._info, self._login = info, login

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None
        for path in self._tmp:
            os.unlink(path)
        self._tmp.clear()

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", target_of(obj), "create", json=obj, collection=True)

    async def get(self, target: Target) -> dict[str, Any] | None:
        try:
            return await self.request("GET", target, "get")
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Objects whose labels include `labels` (also checked here: selectors are a server courtesy)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        body = await self.request("GET", Target(kind, namespace), "list", params={"labelSelector": selector})
        items = body.get("items") or []
        for item in items:
            item.setdefault("kind", kind)
        return [i for i in items if labels.items() <= ((i.get("metadata") or {}).get("labels") or {}).items()]

    async def patch(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request(
            "PATCH", target, "patch", json=body, headers={"Content-Type": "application/merge-patch+json"}
        )

    async def json_patch(self, target: Target, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """RFC 6902 patch; a `test` op on `/metadata/resourceVersion` makes it a compare-and-swap."""
        return await self.request(
            "PATCH", target, "patch", json=ops, headers={"Content-Type": "application/json-patch+json"}
        )

    async def request(
        self, method: str, target: Target, verb: str, collection: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """One API call: `verb` is the RBAC verb it needs; `collection` posts to the kind's collection."""
        path = Target(target.kind, target.namespace).path() if collection else target.path()
        for attempt in (0, 1):
            session = await self._ensure_session()
            async with session.request(method, self._server() + path, **kwargs) as response:
                if response.status == 401 and attempt == 0 and self._login is not None:
                    await self._relogin()
                    continue
                body = await response.json(content_type=None) if response.content_length != 0 else {}
                if response.status >= 400:
                    body = body if isinstance(body, dict) else {}
                    raise ApiError(response.status, body.get("reason", response.reason or ""), body.get("message", ""))
                return body
        raise AssertionError("unreachable")

    def _server(self) -> str:
        if self._info is None:
            raise RuntimeError("the Kubernetes client is not configured: no login happened")
        return self._info.server.rstrip("/")

    async def _relogin(self) -> None:
        assert self._login is not None
        self._info = await self._login()
        await self.close()

    async def _ensure_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session, self._loop = self._new_session(), loop
        return self._session

    def _new_session(self) -> aiohttp.ClientSession:
        info = self._info
        assert info is not None
        headers = {}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        connector = aiohttp.TCPConnector(ssl=self._ssl(info), limit=64)
        timeout = aiohttp.ClientTimeout(total=60)
        return aiohttp.ClientSession(headers=headers, auth=auth, connector=connector, timeout=timeout)

    def _file(self, data: str | bytes) -> str:
        fd, path = tempfile.mkstemp(prefix="metaspec-kube-")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        self._tmp.append(path)
        return path

    def _ssl(self, info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
        if not info.server.startswith("https"):
            return False
        if info.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        context = ssl.create_default_context(cafile=info.ca_path, cadata=ca_data)
        cert = info.certificate_path or (self._file(info.certificate_data) if info.certificate_data else None)
        key = info.private_key_path or (self._file(info.private_key_data) if info.private_key_data else None)
        if cert:
            context.load_cert_chain(cert, key)
        return context
