"""Artifacts in S3 or on disk: URIs, transfers, and manifests that make partial artifacts unreadable."""

from .store import (
    AccessDenied,
    ArtifactError,
    ChecksumMismatch,
    IncompleteArtifact,
    NotFound,
    S3Store,
    Unreachable,
    reset_clients,
    store_for,
)
from .transfer import (
    MANIFEST,
    Manifest,
    download_dir,
    is_complete,
    list_files,
    materialize,
    read_bytes,
    read_manifest,
    sha256_file,
    upload_dir,
    upload_file,
    write_bytes,
)
from .uri import Uri

__all__ = [
    "MANIFEST",
    "AccessDenied",
    "ArtifactError",
    "ChecksumMismatch",
    "IncompleteArtifact",
    "Manifest",
    "NotFound",
    "S3Store",
    "Unreachable",
    "Uri",
    "download_dir",
    "is_complete",
    "list_files",
    "materialize",
    "read_bytes",
    "read_manifest",
    "reset_clients",
    "sha256_file",
    "store_for",
    "upload_dir",
    "upload_file",
    "write_bytes",
]
