"""The Dockerfiles' invariants, checked by parsing the files: building an image takes minutes and a
registry or a Debian mirror, so the suite does not. `make images` builds them with Docker; `make
images-debian` builds the operator, trainer and server images without Docker or a registry (buildah, a
base from Debian's packages) and runs `metaspec` inside each.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from metaspec.cli import COMPONENTS
from metaspec.operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGES = ["operator", "trainer", "generator", "server"]
#: The `metaspec` sub-command each image runs, and the extra that sub-command needs.
COMMAND = {"operator": "operator", "trainer": "train", "generator": "generate", "server": "serve"}
REQUIRED_LABELS = {"title", "description", "source", "licenses", "version", "revision"}
MAKEFILE = (REPO / "Makefile").read_text()


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[list[Stage], dict[str, str]]:
    """Stages with their instructions (continuations joined, comments dropped) and the global ARG defaults."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, f"{path}: cannot parse FROM {rest!r}"
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], match.group(1))
            stages.append(Stage(image, match.group(2)))
        elif keyword == "ARG" and not stages and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages, args


def extras_of(name: str, seen: set[str] | None = None) -> set[str]:
    """The requirement names an extra pulls in, following `metaspec[...]` self-references."""
    seen = set() if seen is None else seen
    seen.add(name)
    out = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        if req.startswith("metaspec["):
            for inner in req[len("metaspec[") : req.index("]")].split(","):
                if inner not in seen:
                    out |= extras_of(inner.strip(), seen)
        else:
            out.add(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower())
    return out


def installed_extras(stages: list[Stage]) -> set[str]:
    extras = set()
    for stage in stages:
        for run in stage.all("RUN"):
            for group in re.findall(r"metaspec-\*\.whl\)\[([a-z,]+)\]", run):
                extras |= set(group.split(","))
    return extras


@pytest.fixture(params=IMAGES)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Stage], dict[str, str]]:
    path = REPO / "images" / request.param / "Dockerfile"
    assert path.is_file(), f"missing {path}"
    stages, args = parse(path)
    return request.param, stages, args


def test_multi_stage_with_pinned_bases(dockerfile) -> None:
    component, stages, _ = dockerfile
    assert len(stages) >= 2, f"{component}: build and runtime stages expected"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue
        ref = stage.image.split("/")[-1]
        assert "@sha256:" in ref or ":" in ref, f"{component}: base image {stage.image!r} has no tag"
        tag = ref.split(":", 1)[1] if ":" in ref else ""
        assert tag != "latest", f"{component}: base image {stage.image!r} is not pinned"
        assert re.search(r"\d", tag) or "@sha256:" in ref, f"{component}: tag of {stage.image!r} names no version"


def test_runs_as_numeric_non_root_user(dockerfile) -> None:
    component, stages, _ = dockerfile
    users = stages[-1].all("USER")
    assert users, f"{component}: the final stage sets no USER (it would run as root)"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"{component}: USER {users[-1]!r} must be numeric (runAsNonRoot can only verify a UID)"
    assert int(match.group(1)) != 0 and int(match.group(2) or 1) != 0, f"{component}: runs as root"


def test_entrypoint_is_the_console_script(dockerfile) -> None:
    component, stages, _ = dockerfile
    entrypoint = json.loads(stages[-1].all("ENTRYPOINT")[-1])
    assert entrypoint == ["metaspec"]
    assert "metaspec" in PYPROJECT["project"]["scripts"]
    command = json.loads(stages[-1].all("CMD")[-1])
    assert command[0] == COMMAND[component]
    assert command[0] in COMPONENTS, f"{component}: `metaspec {command[0]}` is not a sub-command"


def test_installs_existing_extras_for_its_component(dockerfile) -> None:
    component, stages, _ = dockerfile
    extras = installed_extras(stages)
    declared = set(PYPROJECT["project"]["optional-dependencies"])
    assert extras, f"{component}: installs no metaspec extra"
    assert extras <= declared, f"{component}: extras {sorted(extras - declared)} are not in pyproject.toml"
    assert component in extras, f"{component}: does not install the `{component}` extra"


