"""EAGLE-3 feature-level drafts: the model, its config, and its folder in the layout vLLM serves.

EAGLE-3 (Li et al. 2025, "EAGLE-3: Scaling up Inference Acceleration of Large Language Models via
Training-Time Test") drafts from the target's own features instead of from tokens alone. The target
exposes the residual stream entering three of its layers (low, middle, high: by default layers 2,
L/2 and L−3 of L, as vLLM and SGLang pick them); a linear layer `fc` fuses the three into one
vector g_t. One decoder layer then reads g_t next to the embedding of the token x_{t+1} that follows
position t (the two normalised and concatenated, so its q/k/v projections take 2·hidden inputs) and
outputs a feature whose head predicts x_{t+2}. Drafting further, the draft feeds its own output
feature back in place of g, with the token it just proposed: training-time test trains exactly that
loop, so the draft is not only good one step ahead.

The draft's head scores `draft_vocab_size` tokens, a subset of the target's vocabulary (FR-Spec, Zhao
et al. 2025; EAGLE-3's draft vocabulary): `d2t[i]` is the *offset* from draft id i to its target id
(target = i + d2t[i]), `t2d` marks the target ids the draft can propose. That is vLLM's
`Eagle3LlamaForCausalLM` checkpoint: `fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`, `t2d` in
`model.safetensors`, and a Llama `config.json` with `architectures: [LlamaForCausalLMEagle3]`,
`draft_vocab_size` and `eagle_aux_hidden_state_layer_ids`. A draft with the target's whole vocabulary
has no `d2t`/`t2d` (vLLM's loader then has no parameter to take them). The token embedding is the
target's (not saved: vLLM shares the target's when the checkpoint has none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .vocabulary import DraftFormatError, check_d2t

ARCHITECTURE = "LlamaForCausalLMEagle3"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


#: config.json keys `Eagle3Config.to_json` writes itself; any other key is kept as it was.
_OWN_KEYS = frozenset(
    [
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_hidden_layers",
        "vocab_size",
        "draft_vocab_size",
        "target_hidden_size",
        "eagle_aux_hidden_state_layer_ids",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "max_position_embeddings",
        "hidden_act",
        "tie_word_embeddings",
    ]
)


def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """The layers whose input the draft reads: low, middle, high (vLLM's and SGLang's default, 2, L/2
    and L − 3), kept within 1..L−1 for very shallow targets."""
    return tuple(min(max(i, 1), max(num_layers - 1, 1)) for i in (2, num_layers // 2, num_layers - 3))


@dataclass(frozen=True)
class Eagle3Config:
    """The draft's shape. Attention and MLP sizes follow the target's, which vLLM assumes."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    """The target's vocabulary."""
    draft_vocab_size: int
    """Rows of the draft's head (≤ vocab_size)."""
    aux_layers: tuple[int, ...]
    """Target layers whose input (the residual stream) is fused: vLLM's `eagle_aux_hidden_state_layer_ids`."""
    target_hidden_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 8192
    hidden_act: str = "silu"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Other config.json fields, kept as they were (dtype, token ids)."""

    @classmethod
    def for_target(
        cls, target: Any, draft_vocab_size: int | None = None, aux_layers: tuple[int, ...] | None = None
    ) -> Eagle3Config:
        """The draft of a Llama-style target (`target` its transformers config)."""
        text = getattr(target, "get_text_config", lambda: target)()
        rope = dict(getattr(text, "rope_parameters", None) or {})
        theta = rope.pop("rope_theta", getattr(text, "rope_theta", 10000.0))
        heads = text.num_attention_heads
        return cls(
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab_size=text.vocab_size,
            draft_vocab_size=draft_vocab_size or text.vocab_size,
            aux_layers=tuple(aux_layers or default_aux_layers(text.num_hidden_layers)),
            target_hidden_size=text.hidden_size,
            rms_norm_eps=text.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=rope if rope.get("rope_type", "default") != "default" else None,
            max_position_embeddings=text.max_position_embeddings,
            hidden_act=text.hidden_act,
        )

    def llama_config(self) -> Any:
        """A transformers LlamaConfig of the draft layer (rotary embedding and MLP come from it)."""
        from transformers import LlamaConfig

        return LlamaConfig(**{k: v for k, v in self.to_json().items() if k != "architectures"})

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "architectures": [ARCHITECTURE],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_hidden_layers": 1,
            "vocab_size": self.vocab_size,
            "draft_vocab_size": self.draft_vocab_size,
            "target_hidden_size": self.target_hidden_size,
            "eagle_aux_hidden_state_layer_ids": list(self.aux_layers),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": False,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any], where: str) -> Eagle3Config:
        if ARCHITECTURE not in (body.get("architectures") or []):
            raise DraftFormatError(f"{where}: architectures is {body.get('architectures')}, not [{ARCHITECTURE}]")
        if body.get("num_hidden_layers", 1) != 1:
            raise DraftFormatError(f"{where}: num_hidden_layers is {body['num_hidden_layers']}; only 1 is served")
        required = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "rms_norm_eps")
        missing = [k for k in required if k not in body]
        if missing:
            raise DraftFormatError(f"{where}: missing {', '.join(missing)}")
        aux = body.get("eagle_aux_hidden_state_layer_ids")
        if not (isinstance(aux, list) and len(aux) == 3 and all(isinstance(i, int) and i > 0 for i in aux)):
            raise DraftFormatError(f"{where}: eagle_aux_hidden_state_layer_ids must be 3 layer indices ≥ 1, got {aux}")
        heads = body["num_attention_heads"]
        return cls(
            hidden_size=body["hidden_size"],
            intermediate_size=body["intermediate_size"],
            num_attention_heads=heads,
            num_key_value_heads=body.get("num_key_value_heads") or heads,
            head_dim=body.get("head_dim") or body["hidden_size"] // heads,
            vocab_size=body["vocab_size"],
            draft_vocab_size=body.get("draft_vocab_size") or body["vocab_size"],
            aux_layers=tuple(aux),
            target_hidden_size=body.get("target_hidden_size") or body["hidden_size"],
            rms_norm_eps=body["rms_norm_eps"],
            rope_theta=float(body.get("rope_theta", 10000.0)),
            rope_scaling=body.get("rope_scaling"),
            max_position_embeddings=body.get("max_position_embeddings", 8192),
            hidden_act=body.get("hidden_act", "silu"),
            extra={k: v for k, v in body.items() if k not in _OWN_KEYS},
        )


class Eagle3Attention(nn.Module):
    """Grouped-query attention over 2·hidden inputs (the normalised embedding and feature, concatenated)."""

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        inputs = 2 * config.hidden_size
        self.q_proj = nn.Linear(inputs, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(inputs, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(inputs, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        past: tuple[torch.Tensor, torch.Tensor] | None,
        bias: torch.Tensor | None,
        cache: Any = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`x` (B, T, 2H); `past` keys/values (B, kv, S, d) attended before this call's own, or a
        transformers-style `cache` whose `update` stores this call's and returns all to attend over;
        `bias` a mask (additive or bool) (B or 1, 1, T, S + T), None for causal attention without a past.
        Returns the output (B, T, H) and this call's keys/values (B, kv, T, d) after the rotary embedding."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, kv, T, d)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rotary)
        if cache is not None:
            keys, values = cache.update(k, v, 0)
        elif past is not None:
            keys, values = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        else:
            keys, values = k, v
        groups = self.heads // self.kv_heads
        out = F.scaled_dot_product_attention(
            q,
            keys.repeat_interleave(groups, 1),
            values.repeat_interleave(groups, 1),
            attn_mask=bias,
            is_causal=bias is None and past is None and cache is None,
        )  # (B, h, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v)


class Eagle3Layer(nn.Module):
    """The draft's one decoder layer, named as vLLM's checkpoint names it (`midlayer.*`)."""

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = Eagle3Attention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config.llama_config())

    def forward(
        self,
        embeds: torch.Tensor,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        cache: Any = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(B, T, H) embeddings and features -> the output feature (B, T, H), before the final norm."""
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)  # (B, T, 2H)
        attended, kv = self.self_attn(x, rotary, past, bias, cache)
        residual = hidden + attended
        return residual + self.mlp(self.post_attention_layernorm(residual)), kv


