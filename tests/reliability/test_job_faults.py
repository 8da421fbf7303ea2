"""Job faults: killed trainers and shards, corrupted checkpoints, S3 outages, and
artifacts without a manifest — against the real `metaspec train`/`metaspec generate` commands, the
real S3 server and the tiny random Llama.

The kill/resume trials are `bench/reliability_jobs.py`'s (which runs them many times); these tests run
one seeded trial of each. Already covered elsewhere and not repeated here: an in-process SIGTERM and
resume, a bit-rotted optimizer state (tests/integration/trainer/test_trainer_resume.py), one SIGKILLed
shard resumed by a new pod (tests/integration/generator/test_gen_cli.py), manifests and checksums of
the artifact layer itself (tests/integration/artifacts/test_s3.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from reliability_helpers import REPO, load

from metaspec.artifacts import (
    MANIFEST,
    IncompleteArtifact,
    S3Store,
    Uri,
    download_dir,
    list_files,
    read_bytes,
    upload_dir,
    upload_file,
    write_bytes,
)
from metaspec.runtime import EXIT_PERMANENT, EXIT_TRANSIENT, exit_code_for

bench = load(REPO / "bench" / "reliability_jobs.py")
trainer_helpers = load(REPO / "tests" / "integration" / "trainer" / "trainer_helpers.py")


@pytest.fixture(scope="module")
def setup(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model, a training set, an evaluation set and prompts, as the benchmark builds them."""
    root = tmp_path_factory.mktemp("job-faults")
    train = trainer_helpers.write_dataset(root / "train.jsonl", 8)
    evaluation = trainer_helpers.write_dataset(root / "eval.jsonl", 1, tag="eval", offset=100)
    return bench.Setup(tiny_llama, train, evaluation, bench.write_prompts(root / "prompts.jsonl"), root)


@pytest.fixture(scope="module")
def reference(setup, s3) -> str:
    """An uninterrupted run: every faulted run must end exactly where it ends."""
    return bench.reference_run(setup, "s3://metaspec-test/job-faults-reference")


def test_trainer_killed_then_terminated_resumes_from_newest_complete_checkpoint(setup, reference, s3_prefix):
    """SIGKILL (no warning) at one seeded step, SIGTERM (checkpoint, exit 75) at a later one; each
    restart resumes from the newest checkpoint whose manifest was written, and the run ends with the
    uninterrupted run's history and metrics."""
    trial = bench.trainer_trial(setup, f"{s3_prefix}/out", reference, seed=8, signals=[signal.SIGKILL, signal.SIGTERM])

    killed, terminated = trial.stops
    assert killed["signal"] == "SIGKILL" and killed["exitCode"] == -signal.SIGKILL
    assert terminated["signal"] == "SIGTERM" and terminated["exitCode"] == EXIT_TRANSIENT
    assert "(SIGTERM); checkpoint written" in terminated["message"]
    for stop in trial.stops:
        assert stop["expectedResume"] is not None and stop["resumedFrom"] == stop["expectedResume"], stop
    assert terminated["resumedFrom"] >= terminated["afterStep"], "SIGTERM's own checkpoint was not the newest"
    assert trial.final_exit == 0 and trial.mismatches == [], trial.mismatches


def copy_artifact(source: str, dest: str, scratch: Path) -> None:
    download_dir(source, scratch)
    upload_dir(scratch, dest, metadata=json.loads(read_bytes(Uri.of(source).join(MANIFEST)))["metadata"])


