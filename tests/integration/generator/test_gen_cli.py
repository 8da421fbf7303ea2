"""`metaspec generate --config` end to end as a subprocess: SIGKILL midway, a new pod resumes, the last
shard completes the output in the real S3 server, the quality gate sets the exit code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from metaspec.artifacts import Uri, read_bytes, read_manifest
from metaspec.datasets import read_records
from metaspec.runtime import EXIT_QUALITY

PROMPTS = 24


def generate(
    config: Path, work: Path, summary: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    env = {
        **os.environ,
        "METASPEC_TERMINATION_MESSAGE_PATH": str(summary),
        "METASPEC_LOG_FORMAT": "plain",
        "OMP_NUM_THREADS": "1",  # see conftest.one_thread
        **(env or {}),
    }
    metaspec = Path(sys.executable).parent / "metaspec"  # the installed entry point, as in the image
    command = [str(metaspec), "generate", "--config", str(config), "--work-dir", str(work)]
    return subprocess.Popen(
        [*command, "--device", "cpu", "--upload-every", "0", "--no-progress", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_after(process: subprocess.Popen, work: Path, lines: int, timeout: float = 180) -> None:
    """SIGKILL the process once its local shard file holds at least `lines` records."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = sum(len(p.read_text().splitlines()) for p in work.rglob("shard-*.jsonl"))
        if written >= lines:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            raise AssertionError(f"the generator exited before it could be killed:\n{process.stdout.read()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the generator wrote nothing in time")


def finish(process: subprocess.Popen) -> int:
    output, _ = process.communicate(timeout=300)
    assert process.returncode in (0, EXIT_QUALITY), output
    return process.returncode


def test_killed_shard_resumes_without_duplicates_or_gaps(
    tmp_path, s3_prefix, tiny_llama, make_config, write_prompts
) -> None:
    ids = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    config = make_config(
        tiny_llama,
        tmp_path / "prompts.jsonl",
        s3_prefix,
        shards=2,
        batchSize=1,
        sampling={"temperature": 0.8, "maxTokens": 24, "seed": 3},
    )
    work, summary = tmp_path / "work", tmp_path / "summary.json"
    # shard 0 takes its index from the Indexed Job's variable
    kill_after(generate(config, work, summary, env={"JOB_COMPLETION_INDEX": "0"}), work, lines=3)
    partial = read_bytes(Uri.of(s3_prefix).join(".partial/shard-00000-of-00002.jsonl")).decode().splitlines()
    assert 2 <= len(partial) < PROMPTS // 2
    shutil.rmtree(work)  # a new pod: the local file is gone, the uploaded partial is all that is left

    assert finish(generate(config, work, summary, "--shard-index", "0")) == 0
    first = json.loads(summary.read_text())
    assert first["examplesGenerated"] == PROMPTS // 2 - len(partial)
    assert first["complete"] is False and first["stats"]["examplesDone"] == PROMPTS // 2
    assert first["modelDigest"] == read_manifest(tiny_llama).digest  # the teacher's exact weights

    # A random tiny model never ends its turn: every output hits maxTokens and the gate fails; the
    # outputs are still written and the Job succeeds (no `failOnQuality`), the summary says why.
    assert finish(generate(config, work, summary, "--shard-index", "1")) == 0
    last = json.loads(summary.read_text())
    assert last["complete"] is True and last["qualityCheckPassed"] is False
    assert last["reason"] == "QualityCheckFailed" and "minNaturalStopRate" in last["message"]
    assert last["mergedStats"]["examplesDone"] == PROMPTS and last["mergedStats"]["truncatedRate"] == 1.0
    assert last["outputUri"] == s3_prefix

    records, _ = read_records(s3_prefix)
    assert sorted(r.id for r in records) == ids  # no duplicates, no gaps
    by_id = {r.id: r.model_dump(exclude_none=True) for r in records}
    for line in partial:  # what the killed pod uploaded was kept, not generated again
        assert by_id[json.loads(line)["id"]] == json.loads(line)
    assert "stats.json" in read_manifest(s3_prefix).files
