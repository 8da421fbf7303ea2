"""Completing the output: merged `stats.json` and `_manifest.json`, by whichever shard finishes last.

Shards run as parallel pods and none waits for another. Each one, after uploading its shard file
and its stats file, lists the output prefix; if every shard's two files are there, it merges. S3 is
strongly consistent (read-after-write and list-after-write), so of two shards finishing together
at least the later lister sees both files; when both see them, both write the same bytes: the merge
depends only on the shard files, never on who runs it or when. A re-run rewrites identical files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from metaspec.artifacts import MANIFEST, Manifest, Uri, list_files, store_for, write_bytes
from metaspec.runtime import PermanentError, to_json

from .sharding import shard_file, shard_stats_file
from .stats import compute_stats
from .writer import Body

STATS_FILE = "stats.json"


def missing_parts(output: Uri, count: int) -> list[str]:
    """Shard and shard-stats files of a `count`-shard output not yet uploaded."""
    present = {name for name, _ in list_files(output)}
    needed = [f(i, count) for i in range(count) for f in (shard_file, shard_stats_file)]
    return [name for name in needed if name not in present]


def finalize_if_complete(
    output: Uri,
    count: int,
    examples_total: int,
    min_natural_stop_rate: float,
    work_dir: Path,
    produced: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Merge and write the manifest when all shards are done; the merged stats, or None if some are not."""
    if missing_parts(output, count):
        return None
    local = work_dir / "complete-output"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    records: list[Body] = []
    for index in range(count):
        for name in (shard_file(index, count), shard_stats_file(index, count)):
            store_for(output).get_file(output.join(name), local / name)
        text = (local / shard_file(index, count)).read_text(encoding="utf-8")
        records += [json.loads(line) for line in text.splitlines() if line.strip()]
    _check_complete(records, examples_total, output)
    stats = {**compute_stats(records, examples_total, min_natural_stop_rate), "shards": count}
    (local / STATS_FILE).write_text(to_json(stats, indent=1, sort_keys=True) + "\n")
    store_for(output).put_file(local / STATS_FILE, output.join(STATS_FILE))
    _, raw = Manifest.build(local, {**_manifest_metadata(records, count), "producedBy": produced})
    write_bytes(raw, output.join(MANIFEST))
    return stats


def _check_complete(records: list[Body], examples_total: int, output: Uri) -> None:
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids) or len(ids) != examples_total:
        raise PermanentError(
            f"{output}: the shard files hold {len(ids)} records ({len(set(ids))} distinct IDs) for "
            f"{examples_total} inputs; they were written for another input or shard count. Remove them "
            "or use a fresh output URI"
        )


def _manifest_metadata(records: list[Body], count: int) -> dict[str, Any]:
    first = records[0]["metadata"] if records else {}
    return {
        "kind": "teacher-outputs",
        "teacherModel": first.get("teacher_model"),
        "generationParams": first.get("generation_params"),
        "shards": count,
        "examples": len(records),
    }
