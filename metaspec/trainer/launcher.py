"""The container's first process when a TrainingRun trains on several GPUs or nodes: it runs
`torch.distributed.run` (the module behind `torchrun`) in-process, which starts one training process per
GPU and restarts them, and turns the outcome into the container's exit code and summary.

One node: a standalone rendezvous, no restarts. The node's processes are the whole group, so the Job
retrying the pod restarts the group.

Several nodes (an Indexed Job, one pod per node): an elastic rendezvous (c10d backend) whose store node
0's launcher hosts, and `--max-restarts` from `spec.backoffLimit`. Why elastic and not the static
rendezvous: a Job replaces a failed pod alone, and the replacement of a static group's member joins a
group the others are still in (they hang in their collectives until the timeout). With the elastic
rendezvous every node's agent watches it, so the group restarts as a whole in both ways a member goes:

- a training process fails (an exception, a CUDA or NCCL error, a collective past its timeout): its
  agent stops the node's other processes and opens a new round of the rendezvous; the agents of the
  other nodes see a node waiting and restart theirs (torchrun's agent loop, every 0.1 s), so every
  process starts again and resumes from the last complete checkpoint;
- a pod goes (node failure, eviction, the container killed): the Job starts a replacement with the
  same index; it joins the rendezvous, the others restart their processes, and all resume. Were pod 0
  the one lost, the store goes with it: the others' agents fail on it, the Job replaces their pods too,
  and the new pods meet at the new pod 0 (`backoffLimit × nodes` pod retries allow for this).

A restart counts against `--max-restarts` on each agent whose processes failed; when one agent has none
left, the run fails as a whole at once (exit `EXIT_PERMANENT`, so the Job's podFailurePolicy fails the
Job and removes the other pods) rather than a pod retry joining a rendezvous that has closed. Errors no
restart can fix (permanent, quality) stop the launcher at once too (`_FailFast`), keeping their exit
code. This is the group restart of JobSet's `failurePolicy.maxRestarts` done inside the pods, so the
pods keep their node, their GPUs, their model cache and their Kueue admission; the other way, failing
the Job on any pod's failure and having the operator create the next one, would pay a rescheduling, an
image pull, a cold model cache and a trip through the queue on every restart.

Node 0 (`PET_NODE_RANK`, the completion index) hosts the rendezvous store, and holds global rank 0: the
rendezvous ranks nodes by their address (torchrun's default: the FQDN, `<job>-<i>.<job>.<namespace>...`
for an Indexed Job's pod with a subdomain), where node 0's sorts first. So the rank that writes the
checkpoints and finishes the run lives in the pod the store lives in, and the other nodes leaving when
their share is done cannot take the store away from it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from metaspec.runtime import (
    ERROR_KINDS,
    EXIT_PERMANENT,
    EXIT_TRANSIENT,
    TERMINATION_MESSAGE_ENV,
    termination_message_path,
    write_summary,
)
from metaspec.status import FAIL_FAST_CODES

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

log = logging.getLogger(__name__)

#: Seconds the nodes wait for each other at each round of the rendezvous (the start, every restart), and
#: for node 0's store to answer (its pod may start later than theirs). A round needs all `nnodes`: a lost
#: pod's replacement must be scheduled, pull the image and start within it.
RENDEZVOUS_TIMEOUT_S = 900
#: How often `_FailFast` looks for a worker's summary, in seconds (the agent checks its workers every 0.1 s).
FAIL_FAST_POLL_S = 0.1
_FAIL_FAST_KINDS = {ERROR_KINDS[code]: code for code in FAIL_FAST_CODES}  # errorKind -> exit code


def launched() -> bool:
    """Whether this process is a worker `torch.distributed.run` started."""
    return "LOCAL_RANK" in os.environ


def rank_summary(path: Path, rank: int) -> Path:
    """Where worker `rank` writes its summary; the launcher adopts one as the container's."""
    return path.with_name(f"{path.name}.rank-{rank}")


