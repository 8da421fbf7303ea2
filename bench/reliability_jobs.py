"""Job faults, many times: trainers killed and resumed, generator shards killed and restarted.

Every trial runs the real `metaspec train` / `metaspec generate` commands as subprocesses (as a pod
runs them) against a real S3 server (SeaweedFS), on a tiny random Llama with SmolLM2's tokenizer.

- trainer trial: the run is stopped 1–2 times at seeded steps, each time by SIGKILL (no warning: an
  OOM kill or a node crash) or SIGTERM (a drain or preemption: the trainer checkpoints and exits 75),
  a seeded delay after the step's log line so kills also land mid-checkpoint-upload; the work
  directory survives or not (container restart or new pod). Each restart must resume from the newest
  checkpoint whose manifest was written, and the finished run must match an uninterrupted run with
  the same seed: every history line and every final metric.
- shard trial: each shard of a TeacherGeneration is SIGKILLed 0–2 times once it has written a seeded
  number of records (all of them included: the kill then lands while it uploads, writes statistics or
  finalizes), restarted with or without its work directory, and finished. The output is read back
  the way the trainer reads it (manifest-checked) and its IDs counted: none missing, none twice.

    .venv/bin/python bench/reliability_jobs.py --trials 20 --seed 0

writes `bench/results/reliability-jobs.json`. `tests/reliability/test_job_faults.py` runs a few of
the same trials.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "reliability-jobs.json"
BUCKET = "metaspec-reliability"
PROMPTS = 12
#: Float tolerance between a resumed and an uninterrupted run (same process settings: exact in practice).
REL = 1e-6


@dataclass
class Setup:
    """What every trial shares: the tiny model, the datasets, and a scratch directory."""

    model: Path
    train: Path
    evaluation: Path
    prompts: Path
    scratch: Path


def component_env(summary: Path) -> dict[str, str]:
    """The environment of a component run: this process's (the AWS_* variables), JSON logs, one thread."""
    return {
        **os.environ,
        "METASPEC_TERMINATION_MESSAGE_PATH": str(summary),
        "METASPEC_LOG_FORMAT": "json",
        "OMP_NUM_THREADS": "1",  # small models on a shared 2-core machine: threads only wait for each other
    }


def metaspec_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "metaspec.cli", *args]


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a component's stderr (progress bars and warnings are not JSON)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


# ---- the trainer ----


def trainer_config(setup: Setup, output: str) -> dict[str, Any]:
    """A TrainingRun on the tiny model: 8 steps at most, a checkpoint after every step, evaluation every
    second step with early stopping (so resumed runs must also restore the best weights and patience)."""
    from trainer_helpers import tiny_anil_spec  # the trainer tests' run (make_setup puts it on the path)

    from metaspec.api import API_VERSION, TrainingRun

    spec = tiny_anil_spec(setup.model, setup.train, setup.evaluation, output, maxSteps=8, checkpointSteps=1)
    body = {"apiVersion": API_VERSION, "kind": "TrainingRun", "metadata": {"name": "faults"}, "spec": spec}
    return TrainingRun.model_validate(body).model_dump(by_alias=True, exclude_none=True, mode="json")


#: Something done to a running container once it has logged a given step (a signal, an S3 outage).
Action = Callable[[subprocess.Popen], None]


@dataclass
class Run:
    """One container run: its exit code, JSON log lines, termination summary, and the steps after
    whose log lines its actions were taken."""

    returncode: int
    logs: list[dict[str, Any]]
    summary: dict[str, Any]
    stderr: str
    acted_after: list[int] = field(default_factory=list)

    @property
    def resumed_from(self) -> int | None:
        return next((line["step"] for line in self.logs if line["msg"].startswith("resumed from ")), None)


def send(sig: signal.Signals, delay: float) -> Action:
    """Send `sig` after `delay` seconds (a seeded delay moves the kill across the step and its checkpoint)."""

    def act(process: subprocess.Popen) -> None:
        time.sleep(delay)
        process.send_signal(sig)

    return act


