"""Artifact URIs: `s3://bucket/key`, `file:///path` or a plain path, `hf://org/name[@revision]`,
`pvc://claim/path`.

A `pvc://claim/path` names a path inside a PersistentVolumeClaim: pods mount the claim read-only
under `PVC_ROOT/<claim>` (the operator's pod builders do it), and `metaspec local` links a host folder
there (`--claim NAME=DIR`). `METASPEC_PVC_ROOT` says where the claims are mounted.

A URI with a scheme takes no query or fragment: `?` and `#` would be cut off by URL parsing, so two
different URIs would name one artifact. The part after the scheme may not start with `-` (it reaches
command lines as a model argument) and a hub URI needs a repository (`hf:///etc` is a path, not one).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

#: Where pods mount PersistentVolumeClaims named by `pvc://` URIs, one folder per claim.
PVC_ROOT = "/mnt/pvc"


def valid_bucket(name: str) -> bool:
    """S3's bucket naming rules (general purpose buckets)."""
    return bool(
        re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name)
        and ".." not in name
        and ".-" not in name
        and "-." not in name
        and not re.fullmatch(r"[0-9]+(\.[0-9]+){3}", name)
        and not name.startswith(("xn--", "sthree-"))
        and not name.endswith(("-s3alias", "--ol-s3"))
    )


@dataclass(frozen=True)
class Uri:
    scheme: str  # "s3" | "file" | "hf" | "pvc"
    bucket: str  # S3 bucket or PVC claim name, "" for other schemes
    path: str  # S3 key prefix (no leading slash), local path, path inside a claim, or hub repo id
    revision: str | None = None  # hf:// only: branch, tag or commit (`hf://org/name@rev`)

    @classmethod
    def parse(cls, uri: str | Path) -> Uri:
        text = str(uri)
        if "://" not in text:
            return cls("file", "", str(Path(text).absolute()))
        if "?" in text or "#" in text:
            raise ValueError(
                f"{text!r} carries a query or fragment ('?' or '#'): artifact URIs take neither "
                "(they would be cut off, and two URIs would name one artifact)"
            )
        rest = text.split("://", 1)[1]
        if not rest or rest.startswith("-"):
            raise ValueError(f"{text!r}: nothing after the scheme, or a '-' that would read as an option")
        parsed = urlparse(text)
        if parsed.scheme in ("s3", "pvc"):
            if not parsed.netloc:
                kind = "bucket" if parsed.scheme == "s3" else "claim"
                raise ValueError(f"malformed URI {text!r}: expected {parsed.scheme}://<{kind}>/<path>")
            if ".." in parsed.path.split("/"):
                raise ValueError(f"{text!r}: '..' may not leave the {parsed.scheme} {parsed.netloc!r}")
            return cls(parsed.scheme, parsed.netloc, parsed.path.lstrip("/"))
        if parsed.scheme == "file":
            return cls("file", "", str(Path(parsed.netloc + parsed.path).absolute()))
        if parsed.scheme == "hf":
            if not parsed.netloc:
                raise ValueError(f"malformed hub URI {text!r}: expected hf://<org>/<name>")
            repo, _, revision = text.removeprefix("hf://").strip("/").partition("@")
            return cls("hf", "", repo.strip("/"), revision or None)
        raise ValueError(
            f"unsupported URI scheme {parsed.scheme!r} in {text!r}: use s3://, file://, hf://, pvc:// or a path"
        )

    @classmethod
    def of(cls, uri: str | Path | Uri) -> Uri:
        return uri if isinstance(uri, Uri) else cls.parse(uri)

    def join(self, *parts: str) -> Uri:
        path = "/".join(p.strip("/") for p in (self.path, *parts) if p.strip("/"))
        if self.scheme == "file":
            path = "/" + path.lstrip("/")
        return Uri(self.scheme, self.bucket, path, self.revision)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def local(self) -> Path:
        """The filesystem path of a `file://` or `pvc://` URI (a claim is a mounted folder)."""
        if self.scheme == "file":
            return Path(self.path)
        if self.scheme == "pvc":
            return Path(os.environ.get("METASPEC_PVC_ROOT", PVC_ROOT)) / self.bucket / self.path
        raise ValueError(f"{self} is not on a local filesystem")

    def __str__(self) -> str:
        if self.scheme in ("s3", "pvc"):
            return f"{self.scheme}://{self.bucket}/{self.path}"
        if self.scheme == "hf":
            return f"hf://{self.path}" + (f"@{self.revision}" if self.revision else "")
        return f"file://{self.path}"
