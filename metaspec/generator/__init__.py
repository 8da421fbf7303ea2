"""The generator: teacher outputs for a dataset, one shard per pod, resumable, with a quality gate.

`metaspec generate --config FILE` runs one shard (`cli.py`); `run_shard` is the same as a function.
"""

from .engines import Completion, Engine, Prompt, load_engine, prompt_seed, vllm_llm_kwargs, vllm_sampling_kwargs
from .finalize import STATS_FILE, finalize_if_complete
from .generate import Options, ShardResult, record_body, run_shard
from .sharding import shard_file, shard_items, shard_stats_file
from .stats import compute_stats, generation_stats

__all__ = [
    "STATS_FILE",
    "Completion",
    "Engine",
    "Options",
    "Prompt",
    "ShardResult",
    "compute_stats",
    "finalize_if_complete",
    "generation_stats",
    "load_engine",
    "prompt_seed",
    "record_body",
    "run_shard",
    "shard_file",
    "shard_items",
    "shard_stats_file",
    "vllm_llm_kwargs",
    "vllm_sampling_kwargs",
]
