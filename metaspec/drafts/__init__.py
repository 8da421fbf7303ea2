"""Draft models that are not plain causal LMs: EAGLE-3 feature-level drafts, and draft vocabularies."""

from .eagle3 import (
    DraftFormatError,
    Eagle3Config,
    Eagle3Draft,
    aux_hidden_states,
    is_eagle3,
    load_eagle3,
    save_eagle3,
)
from .vocabulary import draft_vocabulary

__all__ = [
    "DraftFormatError",
    "Eagle3Config",
    "Eagle3Draft",
    "aux_hidden_states",
    "draft_vocabulary",
    "is_eagle3",
    "load_eagle3",
    "save_eagle3",
]
