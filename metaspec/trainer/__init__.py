"""The trainer: data pipeline, ANIL-MAML and causal-LM recipes, checkpoints, merge and evaluation."""
