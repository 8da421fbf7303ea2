"""Directory artifacts with manifests.

`_manifest.json` is written last and lists every file with its size and sha256. A prefix without
it is incomplete (still being written, or abandoned) and is never read; downloads verify every
checksum, so a corrupted or replaced object is caught before anything loads it.

Manifest keys are relative POSIX paths that stay inside their artifact: an absolute key, an empty,
`.` or `..` segment, a backslash or a control character is refused when a manifest is written and
when one is read (`UnsafeArtifact`), and every local path is resolved and checked to lie under its
root (so a symbolic link cannot lead out either). A manifest is written by whoever wrote the
artifact, so its checksums prove nothing about where its files may go.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import (
    AccessDenied,
    ArtifactError,
    ChecksumMismatch,
    IncompleteArtifact,
    NotFound,
    Unreachable,
    UnsafeArtifact,
    store_for,
)
from .uri import Uri

MANIFEST = "_manifest.json"
log = logging.getLogger(__name__)
#: Whether each artifact this process materialized through a cache was already there:
#: (cache folder, URI) -> "hit" or "miss". A component process runs one resource, so this is its own
#: account of where its models came from; it reports it in its summary (`cache_outcomes`).
_outcomes: dict[tuple[Path, str], str] = {}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_key(rel: str) -> str:
    """`rel` if it is a relative POSIX path that stays inside its artifact; UnsafeArtifact otherwise."""
    if (
        not isinstance(rel, str)
        or not rel
        or rel.startswith("/")
        or "\\" in rel
        or _CONTROL.search(rel)
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise UnsafeArtifact(
            f"artifact file name {rel!r} is not a plain relative path (absolute, empty, '.' or '..' "
            "segment, backslash or control character): refused, it could write outside the artifact"
        )
    return rel


def safe_join(root: Path, rel: str) -> Path:
    """`root / rel` for a manifest key, after checking that the resolved path stays under `root`."""
    path = Path(root) / safe_key(rel)
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise UnsafeArtifact(f"{rel!r} leads outside {root} (through a symbolic link): refused")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    files: dict[str, dict[str, Any]]  # relative path -> {"size": int, "sha256": str}
    metadata: dict[str, Any]
    digest: str  # sha256 of the manifest's own bytes: what "this exact artifact" means

    @classmethod
    def build(cls, root: Path, metadata: dict[str, Any] | None = None) -> tuple[Manifest, bytes]:
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name != MANIFEST and not path.name.startswith(".tmp-"):
                rel = path.relative_to(root).as_posix()
                safe_join(root, rel)
                files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        raw = json.dumps({"version": 1, "files": files, "metadata": metadata or {}}, indent=1).encode()
        return cls(files, metadata or {}, hashlib.sha256(raw).hexdigest()), raw

    @classmethod
    def parse(cls, raw: bytes, where: Uri) -> Manifest:
        try:
            body = json.loads(raw)
            files, metadata = body["files"], body.get("metadata", {})
            if not isinstance(files, dict) or not isinstance(metadata, dict):
                raise TypeError("`files` and `metadata` must be objects")
            for meta in files.values():
                size, digest = meta["size"], meta["sha256"]
                if type(size) is not int or size < 0 or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                    raise TypeError(f"bad entry {meta!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise IncompleteArtifact(
                f"{where.join(MANIFEST)} is unreadable ({e}); the artifact is incomplete"
            ) from None
        for rel in files:
            try:
                safe_key(rel)
            except UnsafeArtifact as e:
                raise UnsafeArtifact(f"{where.join(MANIFEST)}: {e}") from None
        return cls(files, metadata, hashlib.sha256(raw).hexdigest())


def upload_dir(local: Path, uri: str | Path | Uri, metadata: dict[str, Any] | None = None) -> Manifest:
    """Upload every file under `local`, then the manifest. Returns the manifest written.

    A missing or empty `local` is refused (NotFound): a typo must not publish a complete, empty model.
    """
    uri = Uri.of(uri)
    local = Path(local)
    if not local.is_dir():
        raise NotFound(f"{local} is not a directory: nothing to upload to {uri}")
    manifest, raw = Manifest.build(local, metadata)
    if not manifest.files:
        raise NotFound(f"{local} holds no files: nothing to upload to {uri}")
    store = store_for(uri)
    for rel in manifest.files:
        store.put_file(safe_join(local, rel), uri.join(rel))
    store.put_bytes(raw, uri.join(MANIFEST))
    return manifest


def read_manifest(uri: str | Path | Uri) -> Manifest:
    """The manifest of a complete artifact; IncompleteArtifact when there is none."""
    uri = Uri.of(uri)
    try:
        raw = store_for(uri).get_bytes(uri.join(MANIFEST))
    except NotFound:
        raise IncompleteArtifact(
            f"{uri} has no {MANIFEST}: the artifact is incomplete (still being written or abandoned), "
            "or was uploaded without one (`metaspec artifacts push DIR URI` writes it)"
        ) from None
    return Manifest.parse(raw, uri)


def is_complete(uri: str | Path | Uri) -> bool:
    try:
        read_manifest(uri)
    except (IncompleteArtifact, NotFound, UnsafeArtifact):
        return False
    return True


def download_dir(uri: str | Path | Uri, local: Path, only: list[str] | None = None) -> Manifest:
    """Download a complete artifact into `local`, verifying sizes and checksums.

    Files already present with the right checksum are not fetched again. `only` restricts the
    download to files whose path starts with one of the given prefixes.
    """
    uri = Uri.of(uri)
    manifest = read_manifest(uri)
    _fetch(uri, manifest, Path(local), only)
    return manifest


def _fetch(uri: Uri, manifest: Manifest, local: Path, only: list[str] | None = None) -> None:
    """Make `local` hold `manifest`'s files: each one present and verified, or fetched and verified."""
    store = store_for(uri)
    local.mkdir(parents=True, exist_ok=True)
    for rel, meta in manifest.files.items():
        if only is not None and not any(rel.startswith(p) for p in only):
            continue
        dest = safe_join(local, rel)
        if dest.is_file() and dest.stat().st_size == meta["size"] and sha256_file(dest) == meta["sha256"]:
            continue
        store.get_file(uri.join(rel), dest)
        try:
            _verify(dest, meta, uri.join(rel))
        except ChecksumMismatch:
            dest.unlink()
            raise


