"""Training recipes, one file each: `anil-maml` (LoRA, ANIL-MAML), `lora-sft` (LoRA, plain supervised
fine-tuning) and `causal-lm` (drafts)."""

from .anil_maml import AnilMamlRecipe
from .causal_lm import CausalLmRecipe
from .lora_sft import LoraSftRecipe

RECIPES = {"anil-maml": AnilMamlRecipe, "lora-sft": LoraSftRecipe, "causal-lm": CausalLmRecipe}

__all__ = ["RECIPES", "AnilMamlRecipe", "CausalLmRecipe", "LoraSftRecipe"]
