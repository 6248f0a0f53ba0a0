"""Inference: the SVI loop and the vectorised posterior predictive."""

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
