"""Ready-made networks: MLPs, the default regression BNN, the tabular BNNs (regression and classification), Hugging Face helpers, and the one
deterministic trainer (:func:`~pyrobayes.models.train.train_network`).

Example::

    >>> from pyrobayes.models import MLP
    >>> MLP(1, (50, 50), 1)
    MLP(1 -> 50 -> 50 -> 1, tanh)
"""

from pyrobayes.models.mlp import MLP, default_regression_model
from pyrobayes.models.tabular import tabular_classifier_model, tabular_regression_model

__all__ = [
    "MLP",
    "default_regression_model",
    "tabular_classifier_model",
    "tabular_regression_model",
]
