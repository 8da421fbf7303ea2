"""Data-parallel training with real processes: `metaspec train --nproc-per-node 2` launches two gloo
workers through torch.distributed.run, and they end with the weights one process reaches on the same
global batch.

Tolerance: both runs are float32 on CPU and differ only in summation order (each rank sums its share,
DDP adds the shares). Task gradients largely cancel in their mean and ANIL's second-order path
amplifies rounding, so gradient norms agree to ~1e-5 relative; after Adam's normalised updates the
adapter weights (|w| up to 0.13) agree to atol 3e-5 and losses and gradient norms to rel 1e-4.
Adam is blind to a constant factor on the gradient, so the gradient norm is what pins the scale
(a missing factor of the world size would halve it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import tiny_anil_spec, training_run, write_dataset

from metaspec.local.serving import free_port
from metaspec.runtime import EXIT_PERMANENT, EXIT_TRANSIENT
from metaspec.trainer.progress import LogReporter
from metaspec.trainer.run import train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return write_dataset(root / "train.jsonl", 4), write_dataset(root / "eval.jsonl", 1, tag="eval", offset=100)


def spec(
    model: Path,
    data: tuple[Path, Path],
    out: Path,
    method: str,
    strategy: str | None = None,
    accumulation: int = 1,
    **anil,
) -> dict:
    spec = tiny_anil_spec(
        model,
        *data,
        str(out),
        maxSteps=2,
        evalSteps=2,
        checkpointSteps=1,
        batchSize=4,
        gradientAccumulation=accumulation,
    )
    if strategy:
        spec["distributed"] = {"strategy": strategy}
    spec["baseModel"]["dtype"] = "float32"  # on GPUs too (`auto` would be bfloat16 there)
    spec["lora"]["dropout"] = 0.0  # the ranks draw their own dropout masks; the comparison needs none
    spec["output"]["merge"] = False
    spec["anil"].update(anil)
    spec["method"] = method
    if method != "anil-maml":
        del spec["anil"]
    return training_run(spec).model_dump(by_alias=True, exclude_none=True, mode="json")


def launch(
    config: dict, tmp_path: Path, nproc: int = 2, device: str = "cpu"
) -> tuple[subprocess.CompletedProcess, dict]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    termination = tmp_path / "termination-log"
    env = {**os.environ, "METASPEC_TERMINATION_MESSAGE_PATH": str(termination)}
    command = [sys.executable, "-m", "metaspec.cli", "train", "--config", str(path), "--device", device]
    command += ["--work-dir", str(tmp_path / "work"), "--nproc-per-node", str(nproc)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return result, json.loads(termination.read_text()) if termination.is_file() else {}


def single_process(config: dict, tmp_path: Path, device: str = "cpu") -> Path:
    run = training_run(config["spec"])
    train(run, work_dir=tmp_path / "single-work", device=device, reporter=LogReporter())
    return Path(config["spec"]["output"]["uri"])


def assert_same_training(one: Path, two: Path, atol: float = 3e-5, rel: float = 1e-4) -> None:
    adapter, reference = (load_file(o / "adapter" / "adapter_model.safetensors") for o in (two, one))
    assert adapter.keys() == reference.keys()
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=atol)
    histories = [[json.loads(line) for line in (o / "history.jsonl").read_text().splitlines()] for o in (one, two)]
    for a, b in zip(*histories, strict=True):
        assert b["tokens"] == a["tokens"], (a, b)
        assert a.keys() == b.keys()
        for key in {"loss", "grad_norm", "eval_loss"} & a.keys():
            assert b[key] == pytest.approx(a[key], rel=rel), (key, a, b)
    assert (two / "_manifest.json").is_file() and (two / "checkpoints" / "step-1" / "_manifest.json").is_file()


ANIL = {"firstOrder": False, "balance": "tokens", "tasksPerBatch": 3}


@pytest.mark.parametrize(
    ("method", "strategy", "accumulation", "anil"),
    [
        ("lora-sft", None, 1, {}),
        ("anil-maml", None, 1, ANIL),
        ("lora-sft", "fsdp", 2, {}),
        ("anil-maml", "fsdp", 2, ANIL),
    ],
)
def test_two_processes_train_as_one_on_the_global_batch(
    tiny_llama, data, tmp_path, caplog, method, strategy, accumulation, anil
):
    """lora-sft: 4 sequences per step shared 2 + 2; ANIL-MAML second order with token balancing:
    3 tasks per step shared 2 + 1 (uneven on purpose), each rank adapting the head on its own tasks'
    support sets, the meta-gradients all-reduced. Then the two processes' step-1 checkpoint resumes on
    one process and ends where the one-process run ends.

    The same with `strategy: fsdp` (FSDP2 on gloo): every decoder layer and the root sharded over the
    two ranks, gradients reduce-scattered, ANIL's second rank running a weight-0 task so both run two,
    and 2 micro-steps accumulated per update (gradients reduced once, after the last); its checkpoint
    holds full tensors, so the one-process resume reads it as it reads DDP's. Same tolerances: the
    shards' updates are the same float32 arithmetic, reduced in another order."""
    config = spec(tiny_llama, data, tmp_path / "two", method, strategy, accumulation, **anil)
    result, summary = launch(config, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert summary["phase"] == "Succeeded" and summary["progress"]["step"] == 2
    if strategy:
        assert f"distributed: {strategy} over 2 processes" in result.stderr

    reference = spec(tiny_llama, data, tmp_path / "one", method, strategy, accumulation, **anil)
    assert_same_training(single_process(reference, tmp_path), tmp_path / "two")

    (tmp_path / "two" / "_manifest.json").unlink()  # as if the run had stopped after step 1
    with caplog.at_level(logging.INFO, logger="metaspec.trainer"):
        train(training_run(config["spec"]), work_dir=tmp_path / "resumed", device="cpu", reporter=LogReporter())
    assert "resumed from" in caplog.text and "checkpoints/step-1" in caplog.text
    assert_same_training(tmp_path / "one", tmp_path / "two")


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", [None, "fsdp"])
def test_two_gpus_train_as_one_over_nccl(tiny_llama, data, tmp_path, strategy):
    """The same on two GPUs (NCCL), fp32, with DDP and with FSDP. The trainer computes fp32 matmuls in
    TF32 on GPUs (10-bit mantissa), so the two runs' different splits round differently: atol 1e-3,
    rel 1e-2."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    anil = {"firstOrder": False, "tasksPerBatch": 2}
    config = spec(tiny_llama, data, tmp_path / "two", "anil-maml", strategy, **anil)
    result, summary = launch(config, tmp_path, device="cuda")
    assert result.returncode == 0 and summary["phase"] == "Succeeded", result.stderr[-4000:]
    reference = spec(tiny_llama, data, tmp_path / "one", "anil-maml", strategy, **anil)
    assert_same_training(single_process(reference, tmp_path, device="cuda:0"), tmp_path / "two", 1e-3, 1e-2)


def test_sigterm_to_the_launcher_stops_both_ranks_after_one_checkpoint(tiny_llama, data, tmp_path):
    """Preemption: the container's first process, the launcher, gets SIGTERM and passes it to both
    ranks; they stop after the same step, rank 0 writes one checkpoint, and the container exits 75
    (transient: the Job retries, and the retry resumes from that checkpoint)."""
    config = spec(tiny_llama, data, tmp_path / "out", "lora-sft")
    config["spec"]["optimization"].update(maxSteps=500, checkpointSteps=500, evalSteps=500)
    (tmp_path / "config.json").write_text(json.dumps(config))
    termination = tmp_path / "termination-log"
    env = {**os.environ, "METASPEC_TERMINATION_MESSAGE_PATH": str(termination), "METASPEC_LOG_FORMAT": "text"}
    command = [sys.executable, "-m", "metaspec.cli", "train", "--config", str(tmp_path / "config.json")]
    command += ["--device", "cpu", "--work-dir", str(tmp_path / "work"), "--nproc-per-node", "2"]
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in launcher.stderr:
            if (m := re.search(r"step step=(\d+) ", line)) and int(m.group(1)) >= 2:
                launcher.send_signal(signal.SIGTERM)
                break
        _, rest = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == EXIT_TRANSIENT, rest[-4000:]
    summary = json.loads(termination.read_text())
    stopped = int(re.search(r"stopped at step (\d+) \(SIGTERM\)", summary["message"]).group(1))
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints == [f"step-{stopped}"] and stopped < 500, (checkpoints, summary)
    assert (tmp_path / "out" / "checkpoints" / f"step-{stopped}" / "_manifest.json").is_file()


def test_the_launcher_exits_with_the_failing_workers_code_and_summary(tmp_path):
    """A permanent error in the workers (here: a config that is no TrainingRun) fails the Job at once:
    the launcher exits with the worker's code, not torchrun's 1, and adopts its summary."""
    result, summary = launch({"kind": "TrainingRun", "spec": {}}, tmp_path)
    assert result.returncode == EXIT_PERMANENT, result.stderr[-4000:]
    assert summary["errorKind"] == "permanent" and "apiVersion" in summary["message"], summary


def start_node(config: Path, tmp_path: Path, node: int, port: int, max_restarts: int) -> subprocess.Popen:
    """One node of a 2-node run on this machine, as its pod would run it: `metaspec train --nnodes 2` with
    the variables the operator sets. Its own session, so killing the group kills the pod's processes."""
    env = {
        **os.environ,
        "METASPEC_TERMINATION_MESSAGE_PATH": str(tmp_path / f"termination-{node}"),
        "METASPEC_LOG_FORMAT": "text",
        "PET_NODE_RANK": str(node),
        "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
        "PET_LOCAL_ADDR": ("127.0.0.1", "localhost")[node],  # sorting first makes node 0 hold rank 0
    }
    command = [sys.executable, "-m", "metaspec.cli", "train", "--config", str(config), "--device", "cpu"]
    command += ["--work-dir", str(tmp_path / f"work-{node}"), "--nproc-per-node", "1", "--nnodes", "2"]
    command += ["--max-restarts", str(max_restarts)]
    log = (tmp_path / f"node-{node}.log").open("a")
    return subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)