def _verify(path: Path, meta: dict[str, Any], where: Uri) -> None:
    size, digest = path.stat().st_size, sha256_file(path)
    if size != meta["size"] or digest != meta["sha256"]:
        raise ChecksumMismatch(
            f"{where} does not match its manifest (size {size} vs {meta['size']}, sha256 {digest[:12]}… vs "
            f"{meta['sha256'][:12]}…): the object was corrupted or replaced after the manifest was written"
        )


def verify_local(uri: Uri) -> Manifest:
    """Check a `file://` artifact in place against its manifest."""
    manifest = read_manifest(uri)
    for rel, meta in manifest.files.items():
        path = safe_join(uri.local, rel)
        if not path.is_file():
            raise IncompleteArtifact(f"{uri.join(rel)} is listed in the manifest but missing")
        _verify(path, meta, uri.join(rel))
    return manifest


def verify_artifact(uri: str | Path | Uri) -> Manifest:
    """Check a complete artifact where it lives: every file its manifest lists is present with its size
    and sha256. Objects are fetched one at a time into a temporary file to be hashed, so this reads the
    whole artifact: for deciding whether a finished stage's output may be reused, not on every read."""
    uri = Uri.of(uri)
    if uri.scheme in ("file", "pvc"):
        return verify_local(uri)
    manifest = read_manifest(uri)
    store = store_for(uri)
    sizes = dict(store.list(uri))
    for rel, meta in manifest.files.items():  # sizes first: a lost object is found without reading any
        if sizes.get(rel) != meta["size"]:
            raise IncompleteArtifact(
                f"{uri.join(rel)} is listed in the manifest with {meta['size']} bytes but "
                + ("missing" if rel not in sizes else f"has {sizes[rel]}")
            )
    with tempfile.TemporaryDirectory(prefix="metaspec-verify-") as tmp:
        scratch = Path(tmp) / "object"
        for rel, meta in manifest.files.items():
            store.get_file(uri.join(rel), scratch)
            _verify(scratch, meta, uri.join(rel))
    return manifest


def materialize(uri: str | Path | Uri, cache_dir: Path, revision: str | None = None) -> tuple[Path, Manifest | None]:
    """A verified local directory holding the artifact at `uri`, and its manifest.

    `cache_dir` keeps the copies: for models the model cache (`metaspec.runtime.model_cache_dir`),
    which may be shared by every run of a namespace. `file://` artifacts are verified in place;
    `pvc://` ones are read in place from the mounted claim (verified when they carry a manifest, used
    as they are otherwise: a claim is the user's own volume); `s3://` ones are downloaded into
    `cache_dir/<manifest digest>` (so a changed artifact never reuses a stale copy), and a cached copy
    is verified file by file (size and sha256) on every use: a file changed, truncated or lost in the
    cache is fetched again rather than loaded. An entry is filled under `<digest>.partial` and renamed
    when complete, and checked or filled under a lock (`_entry_lock`), so the cache may be shared by
    several processes and hosts. `hf://` ones are fetched with huggingface_hub at `revision` (or the
    URI's `@revision`), with `HF_TOKEN` from the environment for gated models, into `cache_dir/hf` in
    the Hub's own layout; their manifest lists no files (the Hub's own checksums apply) and its digest
    is `hf:<commit>`, the exact revision. Whether each was found in the cache or fetched is logged and
    recorded (`cache_outcomes`).
    """
    uri = Uri.of(uri)
    if uri.scheme == "file":
        return uri.local, verify_local(uri)
    if uri.scheme == "pvc":
        return _in_claim(uri)
    if uri.scheme == "hf":
        return _from_hub(uri, Path(cache_dir), revision)
    manifest = read_manifest(uri)
    dest = Path(cache_dir) / manifest.digest[:32]
    with _entry_lock(dest):
        if (dest / MANIFEST).is_file():
            _fetch(uri, manifest, dest)
            _record(uri, cache_dir, dest, hit=True)
        else:
            partial = dest.with_name(dest.name + ".partial")  # a fill cut short resumes from what it verified
            _fetch(uri, manifest, partial)
            (partial / MANIFEST).write_text(json.dumps({"files": manifest.files, "metadata": manifest.metadata}))
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(partial, dest)
            _record(uri, cache_dir, dest, hit=False)
    return dest, manifest


