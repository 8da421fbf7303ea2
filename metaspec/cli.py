"""The `metaspec` command. Each component owns its sub-command's arguments (`<package>/cli.py`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

#: sub-command -> (module with `main(argv) -> int`, one-line help)
COMPONENTS = {
    "operator": ("metaspec.operator.cli", "run the Kubernetes operator (kopf)"),
    "train": ("metaspec.trainer.cli", "run a TrainingRun's trainer: --config FILE"),
    "generate": ("metaspec.generator.cli", "run a TeacherGeneration's generator: --config FILE"),
    "serve": ("metaspec.server.cli", "run a SpecServe's speculative router: --config FILE"),
    "local": ("metaspec.local.cli", "run pipeline YAML on this machine: local run|status"),
    "report": ("metaspec.local.report", "write a Markdown + PNG report of a local run"),
    "dataset": ("metaspec.builtin", "write the built-in dataset as JSONL"),
}


def crds(argv: list[str]) -> int:
    from metaspec.api.crd import render_all

    parser = argparse.ArgumentParser(prog="metaspec crds", description="write the CRDs generated from metaspec/api")
    parser.add_argument("--out", type=Path, default=Path("crds"), help="directory (default: crds/)")
    parser.add_argument("--check", action="store_true", help="fail if the files on disk differ")
    args = parser.parse_args(argv)
    drift = []
    for name, text in render_all().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                drift.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if drift:
        print("out of date (run `make crds`): " + ", ".join(drift), file=sys.stderr)
        return 1
    return 0


def artifacts(argv: list[str]) -> int:
    from metaspec.artifacts import ArtifactError, Uri, cache_outcomes, download_dir, materialize, upload_dir

    parser = argparse.ArgumentParser(prog="metaspec artifacts", description="move artifacts with manifests")
    sub = parser.add_subparsers(dest="verb", required=True)
    push = sub.add_parser("push", help="upload a directory, then its _manifest.json")
    push.add_argument("src", type=Path)
    push.add_argument("uri")
    pull = sub.add_parser("pull", help="download a complete artifact, verifying checksums")
    pull.add_argument(
        "--cache", type=Path, help="fetch into this model cache (or find it there) and make DEST a link to the entry"
    )
    pull.add_argument("uri")
    pull.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.verb == "push":
            manifest = upload_dir(args.src, args.uri)
            print(f"{args.uri}: {len(manifest.files)} files, manifest sha256 {manifest.digest}")
        elif args.cache is not None:
            entry, _ = materialize(args.uri, args.cache)
            _link(args.dest, entry)
            outcome = cache_outcomes(args.cache).get(str(Uri.parse(args.uri)), "read in place")
            print(f"{args.dest} -> {entry}: {outcome} (model cache {args.cache})")
        else:
            manifest = download_dir(args.uri, args.dest)
            print(f"{args.dest}: {len(manifest.files)} files verified")
    except (ArtifactError, ValueError) as e:
        print(f"metaspec artifacts {args.verb}: {e}", file=sys.stderr)
        return 1
    return 0


def _link(link: Path, target: Path) -> None:
    """`link` pointing at `target`, replacing an older link atomically (a restarted pod pulls again)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    builtin = {
        "crds": (crds, "write crds/*.yaml from the api models"),
        "artifacts": (artifacts, "push/pull artifacts"),
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in {**COMPONENTS, **builtin}:
        lines = [f"  {name:<10} {help_}" for name, (_, help_) in {**COMPONENTS, **builtin}.items()]
        print("usage: metaspec <command> [args]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command in builtin:
        return builtin[command][0](rest)
    return importlib.import_module(COMPONENTS[command][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
