"""Target and draft models from artifact URIs: verified, safetensors only, one tokenizer.

A model is materialised through `metaspec.artifacts.materialize` (manifest and checksums verified,
`s3://` cached locally by manifest digest), loaded only from safetensors (pickle checkpoints can run
code when unpickled, so `.bin`/`.pt` weights are refused), and executes repository code only when its
`ModelSource.trustRemoteCode` says so. Speculative sampling compares the two models' distributions
token by token, so the draft's tokenizer must be the target's: same vocabulary, same special tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metaspec.api.serving import SpecServeSpec, ThresholdCalibration
from metaspec.api.sources import ModelSource
from metaspec.artifacts import materialize
from metaspec.causal_lm import load_causal_lm
from metaspec.devices import resolve_dtype
from metaspec.drafts import DraftFormatError, Eagle3Draft, is_eagle3, load_eagle3
from metaspec.drafts.calibration import load_calibration
from metaspec.drafts.vocabulary import SubsetHead, load_draft_vocabulary
from metaspec.packed import pack_linears
from metaspec.runtime import PermanentError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class IncompatibleModel(PermanentError):
    """A model the server refuses to load; the message names the model and what to do."""


@dataclass
class LoadedModel:
    role: str  # "target" | "draft"
    uri: str
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any
    digest: str | None  # sha256 of the artifact's manifest: what is actually served
    calibration: ThresholdCalibration | None = None  # a draft's, for `confidenceThreshold: auto`


def check_safetensors(local: Path, role: str, uri: str) -> None:
    """Refuse a model whose weights exist only as pickle checkpoints."""
    if any(local.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in local.iterdir() if p.suffix in PICKLE_SUFFIXES)
    found = f"only pickle checkpoints ({', '.join(pickles)})" if pickles else "no *.safetensors weights"
    raise IncompatibleModel(
        f"{role} model {uri}: {found}. The server loads safetensors only, because unpickling a checkpoint "
        "can execute arbitrary code; convert it (`model.save_pretrained(dir, safe_serialization=True)`)"
    )


def load_model(
    source: ModelSource,
    role: str,
    cache_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    target: LoadedModel | None = None,
) -> LoadedModel:
    """A causal LM, or (a draft given its `target`) an EAGLE-3 draft folder over the target's features."""
    from transformers import AutoTokenizer

    uri = str(source.location)
    local, manifest = materialize(uri, cache_dir)
    check_safetensors(local, role, uri)
    trust = source.trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise IncompatibleModel(f"{role} model {uri} has no usable tokenizer: {e}") from None
    if target is not None and is_eagle3(local):
        try:
            model = load_eagle3(local, target.model.get_input_embeddings(), target.model.config).to(dtype)
        except DraftFormatError as e:
            raise IncompatibleModel(f"{role} model {uri} is not a usable EAGLE-3 draft: {e}") from None
    else:
        model = load_causal_lm(local, dtype, trust_remote_code=trust)
        _prune_head(model, local, role, uri)
    model.to(device).eval()
    packed = pack_linears(model)  # on the CPU: oneDNN, weights reordered once (`metaspec.packed`)
    log.info("loaded %s model %s (%s, %s, %d linear layers packed)", role, uri, dtype, device, packed)
    try:
        calibration = load_calibration(local) if target is not None else None
    except DraftFormatError as e:
        raise IncompatibleModel(f"{role} model {uri}: {e}") from None
    return LoadedModel(role, uri, model, tokenizer, manifest.digest if manifest else None, calibration)


def _prune_head(model: Any, local: Path, role: str, uri: str) -> None:
    """A draft trained with `draft.vocabulary` scores only those rows of its head (`SubsetHead`)."""
    head = model.get_output_embeddings()
    try:
        ids = load_draft_vocabulary(local, head.weight.shape[0])
    except DraftFormatError as e:
        raise IncompatibleModel(f"{role} model {uri}: {e}") from None
    if ids is not None:
        model.set_output_embeddings(SubsetHead(head, ids, head.weight.shape[0]))


def tokenizer_differences(target: Any, draft: Any) -> list[str]:
    """What differs between two tokenizers, for speculative decoding's purpose (empty: compatible)."""
    problems = []
    target_vocab, draft_vocab = target.get_vocab(), draft.get_vocab()
    if target_vocab != draft_vocab:
        problems.append(f"vocabulary sizes {len(target_vocab)} vs {len(draft_vocab)}")
        differing = sorted(t for t in set(target_vocab) | set(draft_vocab) if target_vocab.get(t) != draft_vocab.get(t))
        shown = ", ".join(f"{t!r}: {target_vocab.get(t)} vs {draft_vocab.get(t)}" for t in differing[:5])
        problems.append(f"{len(differing)} tokens map to different ids ({shown})")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(target, name, None) != getattr(draft, name, None):
            problems.append(f"{name} {getattr(target, name, None)} vs {getattr(draft, name, None)}")
    if sorted(target.all_special_tokens) != sorted(draft.all_special_tokens):
        problems.append(f"special tokens {sorted(target.all_special_tokens)} vs {sorted(draft.all_special_tokens)}")
    return problems


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    problems = tokenizer_differences(target.tokenizer, draft.tokenizer)
    if problems:
        raise IncompatibleModel(
            f"draft {draft.uri} does not share the tokenizer of target {target.uri}: {'; '.join(problems)}. "
            "Speculative decoding compares both models token by token: use a draft trained with the "
            "target's tokenizer"
        )


def shared_vocab(target: Any, draft: Any | None, tokenizer: Any) -> int:
    """Logit columns both models score (embedding matrices may be padded beyond the tokenizer)."""
    # an EAGLE-3 draft scores a subset of the target's vocabulary, mapped onto it by its `d2t`
    heads = [m.get_output_embeddings() for m in (target, draft) if m is not None and not isinstance(m, Eagle3Draft)]
    # a `SubsetHead` spreads its rows over `vocab`; a head packed for the CPU keeps no `weight`
    sizes = [
        getattr(head, "vocab", None) or getattr(head, "out_features", None) or head.weight.shape[0] for head in heads
    ]
    vocab = min(sizes)
    if len(tokenizer) > vocab:
        raise IncompatibleModel(f"the tokenizer has {len(tokenizer)} tokens but a model scores only {vocab}")
    return vocab


def load_models(spec: SpecServeSpec, cache_dir: Path, device: torch.device) -> tuple[LoadedModel, LoadedModel | None]:
    """Target and (when the spec has one) draft, checked to share a tokenizer."""
    dtype = resolve_dtype(spec.dtype, device)
    target = load_model(spec.target, "target", cache_dir, device, dtype)
    if spec.draft is None:
        return target, None
    draft = load_model(spec.draft, "draft", cache_dir, device, dtype, target)
    check_same_tokenizer(target, draft)
    return target, draft
