"""`metaspec local run` end to end: a miniature pipeline (a tiny random Llama read from a host folder
given as a `pvc://` claim, tiny step counts) through the real components as subprocesses, against a
real S3 server, then the report; a second run reuses the finished stages; a run killed during training
resumes from the trainer's checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaspec.local.state import load_state, pid_alive

pytestmark = pytest.mark.timeout(900)

TINY_PIPELINE = """
apiVersion: metaspec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: tiny-anil}}
spec:
  method: anil-maml
  baseModel: {{uri: {base}}}
  dataset: {{uri: builtin://train, maxExamples: 64}}
  evaluation: {{uri: builtin://eval, maxExamples: 8}}
  lora: {{r: 4, alpha: 8}}
  anil: {{supportSize: 2, querySize: 2}}
  optimization: {{maxSteps: 4, maxSeqLength: 96, evalSteps: 2, checkpointSteps: 2, earlyStoppingPatience: 0}}
  output: {{uri: {prefix}/tiny-anil}}
---
apiVersion: metaspec.dev/v1alpha1
kind: TeacherGeneration
metadata: {{name: tiny-teacher}}
spec:
  model: {{from: {{trainingRun: tiny-anil}}}}
  dataset: {{uri: builtin://prompts, maxExamples: 6}}
  output: {{uri: {prefix}/tiny-teacher}}
  engine: transformers
  sampling: {{maxTokens: 12}}
  shards: 2
  storage: {{modelCache: {{claimName: model-cache}}}}
---
apiVersion: metaspec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: tiny-draft}}
spec:
  method: causal-lm
  baseModel: {{from: {{trainingRun: tiny-anil}}}}
  draft: {{initFrom: target, numLayers: 1}}
  dataset: {{from: {{teacherGeneration: tiny-teacher}}}}
  evaluation: {{uri: builtin://eval, maxExamples: 8}}
  optimization: {{maxSteps: 4, batchSize: 2, maxSeqLength: 96, evalSteps: 2, checkpointSteps: 2}}
  output: {{uri: {prefix}/tiny-draft}}
  storage: {{modelCache: {{claimName: model-cache}}}}
---
apiVersion: metaspec.dev/v1alpha1
kind: SpecServe
metadata: {{name: tiny-spec}}
spec:
  target: {{from: {{trainingRun: tiny-anil}}}}
  draft: {{from: {{trainingRun: tiny-draft}}}}
  routing: {{policy: first-token, confidenceThreshold: 0.5, maxSpeculativeTokens: 3}}
"""


def local(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metaspec.cli", "local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def child_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the runner: a private model cache, no GPU, no S3 settings (each test adds its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "METASPEC_CACHE": str(tmp_path_factory.mktemp("cache")), "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def s3_prefix_module(s3) -> str:
    return "s3://metaspec-test/local-run"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llama: Path, s3_prefix_module: str, s3, child_env) -> tuple[Path, str]:
    """The miniature pipeline run once with --report against the test's S3 server; the base model is
    read in place from the claim `models`, a host folder (`--claim models=DIR`), and the teacher and the
    draft share the model cache of the claim `model-cache`, another host folder."""
    root = tmp_path_factory.mktemp("local-run")
    (root / "model-cache").mkdir()
    pipeline = root / "pipeline.yaml"
    base = f"pvc://models/{tiny_llama.name}"
    pipeline.write_text(TINY_PIPELINE.format(base=base, prefix=s3_prefix_module))
    state_dir = root / "state"
    result = local(
        "run", str(pipeline), "--state-dir", str(state_dir), "--s3-endpoint", s3.endpoint, "--report", "--no-serve",
        "--bench-prompts", "1", "--bench-max-tokens", "8", "--claim", f"models={tiny_llama.parent}",
        "--claim", f"model-cache={root / 'model-cache'}", env={**child_env, **s3.env},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return state_dir, result.stdout


def test_every_stage_succeeds_with_real_figures(finished_run: tuple[Path, str]) -> None:
    state_dir, _ = finished_run
    state = load_state(state_dir)
    status = {key: r.status for key, r in state.resources.items()}
    assert [status[k]["phase"] for k in ("TrainingRun/tiny-anil", "TeacherGeneration/tiny-teacher")] == [
        "Succeeded",
        "Succeeded",
    ]
    anil = status["TrainingRun/tiny-anil"]
    assert anil["metrics"]["perplexityBase"] > 1 and anil["metrics"]["perplexityMerged"] > 1
    assert anil["resolvedBaseModel"].startswith("pvc://models/")
    assert anil["artifacts"]["model"].startswith("s3://metaspec-test/local-run/tiny-anil")
    teacher = status["TeacherGeneration/tiny-teacher"]
    assert teacher["stats"]["examplesDone"] == 6 and teacher["outputUri"].endswith("tiny-teacher")
    # A random model never stops by itself: the quality gate fails, the outputs are still usable.
    quality = next(c for c in teacher["conditions"] if c["type"] == "QualityCheckPassed")
    assert quality["status"] == "False"
    draft = status["TrainingRun/tiny-draft"]
    assert draft["phase"] == "Succeeded" and draft["resolvedDataset"] == teacher["outputUri"]
    # The teacher's shards downloaded the trained model into the claim; the draft's trainer found it there.
    merged = anil["artifacts"]["model"]
    assert teacher["modelCache"] == {merged: "miss"} and draft["modelCache"] == {merged: "hit"}
    assert len(list((state_dir.parent / "model-cache").glob("*/_manifest.json"))) == 1
    assert "modelCache" not in anil  # its base is read in place from its claim
    serve = status["SpecServe/tiny-spec"]
    assert serve["target"]["uri"] == anil["artifacts"]["model"] and serve["draft"]["digest"]


def test_benchmark_covers_every_policy_with_exact_outputs(finished_run: tuple[Path, str]) -> None:
    state_dir, stdout = finished_run
    bench = json.loads((state_dir / "bench" / "demo-bench.json").read_text())
    assert set(bench["policies"]) == {"never", "always", "first-token", "per-token"}
    for policy, stats in bench["policies"].items():
        assert stats["identicalToTargetOnly"], f"{policy}: greedy output differs from target-only"
        assert stats["completionTokens"] > 0 and stats["tokensPerSecond"] > 0
    assert bench["policies"]["always"]["speculationRate"] == 1.0
    assert bench["policies"]["never"]["speculationRate"] == 0.0
    assert "demo benchmark" in stdout and "curl -s http://127.0.0.1:" in stdout
    assert (
        bench["policy"] == "first-token" and "tiny-spec with its own policy (first-token, k = 3) decodes at" in stdout
    )


def test_report_has_every_figure(finished_run: tuple[Path, str]) -> None:
    state_dir, stdout = finished_run
    report = state_dir / "report" / "report.md"
    assert f"report: {report}" in stdout
    text = report.read_text()
    for figure in (
        "loss_curves.png",
        "perplexity.png",
        "teacher_lengths_tiny-teacher.png",
        "policies.png",
        "first_token_confidence.png",
    ):
        assert f"]({figure})" in text, figure
        assert (report.parent / figure).stat().st_size > 1000, figure
    assert "| tiny-anil |" in text and "natural-stop rate 0.0%" in text


def test_second_run_reuses_finished_stages(finished_run: tuple[Path, str], tiny_llama: Path, s3, child_env) -> None:
    state_dir, _ = finished_run
    before = {k: r.attempts for k, r in load_state(state_dir).resources.items()}
    pipeline = load_state(state_dir).pipeline
    result = local(
        "run",
        pipeline,
        "--state-dir",
        str(state_dir),
        "--s3-endpoint",
        s3.endpoint,
        "--no-serve",
        "--claim",
        f"models={tiny_llama.parent}",  # the same claims as the first run: the pipeline reads its base from one
        "--claim",
        f"model-cache={state_dir.parent / 'model-cache'}",
        env={**child_env, **s3.env},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = load_state(state_dir).resources
    for key in ("TrainingRun/tiny-anil", "TeacherGeneration/tiny-teacher", "TrainingRun/tiny-draft"):
        assert after[key].attempts == before[key], f"{key} ran again"
        assert f"{key}: succeeded before with the same config; reusing" in result.stdout


KILLED_PIPELINE = """
apiVersion: metaspec.dev/v1alpha1
kind: TrainingRun
metadata: {{name: killed}}
spec:
  method: anil-maml
  baseModel: {{uri: {base}}}
  dataset: {{uri: builtin://train}}
  evaluation: {{uri: builtin://eval, maxExamples: 4}}
  lora: {{r: 4, alpha: 8}}
  anil: {{supportSize: 2, querySize: 2}}
  optimization: {{maxSteps: 30, maxSeqLength: 96, evalSteps: 30, checkpointSteps: 5, earlyStoppingPatience: 0}}
  output: {{uri: s3://metaspec/runs/killed}}
"""


def test_killed_run_resumes_from_checkpoint(tmp_path: Path, tiny_llama: Path, child_env) -> None:
    """SIGKILL the runner mid-training (embedded S3 this time): the trainer is stopped with it (and
    checkpoints, as on preemption); the next run resumes from the checkpoint instead of step 0. The kill
    lands at step 10 or later of 30: a checkpoint (every 5 steps) exists, and 20 steps remain."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(KILLED_PIPELINE.format(base=f"file://{tiny_llama}"))
    state_dir = tmp_path / "state"
    env = child_env  # no AWS_* settings: the embedded S3 server of the state directory
    runner = subprocess.Popen(
        [sys.executable, "-m", "metaspec.cli", "local", "run", str(pipeline), "--state-dir", str(state_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        trainer_pid = _wait_for_step(state_dir, runner, at_least=10)
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 60
    while pid_alive(trainer_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(trainer_pid), "the trainer outlived the killed runner"

    result = local("run", str(pipeline), "--state-dir", str(state_dir), "--no-serve", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    r = load_state(state_dir).resources["TrainingRun/killed"]
    assert r.status["phase"] == "Succeeded" and r.attempts == 2
    second_attempt = Path(r.log).read_text().split("$ ")[-1]
    assert "resum" in second_attempt.lower(), second_attempt[:2000]
    assert r.status["progress"]["step"] == 30


def test_killed_rank_fails_the_run_and_the_retry_resumes(tmp_path: Path, tiny_llama: Path, child_env) -> None:
    """`--nproc-per-node 2` on CPU: two gloo processes under torch.distributed.run. SIGKILL one of them
    (rank 1) at step 10 or later of 30: the attempt fails as a whole (the launcher stops rank 0 and
    exits 137, as the pod would) and the retry, two processes again, resumes from the last complete
    checkpoint that rank 0 wrote."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        KILLED_PIPELINE.format(base=f"file://{tiny_llama}").replace(
            "{supportSize: 2", "{tasksPerBatch: 2, supportSize: 2"
        )
    )
    state_dir, out = tmp_path / "state", tmp_path / "runner.txt"
    argv = ["local", "run", str(pipeline), "--state-dir", str(state_dir), "--nproc-per-node", "2"]
    with out.open("w") as stdout:
        runner = subprocess.Popen([sys.executable, "-m", "metaspec.cli", *argv], env=child_env, stdout=stdout)
        try:
            launcher = _wait_for_step(state_dir, runner, at_least=10)
            ranks = {env["RANK"]: pid for pid in _children(launcher) if "RANK" in (env := _environ(pid))}
            assert ranks.keys() == {"0", "1"}, ranks
            os.kill(ranks["1"], signal.SIGKILL)
            assert runner.wait(timeout=600) == 0, out.read_text()
        finally:
            runner.kill()
    assert "TrainingRun/killed: exit 137, retrying" in out.read_text()
    r = load_state(state_dir).resources["TrainingRun/killed"]
    assert r.status["phase"] == "Succeeded" and r.attempts == 2 and r.status["progress"]["step"] == 30
    second_attempt = Path(r.log).read_text().split("$ ")[-1]
    assert "--nproc-per-node 2" in second_attempt and "resum" in second_attempt.lower(), second_attempt[:2000]


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def _wait_for_step(state_dir: Path, runner: subprocess.Popen, at_least: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert runner.poll() is None, "the runner exited before it was killed"
        try:
            r = load_state(state_dir).resources.get("TrainingRun/killed")
        except ValueError:
            r = None  # mid-replace on some filesystems; the next read sees a whole file
        if r is not None and r.pid and (r.progress.get("done") or 0) >= at_least:
            return r.pid
        time.sleep(0.3)
    raise AssertionError(f"training did not reach step {at_least} within {timeout} s")


def test_stop_without_a_run_is_harmless(tmp_path: Path, child_env) -> None:
    result = local("stop", "--state-dir", str(tmp_path), env=child_env, timeout=60)
    assert result.returncode == 0 and "no `metaspec local run` is running" in result.stdout


def test_status_prints_the_last_run(finished_run: tuple[Path, str], child_env) -> None:
    state_dir, _ = finished_run
    result = local("status", "--state-dir", str(state_dir), env=child_env, timeout=60)
    assert result.returncode == 0
    assert "TrainingRun/tiny-anil" in result.stdout and "Succeeded" in result.stdout


def test_invalid_pipeline_names_the_field(tmp_path: Path, child_env) -> None:
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_text(TINY_PIPELINE.format(base="s3://metaspec-test/x", prefix="s3://metaspec-test/y").replace(
        "maxSteps: 4,", "maxSteps: -1,", 1
    ))  # fmt: skip
    result = local("run", str(pipeline), "--state-dir", str(tmp_path / "s"), env=child_env, timeout=60)
    assert result.returncode == 2
    assert "spec.optimization.maxSteps" in result.stderr and "document 1 (TrainingRun tiny-anil)" in result.stderr
    pipeline.write_text(TINY_PIPELINE.format(base="pvc://models/tiny", prefix="s3://metaspec-test/y"))
    result = local("run", str(pipeline), "--state-dir", str(tmp_path / "s"), env=child_env, timeout=60)
    assert result.returncode == 2 and "models (used by TrainingRun tiny-anil)" in result.stderr
    assert "--claim NAME=DIR" in result.stderr


VLLM_PIPELINE = """
apiVersion: metaspec.dev/v1alpha1
kind: TeacherGeneration
metadata: {{name: vllm-teacher}}
spec:
  model: {{uri: {model}}}
  dataset: {{uri: builtin://prompts, maxExamples: 2}}
  output: {{uri: s3://metaspec/runs/vllm-teacher}}
  engine: vllm
  resources: {{gpus: 0}}
"""


def test_vllm_stage_without_vllm_says_how_to_install_it(tmp_path: Path, tiny_llama: Path, child_env) -> None:
    """No vLLM environment (METASPEC_VLLM_PYTHON names no file): the stage fails with the way to get one.
    With one, the stage runs `metaspec generate` in it (tests/integration/generator/test_gen_vllm.py)."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(VLLM_PIPELINE.format(model=f"file://{tiny_llama}"))
    env = {**child_env, "METASPEC_VLLM_PYTHON": str(tmp_path / "no-such-python")}
    result = local("run", str(pipeline), "--state-dir", str(tmp_path / "state"), "--no-serve", env=env)
    assert result.returncode != 0
    status = load_state(tmp_path / "state").resources["TeacherGeneration/vllm-teacher"].status
    assert status["phase"] == "Failed" and "make vllm-venv" in status["message"], status
    assert "make vllm-venv" in result.stdout
