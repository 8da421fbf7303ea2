"""A shard's output file: appended and flushed per batch, uploaded in parts, resumed after a restart.

While a shard runs, its records go to a local JSONL file (flushed and fsynced after every batch) and
the whole file is uploaded to `<output>/.partial/shard-…jsonl` every `upload_every` seconds. A
restarted shard continues from the local file when its volume survived (a container restart), else
from the uploaded partial (a new pod), drops a torn last line, and skips every ID it finds. When all
IDs are written the shard file is rewritten in input order and uploaded to `<output>/shard-…jsonl`
in one PUT (S3 objects appear whole), then the partial is deleted.

What can be lost is only what was generated after the last upload, and it is generated again: no
record is duplicated (IDs are keys) and none is missing (`finish` checks the exact ID set).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metaspec.artifacts import NotFound, Uri, read_bytes, store_for, upload_file
from metaspec.runtime import PermanentError

log = logging.getLogger(__name__)

Body = dict[str, Any]


class ShardWriter:
    def __init__(self, local: Path, partial_uri: Uri, final_uri: Uri, upload_every: float = 60.0):
        self.local = Path(local)
        self.partial_uri = partial_uri
        self.final_uri = final_uri
        self.upload_every = upload_every
        self.records: dict[str, Body] = {}
        self._last_upload = time.monotonic()
        self._file: Any = None

    def resume(self, expected_ids: set[str], accept: Callable[[Body], bool]) -> dict[str, Body]:
        """Load what earlier attempts wrote; returns the records kept, by ID.

        Records whose ID is not in this shard's input, or that `accept` refuses (another model or
        other sampling parameters), are dropped and generated again.
        """
        previous = self._previous_records()
        dropped = 0
        for body in previous:
            if body.get("id") in expected_ids and body["id"] not in self.records and accept(body):
                self.records[body["id"]] = body
            else:
                dropped += 1
        if previous:
            log.info(
                "resuming shard: %d records kept, %d dropped",
                len(self.records),
                dropped,
                extra={"fields": {"resumed": len(self.records), "dropped": dropped}},
            )
        self._rewrite(list(self.records.values()))
        self._file = open(self.local, "a", encoding="utf-8")  # noqa: SIM115 - open until close()
        return dict(self.records)

    def append(self, bodies: Sequence[Body]) -> None:
        """Write records durably, and upload the partial file when it is due."""
        for body in bodies:
            if body["id"] in self.records:
                raise RuntimeError(f"record {body['id']!r} was generated twice; this is a bug in the generator")
            self._file.write(json.dumps(body, ensure_ascii=False) + "\n")
            self.records[body["id"]] = body
        self._file.flush()
        os.fsync(self._file.fileno())
        if time.monotonic() - self._last_upload >= self.upload_every:
            self.upload_partial()

    def upload_partial(self) -> None:
        upload_file(self.local, self.partial_uri)
        self._last_upload = time.monotonic()

    def finish(self, order: Sequence[str]) -> list[Body]:
        """Check the ID set is exactly `order`, upload the shard file in that order, drop the partial."""
        self.close()
        missing = [i for i in order if i not in self.records]
        extra = set(self.records) - set(order)
        if missing or extra:
            raise RuntimeError(f"shard is incomplete: {len(missing)} IDs missing, {len(extra)} unexpected")
        ordered = [self.records[i] for i in order]
        final = self.local.with_name(self.local.name + ".final")
        final.write_text("".join(json.dumps(b, ensure_ascii=False) + "\n" for b in ordered), encoding="utf-8")
        upload_file(final, self.final_uri)
        store_for(self.partial_uri).delete(self.partial_uri)
        return ordered

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _previous_records(self) -> list[Body]:
        if self.local.is_file():
            text = self.local.read_text(encoding="utf-8")
        else:
            try:
                text = read_bytes(self.partial_uri).decode("utf-8")
            except NotFound:
                return []
        return complete_records(text, str(self.local))

    def _rewrite(self, bodies: list[Body]) -> None:
        self.local.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.local.with_name(f".tmp-{self.local.name}")
        tmp.write_text("".join(json.dumps(b, ensure_ascii=False) + "\n" for b in bodies), encoding="utf-8")
        os.replace(tmp, self.local)


def complete_records(text: str, source: str) -> list[Body]:
    """The records of a JSONL file an interrupted writer may have left with a torn last line."""
    lines = text.split("\n")
    tail = lines.pop()  # after the last newline: empty, or a line whose write was cut short
    if tail:
        log.info("%s: dropping a torn last line (%d bytes)", source, len(tail))
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise PermanentError(
                f"{source} line {number} is not JSON: the partial shard is corrupt; delete it to start the shard over"
            ) from None
    return records


def read_shard(uri: Uri) -> list[Body]:
    """The records of a finished shard file."""
    return [json.loads(line) for line in read_bytes(uri).decode("utf-8").splitlines() if line.strip()]