def test_operator_image_is_slim() -> None:
    stages, _ = parse(REPO / "images" / "operator" / "Dockerfile")
    pulled = set().union(*(extras_of(e) for e in installed_extras(stages)))
    assert not pulled & {"torch", "transformers", "vllm"}, f"the operator image pulls {pulled}"


def test_generator_builds_on_vllm() -> None:
    stages, _ = parse(REPO / "images" / "generator" / "Dockerfile")
    assert stages[-1].image.startswith("vllm/vllm-openai:")
    assert "vllm" in installed_extras(stages)


def test_oci_labels(dockerfile) -> None:
    component, stages, _ = dockerfile
    labels = " ".join(stages[-1].all("LABEL"))
    found = set(re.findall(r"org\.opencontainers\.image\.([a-z]+)=", labels))
    assert found >= REQUIRED_LABELS, f"{component}: missing labels {sorted(REQUIRED_LABELS - found)}"
    assert f'licenses="{PYPROJECT["project"]["license"]["text"]}"' in labels


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_build_context_holds_what_copy_needs(dockerfile) -> None:
    component, stages, _ = dockerfile
    patterns = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _ = copy.split()
            for source in sources:
                assert (REPO / source).exists(), f"{component}: COPY {source} does not exist"
                assert not _ignored(source, patterns), f"{component}: .dockerignore excludes {source}"
    assert _ignored(".venv/bin/python", patterns) and _ignored("tests/conftest.py", patterns)


def _make_default(name: str) -> str:
    match = re.search(rf"^{name} \??[:]?= *(.+)$", MAKEFILE, re.MULTILINE)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def test_images_built_are_the_images_deployed() -> None:
    """`make images` tags `<REGISTRY>/<component>`; the chart and the operator's defaults pull those names."""
    registry = _make_default("REGISTRY")
    assert _make_default("COMPONENTS").split() == IMAGES
    chart = yaml.safe_load((REPO / "charts" / "metaspec" / "values.yaml").read_text())
    assert chart["operator"]["image"]["repository"] == f"{registry}/operator"
    defaults = OperatorSettings().images
    for component in set(IMAGES) - {"operator"}:
        assert chart["components"][component]["repository"] == f"{registry}/{component}"
        assert defaults[component].rsplit(":", 1)[0] == f"{registry}/{component}"


def test_one_vllm_release_everywhere() -> None:
    """The generator's base, SpecServe's vLLM image (operator default and chart) are the release of vLLM
    that the suite runs (`make vllm-venv`, vLLM's CPU build of the same version)."""
    release = re.fullmatch(r"vllm(?:-cpu)?==(\S+)", _make_default("VLLM"))
    assert release, _make_default("VLLM")
    image = f"vllm/vllm-openai:v{release.group(1)}"
    _, args = parse(REPO / "images" / "generator" / "Dockerfile")
    assert args["VLLM_IMAGE"] == image
    assert OperatorSettings().vllm_image == image
    vllm = yaml.safe_load((REPO / "charts" / "metaspec" / "values.yaml").read_text())["components"]["vllm"]
    assert f"{vllm['repository']}:{vllm['tag']}" == image


def test_debian_build_replaces_every_registry_base() -> None:
    """`images/build-debian.sh` builds with `--build-arg PYTHON_IMAGE=<a base made from Debian's packages>`:
    the images it builds take every stage from that argument or from an earlier stage, so none needs a
    registry. The generator's final stage is vLLM's image, which only a registry has."""
    script = (REPO / "images" / "build-debian.sh").read_text()
    match = re.search(r"else IMAGES=\(([a-z ]+)\)", script)
    assert match, "build-debian.sh: no default image list"
    built = match.group(1).split()
    assert sorted(built) == sorted(set(IMAGES) - {"generator"})
    assert '--build-arg "PYTHON_IMAGE=$BASE"' in script
    for image in built:
        stages, args = parse(REPO / "images" / image / "Dockerfile")
        names = {s.name for s in stages if s.name}
        for stage in stages:
            assert stage.image in names or stage.image == args["PYTHON_IMAGE"], f"{image}: FROM {stage.image}"