class Eagle3Draft(nn.Module):
    """fc + one decoder layer + norm + head over a vocabulary subset; the embedding is the target's.

    `embed` is held outside the module's parameters and state dict: it stays the target's, frozen.
    """

    def __init__(self, config: Eagle3Config, embed: nn.Embedding) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        self.config = config
        self.fc = nn.Linear(len(config.aux_layers) * config.target_hidden_size, config.hidden_size, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool))
        self.rotary = LlamaRotaryEmbedding(config.llama_config())
        self._embed = (embed,)  # a tuple: not registered as a submodule

    @property
    def embed(self) -> nn.Embedding:
        return self._embed[0]

    def target_ids(self) -> torch.Tensor:
        """(N,) the target id of each draft id."""
        return torch.arange(self.config.draft_vocab_size, device=self.d2t.device) + self.d2t

    def set_vocabulary(self, target_ids: torch.Tensor) -> None:
        """Use these target ids (N,), distinct and ascending, as the draft's vocabulary."""
        n = self.config.draft_vocab_size
        if target_ids.shape != (n,):
            raise ValueError(f"the draft vocabulary needs {n} target ids, got {tuple(target_ids.shape)}")
        target_ids = target_ids.to(self.d2t.device)
        self.d2t.copy_(target_ids - torch.arange(n, device=self.d2t.device))
        self.t2d.zero_()
        self.t2d[target_ids] = True

    def step(
        self,
        hidden: torch.Tensor,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        cache: Any = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One pass of the decoder layer: features `hidden` (B, T, H) — fused target features or the
        draft's own previous outputs — with the tokens that follow them (B, T) at `positions` (B, T)."""
        embeds = self.embed(tokens).to(hidden.dtype)
        rotary = self.rotary(hidden, positions)
        return self.midlayer(embeds, hidden, rotary, past, bias, cache)

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        """The target's aux hidden states (…, 3·H_target), concatenated low to high, -> features (…, H)."""
        return self.fc(aux)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits (…, N) of output features (…, H)."""
        return self.lm_head(self.norm(out))

    @classmethod
    def init_from_target(
        cls, target: nn.Module, draft_vocab: torch.Tensor | None, aux_layers: tuple[int, ...] | None = None
    ) -> Eagle3Draft:
        """A fresh draft for `target`: head rows and final norm copied from the target's (restricted to
        `draft_vocab`, ascending target ids, or the whole vocabulary), `fc` reading the highest aux
        layer, attention and MLP outputs zero: it starts as the target's logit lens at that layer."""
        size = None if draft_vocab is None else int(draft_vocab.numel())
        config = Eagle3Config.for_target(target.config, size, aux_layers)
        device = next(target.parameters()).device
        draft = cls(config, target.get_input_embeddings()).to(device)
        ids = torch.arange(config.vocab_size, device=device) if draft_vocab is None else draft_vocab.to(device)
        draft.set_vocabulary(ids)
        with torch.no_grad():
            draft.lm_head.weight.copy_(target.get_output_embeddings().weight[ids])
            draft.norm.weight.copy_(target.base_model.norm.weight)
            h = config.hidden_size
            draft.fc.weight.zero_()
            draft.fc.weight[:, -config.target_hidden_size :].copy_(torch.eye(h, config.target_hidden_size))
            draft.midlayer.self_attn.o_proj.weight.zero_()
            draft.midlayer.mlp.down_proj.weight.zero_()
        return draft