def run_trainer(
    config: Path, work: Path, actions: list[tuple[int, Action]] = (), env: dict[str, str] | None = None
) -> Run:
    """`metaspec train`; each `(step, action)` is taken at the log line of `step` (or of the first
    later step, when the run resumed past it)."""
    summary = work.parent / f"{work.name}-summary.json"
    summary.unlink(missing_ok=True)
    command = metaspec_command("train", "--config", str(config), "--work-dir", str(work), "--device", "cpu")
    process = subprocess.Popen(
        command, env=env or component_env(summary), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    pending, acted, lines = sorted(actions, key=lambda a: a[0]), [], []
    for line in process.stderr:
        lines.append(line)
        logged = log_lines(line)
        if pending and logged and "loss" in logged[0] and logged[0]["step"] >= pending[0][0]:
            pending.pop(0)[1](process)
            acted.append(logged[0]["step"])
    process.wait(timeout=600)
    result = json.loads(summary.read_text()) if summary.is_file() else {}
    stderr = "".join(lines)
    return Run(process.returncode, log_lines(stderr), result, stderr, acted)


def newest_complete_checkpoint(output: str) -> int | None:
    """The newest step whose checkpoint manifest exists: written last, so its files are all there."""
    from metaspec.artifacts import MANIFEST, Uri, list_files

    steps = [
        int(rel.split("/")[0][5:])
        for rel, _ in list_files(Uri.of(output).join("checkpoints"))
        if rel.endswith(f"/{MANIFEST}")
    ]
    return max(steps, default=None)


def history(output: str) -> list[dict[str, Any]]:
    from metaspec.artifacts import Uri, read_bytes

    text = read_bytes(Uri.of(output).join("history.jsonl")).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def final_metrics(output: str) -> dict[str, Any]:
    from metaspec.artifacts import Uri, read_bytes

    return json.loads(read_bytes(Uri.of(output).join("metrics.json")))["metrics"]


def differences(output: str, reference: str) -> list[str]:
    """How a finished run differs from the uninterrupted reference (empty: the same)."""
    import math

    problems = []
    got, want = history(output), history(reference)
    if [r["step"] for r in got] != [r["step"] for r in want]:
        return [f"steps {[r['step'] for r in got]} vs {[r['step'] for r in want]}"]
    for a, b in zip(got, want, strict=True):
        for key in ("loss", "eval_loss", "lr", "grad_norm"):
            if (key in a) != (key in b) or (key in a and not math.isclose(a[key], b[key], rel_tol=REL)):
                problems.append(f"step {a['step']} {key}: {a.get(key)} vs {b.get(key)}")
    ours, theirs = final_metrics(output), final_metrics(reference)
    for key, value in theirs.items():
        if key == "tokensPerSecond" or value is None:
            continue
        if ours.get(key) is None or not math.isclose(ours[key], value, rel_tol=REL, abs_tol=1e-12):
            problems.append(f"metric {key}: {ours.get(key)} vs {value}")
    return problems


@dataclass
class TrainerTrial:
    seed: int
    stops: list[dict[str, Any]] = field(default_factory=list)  # signal, step, exit code, resume expected/actual
    final_exit: int | None = None
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def survived(self) -> bool:
        return self.final_exit == 0 and not self.mismatches and not self.lost

    @property
    def lost(self) -> int:
        """Resumes that skipped a complete checkpoint (or loaded one that was not complete)."""
        return sum(1 for s in self.stops if s["resumedFrom"] != s["expectedResume"])


def trainer_trial(
    setup: Setup, output: str, reference: str, seed: int, signals: list[signal.Signals] | None = None
) -> TrainerTrial:
    """Stop a training run at seeded points, restart it each time, and compare the end with `reference`."""
    rng = random.Random(seed)
    started = time.monotonic()
    root = setup.scratch / f"trainer-{seed}-{rng.getrandbits(32):08x}"
    root.mkdir(parents=True)
    config = root / "config.json"
    config.write_text(json.dumps(trainer_config(setup, output)))
    signals = signals or [rng.choice([signal.SIGKILL, signal.SIGTERM]) for _ in range(rng.randint(1, 2))]
    targets = sorted(rng.sample(range(1, 6), len(signals)))  # early stopping ends these runs at step 6
    trial = TrainerTrial(seed)
    work = root / "work-0"
    for n, (sig, step) in enumerate(zip(signals, targets, strict=True)):
        run = run_trainer(config, work, [(step, send(sig, rng.uniform(0, 0.15)))])
        _record_resume(trial, run)
        new_pod = rng.random() < 0.5  # else the container restarts on the same volume
        if new_pod:
            work = root / f"work-{n + 1}"
        finished = run.returncode == 0  # the signal came after the last step: nothing left to resume
        trial.stops.append(
            {
                "signal": sig.name,
                "afterStep": run.acted_after[0] if run.acted_after else None,
                "exitCode": run.returncode,
                "message": run.summary.get("message"),
                "expectedResume": None if finished else newest_complete_checkpoint(output),
                "resumedFrom": None,
                "newPod": new_pod,
            }
        )
        if finished:
            break
    final = run_trainer(config, work)
    _record_resume(trial, final)
    trial.final_exit = final.returncode
    trial.mismatches = differences(output, reference) if final.returncode == 0 else [final.stderr[-2000:]]
    trial.seconds = time.monotonic() - started
    return trial


def _record_resume(trial: TrainerTrial, run: Run) -> None:
    """The step a run resumed from belongs to the stop before it."""
    if trial.stops:
        trial.stops[-1]["resumedFrom"] = run.resumed_from


# ---- the generator ----


def generator_config(setup: Setup, output: str, shards: int, seed: int) -> dict[str, Any]:
    """A sampled TeacherGeneration of the prompts on the tiny model, one prompt per batch."""
    from metaspec.api import API_VERSION, TeacherGeneration

    spec = {
        "model": {"uri": str(setup.model)},
        "dataset": {"uri": str(setup.prompts)},
        "output": {"uri": output},
        "engine": "transformers",
        "resources": {"gpus": 0},
        "shards": shards,
        "batchSize": 1,
        "sampling": {"temperature": 0.8, "maxTokens": 8, "seed": seed},
    }
    body = {"apiVersion": API_VERSION, "kind": "TeacherGeneration", "metadata": {"name": "faults"}, "spec": spec}
    return TeacherGeneration.model_validate(body).model_dump(by_alias=True, exclude_none=True, mode="json")


def run_generator(
    config: Path, work: Path, index: int, kill_after: int | None = None, env: dict[str, str] | None = None
) -> Run:
    """`metaspec generate` for shard `index`; SIGKILLed once its local shard file holds `kill_after`
    records (if it gets that far: the last records may be followed by the upload and finalization)."""
    summary, log = work.parent / f"{work.name}-summary.json", work.parent / f"{work.name}-{index}.log"
    summary.unlink(missing_ok=True)
    command = metaspec_command(
        "generate", "--config", str(config), "--shard-index", str(index), "--work-dir", str(work),
        "--cache-dir", str(work.parent / "cache"), "--device", "cpu", "--upload-every", "0", "--no-progress",
    )  # fmt: skip
    with log.open("w") as stderr:
        process = subprocess.Popen(command, env=env or component_env(summary), stdout=stderr, stderr=stderr)
        killed = kill_after is not None and _kill_when_written(process, work, kill_after)
        process.wait(timeout=600)
    text = log.read_text()
    result = json.loads(summary.read_text()) if summary.is_file() else {}
    return Run(process.returncode, log_lines(text), result, text, [kill_after] if killed else [])


def _kill_when_written(process: subprocess.Popen, work: Path, records: int) -> bool:
    while process.poll() is None:
        written = sum(len(p.read_text().splitlines()) for p in work.rglob("shard-*.jsonl"))
        if written >= records:
            process.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.02)
    return False


