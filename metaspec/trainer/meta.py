"""ANIL-MAML: the inner loop adapts only the output head, on hidden states computed once.

MAML (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks") adapts
θ' = θ − α ∇θ L_support(θ) per task and trains θ on L_query(θ'), differentiating through the update.
ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?") adapts only the head in the inner loop:
the body's features are reused, so the body runs once over the support and query sets, and the
inner steps touch only the head.

The head's inner-loop gradient has a closed form for softmax cross-entropy on a linear head:
∂L/∂W = (softmax(h Wᵀ) − onehot(y))ᵀ h / N. Computing it explicitly (instead of `autograd.grad` with
`create_graph`) makes the whole inner loop an ordinary forward graph: the outer backward is a single
first-order backward through it (second order in θ, with no double-backward), and each token chunk
is checkpointed so no (N, V) tensor outlives its chunk.

Every inner step's update −lr Eᵀ H / N (E the chunk's (S, V) error) lies in the row space of the same
support features H (S, D), so the adapted head is W + U H with U (V, S) = −lr Σ_steps Eᵀ / N: the inner
loop never forms a (V, D) outer product, and the adapted logits h Wᵀ + (h Hᵀ) Uᵀ cost S/D of h Δᵀ for
the delta term; the support set's own h Wᵀ, the same at every step, is computed once. `adapt_head`
takes this form (`Head.span`) when the support set fits one chunk and S ≤ D (Llama-3.1-8B with
2048-token support sets: S/D = 1/2). It is the same function up to the order of float sums.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .losses import DEFAULT_CHUNK, chunked_cross_entropy, compiled, run_chunked, upcast


@dataclass(frozen=True)
class Head:
    """Fast weights of a linear output head.

    Full head: logits = h Wᵀ and W is adapted. Rank-r delta (`proj` set): logits = h Wᵀ + (h Rᵀ) Uᵀ
    with R (r, D) a fixed orthonormal projection and U (V, r) adapted from zero, so an inner step costs
    O(V·r) instead of O(V·D) and the fast weights are r/D the size of the head.

    Split full head (`split`, the default for a bf16/fp16 head): logits = h Wᵀ + h Δᵀ with Δ (V, D)
    adapted from zero and kept in fp32. Inner updates are ~1e-4 of the weights: folded into W they
    would round away in bf16, so a folded head must be fp32 and every inner-loop matmul then runs in
    fp32/TF32. Kept apart, Δ is rounded to bf16 relative to its own size, and both products run in the
    head's dtype, at twice TF32's rate on tensor cores.

    Support-span head (`span` = the support features H (S, D)): logits = h Wᵀ + (h Hᵀ) Uᵀ with U (V, S)
    kept apart like a split head's Δ (Δ = U H), and a step's update is the error itself (see the module
    docstring), so it applies to the features of that support set only.
    """

    weight: Tensor  # (V, D)
    proj: Tensor | None = None  # (r, D)
    delta: Tensor | None = None  # (V, r) with `proj`, (V, S) with `span`, (V, D) when split; None: zero
    split: bool = False
    span: Tensor | None = None  # (S, D)

    def step(self, grad: Tensor, lr: float) -> Head:
        """One SGD step on the fast weights, which are at least fp32 whatever the model's dtype."""
        if self.proj is None and self.span is None and not self.split:
            return replace(self, weight=upcast(self.weight) - lr * grad)
        return replace(self, delta=-lr * grad if self.delta is None else upcast(self.delta) - lr * grad)

    def features(self, h: Tensor) -> Tensor:
        """What the fast weights multiply: h (n, D), h Rᵀ (n, r), or h Hᵀ (n, S)."""
        if self.span is not None:
            return h.to(self.weight.dtype) @ self.span.to(self.weight.dtype).T
        return h if self.proj is None else h.to(self.proj.dtype) @ self.proj.T

    def logits(self, h: Tensor, z: Tensor | None = None) -> Tensor:
        """h (n, D) -> (n, V); `z`: h Wᵀ, when the caller has it (W never changes in a span head's steps)."""
        z = h.to(self.weight.dtype) @ self.weight.T if z is None else z  # (n, V)
        if self.delta is None:
            return z
        dtype = self.weight.dtype if self.split or self.span is not None else self.delta.dtype
        return upcast(z) + upcast(self.features(h).to(dtype) @ self.delta.to(dtype).T)  # (n, V)

    def outer(self, error: Tensor, h: Tensor) -> Tensor:
        """The step's direction for the error (n, V) at features h (n, D): errorᵀ features(h), (V, D) or
        (V, r), in fp32 (a split head multiplies in its dtype); with `span`, h is the support set and the
        direction is errorᵀ (V, S) itself."""
        if self.span is not None:
            return upcast(error).T
        if self.split:
            return upcast(error.to(self.weight.dtype).T @ h.to(self.weight.dtype))
        return error.T @ self.features(h).to(error.dtype)


def head_projection(dim: int, rank: int, seed: int = 0) -> Tensor:
    """The fixed R (r, D) of a rank-r head delta: orthonormal rows drawn from `seed`, so every step and
    every resumed run uses the same subspace."""
    if rank > dim:
        raise ValueError(f"head delta rank {rank} exceeds the hidden size {dim}")
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, rank, generator=generator, dtype=torch.float64))  # (D, r)
    return q.T