def aux_hidden_states(hidden_states: tuple[torch.Tensor, ...], layers: tuple[int, ...]) -> torch.Tensor:
    """The residual stream entering each of `layers`, concatenated (…, 3·H). transformers' `hidden_states`
    output holds the embeddings at 0 and the input of layer i at i (the last entry is normed instead)."""
    return torch.cat([hidden_states[i] for i in layers], dim=-1)


def save_eagle3(draft: Eagle3Draft, dest: Path, dtype: torch.dtype | None = None, tokenizer: Any = None) -> None:
    """The folder vLLM's `--speculative-config '{"method": "eagle3", "model": DEST}'` loads (and ours)."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in draft.state_dict().items()
    }
    if draft.config.draft_vocab_size == draft.config.vocab_size:
        # a full head maps ids to themselves: vLLM's loader has no parameter for the mapping then, and
        # refuses a folder that carries one
        del tensors["d2t"], tensors["t2d"]
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    body = draft.config.to_json()
    body["torch_dtype"] = str(dtype or draft.fc.weight.dtype).removeprefix("torch.")
    (dest / CONFIG).write_text(json.dumps(body, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)


def is_eagle3(folder: Path) -> bool:
    """Whether a model folder holds an EAGLE-3 draft (by its config's architectures)."""
    try:
        body = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return ARCHITECTURE in (body.get("architectures") or [])


def load_eagle3(folder: Path, embed: nn.Embedding, target_config: Any | None = None) -> Eagle3Draft:
    """An EAGLE-3 draft folder, checked: config fields, tensor names and shapes, and the `d2t` mapping
    (every target id in range, no two draft ids on one target id, `t2d` consistent), and, given the
    target's config, that the draft fits it (vocabulary, hidden size, aux layers)."""
    from safetensors.torch import load_file

    where = str(folder / CONFIG)
    try:
        body = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise DraftFormatError(f"{where}: unreadable: {e}") from None
    config = Eagle3Config.from_json(body, where)
    if target_config is not None:
        _check_fits(config, target_config, where)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise DraftFormatError(f"{folder}: no {WEIGHTS}")
    tensors = load_file(str(weights))
    tensors.pop("embed_tokens.weight", None)  # the target's own embedding is used
    draft = Eagle3Draft(config, embed)
    expected = draft.state_dict()
    full = config.draft_vocab_size == config.vocab_size
    if full and "d2t" not in tensors:  # the identity, left out as vLLM's loader wants it
        tensors["d2t"] = torch.zeros(config.draft_vocab_size, dtype=torch.long)
    missing = sorted(set(expected) - set(tensors) - {"t2d"})
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DraftFormatError(f"{weights}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise DraftFormatError(
                f"{weights}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[name].shape)}"
            )
    check_d2t(tensors["d2t"], tensors.get("t2d"), config.draft_vocab_size, config.vocab_size, str(weights))
    if "t2d" not in tensors:  # optional in vLLM's loader: rebuilt from d2t
        tensors["t2d"] = torch.zeros(config.vocab_size, dtype=torch.bool)
        tensors["t2d"][torch.arange(config.draft_vocab_size) + tensors["d2t"].long()] = True
    draft.load_state_dict({k: v.long() if k == "d2t" else v for k, v in tensors.items()})
    return draft.to(embed.weight.device).eval()


def _check_fits(config: Eagle3Config, target: Any, where: str) -> None:
    text = getattr(target, "get_text_config", lambda: target)()
    problems = []
    if config.vocab_size != text.vocab_size:
        problems.append(f"vocab_size {config.vocab_size} vs the target's {text.vocab_size}")
    if config.target_hidden_size != text.hidden_size:
        problems.append(f"target_hidden_size {config.target_hidden_size} vs the target's {text.hidden_size}")
    if config.hidden_size != text.hidden_size:
        problems.append(f"hidden_size {config.hidden_size} vs the target's embedding width {text.hidden_size}")
    if max(config.aux_layers) >= text.num_hidden_layers:
        problems.append(f"aux layers {list(config.aux_layers)} vs the target's {text.num_hidden_layers} layers")
    if problems:
        raise DraftFormatError(f"{where}: the draft does not fit the target: {'; '.join(problems)}")
