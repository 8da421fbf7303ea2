"""Object stores behind one small interface: S3 (boto3) and the local filesystem.

Settings come from the standard AWS environment variables only (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_S3`), so a pod, a laptop and CI configure it the same way. Two metaspec settings tune
retries: `METASPEC_S3_MAX_ATTEMPTS` (botocore's attempts per request) and `METASPEC_S3_RETRY_SECONDS`
(how long an unreachable endpoint is retried before the component fails with a transient error).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Protocol, TypeVar

from .uri import Uri

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds an unreachable S3 endpoint is retried before giving up. botocore's own retries of a
#: refused connection are over within a second (50 ms base backoff), which would turn an S3 restart
#: into a failed pod and lose a trainer's steps since its last checkpoint.
RETRY_SECONDS = 60.0
#: The longest pause between two attempts: an endpoint that comes back is noticed within this.
MAX_PAUSE = 8.0


class ArtifactError(Exception):
    """An artifact could not be read or written. `transient` errors are worth retrying later."""

    transient = False


class NotFound(ArtifactError):
    pass


class AccessDenied(ArtifactError):
    pass


class Unreachable(ArtifactError):
    transient = True


class IncompleteArtifact(ArtifactError):
    """A prefix without a complete `_manifest.json`: still being written, or abandoned."""


class ChecksumMismatch(ArtifactError):
    pass


class UnsafeArtifact(ArtifactError):
    """A manifest or file name that would reach outside its artifact (absolute, `..`, backslashes)."""


class Store(Protocol):
    def put_file(self, local: Path, uri: Uri) -> None: ...
    def get_file(self, uri: Uri, local: Path) -> None: ...
    def put_bytes(self, data: bytes, uri: Uri) -> None: ...
    def get_bytes(self, uri: Uri) -> bytes: ...
    def list(self, uri: Uri) -> Iterator[tuple[str, int]]: ...
    def delete(self, uri: Uri) -> None: ...


class LocalStore:
    """Files on disk (`file://`, and `pvc://` claims mounted as folders). Writes go to a temporary file
    and are renamed into place (atomic)."""

    def put_file(self, local: Path, uri: Uri) -> None:
        dest = uri.local
        if dest.resolve() == Path(local).resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".tmp-", delete=False) as tmp,
            open(local, "rb") as src,
        ):
            shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, dest)

    def get_file(self, uri: Uri, local: Path) -> None:
        self.put_file(self._existing(uri), Uri.parse(local))

    def put_bytes(self, data: bytes, uri: Uri) -> None:
        dest = uri.local
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".tmp-", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, dest)

    def get_bytes(self, uri: Uri) -> bytes:
        return self._existing(uri).read_bytes()

    def list(self, uri: Uri) -> Iterator[tuple[str, int]]:
        root = uri.local
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    yield path.relative_to(root).as_posix(), path.stat().st_size

    def delete(self, uri: Uri) -> None:
        uri.local.unlink(missing_ok=True)

    @staticmethod
    def _existing(uri: Uri) -> Path:
        path = uri.local
        if not path.is_file():
            raise NotFound(f"{uri} does not exist")
        return path


class S3Store:
    """S3 through boto3: multipart and concurrent transfers from boto3's transfer manager, retries
    with backoff for throttling, 5xx and connection errors from botocore's `standard` mode, and
    beyond those, whole operations retried until `retry_seconds` have passed (then `Unreachable`)."""

    def __init__(self, max_attempts: int | None = None, retry_seconds: float | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        attempts = max_attempts or int(os.environ.get("METASPEC_S3_MAX_ATTEMPTS", "5"))
        self.endpoint = endpoint or "AWS S3"
        # A session of its own: the default session caches credentials from its first use.
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(
                retries={"mode": "standard", "max_attempts": attempts},
                s3={"addressing_style": "path" if endpoint else "auto"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        self.transfer = TransferConfig(multipart_threshold=64 * 2**20, max_concurrency=8)
        if retry_seconds is None:
            retry_seconds = float(os.environ.get("METASPEC_S3_RETRY_SECONDS", RETRY_SECONDS))
        self.retry_seconds = retry_seconds

    def put_file(self, local: Path, uri: Uri) -> None:
        self._call(uri, lambda: self.client.upload_file(str(local), uri.bucket, uri.path, Config=self.transfer))

    def get_file(self, uri: Uri, local: Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".tmp-{local.name}")
        self._call(uri, lambda: self.client.download_file(uri.bucket, uri.path, str(tmp), Config=self.transfer))
        os.replace(tmp, local)

    def put_bytes(self, data: bytes, uri: Uri) -> None:
        self._call(uri, lambda: self.client.put_object(Bucket=uri.bucket, Key=uri.path, Body=data))

    def get_bytes(self, uri: Uri) -> bytes:
        return self._call(uri, lambda: self.client.get_object(Bucket=uri.bucket, Key=uri.path)["Body"].read())

    def list(self, uri: Uri) -> Iterator[tuple[str, int]]:
        prefix = uri.path.rstrip("/") + "/" if uri.path else ""

        def listing() -> list[tuple[str, int]]:  # whole, so a retried listing yields nothing twice
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix)
            return [(obj["Key"][len(prefix) :], obj["Size"]) for page in pages for obj in page.get("Contents", [])]

        yield from self._call(uri, listing)

    def delete(self, uri: Uri) -> None:
        self._call(uri, lambda: self.client.delete_object(Bucket=uri.bucket, Key=uri.path))

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist (embedded default and tests)."""
        where = Uri("s3", bucket, "")
        try:
            self._call(where, lambda: self.client.head_bucket(Bucket=bucket))
        except NotFound:
            self._call(where, lambda: self.client.create_bucket(Bucket=bucket))

    def _call(self, uri: Uri, operation: Callable[[], T]) -> T:
        """Run `operation` with errors translated; retry it while the endpoint is unreachable."""
        deadline = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                with _translate(uri, self.endpoint):
                    return operation()
            except Unreachable as error:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unreachable(
                        f"{error} (gave up after {attempt} attempts in {self.retry_seconds:g} s; "
                        "METASPEC_S3_RETRY_SECONDS sets how long to wait)"
                    ) from None
                pause = min(MAX_PAUSE, 0.5 * 2 ** (attempt - 1), left)
                log.warning("%s; retrying in %.1f s (%.0f s left)", error, pause, left)
                time.sleep(pause)


