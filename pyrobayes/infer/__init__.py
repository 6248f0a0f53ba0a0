"""Inference: the SVI loop and the vectorised posterior predictive.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from pyrobayes.infer import PosteriorPredictive, fit
    >>> from pyrobayes.bayesian_model import to_bayesian
    >>> model, guide = to_bayesian(nn.Linear(2, 1), likelihood="gaussian")
    >>> x, y = torch.randn(20, 2), torch.randn(20)
    >>> history = fit(model, guide, (x, y), epochs=3, progress=False)
    >>> len(history.losses)
    3
    >>> PosteriorPredictive(model, guide, num_samples=5)(x).mean.shape
    torch.Size([20])
"""

from pyrobayes.infer.fit import (
    EarlyStopping,
    FitConfig,
    History,
    LossKind,
    LRSchedule,
    fit,
    load_fit_checkpoint,
)
from pyrobayes.infer.predictive import (
    PosteriorPredictive,
    forward_draws,
    prior_predictive,
    sample_posterior,
    sample_prior,
)

__all__ = [
    "EarlyStopping",
    "FitConfig",
    "History",
    "LossKind",
    "LRSchedule",
    "PosteriorPredictive",
    "fit",
    "forward_draws",
    "load_fit_checkpoint",
    "prior_predictive",
    "sample_posterior",
    "sample_prior",
]