def test_corrupt_and_half_written_checkpoints_are_skipped_never_loaded(setup, reference, s3_prefix, tmp_path):
    """Checkpoints 1–5 of a run that died after step 5; the newest three are damaged three ways:
    no manifest (the upload was cut), a truncated safetensors file, a manifest whose sha256 does not
    match. The restart must skip all three, resume from step 2, and still end like the reference."""
    out = Uri.of(f"{s3_prefix}/out")
    for step in range(1, 6):
        copy_artifact(
            f"{reference}/checkpoints/step-{step}", str(out.join(f"checkpoints/step-{step}")), tmp_path / str(step)
        )
    S3Store().delete(out.join("checkpoints/step-5", MANIFEST))
    weights = out.join("checkpoints/step-4/trainable.safetensors")
    write_bytes(read_bytes(weights)[:100], weights)
    manifest_uri = out.join("checkpoints/step-3", MANIFEST)
    manifest = json.loads(read_bytes(manifest_uri))
    manifest["files"]["state.json"]["sha256"] = "0" * 64
    write_bytes(json.dumps(manifest).encode(), manifest_uri)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(bench.trainer_config(setup, str(out))))

    run = bench.run_trainer(config, tmp_path / "work")

    assert run.returncode == 0, run.stderr[-3000:]
    skipped = {
        re.search(r"checkpoints/(step-\d+)", line["msg"]).group(1): line["msg"]
        for line in run.logs
        if line["msg"].startswith("skipping checkpoint")
    }
    assert set(skipped) == {"step-5", "step-4", "step-3"}, skipped
    assert "no _manifest.json" in skipped["step-5"]
    assert "trainable.safetensors does not match its manifest" in skipped["step-4"]
    assert "state.json does not match its manifest" in skipped["step-3"]
    assert run.resumed_from == 2
    assert bench.differences(str(out), reference) == []