class _translate:
    """Turn botocore's exceptions into ArtifactErrors that say what to do."""

    def __init__(self, uri: Uri, endpoint: str):
        self.uri, self.endpoint = uri, endpoint

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if error is None or isinstance(error, ArtifactError):
            return False
        if isinstance(error, S3UploadFailedError) and isinstance(error.__context__, ClientError):
            error = error.__context__
        if isinstance(error, RetriesExceededError):  # boto3's transfer manager gave up mid-download
            raise Unreachable(
                f"reading {self.uri} from {self.endpoint} failed on every attempt ({error.last_exception}): "
                "the connection keeps breaking, or the object is damaged in the store"
            ) from None
        # Refused or timed-out connections, and connections cut mid-response (the server went away).
        if isinstance(error, BotoConnectionError | HTTPClientError | IncompleteReadError | ConnectionError):
            raise Unreachable(f"cannot reach S3 endpoint {self.endpoint} for {self.uri}: {error}") from None
        if isinstance(error, NoCredentialsError):
            raise AccessDenied(
                f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(in a cluster: spec.storage.secretRef)"
            ) from None
        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "InvalidBucketName":
                raise ArtifactError(f"{self.uri}: S3 refuses the bucket name {self.uri.bucket!r}") from None
            if code == "NoSuchBucket":
                raise NotFound(f"bucket {self.uri.bucket!r} does not exist at {self.endpoint}") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{self.uri} does not exist") from None
            if code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "403") or status == 403:
                raise AccessDenied(
                    f"S3 refused access to {self.uri} ({code}): check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (spec.storage.secretRef) and the bucket policy"
                ) from None
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise Unreachable(
                    f"S3 endpoint {self.endpoint} answered {code or status} for {self.uri}: {error}"
                ) from None
        return False


@cache
def _s3() -> S3Store:
    return S3Store()


def store_for(uri: Uri) -> Store:
    if uri.scheme == "s3":
        return _s3()
    if uri.scheme in ("file", "pvc"):
        return LocalStore()
    raise ArtifactError(f"{uri}: no object store for scheme {uri.scheme!r}")


def reset_clients() -> None:
    """Forget cached S3 clients (after changing the AWS environment variables)."""
    _s3.cache_clear()


@contextmanager
def s3_environment(env: dict[str, str]) -> Iterator[None]:
    """This process's S3 clients configured by `env` (`AWS_*`, `METASPEC_S3_*` variables) while inside;
    the variables as they were, and fresh clients, afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    reset_clients()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_clients()
