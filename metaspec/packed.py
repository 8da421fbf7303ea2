"""Linear layers on the CPU with their weights packed once for oneDNN.

On the CPU, torch runs a float32 `nn.Linear` through MKL's sgemm, and what a pass costs there depends on
how many tokens it holds in a way that hurts speculation: on a 2-core AMD EPYC, a SmolLM2-135M pass over
5 tokens (a verify pass at k = 4) costs 1.3 one-token steps, and one over 2 or 3 tokens 1.7–2.0
(`bench/verify_width.py`). `PackedLinear` keeps the weight in oneDNN's own layout, reordered once at load
(`torch.ops.mkldnn._reorder_linear_weight`, the op torch.compile's freezing pass emits for a linear
layer on the CPU, here without compiling), and runs it through oneDNN's `_linear_pointwise`. On the same
machine a step then takes 46 ms instead of 60, and a pass of up to 6 tokens 0.96–1.10 steps: a verify
pass costs about what a step does, and speculation gains what its acceptance gives.

Each row's result is also independent of the other rows in its pass (MKL's need not be; the tests check
ours): a verify pass scores each position exactly as the one-token step it stands for would.

The server packs the models it loads, and the generator's transformers engine the model it loads.
For inference only: a packed layer has no parameters and no gradient, and moving the model to another
device or dtype afterwards leaves its packed weights behind, so pack last. float32 and bfloat16 are
packed (oneDNN has no float16 path on most CPUs); a layer oneDNN refuses stays as it is.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

PACKED_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(torch.nn.Module):
    """An `nn.Linear`'s computation, its weight reordered once for oneDNN (see the module doc)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: torch.nn.Module) -> int:
    """Replace each `nn.Linear` of `model` that lives on the CPU in float32 or bfloat16 by a
    `PackedLinear`, in place; returns how many were replaced (0 without oneDNN). A weight shared with
    another module (a head tied to the embedding) stays where it is; the packed layer holds a copy."""
    if not torch.backends.mkldnn.is_available():
        return 0
    packed = 0
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            if child.weight.device.type != "cpu" or child.weight.dtype not in PACKED_DTYPES:
                continue
            try:
                setattr(module, name, PackedLinear(child))
            except RuntimeError as e:  # e.g. bfloat16 on a CPU without the instructions oneDNN needs
                log.warning("linear layer %s stays unpacked: %s", f"{prefix}.{name}".lstrip("."), e)
                continue
            packed += 1
    return packed
