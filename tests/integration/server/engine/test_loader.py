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
    cached = [entry for entry in tmp_path.iterdir() if entry.is_dir() and any(entry.glob("*.safetensors"))]
    assert cached, "S3 models are cached locally, an entry per manifest digest"
    prompt = engine.encode_chat([{"role": "user", "content": "hi"}])
    deltas = [d async for d in engine.generate(prompt, SamplingParams(max_tokens=6))]
    # the draft is the target itself: every proposal is accepted
    stats = deltas[-1].stats
    assert stats.proposed_tokens > 0 and stats.accepted_tokens == stats.proposed_tokens


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_prompt_lookup_serves_without_a_draft_model(smollm2: Path, tmp_path: Path, concurrency: int) -> None:
    """`promptLookup` instead of `draft`, on the real SmolLM2 asked to copy a sentence: no second model
    is loaded, lookup proposes from the request's own tokens (in the batch decoder, or at maxConcurrency 1
    in the sequential one, which a GPU compiles), it takes fewer target passes than tokens, and the greedy
    output is the target's own."""
    sampling = {"maxConcurrency": concurrency}
    outputs = {}
    for policy in ("never", "always"):
        body = spec(str(smollm2), promptLookup={}, routing={"policy": policy}, sampling=sampling, compile=False)
        engine = SpeculativeEngine.from_spec(body, "smol", cache_dir=tmp_path, device="cpu")
        engine.load()
        assert set(engine.served) == {"target"} and (engine.sequential is not None) == (concurrency == 1)
        if engine.sequential is not None:
            assert engine.sequential.draft is None and engine.sequential.lookup is not None
        text = "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near the river bank."
        prompt = engine.encode_chat([{"role": "user", "content": text}])
        deltas = [d async for d in engine.generate(prompt, SamplingParams(max_tokens=16))]
        outputs[policy] = ([t for d in deltas for t in d.token_ids], deltas[-1].stats)
    (ids, _), (looked_up, stats) = outputs["never"], outputs["always"]
    assert looked_up == ids
    assert stats.route == "speculative" and stats.accepted_tokens > 0 and stats.rounds < stats.completion_tokens


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


async def test_a_draft_behind_prompt_lookup_serves_from_the_spec(smollm2: Path, tmp_path: Path) -> None:
    """`draft` and `promptLookup` together: both proposers serve in the batch decoder, even at
    maxConcurrency 1, and the greedy output is the target's own (the draft is the target itself)."""
    from metaspec.server.engine.lookup import LookupFirstDraft

    outputs = {}
    for policy in ("never", "always"):
        body = spec(str(smollm2), str(smollm2), promptLookup={"minMatch": 2}, routing={"policy": policy},
                    sampling={"maxConcurrency": 1}, compile=False)  # fmt: skip
        engine = SpeculativeEngine.from_spec(body, "smol", cache_dir=tmp_path, device="cpu")
        engine.load()
        assert set(engine.served) == {"target", "draft"} and engine.sequential is None
        assert engine.decoder is not None and isinstance(engine.decoder.draft, LookupFirstDraft)
        text = "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near the river bank."
        prompt = engine.encode_chat([{"role": "user", "content": text}])
        deltas = [d async for d in engine.generate(prompt, SamplingParams(max_tokens=16))]
        outputs[policy] = ([t for d in deltas for t in d.token_ids], deltas[-1].stats)
        engine.close()
    (ids, _), (proposed, stats) = outputs["never"], outputs["always"]
    assert proposed == ids and stats.accepted_tokens > 0 and stats.rounds < stats.completion_tokens


def test_an_eagle3_draft_folder_serves_over_its_target(tiny_llama: Path, tmp_path: Path) -> None:
    """An EAGLE-3 folder (as the trainer saves it) loads over the target's features and decodes greedily
    exactly as the target alone; a broken `d2t` is refused at load, naming the draft."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from metaspec.drafts import Eagle3Draft, save_eagle3

    target = AutoModelForCausalLM.from_pretrained(tiny_llama)
    folder = tmp_path / "eagle"
    save_eagle3(Eagle3Draft.init_from_target(target, torch.arange(0, 4096, 2)), folder, torch.float32,
                AutoTokenizer.from_pretrained(tiny_llama))  # fmt: skip
    upload_dir(folder, folder)
    outputs = {}
    for policy in ("never", "always"):
        engine = SpeculativeEngine.from_spec(
            spec(str(tiny_llama), str(folder), routing={"policy": policy}), "tiny", tmp_path / policy, device="cpu"
        )
        engine.load()
        prompt = engine.encode_chat([{"role": "user", "content": "count to five"}])
        deltas = list(engine.generate_sync(prompt, SamplingParams(max_tokens=12)))
        outputs[policy] = [t for d in deltas for t in d.token_ids]
        engine.close()
    assert outputs["always"] == outputs["never"] and deltas[-1].stats.proposed_tokens > 0
    tensors = load_file(folder / "model.safetensors")
    tensors["d2t"][-1] = 10**6
    save_file(tensors, str(folder / "model.safetensors"))
    upload_dir(folder, folder)
    with pytest.raises(IncompatibleModel, match=r"not a usable EAGLE-3 draft: .*d2t maps draft id 2047"):
        load_models(spec(str(tiny_llama), str(folder)), tmp_path / "broken", CPU)
