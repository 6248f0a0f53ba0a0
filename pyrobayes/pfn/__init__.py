"""Prior-data fitted networks (Müller et al., "Transformers Can Do Bayesian Inference", ICLR 2022).

A PFN is a transformer trained on datasets drawn from a prior to output the posterior
predictive distribution in one forward pass: ``pfn.predict(x_train, y_train, x_query)``.

Example::

    >>> from pyrobayes.pfn import pretrained
    >>> ppd = pretrained("gp-1d").predict([0.0, 1.0], [0.3, -0.2], [0.5])
    >>> ppd.mean.shape
    torch.Size([1])
"""

from pyrobayes.pfn.bar import BarCriterion, BarDistribution, borders_from_samples
from pyrobayes.pfn.check import PFNSelfCheck, pfn_self_check
from pyrobayes.pfn.checkpoint import load_checkpoint, save_checkpoint
from pyrobayes.pfn.model import PFN, InputMode, PFNConfig, Task, standardise_split
from pyrobayes.pfn.pretrained import pretrained
from pyrobayes.pfn.priors import (
    BNNPrior,
    DatasetPrior,
    GPPrior,
    TabularBNNClassifierPrior,
    TabularBNNPrior,
)
from pyrobayes.pfn.train import TrainConfig, TrainResult, train_pfn

__all__ = [
    "PFN",
    "PFNConfig",
    "Task",
    "BarDistribution",
    "BarCriterion",
    "borders_from_samples",
    "GPPrior",
    "BNNPrior",
    "TabularBNNPrior",
    "TabularBNNClassifierPrior",
    "InputMode",
    "standardise_split",
    "DatasetPrior",
    "train_pfn",
    "TrainConfig",
    "TrainResult",
    "save_checkpoint",
    "load_checkpoint",
    "pretrained",
    "pfn_self_check",
    "PFNSelfCheck",
]