class FlakyEndpoint:
    """A TCP forwarder in front of the real S3 server that can go down (new connections refused, open
    ones cut, as when the server process dies) and come back on the same port."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> FlakyEndpoint:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                _close(self._listener)  # shutdown() first: a bare close() does not wake a blocked accept()
                self._listener = None
            for conn in self._open:
                _close(conn)
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: down
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    _close(sink)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def outage_env(endpoint: FlakyEndpoint, summary: Path, retry_seconds: float) -> dict[str, str]:
    env = bench.component_env(summary)
    env.update(AWS_ENDPOINT_URL=endpoint.url, METASPEC_S3_RETRY_SECONDS=str(retry_seconds))
    return env


def test_s3_outage_within_the_window_is_survived_and_beyond_it_is_a_transient_failure(
    setup, reference, s3, s3_prefix, tmp_path
):
    """S3 goes away twice while the trainer runs: for 1.5 s after step 1 (within the 4 s retry window:
    retried, nothing lost) and for good after step 4 (bounded retries, then exit 75 naming the
    endpoint). With S3 back, the next attempt resumes from the newest complete checkpoint and ends
    like the uninterrupted run."""
    endpoint = FlakyEndpoint(s3.endpoint).up()
    out = f"{s3_prefix}/out"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(bench.trainer_config(setup, out)))
    back = threading.Timer(1.5, endpoint.up)

    def brief_outage(_):
        endpoint.down()
        back.start()

    def lasting_outage(_):
        back.join()
        endpoint.down()

    env = outage_env(endpoint, tmp_path / "work-summary.json", retry_seconds=4)
    started = time.monotonic()
    failed = bench.run_trainer(config, tmp_path / "work", [(1, brief_outage), (4, lasting_outage)], env=env)

    assert failed.returncode == EXIT_TRANSIENT, failed.stderr[-3000:]
    assert failed.summary["errorKind"] == "transient" and failed.summary["reason"] == "Unreachable"
    assert f"cannot reach S3 endpoint {endpoint.url}" in failed.summary["message"]
    assert "gave up after" in failed.summary["message"] and "METASPEC_S3_RETRY_SECONDS" in failed.summary["message"]
    assert time.monotonic() - started < 120
    messages = [line["msg"] for line in failed.logs]
    retried = [i for i, m in enumerate(messages) if m.startswith(f"cannot reach S3 endpoint {endpoint.url}")]
    checkpoints = [i for i, m in enumerate(messages) if m.startswith("checkpoint ")]
    assert retried and checkpoints, messages
    assert any(retried[0] < c for c in checkpoints), "nothing was written after the brief outage"
    assert len(retried) <= 12, "retries must be bounded"
    newest = bench.newest_complete_checkpoint(out)
    assert newest is not None and newest >= 3
    endpoint.up()
    resumed = bench.run_trainer(config, tmp_path / "work-2", env=outage_env(endpoint, tmp_path / "s2.json", 4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.resumed_from == newest
    assert bench.differences(out, reference) == []
    endpoint.down()


def test_killed_shard_loses_and_duplicates_nothing(setup, s3_prefix):
    """A shard SIGKILLed twice: restarted first as a new pod (from its uploaded partial file), then on
    the same volume (from its local file), then finished; the output, read back through its manifest,
    holds every prompt ID exactly once."""
    trial = bench.shard_trial(setup, f"{s3_prefix}/out", seed=18, shards=1)

    assert [(k["records"], k["newPod"]) for k in trial.kills] == [(6, True), (8, False)]
    assert all(k["killed"] for k in trial.kills), trial.kills
    assert trial.exits == [0]
    assert (trial.missing, trial.duplicated, trial.leftovers) == (0, 0, [])


def test_a_partial_left_by_a_kill_after_the_shard_upload_is_removed(setup, s3_prefix, tmp_path):
    """Found by the benchmark (seed 12): a shard killed after uploading its shard file but before
    deleting its partial left `.partial/…` behind for good, since the restart saw the shard done."""
    from metaspec.api import TeacherGeneration
    from metaspec.generator import Options, run_shard

    out = Uri.of(f"{s3_prefix}/out")
    spec = TeacherGeneration.model_validate(bench.generator_config(setup, str(out), shards=2, seed=0)).spec
    options = Options(tmp_path / "work", tmp_path / "cache", device="cpu", upload_every=0, progress=False)
    run_shard(spec, 1, 2, options)
    partial = out.join(".partial/shard-00001-of-00002.jsonl")
    write_bytes(read_bytes(out.join("shard-00001-of-00002.jsonl")), partial)  # the delete that never happened

    again = run_shard(spec, 1, 2, options)

    assert again.generated == 0
    assert list_files(out.join(".partial")) == []


# ---- artifacts without a complete manifest are never consumed ----


@pytest.fixture
def unfinished(s3_prefix: str, tiny_llama: Path, setup) -> dict[str, str]:
    """A model prefix and a teacher-output prefix whose writers died before the manifest."""
    model, teacher = f"{s3_prefix}/model", f"{s3_prefix}/teacher"
    upload_dir(tiny_llama, model)
    S3Store().delete(Uri.of(model).join(MANIFEST))
    upload_file(setup.train, f"{teacher}/shard-00000-of-00002.jsonl")
    return {"model": model, "teacher": teacher}


def refused(error: BaseException, uri: str) -> None:
    assert isinstance(error, IncompleteArtifact) and exit_code_for(error) == EXIT_PERMANENT
    assert uri in str(error) and "no _manifest.json" in str(error)


def test_trainer_refuses_a_dataset_or_model_without_manifest(setup, unfinished, tmp_path):
    from metaspec.trainer.run import train

    for base, dataset, missing in (
        (setup.model, unfinished["teacher"], unfinished["teacher"]),
        (unfinished["model"], setup.train, unfinished["model"]),
    ):
        spec = trainer_helpers.tiny_anil_spec(base, dataset, setup.evaluation, str(tmp_path / "out"))
        run = trainer_helpers.training_run(spec)
        with pytest.raises(IncompleteArtifact) as caught:
            train(run, work_dir=tmp_path / "work", device="cpu")
        refused(caught.value, missing)
        assert not (tmp_path / "out").exists()


def test_generator_refuses_a_model_without_manifest(setup, unfinished, s3_prefix, tmp_path):
    from metaspec.api import TeacherGeneration
    from metaspec.generator import Options, run_shard

    body = bench.generator_config(setup, f"{s3_prefix}/generated", shards=1, seed=0)
    body["spec"]["model"] = {"uri": unfinished["model"]}
    spec = TeacherGeneration.model_validate(body).spec
    with pytest.raises(IncompleteArtifact) as caught:
        run_shard(spec, 0, 1, Options(tmp_path / "work", tmp_path / "cache", device="cpu", progress=False))
    refused(caught.value, unfinished["model"])


def test_server_refuses_a_draft_without_manifest(unfinished, tmp_path):
    import torch

    from metaspec.api.sources import ModelSource
    from metaspec.server.engine.loader import load_model

    with pytest.raises(IncompleteArtifact) as caught:
        load_model(ModelSource(uri=unfinished["model"]), "draft", tmp_path, torch.device("cpu"), torch.float32)
    refused(caught.value, unfinished["model"])
