"""The local executor's pure parts: pipeline loading, state file, progress parsing, config digests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from metaspec.api import TeacherGeneration, TrainingRun
from metaspec.artifacts import MANIFEST, upload_dir
from metaspec.local import demo_bench
from metaspec.local.context import Context, RunOptions
from metaspec.local.display import parse_progress_line, render_table
from metaspec.local.jobs import config_digest, output_complete
from metaspec.local.loading import PipelineError, link_claims, load_pipeline
from metaspec.local.state import State, StateLock, StateLocked, load_state, save_state
from metaspec.pipeline import resolve

REPO = Path(__file__).resolve().parents[3]

TRAINING = """
apiVersion: metaspec.dev/v1alpha1
kind: TrainingRun
metadata: {name: base}
spec:
  baseModel: {uri: s3://bkt/model}
  dataset: {uri: builtin://train}
  output: {uri: s3://bkt/out}
"""
GENERATION = """
apiVersion: metaspec.dev/v1alpha1
kind: TeacherGeneration
metadata: {name: teacher}
spec:
  model: {from: {trainingRun: base}}
  dataset: {uri: builtin://prompts}
  output: {uri: s3://bkt/teacher}
  engine: transformers
"""


def write(tmp_path: Path, *docs: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text("---\n".join(docs))
    return path


def test_pipeline_is_ordered_by_references(tmp_path: Path) -> None:
    resources = load_pipeline(write(tmp_path, GENERATION, TRAINING))
    assert [r.metadata.name for r in resources] == ["base", "teacher"]


@pytest.mark.parametrize("example", ["pipeline.yaml", "pipeline-local.yaml"])
def test_examples_load(example: str) -> None:
    kinds = [r.kind for r in load_pipeline(REPO / "examples" / example)]
    assert sorted(kinds) == ["SpecServe", "TeacherGeneration", "TrainingRun", "TrainingRun"]


def test_invalid_resource_names_document_and_field(tmp_path: Path) -> None:
    bad = TRAINING.replace("uri: s3://bkt/out", "uri: ftp://nope")
    with pytest.raises(PipelineError, match=r"(?s)document 2 \(TrainingRun base\).*spec\.output\.uri"):
        load_pipeline(write(tmp_path, GENERATION, bad))


def test_duplicates_and_cycles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="defined twice"):
        load_pipeline(write(tmp_path, TRAINING, TRAINING))
    # base trains on teacher's outputs while teacher generates with base's model
    cyclic = TRAINING.replace("dataset: {uri: builtin://train}", "dataset: {from: {teacherGeneration: teacher}}")
    with pytest.raises(PipelineError, match="cycle"):
        load_pipeline(write(tmp_path, cyclic, GENERATION))


def test_bad_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("kind: [unclosed")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_pipeline(path)
    with pytest.raises(PipelineError, match="does not exist"):
        load_pipeline(tmp_path / "missing.yaml")


def test_state_round_trip_and_lock(tmp_path: Path) -> None:
    state = State(pipeline="p.yaml")
    r = state.resource("TrainingRun", "base")
    r.status = {"phase": "Succeeded", "metrics": {"evalLoss": 1.5}}
    r.config_digest = "abc"
    save_state(tmp_path, state)
    again = load_state(tmp_path)
    assert again.resources["TrainingRun/base"].status["metrics"]["evalLoss"] == 1.5
    assert again.resources["TrainingRun/base"].config_digest == "abc"
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write leaves no temporary file"
    with StateLock(tmp_path), pytest.raises(StateLocked, match="in use"), StateLock(tmp_path):
        pass


def test_progress_from_json_log_lines() -> None:
    progress: dict = {}
    parse_progress_line(json.dumps({"msg": "training: 40 steps", "total_steps": 40}), progress)
    assert progress["total"] == 40 and "done" not in progress
    line = json.dumps({"msg": "step", "level": "INFO", "step": 7, "totalSteps": 40, "loss": 2.5, "lr": 1e-4})
    assert parse_progress_line(line, progress)
    assert (progress["done"], progress["total"], progress["unit"]) == (7, 40, "steps")
    assert progress["metrics"] == {"loss": 2.5, "lr": 1e-4}
    parse_progress_line(json.dumps({"msg": "gen", "examples_done": 3, "examples_total": 9}), progress)
    assert (progress["done"], progress["total"], progress["unit"]) == (3, 9, "examples")
    assert parse_progress_line("plain text line", progress) and progress["message"] == "plain text line"


def test_config_digest_follows_inputs(tmp_path: Path) -> None:
    from metaspec.pipeline import Resolved

    generation = load_pipeline(write(tmp_path, TRAINING, GENERATION))[1]
    assert isinstance(generation, TeacherGeneration)
    one = {"spec.model": Resolved("s3://bkt/out/merged", "d1")}
    two = {"spec.model": Resolved("s3://bkt/out/merged", "d2")}
    assert config_digest(resolve(generation, one), one) != config_digest(resolve(generation, two), two)
    assert config_digest(resolve(generation, one), one) == config_digest(resolve(generation, one), one)


def test_table_renders_every_resource() -> None:
    from rich.console import Console

    state = State()
    state.resource("TrainingRun", "base").status = {"phase": "Running"}
    state.resource("TrainingRun", "base").progress = {"done": 3, "total": 10, "unit": "steps"}
    state.resource("SpecServe", "spec").status = {"phase": "Waiting", "message": "TrainingRun 'base' is Running"}
    console = Console(width=200, record=True)
    console.print(render_table(state))
    text = console.export_text()
    assert "TrainingRun/base" in text and "3/10 steps" in text and "Waiting" in text


def test_a_damaged_stage_output_is_not_reused(tmp_path: Path) -> None:
    """A finished stage is reused only while its output verifies; a damaged one loses its manifest,
    so the stage runs again (and rewrites what is missing) instead of every consumer failing."""
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "shard-00000-of-00001.jsonl").write_text('{"id": "a"}\n')
    upload_dir(out, out)
    body = yaml.safe_load(
        GENERATION.replace("s3://bkt/teacher", str(out)).replace("{from: {trainingRun: base}}", "{uri: s3://bkt/m}")
    )
    resource = TeacherGeneration.model_validate(body)
    ctx = Context(RunOptions(state_dir=tmp_path / "state"))
    ctx.resources = [resource]
    ctx.state.resource("TeacherGeneration", "teacher").status = {"phase": "Succeeded", "outputUri": str(out)}
    assert output_complete(ctx, resource)
    (out / "shard-00000-of-00001.jsonl").write_text('{"id": "b"}\n')
    assert not output_complete(ctx, resource)
    assert not (out / MANIFEST).exists()


def test_benchmark_verdict_compares_the_served_policy_with_target_only() -> None:
    def policy(tokens_per_second: float, identical: bool = True) -> dict:
        return {"tokensPerSecond": tokens_per_second, "identicalToTargetOnly": identical}

    results = {"specServe": "s", "policy": "always", "maxSpeculativeTokens": 3}
    faster = {**results, "policies": {"never": policy(10.0), "always": policy(15.0)}}
    assert demo_bench.verdict(faster) == (
        "s with its own policy (always, k = 3) decodes at 1.50x the tokens/s of target-only decoding: faster; "
        "output identical to target-only."
    )
    slower = {**results, "policies": {"never": policy(10.0), "always": policy(5.0, identical=False)}}
    assert "0.50x" in demo_bench.verdict(slower) and ": NOT faster;" in demo_bench.verdict(slower)
    assert "output DIFFERENT from target-only" in demo_bench.verdict(slower)
    level = {**results, "policies": {"never": policy(16.5), "always": policy(16.53)}}  # 1.002x
    assert "1.00x" in demo_bench.verdict(level) and ": NOT faster;" in demo_bench.verdict(level)
    assert "not measured" in demo_bench.verdict({**results, "policies": {"never": policy(10.0)}})


def test_model_cache_claim_is_a_host_folder_like_any_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`storage.modelCache.claimName` needs a `--claim` folder, which its stages get as their model cache;
    without one a stage uses `$METASPEC_MODEL_CACHE` or `models/` in the cache folder; scratch stays apart."""
    cached = TRAINING.replace(
        "output: {uri: s3://bkt/out}", "output: {uri: s3://bkt/out}\n  storage: {modelCache: {claimName: mc}}"
    )
    resources = load_pipeline(write(tmp_path, cached, GENERATION))
    ctx = Context(RunOptions(tmp_path / "state"))
    with pytest.raises(PipelineError, match=r"mc \(used by TrainingRun base\).*storage\.modelCache\.claimName"):
        link_claims(resources, {}, ctx.claims_dir)
    link_claims(resources, {"mc": tmp_path}, ctx.claims_dir)
    monkeypatch.delenv("METASPEC_MODEL_CACHE", raising=False)
    monkeypatch.setenv("METASPEC_CACHE", str(tmp_path / "scratch"))
    trainer, teacher = (ctx.stage_env(r, tmp_path / "summary.json") for r in resources)
    assert Path(trainer["METASPEC_MODEL_CACHE"]).resolve() == tmp_path.resolve()
    assert teacher["METASPEC_MODEL_CACHE"] == str(tmp_path / "scratch" / "models")
    assert trainer["METASPEC_CACHE"] == teacher["METASPEC_CACHE"] == str(tmp_path / "scratch")


def test_training_processes_follow_the_run_within_the_visible_gpus(tmp_path: Path) -> None:
    """`--nproc-per-node` wins; else the run's gpus × nodes, at most the GPUs this machine shows (1 on CPU)."""
    body = yaml.safe_load(TRAINING)
    body["spec"]["resources"] = {"gpus": 2, "nodes": 2}
    body["spec"]["anil"] = {"tasksPerBatch": 4}
    run = TrainingRun.model_validate(body)
    assert Context(RunOptions(state_dir=tmp_path, device="cpu")).training_processes(run) == 1
    assert Context(RunOptions(state_dir=tmp_path, device="cpu", nproc_per_node=2)).training_processes(run) == 2


def test_benchmark_summary_counts_each_proposers_acceptance() -> None:
    """With a draft behind prompt lookup the responses say which proposals lookup made: the summary gives
    lookup's acceptance and the draft model's apart; without lookup, the draft's alone."""

    def request(proposed: int, accepted: int, looked_up: int, looked_up_accepted: int) -> dict:
        return {
            "completionTokens": 10,
            "seconds": 1.0,
            "route": "speculative",
            "proposedTokens": proposed,
            "acceptedTokens": accepted,
            "lookupProposedTokens": looked_up,
            "lookupAcceptedTokens": looked_up_accepted,
        }

    both = demo_bench.summarize([request(20, 8, 10, 6), request(10, 1, 0, 0)])
    assert both["acceptanceRate"] == 9 / 30 and both["lookupAcceptanceRate"] == 6 / 10
    assert both["draftAcceptanceRate"] == 3 / 20
    alone = demo_bench.summarize([request(20, 8, 0, 0)])
    assert alone["lookupAcceptanceRate"] is None and alone["draftAcceptanceRate"] == 8 / 20
