"""Fused kernels for a served model's body on a GPU: Liger-Kernel's RMSNorm, rotary embedding and SwiGLU.

A padded step (`PaddedSteps`) replays a CUDA graph of the model's eager body: launching costs nothing
then, but each kernel still runs on its own, and at a small model's decode sizes each costs a few
microseconds whatever it computes. transformers' Llama-style layer spends most of its kernels on
element-wise work: an RMSNorm is eight (casts, square, mean, add, rsqrt, two products), the rotary
embedding of queries and keys ten, the SwiGLU activation two. Liger-Kernel (Triton) does each in one.
`torch.compile` fuses the same work, but compiling the padded body took minutes a shape.

`fuse(model)` swaps the forwards of the model's own RMSNorm and SiLU-gated MLP modules (where they are
the Llama forms: `weight * x / rms(x)` with `variance_epsilon`, `down(silu(gate(x)) * up(x))`) and the
`apply_rotary_pos_emb` of the modeling modules its classes come from (process-wide, as Liger itself
patches it). Each new forward runs Liger's kernel only inside `fused()` (`PaddedSteps` enters it around
each padded step of the target or draft it fused), on CUDA tensors, and never while `torch.compile`
traces (inductor fuses the original itself); everywhere else it is the original forward.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from types import MethodType
from typing import Any

import torch

log = logging.getLogger(__name__)

_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("metaspec_fused_kernels", default=False)
_ROPE = "apply_rotary_pos_emb"
_SILU = ("SiLU", "SiLUActivation")  # torch's, transformers' (`ACT2FN["silu"]`)


@contextlib.contextmanager
def fused(on: bool = True) -> Iterator[None]:
    """Run the fused kernels of `fuse`d models in this block (in this thread or task) when `on`."""
    token = _ON.set(on)
    try:
        yield
    finally:
        _ON.reset(token)


def _active(x: torch.Tensor) -> bool:
    return not torch.compiler.is_compiling() and _ON.get() and x.is_cuda


def fuse(model: torch.nn.Module) -> bool:
    """Give `model`'s Llama-form norms, MLPs and rotary embedding Liger's kernels under `fused()` (see the
    module doc). False, and the model untouched, where Liger-Kernel is not installed or nothing matched."""
    liger = _liger()
    if liger is None:
        return False
    liger_rms_norm, liger_rope, liger_swiglu = liger
    norms, mlps, modules = plan(model)
    for norm in norms:
        norm.forward = MethodType(_norm_forward(liger_rms_norm, type(norm).forward), norm)
    for mlp in mlps:
        mlp.forward = MethodType(_mlp_forward(liger_swiglu, type(mlp).forward), mlp)
    for module in modules:
        original = getattr(module, _ROPE)
        if not getattr(original, "_metaspec_fused", False):
            setattr(module, _ROPE, _rope(liger_rope, original))
    names = ", ".join(m.__name__ for m in modules) or "none"
    log.info("fused kernels (Liger): %d norms, %d MLPs, the rotary embedding of %s", len(norms), len(mlps), names)
    return bool(norms or mlps or modules)


def fusible(model: torch.nn.Module) -> bool:
    """Whether `fuse` would give `model` fused kernels that run: Liger-Kernel installed, something of the
    model's to swap, and the model on a CUDA device (Triton's kernels need one)."""
    on_cuda = next(model.parameters()).is_cuda
    return on_cuda and _liger() is not None and any(plan(model))


@functools.cache
def _liger() -> tuple[Callable[..., Any], ...] | None:
    """Liger-Kernel's functional RMSNorm, rotary embedding and SwiGLU, or None where it (or Triton) is missing:
    the `cuda` extra. Looked up once a process: `fusible` and `fuse` ask for each model the engine loads."""
    try:
        from liger_kernel.transformers.functional import liger_rms_norm, liger_rope, liger_swiglu
    except ImportError as error:
        log.info("fused kernels off: %s", error)
        return None
    return liger_rms_norm, liger_rope, liger_swiglu


def plan(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module], list[Any]]:
    """What `fuse` swaps: the Llama-form RMSNorm modules, SiLU-gated MLP modules, and the modeling modules
    (Python modules) whose `apply_rotary_pos_emb` the model's attention calls."""
    norms, mlps, modules = [], [], []
    for sub in model.modules():
        if type(sub).__name__.endswith("RMSNorm") and hasattr(sub, "variance_epsilon") and _plain(sub):
            norms.append(sub)
        elif _gated(sub):
            mlps.append(sub)
        module = sys.modules.get(type(sub).__module__)
        if module is not None and callable(getattr(module, _ROPE, None)) and module not in modules:
            modules.append(module)
    return norms, mlps, modules


def _gated(module: torch.nn.Module) -> bool:
    """`down(silu(gate(x)) * up(x))`: the Llama MLP."""
    projections = all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj"))
    return projections and type(getattr(module, "act_fn", None)).__name__ in _SILU


def _plain(module: torch.nn.Module) -> bool:
    """A norm scaled by its weight alone (no offset such as Gemma's 1 + weight)."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.nn.Parameter) and weight.ndim == 1 and not hasattr(module, "offset")


def _norm_forward(kernel: Callable[..., torch.Tensor], original: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        if not _active(x):
            return original(self, x)
        # "llama": the variance in float32, the normalised input cast back before the weight, as transformers
        return kernel(x, self.weight, self.variance_epsilon, 0.0, "llama", False)

    return forward


def _mlp_forward(kernel: Callable[..., torch.Tensor], original: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        if not _active(x):
            return original(self, x)
        return self.down_proj(kernel(self.gate_proj(x), self.up_proj(x)))

    return forward


def _rope(kernel: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    def apply_rotary_pos_emb(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Liger rotates (B, heads, T, D) in place, with cos/sin (B or 1, T, D) over the whole head
        if not _active(q) or unsqueeze_dim != 1 or cos.shape[-1] != q.shape[-1]:
            return original(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
        return kernel(q, k, cos, sin)

    apply_rotary_pos_emb._metaspec_fused = True  # type: ignore[attr-defined]
    return apply_rotary_pos_emb
