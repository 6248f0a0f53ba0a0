"""Ready-made networks: MLPs, the default regression BNN, the tabular BNN, Hugging Face helpers."""

from pyrobayes.models.mlp import MLP, default_regression_model
from pyrobayes.models.tabular import tabular_regression_model

__all__ = ["MLP", "default_regression_model", "tabular_regression_model"]
