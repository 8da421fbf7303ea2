"""Loading the models a run trains: full-precision safetensors artifacts, and drafts cut from a target."""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaspec.api.training import QUANTIZED_REASON, BaseModelSource
from metaspec.artifacts import materialize
from metaspec.causal_lm import load_causal_lm
from metaspec.runtime import PermanentError

log = logging.getLogger(__name__)

FIELD = "spec.baseModel"
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    local_dir: Path
    digest: str | None  # the artifact's manifest digest: which weights exactly


def check_loadable(local_dir: Path, where: str = FIELD) -> dict[str, Any]:
    """The model's config, after refusing what the trainer must not load: quantized weights and
    pickled (`.bin`) checkpoints, which can run arbitrary code when loaded."""
    config_path = local_dir / "config.json"
    if not config_path.is_file():
        raise PermanentError(f"{where}.uri: {local_dir} has no config.json; is it a Hugging Face model directory?")
    config = json.loads(config_path.read_text())
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "unknown")
        raise PermanentError(f"{where}: the model is quantized ({method}): {QUANTIZED_REASON}")
    weights = sorted(local_dir.glob("*.safetensors"))
    if not weights:
        found = sorted(p.name for p in local_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
        raise PermanentError(
            f"{where}.uri: {local_dir} has no *.safetensors weights (found: {', '.join(found) or 'none'}); "
            "only safetensors are loaded: re-save the model with save_pretrained(safe_serialization=True)"
        )
    for path in weights:
        try:
            quantized = _quantized_tensor(path)
        except Exception as e:  # safetensors raises its own SafetensorError for a damaged header
            raise PermanentError(f"{where}.uri: {path.name} is not a readable safetensors file ({e})") from None
        if quantized:
            raise PermanentError(f"{where}: the model is quantized ({path.name}: {quantized}): {QUANTIZED_REASON}")
    return config


#: Storage types of quantized weights (FP8, 8-bit and packed integers) and the tensors that only
#: quantized checkpoints carry (GPTQ/AWQ packing and zeros, compressed-tensors and bitsandbytes scales).
_QUANTIZED_DTYPES = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "I8", "U8", "I4", "U4"}
_QUANTIZED_SUFFIXES = (".qweight", ".qzeros", ".g_idx", ".weight_scale", ".weight_packed", ".SCB", ".absmax")


def _quantized_tensor(path: Path) -> str | None:
    """What makes a safetensors file quantized, from its header alone (a model's name proves nothing:
    `q4_k_m`, `exl2`, `fp8` checkpoints need not say so, and a config may lack `quantization_config`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            dtype = f.get_slice(name).get_dtype()
            if dtype in _QUANTIZED_DTYPES or name.endswith(_QUANTIZED_SUFFIXES):
                return f"tensor {name} is {dtype}"
    return None


def load_model(
    source: BaseModelSource, cache_dir: Path, device: torch.device, dtype: torch.dtype, where: str = FIELD
) -> LoadedModel:
    """Fetch (verified against its manifest), check and load a causal LM and its tokenizer."""
    from transformers import AutoTokenizer

    local_dir, manifest = materialize(str(source.location), cache_dir)
    check_loadable(local_dir, where)
    trust = source.trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(local_dir, trust_remote_code=trust)
        model = load_causal_lm(local_dir, dtype, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        hint = " (set trustRemoteCode: true only if you trust its code)" if "trust_remote_code" in str(e) else ""
        raise PermanentError(f"{where}: cannot load {source.uri}: {e}{hint}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s (%s, %.1fM parameters)", source.uri, dtype, sum(p.numel() for p in model.parameters()) / 1e6)
    return LoadedModel(model.to(device), tokenizer, local_dir, manifest.digest if manifest else None)


def derive_draft(target: nn.Module, num_layers: int) -> nn.Module:
    """A draft made of the target's embeddings, first `num_layers` layers, final norm and head.

    Shares the tokenizer by construction; the weights are copies, so training the draft leaves the
    target (the distillation teacher) untouched.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(target.config)
    total = config.num_hidden_layers
    if num_layers > total:
        raise PermanentError(f"spec.draft.numLayers: {num_layers} exceeds the target's {total} layers")
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype).to(next(target.parameters()).device)
    kept = {k: v for k, v in target.state_dict().items() if not (m := _LAYER.search(k)) or int(m.group(1)) < num_layers}
    missing, unexpected = draft.load_state_dict(kept, strict=False)
    missing = [k for k in missing if k not in _tied_names(draft)]
    if missing or unexpected:
        raise PermanentError(
            f"spec.draft: cannot cut a draft from this architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return draft


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names that alias another parameter (tied embeddings) and need no loading of their own."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return tied