def _rank_summaries(path: Path) -> list[Path]:
    """The workers' summaries written so far (`rank_summary`)."""
    return list(path.parent.glob(f"{path.name}.rank-*"))


def _cause(error: ChildFailedError) -> tuple[int, ProcessFailure]:
    """The (rank, `ProcessFailure`) that failed the group (`error`: torch's `ChildFailedError`), the first of:

    - a worker's own verdict that the Job must fail (`FAIL_FAST_CODES`);
    - a worker killed by a signal other than SIGTERM: SIGKILL from the OOM killer or a preemption, a crash;
    - the first failure by torch's stamps (`get_first_failure`).

    torch lists, besides the workers that failed, the peers its agent then stopped (SIGTERM, escalating to
    SIGKILL after a grace period), so a stopped peer must never outrank a verdict. And a killed worker leaves
    no error file: torch stamps its failure when the agent notices it, after its peers' collectives have
    failed over it and written theirs, so by stamps alone a peer's exit 1 would hide the SIGKILL (137)."""
    failures = error.failures
    for chosen in (
        [rank for rank, failure in failures.items() if failure.exitcode in FAIL_FAST_CODES],
        [rank for rank, failure in failures.items() if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM],
    ):
        if chosen:
            rank = min(chosen, key=lambda r: failures[r].timestamp)
            return rank, failures[rank]
    return error.get_first_failure()


