"""Artifact URIs: `s3://bucket/key`, `file:///path` or a plain path, `hf://org/name`.

A URI with a scheme takes no query or fragment: `?` and `#` would be cut off by URL parsing, so two
different URIs would name one artifact. The part after the scheme may not start with `-` (it reaches
command lines as a model argument) and a hub URI needs a repository (`hf:///etc` is a path, not one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


@dataclass(frozen=True)
class Uri:
    scheme: str  # "s3" | "file" | "hf"
    bucket: str  # S3 bucket, or "" for other schemes
    path: str  # S3 key prefix (no leading slash), local path, or hub repo id

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
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"malformed S3 URI {text!r}: expected s3://<bucket>/<key>")
            return cls("s3", parsed.netloc, parsed.path.lstrip("/"))
        if parsed.scheme == "file":
            return cls("file", "", str(Path(parsed.netloc + parsed.path).absolute()))
        if parsed.scheme == "hf":
            if not parsed.netloc:
                raise ValueError(f"malformed hub URI {text!r}: expected hf://<org>/<name>")
            return cls("hf", "", (parsed.netloc + parsed.path).strip("/"))
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r} in {text!r}: use s3://, file://, hf:// or a path")

    @classmethod
    def of(cls, uri: str | Path | Uri) -> Uri:
        return uri if isinstance(uri, Uri) else cls.parse(uri)

    def join(self, *parts: str) -> Uri:
        path = "/".join(p.strip("/") for p in (self.path, *parts) if p.strip("/"))
        if self.scheme == "file":
            path = "/" + path.lstrip("/")
        return Uri(self.scheme, self.bucket, path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}"
        if self.scheme == "hf":
            return f"hf://{self.path}"
        return f"file://{self.path}"
