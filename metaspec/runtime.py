"""The contract between a component's container and whoever runs it (the operator or `metaspec local`).

- configuration: `--config FILE`, the component's whole resource (the same pydantic model as the CR)
  with every reference already resolved to a URI;
- exit codes: 0 done, `EXIT_PERMANENT` for errors a retry cannot fix (bad config, bad data; the Job's
  podFailurePolicy fails fast on it), `EXIT_QUALITY` when the work finished but failed its quality
  gate, anything else transient (retried up to `backoffLimit`), `EXIT_TRANSIENT` when we know it is;
- result: a compact JSON summary in the termination-message file, which Kubernetes copies into the
  pod status for the operator to read (at most 4096 bytes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from metaspec.api import InvalidResource, Resource, parse_resource

CONFIG_PATH = "/etc/metaspec/config.json"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
TERMINATION_MESSAGE_ENV = "METASPEC_TERMINATION_MESSAGE_PATH"
EXIT_PERMANENT = 3
EXIT_QUALITY = 4
EXIT_TRANSIENT = 75  # EX_TEMPFAIL
#: `errorKind` in a failed component's summary, by exit code (any other code: "unexpected").
ERROR_KINDS = {EXIT_PERMANENT: "permanent", EXIT_QUALITY: "quality", EXIT_TRANSIENT: "transient"}
#: Environment variable naming a run's scratch folder: staging, checkpoints on their way to S3, shard
#: state. Per run and per pod: never shared between runs, whatever volume holds it.
SCRATCH_ENV = "METASPEC_CACHE"
#: Environment variable naming the model cache: downloaded models keyed by manifest digest, Hub
#: snapshots in the Hub's own layout under `hf/`. Safe to share between runs, pods and nodes (entries
#: are filled under a lock and renamed when complete), so one volume may serve a whole namespace.
MODEL_CACHE_ENV = "METASPEC_MODEL_CACHE"

log = logging.getLogger("metaspec")
#: Libraries whose DEBUG lines print signed request headers (the access key id, AWS_SESSION_TOKEN):
#: kept at INFO even when METASPEC_LOG_LEVEL=DEBUG, so credentials never reach a pod's log.
CREDENTIAL_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
R = TypeVar("R", bound=Resource)


class PermanentError(Exception):
    """An error no retry can fix: bad configuration, bad data, an unusable model."""


class QualityError(PermanentError):
    """The work finished but failed its quality gate (`EXIT_QUALITY`): what it produced is kept for a look,
    and its dependents must not use it."""


class TransientError(Exception):
    """An error worth retrying: storage unreachable, preempted, out of capacity."""


def scratch_dir() -> Path:
    """Where this process keeps its run's scratch (`$METASPEC_CACHE`, or `~/.cache/metaspec`)."""
    return Path(os.environ.get(SCRATCH_ENV) or Path.home() / ".cache" / "metaspec")


