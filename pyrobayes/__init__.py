"""pyrobayes: honest uncertainty for the torch networks you already have.

The public API in one place::

    to_pyro, bayesian_sites           # nn.Module -> PyroModule with PyroSample weights
    get_prior and the Prior classes   # weight priors
    Gaussian, Categorical             # likelihoods under a data-size plate
    BayesianModel, to_bayesian        # model = network + likelihood; one-call MOPED set-up
    MOPEDNormal, MOPEDLowRank         # MOPED-initialised autoguides
    fit, PosteriorPredictive          # SVI loop; vectorised posterior predictive -> PPD
    NormalMixturePPD, CategoricalPPD  # the PPD types every predictor returns
    TabularConfig, run_tabular        # the real-data comparison (``pyrobayes compare --data``)
    plot_tabular_summary              # its NLL + calibration figure
    ClassifyTabularConfig, run_classify_tabular  # the same on labelled tables (classification)
    CompareConfig, run_compare        # the 1-D demo comparison (``pyrobayes compare``)

Example (a pretrained classifier made Bayesian, fitted and asked for its PPD)::

    >>> import torch
    >>> from torch import nn
    >>> import pyrobayes
    >>> model, guide = pyrobayes.to_bayesian(nn.Linear(4, 3))
    >>> x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    >>> _ = pyrobayes.fit(model, guide, (x, y), epochs=2, progress=False)
    >>> ppd = pyrobayes.PosteriorPredictive(model, guide, num_samples=8)(x)
    >>> type(ppd).__name__, tuple(ppd.probs.shape)
    ('CategoricalPPD', (30, 3))
"""

from pyrobayes._moved import install as _install_moved
from pyrobayes.bayesian_model import BayesianModel, to_bayesian
from pyrobayes.convert import bayesian_sites, to_pyro
from pyrobayes.guides import LocalReparameterization, MOPEDLowRank, MOPEDNormal, moped_guide
from pyrobayes.infer import (
    EarlyStopping,
    History,
    PosteriorPredictive,
    fit,
    forward_draws,
    prior_predictive,
    sample_posterior,
    sample_prior,
)
from pyrobayes.jobs.demo_1d import CompareConfig, run_compare
from pyrobayes.jobs.tabular_classification import ClassifyTabularConfig, run_classify_tabular
from pyrobayes.jobs.tabular_regression import (
    TabularConfig,
    TabularResult,
    plot_tabular_summary,
    run_tabular,
)
from pyrobayes.likelihoods import Categorical, Gaussian, get_likelihood
from pyrobayes.models.tabular import tabular_classifier_model, tabular_regression_model
from pyrobayes.persist import load, save
from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, RegressionPPD, normal_ppd
from pyrobayes.priors import (
    LayerwiseNormalPrior,
    NormalPrior,
    PretrainedNormalPrior,
    Prior,
    ScaleMixturePrior,
    get_prior,
)

# old module paths (pyrobayes.tabular_job, pyrobayes.cli, ...) import with a DeprecationWarning
_install_moved()

__version__ = "0.1.0"

__all__ = [
    "BayesianModel",
    "Categorical",
    "CategoricalPPD",
    "ClassifyTabularConfig",
    "CompareConfig",
    "EarlyStopping",
    "Gaussian",
    "History",
    "LayerwiseNormalPrior",
    "LocalReparameterization",
    "MOPEDLowRank",
    "MOPEDNormal",
    "NormalMixturePPD",
    "NormalPrior",
    "PosteriorPredictive",
    "PretrainedNormalPrior",
    "Prior",
    "RegressionPPD",
    "ScaleMixturePrior",
    "TabularConfig",
    "TabularResult",
    "__version__",
    "bayesian_sites",
    "fit",
    "forward_draws",
    "get_likelihood",
    "get_prior",
    "load",
    "moped_guide",
    "normal_ppd",
    "plot_tabular_summary",
    "prior_predictive",
    "run_classify_tabular",
    "run_compare",
    "run_tabular",
    "sample_posterior",
    "sample_prior",
    "save",
    "tabular_classifier_model",
    "tabular_regression_model",
    "to_bayesian",
    "to_pyro",
]