def kill_pod(node: subprocess.Popen) -> None:
    """SIGKILL to the launcher and every process under it (torchrun starts each worker in a session of its
    own), as when a pod's container dies."""
    pids, i = [node.pid], 0
    while i < len(pids):
        for children in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            pids += [int(pid) for pid in children.read_text().split()]
        i += 1
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait()


def wait_for(log: Path, pattern: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{log.read_text()[-4000:]}")


def test_a_lost_node_restarts_the_whole_group_from_the_last_checkpoint(tiny_llama, data, tmp_path):
    """Two nodes of one process each. Node 1's pod dies (agent and worker killed) after the step-10
    checkpoint; node 0's worker fails on the broken collective and its agent (the same launcher) waits at
    the rendezvous; the Job's replacement for node 1 joins, both start again from the last checkpoint and
    finish the run."""
    config = spec(tiny_llama, data, tmp_path / "out", "lora-sft")
    config["spec"]["optimization"].update(maxSteps=100, checkpointSteps=10, evalSteps=100)
    (tmp_path / "config.json").write_text(json.dumps(config))
    port = free_port()
    nodes = [start_node(tmp_path / "config.json", tmp_path, n, port, max_restarts=1) for n in (0, 1)]
    try:
        wait_for(tmp_path / "node-0.log", r"checkpoints/step-10\b")
        kill_pod(nodes[1])
        nodes[1] = start_node(tmp_path / "config.json", tmp_path, 1, port, max_restarts=1)
        codes = [node.wait(timeout=120) for node in nodes]
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
    log = (tmp_path / "node-0.log").read_text()
    assert codes == [0, 0], log[-4000:]
    starts = [int(s) for s in re.findall(r"training: 100 steps \(starting at (\d+)\)", log)]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 10 and starts[1] % 10 == 0, log[-4000:]
    assert f"resumed from file://{tmp_path}/out/checkpoints/step-{starts[1]}" in log
    summary = json.loads((tmp_path / "termination-0").read_text())
    assert summary["phase"] == "Succeeded" and summary["progress"]["step"] == 100, summary


def test_a_permanent_error_on_several_nodes_stops_without_restarts(tmp_path):
    """torchrun restarts on any failure; a permanent error must not spend the restarts: each node's
    launcher stops its agent at the first worker's permanent summary and exits with its code."""
    (tmp_path / "config.json").write_text(json.dumps({"kind": "TrainingRun", "spec": {}}))
    port = free_port()
    nodes = [start_node(tmp_path / "config.json", tmp_path, n, port, max_restarts=3) for n in (0, 1)]
    try:
        codes = [node.wait(timeout=120) for node in nodes]
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
    for n in (0, 1):
        log = (tmp_path / f"node-{n}.log").read_text()
        assert codes[n] == EXIT_PERMANENT, log[-4000:]
        assert log.count("trainer failed (permanent)") == 1, log  # one attempt, not 1 + 3
        assert json.loads((tmp_path / f"termination-{n}").read_text())["errorKind"] == "permanent"


def _hang_or_reduce(rank: int, port: int, timeout_s: float, elapsed) -> None:
    """Rank 1 never joins the all-reduce; rank 0 records how long its all-reduce waited before failing."""
    import metaspec.trainer.distributed as distributed

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    distributed.COLLECTIVE_TIMEOUT = timedelta(seconds=timeout_s)
    world = distributed.init_world("cpu")
    if rank == 1:
        time.sleep(10 * timeout_s)
        return
    start = time.monotonic()
    with contextlib.suppress(RuntimeError):
        world.sum([1.0])
    elapsed.value = time.monotonic() - start


def test_a_hung_collective_fails_within_the_collective_timeout():
    """`init_world` gives the process group `COLLECTIVE_TIMEOUT`: a collective a peer never joins fails
    after it (here shortened to 2 s) instead of after the backend's default (gloo: 30 min)."""
    context = torch.multiprocessing.get_context("spawn")
    elapsed, port = context.Value("d", -1.0), free_port()
    processes = [context.Process(target=_hang_or_reduce, args=(r, port, 2.0, elapsed)) for r in (0, 1)]
    for process in processes:
        process.start()
    processes[0].join(timeout=60)
    for process in processes:
        process.kill()
    assert 2.0 <= elapsed.value < 10, elapsed.value
