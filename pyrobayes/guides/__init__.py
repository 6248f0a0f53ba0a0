"""MOPED-initialised autoguides built on Pyro's autoguides."""

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
