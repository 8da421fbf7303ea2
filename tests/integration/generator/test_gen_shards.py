"""Sharded generation into the real S3 server: coverage, resume after a failure, merge, manifest.

The failure is injected by wrapping the real engine's `generate` so it raises after one batch (the
subprocess SIGKILL variant is in test_gen_cli.py); everything else is real: the tiny random Llama,
the transformers engine, S3 and the manifest reader the trainer uses.
"""

from __future__ import annotations

import json
import shutil

import pytest

from metaspec.api import TeacherGeneration
from metaspec.artifacts import MANIFEST, Uri, read_bytes, read_manifest
from metaspec.datasets import read_records
from metaspec.generator import Options, run_shard
from metaspec.generator.engines.transformers import TransformersEngine
from metaspec.runtime import load_config

SHARDS = 3


class Preempted(Exception):
    pass


def fail_after_first_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = TransformersEngine.generate
    calls = []

    def generate(self, batch):
        if calls:
            raise Preempted("node drained")
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(TransformersEngine, "generate", generate)


def test_shards_resume_merge_and_read_back(
    tmp_path, s3_prefix, tiny_llama, make_config, write_prompts, monkeypatch
) -> None:
    ids = write_prompts(tmp_path / "prompts.jsonl", 17)
    config = make_config(
        tiny_llama,
        tmp_path / "prompts.jsonl",
        s3_prefix,
        shards=SHARDS,
        batchSize=2,
        sampling={"temperature": 0.0, "maxTokens": 6, "repetitionPenalty": 1.2},
    )
    spec = load_config(config, TeacherGeneration).spec
    options = Options(tmp_path / "work", tmp_path / "cache", device="cpu", upload_every=0, progress=False)

    with monkeypatch.context() as patch:
        fail_after_first_batch(patch)
        with pytest.raises(Preempted):
            run_shard(spec, 0, SHARDS, options)
    partial = read_bytes(Uri.of(s3_prefix).join(".partial/shard-00000-of-00003.jsonl")).decode().splitlines()
    assert len(partial) == 2  # the first batch survived the failure
    shutil.rmtree(options.work_dir)  # a new pod: only what was uploaded survives

    first = run_shard(spec, 0, SHARDS, options)
    assert first.generated == 6 - 2 and first.merged is None
    final = {r["id"]: r for r in first.records}
    for line in partial:  # kept as written (generation_time included): not generated again
        assert final[json.loads(line)["id"]] == json.loads(line)
    assert run_shard(spec, 1, SHARDS, options).merged is None
    last = run_shard(spec, 2, SHARDS, options)
    assert last.merged is not None and last.merged["examplesDone"] == 17

    out = Uri.of(s3_prefix)
    manifest = read_manifest(out)
    expected_files = {f"shard-{i:05d}-of-00003.jsonl" for i in range(3)} | {
        f"stats-shard-{i:05d}-of-00003.json" for i in range(3)
    }
    assert set(manifest.files) == expected_files | {"stats.json"}
    assert manifest.metadata["examples"] == 17 and manifest.metadata["shards"] == 3
    records, _ = read_records(s3_prefix)  # the trainer's reader: manifest-checked, outputs required
    assert sorted(r.id for r in records) == ids  # every input exactly once
    meta = records[0].model_extra["metadata"]
    assert set(meta) == {
        "teacher_model",
        "generation_params",
        "num_tokens_generated",
        "finish_reason",
        "generation_time",
    }
    assert meta["teacher_model"] == str(tiny_llama) and meta["generation_params"]["repetition_penalty"] == 1.2
    stats = json.loads(read_bytes(out.join("stats.json")))
    assert stats["examplesDone"] == stats["examplesTotal"] == 17 and stats["shards"] == 3

    # Idempotent: a re-run of a finished shard generates nothing and rewrites the same manifest.
    raw = read_bytes(out.join(MANIFEST))
    again = run_shard(spec, 1, SHARDS, options)
    assert again.generated == 0 and again.merged == last.merged
    assert read_bytes(out.join(MANIFEST)) == raw

    # Greedy outputs do not depend on sharding, batching or the restart.
    single = make_config(
        tiny_llama,
        tmp_path / "prompts.jsonl",
        f"{s3_prefix}-single",
        batchSize=5,
        sampling={"temperature": 0.0, "maxTokens": 6, "repetitionPenalty": 1.2},
    )
    alone = run_shard(load_config(single, TeacherGeneration).spec, 0, 1, options)
    assert {r["id"]: r["output"] for r in alone.records} == {r.id: r.output for r in records}


def test_n_outputs_per_prompt_each_with_its_own_draw(tmp_path, s3_prefix, tiny_llama, make_config, write_prompts):
    """`sampling.n` writes `<id>#<i>` records, spread over the shards like any other output; each draws
    with its own seed, so raising n adds outputs and keeps the ones a smaller n wrote."""
    ids = write_prompts(tmp_path / "prompts.jsonl", 5)
    options = Options(tmp_path / "work", tmp_path / "cache", device="cpu", upload_every=0, progress=False)
    sampling = {"temperature": 1.0, "maxTokens": 8, "repetitionPenalty": 1.0}

    def generate(n: int, shards: int) -> dict[str, str]:
        prefix = f"{s3_prefix}-n{n}"
        config = make_config(
            tiny_llama, tmp_path / "prompts.jsonl", prefix, shards=shards, batchSize=4, sampling={**sampling, "n": n}
        )
        spec = load_config(config, TeacherGeneration).spec
        for index in range(shards):
            last = run_shard(spec, index, shards, options)
        assert last.merged is not None and last.merged["examplesDone"] == last.merged["examplesTotal"] == 5 * n
        records, _ = read_records(prefix)  # the trainer's reader
        return {r.id: r.output for r in records}

    three = generate(3, shards=2)
    assert sorted(three) == sorted(f"{i}#{s}" for i in ids for s in range(3))
    assert all(len({three[f"{i}#{s}"] for s in range(3)}) > 1 for i in ids)  # draws, not copies
    two = generate(2, shards=1)
    assert two == {key: three[key] for key in two}
