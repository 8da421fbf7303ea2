"""checkov and trivy over every rendered manifest (chart cases, Kustomize, operator-built objects) and the
Dockerfiles, one run of each over one folder; their findings must be exactly those accepted, with a reason,
in `scan_baseline.yaml`: a new finding fails, and so does an accepted one that no longer occurs."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_objects import REPO
from packaging_tools import path

BASELINE = yaml.safe_load((Path(__file__).with_name("scan_baseline.yaml")).read_text())
IMAGES = ["operator", "trainer", "generator", "server"]
#: `--skip-download`: no Prisma Cloud guideline lookups (no network here).
CHECKOV_OPTIONS = (
    "--framework",
    "kubernetes",
    "dockerfile",
    "--output",
    "json",
    "--quiet",
    "--compact",
    "--skip-download",
)
#: `--skip-check-update`: the checks built into the binary, no network.
TRIVY_OPTIONS = ("--skip-check-update", "--quiet", "--format", "json")


def _file_name(source: str, obj: dict[str, Any]) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", f"{source}--{obj['kind']}--{obj['metadata']['name']}".lower())


@pytest.fixture(scope="module")
def scan_folder(rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file per distinct object (named after the first source rendering it), and the Dockerfiles."""
    folder = tmp_path_factory.mktemp("scan")
    seen: set[str] = set()
    for source, objects in rendered.items():
        for obj in objects:
            text = yaml.safe_dump(obj, sort_keys=False)
            if text not in seen:
                seen.add(text)
                (folder / f"{_file_name(source, obj)}.yaml").write_text(text)
    for image in IMAGES:
        (folder / f"dockerfile-{image}").mkdir()
        shutil.copy(REPO / "images" / image / "Dockerfile", folder / f"dockerfile-{image}" / "Dockerfile")
    return folder


def _run(command: list[str]) -> str:
    binary = Path(command[0])
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: run `make tools`")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: checkov found something
    return result.stdout


def checkov(folder: Path) -> set[tuple[str, str]]:
    """(check id, scanned file) of every failed check."""
    out = _run([str(path("checkov")), "-d", str(folder), *CHECKOV_OPTIONS])
    reports = json.loads(out)
    return {
        (check["check_id"], _scanned(check["file_path"]))
        for report in (reports if isinstance(reports, list) else [reports])
        for check in report["results"]["failed_checks"]
    }


def trivy(folder: Path, cache: Path) -> set[tuple[str, str]]:
    """(check id, scanned file) of every misconfiguration; no network (`--skip-check-update`)."""
    out = _run([str(path("trivy")), "config", *TRIVY_OPTIONS, "--cache-dir", str(cache), str(folder)])
    found = set()
    for result in json.loads(out).get("Results", []):
        for finding in result.get("Misconfigurations") or []:
            found.add((finding["ID"], _scanned(result["Target"])))
    return found


def _scanned(target: str) -> str:
    """The scanned file's name without `.yaml`; a Dockerfile by its folder (`dockerfile-operator`)."""
    name = Path(target)
    return name.parent.name if name.name == "Dockerfile" else name.name.removesuffix(".yaml")


def compare(tool: str, findings: set[tuple[str, str]]) -> list[str]:
    accepted = BASELINE[tool]
    errors = [
        f"{tool} {check} in {where}: new finding (fix it, or accept it with a reason in scan_baseline.yaml)"
        for check, where in sorted(findings)
        if not any(fnmatch.fnmatch(where, glob) for glob in accepted.get(check, {}).get("where", []))
    ]
    for check, entry in accepted.items():
        assert entry.get("reason"), f"{tool} {check}: an accepted finding needs its reason"
        for glob in entry["where"]:
            if not any(c == check and fnmatch.fnmatch(w, glob) for c, w in findings):
                errors.append(f"{tool} {check} in {glob}: accepted but no longer found; remove it from the baseline")
    return errors


@pytest.mark.slow
def test_checkov_and_trivy_find_only_accepted_findings(scan_folder: Path, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:  # one process each, side by side
        checkov_run = pool.submit(checkov, scan_folder)
        trivy_run = pool.submit(trivy, scan_folder, tmp_path / "cache")
        errors = compare("checkov", checkov_run.result()) + compare("trivy", trivy_run.result())
    assert not errors, "\n".join(errors)