def _record(uri: Uri, cache_dir: Path, entry: Path, hit: bool) -> None:
    _outcomes[Path(cache_dir).absolute(), str(uri)] = "hit" if hit else "miss"
    log.info("%s: %s the cache at %s", uri, "found in" if hit else "downloaded into", entry)


def cache_outcomes(cache_dir: Path) -> dict[str, str]:
    """URI -> `hit` (found in `cache_dir`) or `miss` (downloaded into it) for every artifact this process
    materialized there from `s3://` or `hf://`; read-in-place sources (`file://`, `pvc://`) are not listed."""
    root = Path(cache_dir).absolute()
    return {uri: outcome for (where, uri), outcome in _outcomes.items() if where == root}


@contextmanager
def _entry_lock(dest: Path) -> Iterator[None]:
    """Holds `<entry>.lock` exclusively while a cache entry is checked or filled, so that processes
    sharing a cache (pods on one ReadWriteMany volume) never fill one entry twice at once or read a
    file another is fetching again. POSIX record locks (`lockf`), which NFS carries between hosts."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def _in_claim(uri: Uri) -> tuple[Path, Manifest | None]:
    if not uri.local.is_dir():
        raise NotFound(f"{uri} is not a directory at {uri.local}: is the claim mounted, and the path right?")
    return uri.local, verify_local(uri) if (uri.local / MANIFEST).is_file() else None


def _from_hub(uri: Uri, cache_dir: Path, revision: str | None) -> tuple[Path, Manifest]:
    """Download (or find in `cache_dir/hf`, offline) a Hub snapshot at the requested revision."""
    from huggingface_hub import errors

    if uri.revision and revision and uri.revision != revision:
        raise ValueError(f"{uri} names revision {uri.revision!r} but {revision!r} was asked for")
    revision = uri.revision or revision
    hub = cache_dir / "hf"
    snapshots = hub / f"models--{uri.path.replace('/', '--')}" / "snapshots"
    before = {p.name for p in snapshots.iterdir()} if snapshots.is_dir() else set()
    try:
        path = Path(_snapshot(uri.path, revision, hub))
    except (errors.GatedRepoError, errors.RepositoryNotFoundError) as e:
        gated = "gated" if isinstance(e, errors.GatedRepoError) else "not found, or private"
        raise AccessDenied(
            f"hf://{uri.path} is {gated}: give a token with access to it (hfTokenSecretRef on the model "
            "source; HF_TOKEN for `metaspec local`)"
        ) from None
    except errors.RevisionNotFoundError:
        raise NotFound(f"hf://{uri.path} has no revision {revision!r}") from None
    except errors.LocalEntryNotFoundError:
        raise Unreachable(
            f"{uri}: not in the local Hugging Face cache and the Hub cannot be reached (or HF_HUB_OFFLINE is set)"
        ) from None
    except errors.HfHubHTTPError as e:
        raise ArtifactError(f"{uri}: the Hub answered {e}") from None
    _record(Uri("hf", "", uri.path, revision), cache_dir, path, hit=path.name in before)
    metadata = {"uri": f"hf://{uri.path}", "revision": path.name}
    return path, Manifest({}, metadata, f"hf:{path.name}")


def _snapshot(repo: str, revision: str | None, cache_dir: Path) -> str:
    """A snapshot at `revision`: a commit already in the cache is used without asking the Hub (it cannot
    change); a branch or tag is resolved by the Hub, so a moved branch is never served stale."""
    from huggingface_hub import errors, snapshot_download

    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        try:
            return snapshot_download(repo, revision=revision, cache_dir=str(cache_dir), local_files_only=True)
        except errors.LocalEntryNotFoundError:
            pass
    return snapshot_download(repo, revision=revision, cache_dir=str(cache_dir))


def read_bytes(uri: str | Path | Uri) -> bytes:
    """One object (a single-file artifact such as a user's JSONL). Object stores write atomically."""
    uri = Uri.of(uri)
    return store_for(uri).get_bytes(uri)


def write_bytes(data: bytes, uri: str | Path | Uri) -> None:
    uri = Uri.of(uri)
    store_for(uri).put_bytes(data, uri)


def upload_file(local: Path, uri: str | Path | Uri) -> None:
    uri = Uri.of(uri)
    store_for(uri).put_file(Path(local), uri)


def list_files(uri: str | Path | Uri) -> list[tuple[str, int]]:
    """`(relative path, size)` of every object under a prefix, manifest or not (for resuming writers)."""
    uri = Uri.of(uri)
    return list(store_for(uri).list(uri))