@dataclass
class ShardTrial:
    seed: int
    shards: int
    kills: list[dict[str, Any]] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)  # the finishing run of each shard
    missing: int = 0
    duplicated: int = 0
    leftovers: list[str] = field(default_factory=list)  # partial files left after the output completed
    seconds: float = 0.0

    @property
    def survived(self) -> bool:
        return all(code == 0 for code in self.exits) and not self.lost and not self.leftovers

    @property
    def lost(self) -> int:
        return self.missing + self.duplicated


def shard_trial(setup: Setup, output: str, seed: int, shards: int | None = None) -> ShardTrial:
    """Kill each shard 0–2 times at seeded record counts, restart it, finish all; count the IDs."""
    from metaspec.artifacts import Uri, list_files
    from metaspec.datasets import read_records

    rng = random.Random(seed)
    started = time.monotonic()
    shards = shards or rng.randint(1, 3)
    root = setup.scratch / f"shards-{seed}-{rng.getrandbits(32):08x}"
    root.mkdir(parents=True)
    config = root / "config.json"
    config.write_text(json.dumps(generator_config(setup, output, shards, seed)))
    trial = ShardTrial(seed, shards)
    for index in rng.sample(range(shards), shards):  # any shard may be the one that completes the output
        per_shard = len(range(index, PROMPTS, shards))
        work = root / f"work-{index}-0"
        for n in range(rng.choice([0, 1, 1, 2])):
            at = rng.randint(1, per_shard)
            run = run_generator(config, work, index, kill_after=at)
            new_pod = rng.random() < 0.5
            trial.kills.append({"shard": index, "records": at, "killed": bool(run.acted_after), "newPod": new_pod})
            if new_pod:
                work = root / f"work-{index}-{n + 1}"
        trial.exits.append(run_generator(config, work, index).returncode)
    ids = Counter(r.id for r in read_records(output)[0])  # the trainer's reader: manifest-checked
    expected = {f"p{i:03d}" for i in range(PROMPTS)}
    trial.missing = len(expected - set(ids))
    trial.duplicated = sum(count - 1 for count in ids.values()) + len(set(ids) - expected)
    trial.leftovers = [rel for rel, _ in list_files(Uri.of(output).join(".partial"))]
    trial.seconds = time.monotonic() - started
    return trial


