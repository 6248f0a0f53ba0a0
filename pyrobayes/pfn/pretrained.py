"""Pretrained PFN checkpoints shipped inside the package.

* ``"gp-1d"``: 1-D GP prior, RBF lengthscale 0.5, outputscale 1, noise std 0.1,
  x ~ U[-2, 2], up to 50 training points.
* ``"bnn-1d"``: the prior of :func:`pyrobayes.models.mlp.default_regression_model`
  (1-50-50-1 tanh MLP, fan-in Normal weights, N(0, 1) biases, noise std 0.1),
  x ~ U[-2, 2], up to 50 training points.
* ``"bnn-tabular"``: the prior of :func:`pyrobayes.models.tabular.tabular_regression_model`
  (d-50-50-1 tanh MLP, fan-in priors, LogNormal noise std) for 1..10 standardised
  features and up to 512 training points; raw-unit data are standardised by the
  training split inside ``predict``.

How they were trained (command, steps, time, loss) is in ``checkpoints/README.md``.

* ``"bnn-tabular-classifier"``: the prior of
  :func:`pyrobayes.models.tabular.tabular_classifier_model` (d-50-50-C tanh MLP, fan-in
  priors with scale 3, Categorical likelihood) for 1..30 standardised features, 2..10
  classes and up to 1024 training rows; ``predict(..., num_classes=C)`` returns a
  :class:`~pyrobayes.ppd.CategoricalPPD`, equivariant to relabelling the classes.

Example::

    >>> from pyrobayes.pfn import pretrained
    >>> pfn = pretrained("gp-1d")
    >>> ppd = pfn.predict([0.0, 1.0], [0.3, -0.2], [0.5])
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyrobayes.options import Option
from pyrobayes.pfn.checkpoint import load_checkpoint
from pyrobayes.pfn.model import PFN

__all__ = ["pretrained", "PretrainedName", "CHECKPOINT_DIR", "PLANNED"]

CHECKPOINT_DIR = Path(__file__).with_name("checkpoints")

# Checkpoints designed (prior, CLI, training script) but not trained yet: name -> how to
# train one. Kept out of PretrainedName, which lists what is shipped.
PLANNED: dict[str, str] = {}


class PretrainedName(Option):
    """Names of the shipped checkpoints.

    Example::

        >>> from pyrobayes.pfn.pretrained import CHECKPOINT_DIR, PretrainedName
        >>> [n.value for n in PretrainedName][:3]
        ['gp-1d', 'bnn-1d', 'bnn-tabular']
        >>> all((CHECKPOINT_DIR / f"{n.value}.json").exists() for n in PretrainedName)
        True
    """

    GP_1D = "gp-1d"
    BNN_1D = "bnn-1d"
    BNN_TABULAR = "bnn-tabular"
    BNN_TABULAR_CLASSIFIER = "bnn-tabular-classifier"


def pretrained(name: str | PretrainedName, device: torch.device | str | None = None) -> PFN:
    """Load a shipped PFN checkpoint by name (:class:`PretrainedName`: ``"gp-1d"``,
    ``"bnn-1d"``, ``"bnn-tabular"``, ...); a name in :data:`PLANNED` raises
    ``FileNotFoundError`` with the command that trains it.

    Args:
        name: checkpoint name.
        device: where to put the model (default CPU).

    Returns:
        The PFN in eval mode.

    Example::

        >>> import torch
        >>> from pyrobayes.gp import exact_gp_ppd
        >>> from pyrobayes.pfn import pretrained
        >>> pfn = pretrained("gp-1d")
        >>> pfn.checkpoint_info["config"]["prior"]["kind"], pfn.config.max_train
        ('gp', 50)
        >>> x, y = torch.tensor([0.0, 1.0]), torch.tensor([0.3, -0.2])
        >>> xq = torch.tensor([0.0, 0.5])
        >>> exact = exact_gp_ppd(x, y, xq, lengthscale=0.5, outputscale=1.0, noise_std=0.1)
        >>> bool((pfn.predict(x, y, xq).mean - exact.mean).abs().max() < 0.05)  # its prior's PPD
        True
        >>> pretrained("gp-2d")
        Traceback (most recent call last):
        ...
        ValueError: unknown pretrained PFN 'gp-2d'; valid: gp-1d, bnn-1d, bnn-tabular...
        >>> from pyrobayes.pfn.pretrained import PLANNED
        >>> for planned in PLANNED:  # designed, not trained yet: the error says how to train one
        ...     try:
        ...         pretrained(planned)
        ...     except FileNotFoundError as err:
        ...         assert "is not shipped yet" in str(err) and "pfn train" in str(err)
    """
    if isinstance(name, str) and name in PLANNED:
        raise FileNotFoundError(f"pretrained PFN {name!r} is not shipped yet: {PLANNED[name]}")
    key = PretrainedName.parse(name, "pretrained PFN")
    path = CHECKPOINT_DIR / key.value
    if not path.with_name(key.value + ".json").exists():
        raise FileNotFoundError(f"pretrained PFN {key.value!r} is not shipped in {CHECKPOINT_DIR}")
    return load_checkpoint(path, device=device)
