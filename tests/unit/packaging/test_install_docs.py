"""The install docs and chart README: manifests parse and validate, referenced files exist, values documented."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_objects import KUBECTL, VALUES, blocks

from metaspec.api import parse_resource

REPO = Path(__file__).resolve().parents[3]
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = {"install.md", "gitops.md", "kueue.md", "storage.md", "gpu-scheduling.md", "troubleshooting.md"}


def test_all_pages_exist() -> None:
    assert {p.name for p in DOCS} >= PAGES


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_manifests_parse_and_metaspec_ones_validate(page: Path) -> None:
    for block in blocks(page, "yaml"):
        docs = [d for d in yaml.safe_load_all(block) if d]
        assert docs, f"{page.name}: empty yaml block"
        for doc in docs:
            if doc.get("apiVersion") == "metaspec.dev/v1alpha1":
                parse_resource(doc)  # raises InvalidResource naming the field


@pytest.mark.parametrize("page", [*DOCS, REPO / "charts" / "metaspec" / "README.md"], ids=lambda p: p.name)
def test_referenced_repository_files_exist(page: Path) -> None:
    text = page.read_text()
    paths = set(re.findall(r"(?<!logs )\b((?:examples|deploy|charts|crds|images)/[\w./-]*[\w/])", text))
    for path in paths:
        assert (REPO / path).exists(), f"{page.name} refers to {path}, which does not exist"
    for link in re.findall(r"\]\(([\w./-]+\.md)\)", text):
        assert (page.parent / link).exists(), f"{page.name} links to {link}"


def _leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and value and key not in ("resources",) and not prefix.endswith("components."):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_chart_readme_documents_every_value() -> None:
    readme = (REPO / "charts" / "metaspec" / "README.md").read_text()
    missing = [
        key for key in _leaves(VALUES) if f"`{key}" not in readme and f".{key.rsplit('.', 1)[-1]}`" not in readme
    ]
    assert not missing, f"values not in charts/metaspec/README.md: {missing}"


def test_install_overlay_renders(tmp_path: Path) -> None:
    """The Kustomize overlay shown in install.md works against the base."""
    overlay = next(b for b in blocks(REPO / "docs" / "install.md", "yaml") if "overlays/prod" in b)
    overlay = overlay.replace("../../deploy/kustomize", os.path.relpath(REPO / "deploy" / "kustomize", tmp_path))
    (tmp_path / "kustomization.yaml").write_text(overlay)
    result = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (deployment,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"]
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    assert main["image"] == "registry.example.com/metaspec/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["METASPEC_IMAGE_TRAINER"] == "registry.example.com/metaspec/trainer:0.1.0"
    assert env["METASPEC_VLLM_IMAGE"] == "vllm/vllm-openai:v0.32.0", "the patch must merge env by name"


#: What client-side apply keeps in the last-applied-configuration annotation (all annotations together).
ANNOTATION_LIMIT = 256 * 1024


def test_server_side_apply_is_not_justified_by_crd_size() -> None:
    """The CRDs fit the annotation, so the docs must not say `--server-side` is needed for their size."""
    assert max(len(p.read_bytes()) for p in (REPO / "crds").glob("*.yaml")) < ANNOTATION_LIMIT
    for page in [
        *DOCS,
        REPO / "deploy" / "argocd" / "application.yaml",
        REPO / "deploy" / "kustomize" / "kustomization.yaml",
    ]:
        text = re.sub(r"\s+", " ", page.read_text())
        for claim in ("too large for client-side apply", "larger than the annotation", "CRDs are too large"):
            assert claim not in text, f"{page.name}: {claim!r}"