def write_prompts(path: Path, count: int = PROMPTS) -> Path:
    lines = [
        {"id": f"p{i:03d}", "input": f"Name one fact about the number {i}.", "domain": "science", "difficulty": "easy"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# ---- the benchmark ----


def make_setup(scratch: Path) -> Setup:
    """The tiny model and datasets the tests use (their helpers, so both run the same trials)."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration" / "trainer")]
    from conftest import make_tiny_llama
    from trainer_helpers import write_dataset

    from metaspec.local.bundled import bundled_model_dir

    model = make_tiny_llama(bundled_model_dir(), scratch / "tiny-llama")
    train = write_dataset(scratch / "train.jsonl", 8)
    evaluation = write_dataset(scratch / "eval.jsonl", 1, tag="eval", offset=100)
    return Setup(model, train, evaluation, write_prompts(scratch / "prompts.jsonl"), scratch)


def reference_run(setup: Setup, output: str) -> str:
    """An uninterrupted training run, the yardstick of every resumed one."""
    root = setup.scratch / "reference"
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(trainer_config(setup, output)))
    run = run_trainer(root / "config.json", root / "work")
    if run.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{run.stderr[-3000:]}")
    return output


def summarize(trials: list[TrainerTrial] | list[ShardTrial], unit: str) -> dict[str, Any]:
    return {
        "trials": len(trials),
        "survived": sum(t.survived for t in trials),
        "dataLost": sum(t.lost for t in trials),
        "unit": unit,
        "secondsPerTrial": round(sum(t.seconds for t in trials) / max(1, len(trials)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials of each kind (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; trial i uses seed + i")
    parser.add_argument("--kinds", nargs="+", default=["trainer", "shards"], choices=["trainer", "shards"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from metaspec.artifacts import S3Store, s3_environment
    from metaspec.local.s3server import EmbeddedS3

    scratch = Path(tempfile.mkdtemp(prefix="metaspec-reliability-"))
    # a run of one kind keeps the other kind's results
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.pop("command", None)
    command = " ".join(["bench/reliability_jobs.py", *(argv or sys.argv[1:])])
    try:
        with EmbeddedS3(scratch / "s3") as s3, s3_environment(s3.env):
            S3Store().ensure_bucket(BUCKET)
            setup = make_setup(scratch)
            seeds = range(args.seed, args.seed + args.trials)
            if "trainer" in args.kinds:
                reference = reference_run(setup, f"s3://{BUCKET}/reference")
                trials = [trainer_trial(setup, f"s3://{BUCKET}/trainer-{s}", reference, s) for s in seeds]
                results["trainer"] = {**summarize(trials, "resumes that skipped a complete checkpoint"), "command": command,
                                      "runs": [{**asdict(t), "survived": t.survived} for t in trials]}  # fmt: skip
                _report("trainer killed/resumed", trials)
            if "shards" in args.kinds:
                trials = [shard_trial(setup, f"s3://{BUCKET}/shards-{s}", s) for s in seeds]
                results["shards"] = {**summarize(trials, "records missing or duplicated"), "command": command,
                                     "runs": [{**asdict(t), "survived": t.survived} for t in trials]}  # fmt: skip
                _report("generator shards killed/restarted", trials)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["machine"] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    failed = [k for k in ("trainer", "shards") if k in results and results[k]["survived"] < results[k]["trials"]]
    return 1 if failed else 0


def _report(title: str, trials: list[TrainerTrial] | list[ShardTrial]) -> None:
    s = summarize(trials, "")
    print(f"{title:36s} trials {s['trials']:3d}  survived {s['survived']:3d}  data lost {s['dataLost']:3d}  "
          f"{s['secondsPerTrial']:.1f} s/trial")  # fmt: skip
    for t in trials:
        if not t.survived:
            print(f"  seed {t.seed} FAILED: {asdict(t)}")


if __name__ == "__main__":
    sys.exit(main())