def output_head(model: nn.Module, proj: Tensor | None = None, split: bool | None = None) -> Head:
    """The initial fast weights: the model's output head (including a LoRA delta on it, if any), and
    with `proj`, a zero rank-r delta. `split` (default: for a bf16/fp16 full head) adapts a separate
    full-rank delta (see `Head`). `model` is the causal LM (not the peft wrapper)."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None or getattr(getattr(head, "base_layer", None), "bias", None) is not None:
        raise ValueError("ANIL needs a bias-free output head; this model's head has a bias")
    weight = _effective_weight(head)
    if proj is not None:
        return Head(weight, proj.to(device=weight.device, dtype=upcast(weight).dtype))
    return Head(weight, split=upcast(weight).dtype != weight.dtype if split is None else split)


def _effective_weight(head: nn.Module) -> Tensor:
    from peft.tuners.lora import LoraLayer

    if isinstance(head, LoraLayer):
        adapters = [a for a in head.active_adapters if a in head.lora_A]
        weight = head.base_layer.weight
        for adapter in adapters:
            weight = weight + head.get_delta_weight(adapter)
        return weight
    return head.weight


def _chunk_gradient(head: Head, h: Tensor, y: Tensor, w: Tensor | None = None, z: Tensor | None = None) -> Tensor:
    """Σ over the chunk of ∂(w·CE)/∂(fast weights) = (w ⊙ (softmax(logits) − onehot(y)))ᵀ features(h);
    `z`: the chunk's unadapted logits h Wᵀ, when already computed."""
    probs = upcast(head.logits(h, z)).softmax(dim=-1)  # (n, V)
    error = probs.scatter_add(1, y[:, None], -torch.ones_like(y[:, None], dtype=probs.dtype))  # (n, V)
    if w is not None:
        error = error * w[:, None].to(error.dtype)  # (n, V)
    return head.outer(error, h)  # (V, D) or (V, r)


def head_gradient(
    head: Head,
    h: Tensor,
    y: Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    weights: Tensor | None = None,
    z: Tensor | None = None,
    compile: bool = False,
) -> Tensor:
    """∂ (Σ w·CE(h, y) / N) / ∂ fast weights (w = 1 without `weights`: the mean CE), differentiable
    in `h` and the head. h: (N, D), y: (N,), weights: (N,); `z`: h Wᵀ (N, V), when known (N within one
    chunk); `compile`: each chunk's gradient through `losses.compiled`."""
    if z is not None and h.shape[0] > chunk_size:
        raise ValueError(f"known logits need the tokens in one chunk: {h.shape[0]} > {chunk_size}")
    tensors = (h, y) if weights is None else (h, y, weights)
    gradient = compiled(_chunk_gradient) if compile else _chunk_gradient
    return run_chunked(lambda *c: gradient(head, *c, z=z), *tensors, chunk_size=chunk_size) / y.numel()


def adapt_head(
    head: Head,
    h: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    first_order: bool,
    chunk_size: int = DEFAULT_CHUNK,
    weights: Tensor | None = None,
    span: bool = True,
    compile: bool = False,
) -> Head:
    """`steps` SGD steps on the (token-weighted) support loss, touching only the fast weights (never a
    module's weights).

    Fast weights are fp32 even when the model is bf16 (`Head.step`; a bf16 head adapts a separate
    delta, see `Head`). `first_order` treats each inner gradient as a constant (FOMAML). A full head
    adapts in the support set's span when that is cheaper (module docstring), unless `span` is False.
    `compile` fuses each chunk's element-wise work (`losses.compiled`).
    """
    z = None
    if span and head.proj is None and 0 < h.shape[0] <= min(chunk_size, h.shape[1]):
        head = replace(head, span=h.detach() if first_order else h, split=False)
        z = head.logits(h)  # (S, V), one chunk: the unadapted logits serve every step, and so does their backward
    for _ in range(steps):
        grad = head_gradient(head, h, y, chunk_size, weights, z, compile)
        head = head.step(grad.detach() if first_order else grad, lr)
    return head


def task_loss(
    head: Head,
    support: tuple[Tensor, ...],
    query: tuple[Tensor, ...],
    steps: int,
    lr: float,
    first_order: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    span: bool = True,
    compile: bool = False,
) -> Tensor:
    """Mean query cross-entropy through the head adapted on the support set.

    support, query: (hidden (N, D), labels (N,)) from the body, optionally with per-token
    loss weights (N,) as a third element (`TaskSampler(balance="tokens")`): each set's loss is then
    Σ w·CE / N. Backward reaches the body through the query features, and (unless `first_order`)
    through the support features inside the adapted head. `compile` fuses each chunk's element-wise
    work, inner steps and query loss alike (`losses.compiled`).
    """
    h_s, y_s, *w_s = support
    adapted = adapt_head(head, h_s, y_s, steps, lr, first_order, chunk_size, _one(w_s), span, compile)
    h_q, y_q, *w_q = query
    return chunked_cross_entropy(h_q, y_q, adapted.logits, chunk_size, _one(w_q), compile) / y_q.numel()


def _one(optional: list[Tensor]) -> Tensor | None:
    return optional[0] if optional else None