def model_cache_dir() -> Path:
    """Where downloaded models are kept (`$METASPEC_MODEL_CACHE`, or `models/` in the scratch folder)."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or scratch_dir() / "models")


def load_config(path: str | Path, kind: type[R]) -> R:
    """Read and validate a component config; unresolved references are a permanent error."""
    try:
        body = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PermanentError(f"config file {path} does not exist") from None
    except ValueError as e:
        raise PermanentError(f"config file {path} is not JSON: {e}") from None
    resource = parse_resource(body, where=str(path))
    if not isinstance(resource, kind):
        raise PermanentError(f"{path} holds a {resource.kind}, expected {kind.__name__}")
    unresolved = list(_references(resource.spec.dump()))
    if unresolved:
        raise PermanentError(
            f"{path}: references must be resolved to URIs before a component runs: {', '.join(unresolved)}"
        )
    return resource


def _references(node: Any, path: str = "spec") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "from":
                yield f"{path}.from"
            else:
                yield from _references(value, f"{path}.{key}")


def to_json(body: Any, **options: Any) -> str:
    """JSON that strict parsers (the API server, Go, JavaScript) read: a non-finite float is `null`.

    `json.dumps` writes NaN and Infinity as bare literals, which are not JSON; every summary, metrics
    file and statistics file goes through here.
    """
    return json.dumps(_finite(body), allow_nan=False, default=str, **options)


def from_json(text: str | bytes) -> Any:
    """Parse JSON as `to_json` writes it: the non-standard NaN and ±Infinity literals read as `null`,
    so a summary from an older or foreign writer cannot carry them into a status patch."""
    return json.loads(text, parse_constant=lambda _: None)


def _finite(node: Any) -> Any:
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v) for v in node]
    return node


def _compact(body: Any) -> str:
    return to_json(body, separators=(",", ":"))


def spec_digest(kind: str, spec: dict[str, Any]) -> str:
    """sha256 of the spec fields that define what a resource produces: those immutable once it has
    started (`Resource.immutable_spec`), except `storage` and `output` (where, not what: a checkpoint
    copied to another prefix is still the same run's). Wire form, defaults filled."""
    from metaspec.api import RESOURCES

    defining = {f: spec.get(f) for f in RESOURCES[kind].immutable_spec if f not in ("storage", "output")}
    return hashlib.sha256(json.dumps(defining, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def provenance(kind: str, spec: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    """What an output was produced from, recorded in its manifest: the spec digest and the manifest
    digests of the artifacts read (`{field: uri}`; an input without a manifest has none)."""
    from metaspec.artifacts import ArtifactError, read_manifest

    digests: dict[str, str | None] = {}
    for field, uri in sorted(inputs.items()):
        try:
            digests[field] = read_manifest(uri).digest
        except (ArtifactError, ValueError):
            digests[field] = None  # a single file, a hub model, the bundled dataset
    return {"configDigest": spec_digest(kind, spec), "inputs": digests}


def check_provenance(where: str, recorded: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to reuse an output that another config or other inputs produced (PermanentError naming both).

    Outputs written before provenance was recorded carry none and are accepted.
    """
    if not recorded:
        return
    differences = []
    if recorded.get("configDigest") != current["configDigest"]:
        differences.append(f"config digest {str(recorded.get('configDigest'))[:12]} ≠ {current['configDigest'][:12]}")
    for field, digest in current["inputs"].items():
        before = (recorded.get("inputs") or {}).get(field)
        if digest and before and digest != before:
            differences.append(f"{field} manifest {before[:12]} ≠ {digest[:12]}")
    if differences:
        raise PermanentError(
            f"{where} was produced by another spec or other inputs than this one ({'; '.join(differences)}, "
            "recorded ≠ now): give the changed resource a new output URI (or a new name), or delete the old "
            "output to produce it again"
        )


def termination_message_path() -> Path:
    return Path(os.environ.get(TERMINATION_MESSAGE_ENV, TERMINATION_MESSAGE_PATH))


def write_summary(summary: dict[str, Any]) -> None:
    """Write the result summary for the operator, trimmed to the termination-message limit."""
    text = _compact(summary)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        # Whole JSON or nothing: a cut string would not parse. Keep what says why, shortening the message.
        keep = {k: summary[k] for k in ("phase", "reason", "errorKind", "artifacts") if k in summary}
        dropped = sorted(set(summary) - set(keep) - {"message"})
        log.warning(  # the pod log keeps the whole summary; its status gets the core
            "summary of %d bytes is over the %d-byte termination message: the status keeps %s, not %s: %s",
            len(text.encode()),
            TERMINATION_MESSAGE_LIMIT,
            ", ".join(keep) or "nothing",
            ", ".join(dropped),
            text,
        )
        for chars in (3000, 1000, 200, 0):
            text = _compact({**keep, "message": str(summary.get("message", ""))[:chars], "truncated": True})
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                break
        else:
            text = _compact({k: str(summary.get(k, ""))[:200] for k in ("phase", "reason")} | {"truncated": True})
    path = termination_message_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        log.warning("cannot write termination message to %s: %s", path, e)


def exit_code_for(error: BaseException) -> int:
    from metaspec.artifacts import ArtifactError
    from metaspec.records import InvalidData

    if isinstance(error, QualityError):
        return EXIT_QUALITY
    if isinstance(error, PermanentError | InvalidResource | InvalidData):
        return EXIT_PERMANENT
    if isinstance(error, ArtifactError):
        return EXIT_TRANSIENT if error.transient else EXIT_PERMANENT
    if isinstance(error, TransientError):
        return EXIT_TRANSIENT
    return 1


def run_component(name: str, body: Callable[[], int | None]) -> int:
    """Run a component's main function: log errors as one clear line, summarise, map to an exit code."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        if isinstance(error, SystemExit):
            raise
        code = exit_code_for(error)
        kind = ERROR_KINDS.get(code, "unexpected")
        if code == 1:
            log.exception("%s failed unexpectedly", name)
        else:
            log.error("%s failed (%s): %s", name, kind, error)
        write_summary(
            {
                "phase": "Failed",
                "reason": type(error).__name__,
                "message": str(error)[:3000],
                "errorKind": kind,
            }
        )
        return code


def setup_logging(json_logs: bool | None = None) -> None:
    """Plain lines on a terminal, JSON lines elsewhere (in pods) so log pipelines can parse them."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty() and os.environ.get("METASPEC_LOG_FORMAT", "json") == "json"
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("METASPEC_LOG_LEVEL", "INFO"))
    for name in CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)
