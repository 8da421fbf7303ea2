"""Training recipes, one file each: `anil-maml` (LoRA, ANIL-MAML) and `causal-lm` (drafts)."""

from .anil_maml import AnilMamlRecipe
from .causal_lm import CausalLmRecipe

RECIPES = {"anil-maml": AnilMamlRecipe, "causal-lm": CausalLmRecipe}

__all__ = ["RECIPES", "AnilMamlRecipe", "CausalLmRecipe"]
