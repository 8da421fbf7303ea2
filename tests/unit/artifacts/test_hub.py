"""`hf://` models at a revision, read offline from a folder in the Hugging Face cache layout.

No network here: the tests build a repository with two revisions in the layout huggingface_hub's cache
uses (`models--org--name/refs/<ref>` → commit, `snapshots/<commit>/…`) and run the Hub client in
offline mode against it, so the real `snapshot_download` resolves the revision.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from metaspec.api.training import BaseModelSource
from metaspec.artifacts import NotFound, cache_outcomes, materialize
from metaspec.trainer.models import load_model
from metaspec_testing.models import hub_repo

MAIN, V2 = "a" * 40, "b" * 40
TOKEN = "hf_never-log-this-" + "z" * 24


@pytest.fixture
def hub(tiny_llama: Path, tiny_draft_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding `acme/tiny`: `main` is the 2-layer tiny Llama, tag `v2` the 1-layer one."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub_repo(tmp_path / "cache", "acme/tiny", {"main": (MAIN, tiny_llama), "v2": (V2, tiny_draft_llama)})


def layers(path: Path) -> int:
    return int(__import__("json").loads((path / "config.json").read_text())["num_hidden_layers"])


@pytest.mark.parametrize(
    "uri,revision,commit",
    [
        ("hf://acme/tiny", None, MAIN),
        ("hf://acme/tiny", "v2", V2),
        ("hf://acme/tiny@v2", None, V2),
        (f"hf://acme/tiny@{MAIN}", None, MAIN),
        ("hf://acme/tiny", V2, V2),
    ],
)
def test_the_requested_revision_is_fetched(hub: Path, uri: str, revision: str | None, commit: str) -> None:
    path, manifest = materialize(uri, hub, revision=revision)
    assert path.name == commit and manifest.digest == f"hf:{commit}"
    assert layers(path) == (1 if commit == V2 else 2)


def test_unknown_revision_and_conflicting_revisions_are_refused(hub: Path) -> None:
    with pytest.raises(Exception, match="not in the local Hugging Face cache"):
        materialize("hf://acme/tiny@v3", hub)
    with pytest.raises(ValueError, match="names revision 'v2' but 'main'"):
        materialize("hf://acme/tiny@v2", hub, revision="main")
    with pytest.raises(NotFound, match="not a directory"):
        materialize("pvc://models/none", hub)


def test_trainer_loads_the_revision_and_never_logs_the_token(hub: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The trainer's loader, at DEBUG, with HF_TOKEN set: weights of the asked revision, token unlogged."""
    caplog.set_level(logging.DEBUG)
    for revision, expected in (("v2", 1), (None, 2)):
        source = BaseModelSource(uri="hf://acme/tiny", revision=revision, hfTokenSecretRef={"name": "hf"})
        loaded = load_model(source, hub, torch.device("cpu"), torch.float32)
        assert loaded.model.config.num_hidden_layers == expected
        assert loaded.digest == f"hf:{V2 if revision else MAIN}"
    assert TOKEN not in caplog.text and caplog.records
    assert cache_outcomes(hub) == {"hf://acme/tiny@v2": "hit", "hf://acme/tiny": "hit"}


def test_a_pinned_commit_in_the_cache_is_a_hit_without_the_hub(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit cannot move, so a cached one is used with the Hub client online and the Hub unreachable."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    path, manifest = materialize(f"hf://acme/tiny@{V2}", hub)
    assert path.name == V2 and manifest.digest == f"hf:{V2}"
    assert cache_outcomes(hub)[f"hf://acme/tiny@{V2}"] == "hit"
