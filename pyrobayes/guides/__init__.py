"""MOPED-initialised autoguides built on Pyro's autoguides.

Example::

    >>> from torch import nn
    >>> from pyrobayes.guides import moped_guide
    >>> from pyrobayes.bayesian_model import to_bayesian
    >>> model, _ = to_bayesian(nn.Linear(3, 1), likelihood="gaussian")
    >>> type(moped_guide(model, "lowrank", rank=2)).__name__
    'MOPEDLowRank'
"""

from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.guides.moped import GuideKind, MOPEDLowRank, MOPEDNormal, moped_guide, moped_scale

__all__ = [
    "GuideKind",
    "LocalReparameterization",
    "MOPEDLowRank",
    "MOPEDNormal",
    "moped_guide",
    "moped_scale",
]
