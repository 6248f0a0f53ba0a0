"""pyrobayes: honest uncertainty for the torch networks you already have."""

from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, RegressionPPD, normal_ppd

__version__ = "0.1.0"

__all__ = ["CategoricalPPD", "NormalMixturePPD", "RegressionPPD", "normal_ppd", "__version__"]
