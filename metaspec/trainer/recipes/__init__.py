"""Training recipes, one file each: `anil-maml` (LoRA, ANIL-MAML), `lora-sft` (LoRA, plain supervised
fine-tuning) and `causal-lm` (drafts: a causal LM of its own, or an EAGLE-3 feature-level draft)."""

from .anil_maml import AnilMamlRecipe
from .causal_lm import CausalLmRecipe
from .common import Context
from .eagle3 import Eagle3Recipe
from .lora_sft import LoraSftRecipe


def draft_recipe(ctx: Context) -> CausalLmRecipe | Eagle3Recipe:
    """`causal-lm`: the recipe of the draft's architecture."""
    return Eagle3Recipe(ctx) if ctx.run.spec.draft.architecture == "eagle3" else CausalLmRecipe(ctx)


RECIPES = {"anil-maml": AnilMamlRecipe, "lora-sft": LoraSftRecipe, "causal-lm": draft_recipe}

__all__ = ["RECIPES", "AnilMamlRecipe", "CausalLmRecipe", "Eagle3Recipe", "LoraSftRecipe"]
