"""Loading target and draft from artifacts: real S3, manifests, safetensors only, one tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from metaspec.api.serving import SpecServeSpec
from metaspec.artifacts import ChecksumMismatch, upload_dir
from metaspec.server.engine import IncompatibleModel, SamplingParams, SpeculativeEngine, load_models

CPU = torch.device("cpu")


def spec(target: str, draft: str | None = None, **extra) -> SpecServeSpec:
    body = {"target": {"uri": target}, **({"draft": {"uri": draft}} if draft else {}), **extra}
    return SpecServeSpec.model_validate(body)


def copy_artifact(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("_manifest.json"))
    return dest


async def test_models_from_s3_serve(tiny_llama: Path, s3_prefix: str, tmp_path: Path) -> None:
    upload_dir(tiny_llama, f"{s3_prefix}/target")
    upload_dir(tiny_llama, f"{s3_prefix}/draft")
    body = spec(f"{s3_prefix}/target", f"{s3_prefix}/draft", routing={"policy": "always"})
    engine = SpeculativeEngine.from_spec(body, "tiny", cache_dir=tmp_path, device="cpu")
    assert not engine.ready()
    engine.load()
    assert engine.ready()
    assert engine.served["target"].digest and engine.served["draft"].digest
    assert any(tmp_path.joinpath("target").iterdir()), "S3 models are cached locally"
    prompt = engine.encode_chat([{"role": "user", "content": "hi"}])
    deltas = [d async for d in engine.generate(prompt, SamplingParams(max_tokens=6))]
    # the draft is the target itself: every proposal is accepted
    stats = deltas[-1].stats
    assert stats.proposed_tokens > 0 and stats.accepted_tokens == stats.proposed_tokens


def test_tokenizer_mismatch_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    other = copy_artifact(tiny_llama, tmp_path / "other-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(other)
    upload_dir(other, other)
    with pytest.raises(IncompatibleModel) as error:
        load_models(spec(str(tiny_llama), str(other)), tmp_path / "cache", CPU)
    message = str(error.value)
    assert str(tiny_llama) in message and str(other) in message
    assert "tokenizer" in message and "vocabulary sizes 49152 vs 49153" in message


def test_pickle_weights_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    pickled = copy_artifact(tiny_llama, tmp_path / "pickled")
    from safetensors.torch import load_file

    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")
    upload_dir(pickled, pickled)
    with pytest.raises(IncompatibleModel, match=r"only pickle checkpoints \(pytorch_model.bin\).*safetensors"):
        load_models(spec(str(pickled)), tmp_path / "cache", CPU)


def test_a_corrupted_model_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    corrupted = copy_artifact(tiny_llama, tmp_path / "corrupted")
    shutil.copy(tiny_llama / "_manifest.json", corrupted / "_manifest.json")
    with (corrupted / "config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ChecksumMismatch):
        load_models(spec(str(corrupted)), tmp_path / "cache", CPU)
