"""Model sources: Hub ids with revisions, claims, tokens, and the bare `org/name` a user may write."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from metaspec.api.serving import SpecServeSpec
from metaspec.api.sources import ModelSource


def test_bare_hub_id_is_refused_with_the_hf_form() -> None:
    with pytest.raises(ValidationError, match=r"hf://meta-llama/Llama-3\.1-8B-Instruct for the Hub"):
        ModelSource(uri="meta-llama/Llama-3.1-8B-Instruct")
    assert ModelSource(uri="./meta-llama/Llama-3.1-8B-Instruct").uri.startswith("./")


@pytest.mark.parametrize(
    "fields,location,digest",
    [
        ({"uri": "hf://org/name"}, "hf://org/name", None),
        ({"uri": "hf://org/name", "revision": "v2"}, "hf://org/name@v2", "hf:v2"),
        ({"uri": "hf://org/name@v2", "revision": "v2"}, "hf://org/name@v2", "hf:v2"),
        ({"uri": "pvc://models/llama"}, "pvc://models/llama", None),
    ],
)
def test_location_folds_the_revision_in(fields: dict, location: str, digest: str | None) -> None:
    source = ModelSource(**fields)
    assert (source.location, source.hub_digest) == (location, digest)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"uri": "hf://org/name@v1", "revision": "v2"}, "names revision 'v1'"),
        ({"uri": "s3://models/x", "revision": "v2"}, "apply only to `hf://`"),
        ({"uri": "s3://models/x", "hfTokenSecretRef": {"name": "hf"}}, "apply only to `hf://`"),
        ({"uri": "pvc://Models/x"}, "malformed PVC URI"),
        ({"uri": "pvc://models/../x"}, "may not leave the claim"),
        ({"uri": "hf://org/na me"}, "malformed Hub URI"),
    ],
)
def test_inconsistent_sources_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSource(**fields)


def test_target_and_draft_share_one_token() -> None:
    spec = {"target": {"uri": "hf://org/t", "hfTokenSecretRef": {"name": "a"}}}
    SpecServeSpec(**spec, draft={"uri": "hf://org/d", "hfTokenSecretRef": {"name": "a"}})
    with pytest.raises(ValidationError, match="a pod has one `HF_TOKEN`"):
        SpecServeSpec(**spec, draft={"uri": "hf://org/d", "hfTokenSecretRef": {"name": "b"}})
