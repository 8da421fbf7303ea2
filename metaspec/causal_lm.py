"""Loading a causal LM from a local folder: one rule for the trainer, the generator and the server.

`use_kernels=False`: transformers 5 otherwise kernelizes every model it loads (`USE_HUB_KERNELS`
defaults to on), and on a GPU, once the model is put in training mode, swaps layers for kernels it
fetches from the Hugging Face Hub at run time (`kernels-community/rotary` for Llama). That is code
from the Hub that no spec asked for; on a cluster without Hub access, or for a publisher the `kernels`
library cannot verify, it fails the run at its first step (seen on an H100: transformers 5.25.0,
kernels 0.19.1, "could not verify publisher trust status"). Models run the modeling code of the
installed transformers release, compiled by `torch.compile` where a spec asks for speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def load_causal_lm(folder: Path | str, dtype: torch.dtype, trust_remote_code: bool = False) -> Any:
    """The safetensors causal LM in `folder`, in `dtype`, on the CPU, without Hub kernels."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True, use_kernels=False
    )
