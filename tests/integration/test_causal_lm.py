"""The trainer, the generator and the server load models through `metaspec.causal_lm`, which keeps
transformers from swapping layers for kernels fetched from the Hugging Face Hub at run time (on by
default since transformers 5; on a GPU it fails a training run without Hub access)."""

from __future__ import annotations

from pathlib import Path

import torch

from metaspec.api.generation import Sampling
from metaspec.api.serving import SpecServeSpec
from metaspec.api.training import BaseModelSource
from metaspec.generator.engines.transformers import TransformersEngine
from metaspec.server.engine import load_models
from metaspec.trainer.models import load_model

CPU = torch.device("cpu")


def test_no_component_loads_hub_kernels(tiny_llama: Path, tmp_path: Path) -> None:
    trained = load_model(BaseModelSource(uri=str(tiny_llama)), tmp_path / "trainer", CPU, torch.float32).model
    generated = TransformersEngine.load(tiny_llama, "tiny", Sampling(), 1, CPU, torch.float32).model
    served, _ = load_models(SpecServeSpec.model_validate({"target": {"uri": str(tiny_llama)}}), tmp_path / "s", CPU)
    for model in (trained, generated, served.model):
        model.train()  # where transformers would kernelize again, for training
        assert not model.use_kernels, type(model).__name__
