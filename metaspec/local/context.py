"""What the local executor's parts share: options, the state it plays the API server with, stage
directories and environments, and running one component process to its end.

It is to `metaspec local` what `operator/handlers/common.py` is to the operator.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaspec import pipeline
from metaspec import status as R
from metaspec.api import Phase, Resource, TrainingRun
from metaspec.local import demo_bench
from metaspec.local.display import LiveDisplay, parse_progress_line
from metaspec.local.processes import Child
from metaspec.local.state import ResourceState, State, save_state
from metaspec.local.storage import Storage
from metaspec.runtime import MODEL_CACHE_ENV, SCRATCH_ENV, from_json


@dataclass
class RunOptions:
    state_dir: Path = Path(".metaspec")
    s3_endpoint: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    serve: bool = False  # keep SpecServe servers running until interrupted
    report: bool = False  # run the demo benchmark and write the report at the end
    stop_grace: float = 120  # seconds a stage gets to checkpoint after SIGTERM
    bench_prompts: int = demo_bench.PROMPTS_PER_DIFFICULTY  # demo benchmark: prompts per difficulty (easy and hard)
    bench_max_tokens: int = demo_bench.MAX_TOKENS  # demo benchmark: tokens per answer at most
    claims: dict[str, Path] = field(default_factory=dict)  # `pvc://<claim>/…` read from these host folders
    # training processes per TrainingRun (torch.distributed.run); None: its gpus × nodes, at most the visible GPUs
    nproc_per_node: int | None = None


@dataclass
class Context:
    """One run's shared state: the resources, their statuses (saved to `state.json`), the storage."""

    options: RunOptions
    display: LiveDisplay = field(default_factory=LiveDisplay)
    state: State = field(default_factory=State)
    resources: list[Resource] = field(default_factory=list)
    storage: Storage | None = None
    _dirty: bool = False
    _saved_at: float = 0.0

    @property
    def state_dir(self) -> Path:
        return self.options.state_dir

    @property
    def claims_dir(self) -> Path:
        """`pvc://` claims as links to host folders (`--claim NAME=DIR`), as pods see mounted claims."""
        return self.state_dir / "claims"

    @property
    def cache_dir(self) -> Path:
        """`METASPEC_CACHE` of the stages (each keeps its own scratch in its stage folder) and the parent
        of the default model cache."""
        return Path(os.environ.get(SCRATCH_ENV) or self.state_dir / "cache")

    def model_cache(self, resource: Resource) -> Path:
        """The model cache of a stage, as a pod has it: the host folder given for the claim
        `storage.modelCache.claimName` (`--claim NAME=DIR`), else `$METASPEC_MODEL_CACHE` or `models/` in
        the cache folder. Either way it outlives the run: a model is downloaded once (keyed by digest)."""
        claim = resource.spec.storage.model_cache_claim
        if claim is not None:
            return self.claims_dir / claim
        return Path(os.environ.get(MODEL_CACHE_ENV) or self.cache_dir / "models")

    # ---- the state, as the operator would see it in the API server ----

    def of(self, resource: Resource) -> ResourceState:
        return self.state.resource(*pipeline.key(resource))

    def lookup(self, kind: str, name: str) -> Resource | None:
        """`pipeline.Lookup` over this run's resources, with the statuses they have now."""
        for r in self.resources:
            if pipeline.key(r) == (kind, name):
                return self.with_status(r)
        return None

    def with_status(self, resource: Resource) -> Resource:
        status = self.of(resource).status
        return type(resource).model_validate({**resource.dump(), "status": status or None})

    def set_status(self, resource: Resource, **fields: Any) -> None:
        rs = self.of(resource)
        rs.status.update(fields)
        rs.status["observedGeneration"] = resource.metadata.generation
        self._dirty = True

    def replace_status(self, resource: Resource, status: dict[str, Any]) -> None:
        self.of(resource).status = status
        self._dirty = True

    def save(self, force: bool = False) -> None:
        if force or (self._dirty and time.monotonic() - self._saved_at > 2):
            save_state(self.state_dir, self.state)
            self._dirty = False
            self._saved_at = time.monotonic()

    def refresh(self, force: bool = False) -> None:
        self.display.update(self.state)
        self.save(force)

    # ---- stages: where a component runs and with what ----

    def stage_dir(self, resource: Resource) -> Path:
        path = self.state_dir / "stages" / f"{resource.kind.lower()}-{resource.metadata.name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_config(self, resource: Resource) -> Path:
        """The rendered config in the stage directory, as the operator's ConfigMap holds it."""
        path = self.stage_dir(resource) / "config.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(R.config_text(resource))
        os.replace(tmp, path)
        return path

    def stage_env(self, resource: Resource, summary: Path) -> dict[str, str]:
        env = {
            SCRATCH_ENV: str(self.cache_dir),
            **os.environ,
            **(self.storage.env if self.storage else {}),
            MODEL_CACHE_ENV: str(self.model_cache(resource)),
            "METASPEC_TERMINATION_MESSAGE_PATH": str(summary),
            "METASPEC_PVC_ROOT": str(self.claims_dir),
            "METASPEC_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        if self.storage and self.storage.server:
            # the embedded server lives and dies with this runner: once it is unreachable the run is
            # over, and a stage checkpointing on SIGTERM must not wait a minute for it
            env.setdefault("METASPEC_S3_RETRY_SECONDS", "3")
        if self.options.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def device_args(self) -> list[str]:
        return [] if self.options.device == "auto" else ["--device", self.options.device]

    def training_processes(self, run: TrainingRun) -> int:
        """`--nproc-per-node`, else the processes the run has on a cluster (`resources.gpus × nodes`),
        as many as this machine's visible GPUs allow (1 on CPU): the same YAML takes the same
        data-parallel path here, on one machine."""
        if self.options.nproc_per_node is not None:
            return self.options.nproc_per_node
        res = run.spec.resources
        return max(1, min(res.nodes * res.processes_per_node, self._visible_gpus()))

    def _visible_gpus(self) -> int:
        if self.options.device == "cpu":
            return 0
        import torch

        return torch.cuda.device_count()

    def run_component(
        self, resource: Resource, argv: list[str], summary: Path, python: Path | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Run one component process to its end, with `python` (the vLLM environment's) or this one's;
        returns its exit code and termination summary."""
        rs = self.of(resource)
        summary.unlink(missing_ok=True)
        rs.attempts += 1
        rs.log = str(self.stage_dir(resource) / "log.txt")

        def on_line(line: str) -> None:
            if parse_progress_line(line, rs.progress):
                self._dirty = True

        env = self.stage_env(resource, summary)
        if python is not None:
            from metaspec.local.vllm import vllm_env

            env |= vllm_env(self.cache_dir)
        child = Child([str(python or sys.executable), "-m", "metaspec.cli", *argv], Path(rs.log), env, on_line)
        rs.pid = child.pid
        self.save(force=True)
        try:
            while child.poll() is None:
                self.refresh()
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.display.say(f"{rs.key}: stopping (SIGTERM; it checkpoints and resumes on the next run)")
            child.stop(self.options.stop_grace)
            self.set_status(resource, phase=Phase.PENDING.value, message="interrupted: resumes on the next run")
            rs.pid = None
            raise
        code = child.wait()
        rs.pid = None
        return code, read_summary(summary, child)


def read_summary(path: Path, child: Child) -> dict[str, Any]:
    """The summary file a component wrote; the log's tail when it wrote none (it crashed first)."""
    try:
        body = from_json(path.read_text())
        return body if isinstance(body, dict) else {}
    except FileNotFoundError:
        return {"message": "the component wrote no summary; last log lines:\n" + child.tail(8)}
    except ValueError:
        return {"message": f"unreadable summary in {path}"}
