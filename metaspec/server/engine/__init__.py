"""The decoding engine: target + draft, speculative sampling, routing policies (pure torch, no HTTP)."""

from .engine import LookupFirst, SpeculativeEngine
from .loader import IncompatibleModel, load_models
from .protocol import Delta, Engine, RequestStats, SamplingParams
from .routing import RoutingPolicy
from .sampling import Processing
from .speculative import CausalLM, SpeculativeDecoder

__all__ = [
    "CausalLM",
    "Delta",
    "Engine",
    "IncompatibleModel",
    "LookupFirst",
    "Processing",
    "RequestStats",
    "RoutingPolicy",
    "SamplingParams",
    "SpeculativeDecoder",
    "SpeculativeEngine",
    "load_models",
]
