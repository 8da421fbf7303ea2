"""The pipeline file `metaspec local run` takes: every resource validated, ordered by references."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from metaspec import pipeline
from metaspec.api import InvalidResource, Resource, parse_resource
from metaspec.local import strict_yaml

#: A pipeline file larger than this is refused unread (a few resources are kilobytes; `/dev/zero` is endless).
MAX_PIPELINE_BYTES = 16 * 2**20


class PipelineError(ValueError):
    """A pipeline file that cannot run: bad YAML, invalid resources, duplicate names, cycles."""


def load_pipeline(path: Path) -> list[Resource]:
    """Every resource of a (multi-document) YAML file, validated by the api models, in file order."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PIPELINE_BYTES + 1)
        if len(raw) > MAX_PIPELINE_BYTES:
            raise PipelineError(f"{path} is larger than {MAX_PIPELINE_BYTES} bytes: not a pipeline file")
        documents = [d for d in strict_yaml.load_all(raw.decode("utf-8")) if d is not None]
    except FileNotFoundError:
        raise PipelineError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise PipelineError(f"{path} is a directory: give the pipeline's YAML file") from None
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise PipelineError(f"{path} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path} is not valid YAML: {e}") from None
    except RecursionError:
        raise PipelineError(f"{path} is nested too deeply to be a pipeline") from None
    resources: list[Resource] = []
    errors: list[str] = []
    for number, body in enumerate(documents, start=1):
        meta = body.get("metadata") if isinstance(body, dict) else None
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        kind = body.get("kind", "?") if isinstance(body, dict) else "?"
        where = f"{path} document {number} ({kind if isinstance(kind, str) else '?'} {name})"
        if not isinstance(body, dict):
            errors.append(f"{where}: expected a mapping with apiVersion, kind, metadata, spec")
            continue
        try:
            resources.append(parse_resource(body, where=where))
        except InvalidResource as e:
            errors.append(str(e))
    seen: set[tuple[str, str]] = set()
    for r in resources:
        if pipeline.key(r) in seen:
            errors.append(f"{path}: {r.kind} {r.metadata.name!r} is defined twice")
        seen.add(pipeline.key(r))
    if not resources and not errors:
        errors.append(f"{path} holds no resources")
    if errors:
        raise PipelineError("\n".join(errors))
    try:
        return pipeline.topological_order(resources)
    except ValueError as e:
        raise PipelineError(f"{path}: {e}") from None


def _claims(resource: Resource) -> list[str]:
    cache = resource.spec.storage.model_cache_claim
    return [*pipeline.claims(resource), *([cache] if cache else [])]


def link_claims(resources: list[Resource], folders: dict[str, Path], root: Path) -> None:
    """Link each claim the pipeline names (`pvc://` URIs, `storage.modelCache.claimName`) to its host
    folder under `root`; a claim without one is refused."""
    needed = {claim: r for r in resources for claim in _claims(r)}
    missing = [f"{claim} (used by {r.kind} {r.metadata.name})" for claim, r in needed.items() if claim not in folders]
    if missing:
        raise PipelineError(
            f"no host folder for the claims {', '.join(missing)}: give `--claim NAME=DIR` for each pvc:// claim "
            "and storage.modelCache.claimName"
        )
    for claim, folder in folders.items():
        if not Path(folder).is_dir():
            raise PipelineError(f"--claim {claim}={folder}: {folder} is not a directory")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for claim, folder in folders.items():
        (root / claim).symlink_to(Path(folder).resolve(), target_is_directory=True)