def launch(cli_argv: list[str], nproc_per_node: int, nnodes: int, max_restarts: int = 0) -> int:
    """`python -m metaspec.cli <cli_argv>` in `nproc_per_node` processes under `torch.distributed.run`;
    returns the exit code the container should exit with. With `nnodes` above 1 the node meets the others
    at `PET_RDZV_ENDPOINT` (torchrun's variables; the operator sets them) and the group restarts up to
    `max_restarts` times.

    The launcher, not torchrun's CLI, is the container's process so that a worker's exit code reaches
    the Job unchanged (torchrun exits 1 for any failure, which would turn a permanent error into
    retries) along with that worker's summary.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousClosedError, RendezvousError
    from torch.distributed.run import parse_args, run

    options = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", *_rendezvous(nnodes, max_restarts)]
    summary = termination_message_path()
    with tempfile.TemporaryDirectory(prefix="metaspec-ranks-") as ranks:
        workers = Path(ranks) / "summary"
        os.environ[TERMINATION_MESSAGE_ENV] = str(workers)  # the workers' (`rank_summary`)
        fail_fast = _FailFast(workers)
        if nnodes > 1 and max_restarts > 0:
            fail_fast.start()
        own = None  # the launcher's own summary, which the worker's message completes
        try:
            try:
                run(parse_args([*options, "--module", "metaspec.cli", *cli_argv]))
            finally:
                fail_fast.stop()  # a SIGTERM it sent is raised by now, and it sends none after
            rank, code = None, 0
        except ChildFailedError as e:
            rank, failure = _cause(e)
            code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -9: killed, 137
            if nnodes > 1 and code not in FAIL_FAST_CODES:
                message = _restarts_spent(max_restarts, rank, code)
                code, own = EXIT_PERMANENT, _failure("RestartsExhausted", message, EXIT_PERMANENT)
        except SignalException:
            # SIGTERM: from Kubernetes (the workers got it too; rank 0 checkpointed before exiting), or
            # from `_FailFast`, which names the worker and its code
            rank, code = fail_fast.failed or (0, EXIT_TRANSIENT)
        except RendezvousClosedError:
            # another node ran out of restarts or failed for good (its pod fails the Job), or finished
            # while this one failed: the group cannot meet again
            rank, code = None, EXIT_PERMANENT
            own = _failure("RendezvousClosed", "the nodes' rendezvous has closed: no restart can rejoin it", code)
        except RendezvousError as e:  # the store went with pod 0, or a round timed out: the Job retries the pod
            rank, code = None, EXIT_TRANSIENT
            own = _failure("RendezvousFailed", f"the nodes' rendezvous failed: {e}", code)
        finally:
            os.environ[TERMINATION_MESSAGE_ENV] = str(summary)
        _adopt_summary(workers, rank, own)
    return code


def _rendezvous(nnodes: int, max_restarts: int) -> list[str]:
    """torchrun's rendezvous options (see the module's docstring)."""
    if nnodes == 1:
        return ["--standalone", "--max-restarts=0"]
    # The workers' process group gets a store of its own (hosted by rank 0, at a port rank 0 publishes in
    # each round) instead of sharing the agents': with the shared one, a node that joins a later round
    # (a lost pod's replacement) waits for an address the surviving rank-0 agent never publishes again
    # (pytorch/pytorch#135712 describes the same incompatibility with restarts).
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    # taken out of torchrun's sight: it warns that the c10d rendezvous ignores it (it ranks the nodes itself)
    host = os.environ.pop("PET_NODE_RANK", None) == "0"
    config = f"is_host={str(host).lower()},join_timeout={RENDEZVOUS_TIMEOUT_S},read_timeout={RENDEZVOUS_TIMEOUT_S}"
    return ["--rdzv-backend=c10d", f"--rdzv-conf={config}", f"--max-restarts={max_restarts}"]


def _restarts_spent(max_restarts: int, rank: int, code: int) -> str:
    return (
        f"the training processes failed {max_restarts + 1} times (the run and {max_restarts} restarts of all "
        f"nodes' processes, spec.backoffLimit); the last time rank {rank} exited with code {code}"
    )


def _failure(reason: str, message: str, code: int) -> dict:
    return {"phase": "Failed", "reason": reason, "message": message, "errorKind": ERROR_KINDS[code]}


class _FailFast(threading.Thread):
    """Stops the launcher (SIGTERM to itself: torchrun then stops the workers) as soon as a worker's
    summary reports an error no restart can fix; `failed` is then that worker's rank and exit code.
    torchrun's agent restarts on any failure, and its restart budget is not for these."""

    def __init__(self, workers: Path):
        super().__init__(name="metaspec-fail-fast", daemon=True)
        self.workers = workers
        self.failed: tuple[int, int] | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._done.wait(FAIL_FAST_POLL_S):
            for path in _rank_summaries(self.workers):
                code = _FAIL_FAST_KINDS.get(_read(path).get("errorKind"))
                if code is None:
                    continue
                with self._lock:
                    if self._done.is_set():
                        return
                    self.failed = int(path.name.rpartition("-")[2]), code
                    log.error("rank %s failed with an error no restart can fix: stopping", self.failed[0])
                    os.kill(os.getpid(), signal.SIGTERM)
                return

    def stop(self) -> None:
        with self._lock:  # not while `run` signals: its SIGTERM is then raised in the caller, in `stop`
            self._done.set()
        if self.ident is not None:
            self.join()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # gone, or being written
        return {}


def _adopt_summary(workers: Path, rank: int | None, own: dict | None) -> None:
    """The container's summary: worker `rank`'s when this node ran it, else this node's newest failure's
    (on success: rank 0's, when this node ran it); `own`, the launcher's, goes first with the worker's
    message after it. A restarted group leaves earlier attempts' summaries behind, and a node's ranks
    may change from one attempt to the next, hence the newest and, on success, only a success."""
    written = sorted(_rank_summaries(workers), key=lambda p: p.stat().st_mtime)
    found = [s for s in map(_read, written) if s]
    if rank is None and own is None:
        found = [s for s in found if s.get("phase") == "Succeeded"]
    adopted = (_read(rank_summary(workers, rank)) if rank is not None else {}) or next(reversed(found), None)
    if own is not None:
        adopted = {**own, "message": own["message"] + (f": {adopted['message']}" if adopted else "")}
    if adopted is not None:
        write_summary(adopted)
