"""Ready-made networks: MLPs, the default regression BNN, Hugging Face helpers."""

from pyrobayes.models.mlp import MLP, default_regression_model

__all__ = ["MLP", "default_regression_model"]
