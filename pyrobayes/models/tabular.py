"""The Bayesian models shared by every method on real tabular data (regression and
classification).

All methods (NUTS, SVI, the ``"bnn-tabular"`` PFN) approximate the posterior predictive of
one model, on inputs and targets standardised by the training split:

.. math::

    W_\\ell \\sim \\mathcal N(0, 1/\\text{fan\\_in}_\\ell), \\quad b_\\ell \\sim \\mathcal N(0, 1),
    \\quad \\sigma \\sim \\mathrm{LogNormal}(\\log 0.2,\\ 0.8), \\quad
    y_i \\sim \\mathcal N(f_W(x_i), \\sigma^2),

with :math:`f_W` a ``d``-50-50-1 tanh MLP.

Why this noise prior: a fixed :math:`\\sigma = 0.1` is a property of the synthetic 1-D
prior only; on real data the noise level is unknown and is where most of the held-out NLL
comes from. After standardising ``y`` the noise std is a fraction of the target std, so
it lies in (0, 1]; published RMSEs on the usual UCI regression sets, divided by the target
std, range from about 0.05 (energy, yacht, naval) over 0.2-0.4 (boston, concrete,
power, kin8nm) to about 0.8 (wine, protein). ``LogNormal(log 0.2, 0.8)`` puts its median
at 0.2 and its central 95% at [0.042, 0.96] (99%: [0.025, 1.58]), covering that range on
a log scale, and unlike a log-uniform it has smooth, unbounded support, so NUTS and
Gaussian autoguides work on :math:`\\log\\sigma` without hitting a hard edge.

Example::

    >>> import torch
    >>> from pyrobayes.models import tabular_regression_model
    >>> model = tabular_regression_model(8)
    >>> model.likelihood.latent_noise
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from pyrobayes.models.mlp import MLP

__all__ = [
    "tabular_regression_model",
    "tabular_classifier_model",
    "TABULAR_REGRESSION",
    "TABULAR_CLASSIFICATION",
    "tabular_noise_prior",
    "tabular_logit_scale_prior",
    "parse_lognormal",
    "logit_scale_prior_from",
    "noise_prior_from",
]

# The prior the shipped "bnn-tabular" PFN is trained on; change it only together with that
# checkpoint.
TABULAR_REGRESSION = {
    "hidden": (50, 50),
    "activation": "tanh",
    "weight_scale": 1.8,  # within-data-set std of f ~0.8-1.1 (d=1..10): standardised targets fit the prior
    "bias_scale": 1.0,
    "noise_loc": -1.6094379124341003,  # log 0.2
    "noise_scale": 0.8,
}

# The classification prior (the "bnn-tabular-classifier" PFN, SVI and NUTS share it): the
# regression network's shape with C output logits. Weight scale 3.0, not 1.8: with 1.8 the
# features explain little of the label (binary, d=2..10: mean Bayes accuracy 0.81,
# H(y|x,W) 0.40 vs H(y|W) 0.50 nats); with 3.0 it is 0.87-0.88, 0.28-0.30 vs 0.56-0.61
# nats (200 prior data sets x 200 points), closer to the separable real sets it targets.
# The logits are scaled by a latent tau ~ LogNormal(loc, scale) per data set (see
# tabular_logit_scale_prior); change it only together with the shipped checkpoint.
TABULAR_CLASSIFICATION = {
    "hidden": (50, 50),
    "activation": "tanh",
    "weight_scale": 3.0,
    "bias_scale": 1.0,
    "min_classes": 2,
    "max_classes": 10,
    "logit_scale_prior": (0.0, 1.0),
}


def tabular_noise_prior(
    loc: float = TABULAR_REGRESSION["noise_loc"], scale: float = TABULAR_REGRESSION["noise_scale"]
) -> dist.LogNormal:
    """:math:`\\sigma \\sim \\mathrm{LogNormal}(\\mathrm{loc}, \\mathrm{scale})` (default: median
    0.2, central 95% [0.042, 0.96] standardised units).

    Example::

        >>> import torch
        >>> from pyrobayes.models.tabular import tabular_noise_prior
        >>> tabular_noise_prior().icdf(torch.tensor([0.025, 0.5, 0.975]))
        tensor([0.0417, 0.2000, 0.9594])
    """
    if not scale > 0:
        raise ValueError(f"noise prior scale must be positive, got {scale}")
    return dist.LogNormal(torch.tensor(float(loc)), torch.tensor(float(scale)))


def tabular_logit_scale_prior(
    loc: float = TABULAR_CLASSIFICATION["logit_scale_prior"][0],
    scale: float = TABULAR_CLASSIFICATION["logit_scale_prior"][1],
) -> dist.LogNormal:
    """:math:`\\tau \\sim \\mathrm{LogNormal}(\\mathrm{loc}, \\mathrm{scale})`, the prior of the
    classifier's latent logit scale (``tabular_classifier_model(..., logit_scale_prior=)``).

    The default, median 1 and one e-fold either way at one standard deviation (central 95%
    [0.14, 7.1]), is chosen on the prior alone: its median data set is the fixed-scale
    prior's, and it reaches from labels close to a coin flip (logits x 0.14) to nearly
    deterministic ones (x 7.1), where real labelled tables lie (near-separable iris or breast
    cancer, noisy survey labels) without any of them being read.

    Example::

        >>> import torch
        >>> from pyrobayes.models.tabular import tabular_logit_scale_prior
        >>> tabular_logit_scale_prior().icdf(torch.tensor([0.025, 0.5, 0.975]))
        tensor([0.1409, 1.0000, 7.0991])
    """
    if not scale > 0:
        raise ValueError(f"logit scale prior's scale must be positive, got {scale}")
    return dist.LogNormal(torch.tensor(float(loc)), torch.tensor(float(scale)))


def parse_lognormal(text: str) -> tuple[float, float]:
    """``"LOC,SCALE"`` (a command line's LogNormal prior) as ``(loc, scale)``, with a finite
    ``loc`` and a positive finite ``scale``, else a ``ValueError`` naming the text.

    Example::

        >>> parse_lognormal("0,1"), parse_lognormal(" -1.5 , 0.5 ")
        ((0.0, 1.0), (-1.5, 0.5))
        >>> parse_lognormal("0")
        Traceback (most recent call last):
        ...
        ValueError: expected LOC,SCALE (two numbers, e.g. 0,1), got '0'
    """
    try:
        loc, scale = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"expected LOC,SCALE (two numbers, e.g. 0,1), got {text!r}") from None
    if not (math.isfinite(loc) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"a LogNormal prior needs a finite LOC and SCALE > 0, got {text!r}")
    return loc, scale


def noise_prior_from(spec: Any) -> torch.distributions.Distribution:
    """The regression model's noise-std prior from a caller or a flag: ``"default"``
    (:func:`tabular_noise_prior`, the shipped ``bnn-tabular`` PFN's), ``"LOC,SCALE"`` (a
    LogNormal, :func:`parse_lognormal`) or a distribution, returned as is.

    Example::

        >>> round(float(noise_prior_from("default").loc), 4), float(noise_prior_from("-3,0.5").scale)
        (-1.6094, 0.5)
        >>> noise_prior_from("none")
        Traceback (most recent call last):
        ...
        ValueError: expected LOC,SCALE (two numbers, e.g. 0,1), got 'none'
    """
    return _lognormal_prior_from(spec, tabular_noise_prior, "noise_prior", "'default', ")


def logit_scale_prior_from(spec: Any) -> torch.distributions.Distribution | None:
    """The classifier's logit scale prior from what a caller or a flag gives: ``"default"``
    (:func:`tabular_logit_scale_prior`, the shipped PFN's), ``None`` or ``"none"`` (no latent
    scale: :math:`\\tau = 1`), ``"LOC,SCALE"`` (a LogNormal, :func:`parse_lognormal`), or a
    distribution, returned as is.

    Example::

        >>> logit_scale_prior_from("default").loc, logit_scale_prior_from("none")
        (tensor(0.), None)
        >>> float(logit_scale_prior_from("-1,0.5").scale)
        0.5
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return None
    return _lognormal_prior_from(
        spec, tabular_logit_scale_prior, "logit_scale_prior", "'default', None/'none', "
    )


def _lognormal_prior_from(spec: Any, factory: Any, name: str, accepted: str):
    """``"default"`` -> ``factory()``, ``"LOC,SCALE"`` -> ``factory(loc, scale)``, a
    distribution as is; else a ``TypeError`` listing ``accepted`` forms for ``name``."""
    if isinstance(spec, str) and spec.strip().lower() == "default":
        return factory()
    if isinstance(spec, str):
        return factory(*parse_lognormal(spec))
    if isinstance(spec, torch.distributions.Distribution):
        return spec
    raise TypeError(
        f"{name} must be {accepted}'LOC,SCALE' or a distribution, got {type(spec).__name__}"
    )


def tabular_regression_model(
    d: int,
    hidden: Sequence[int] = TABULAR_REGRESSION["hidden"],
    noise_prior: torch.distributions.Distribution | None = None,
    net: nn.Module | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
):
    """The BNN for ``d`` standardised features: ``d``-50-50-1 tanh MLP, fan-in Normal weight
    priors, N(0, 1) biases and a latent Gaussian noise std with prior ``noise_prior``
    (default :func:`tabular_noise_prior`), sampled as the site
    ``model.likelihood.noise_site`` (``"<name>.likelihood.noise_scale"``).

    Args:
        d: number of input features (>= 1).
        hidden: hidden layer widths.
        noise_prior: prior of the noise std in standardised target units.
        net: initial weights (an MLP of the same shape), e.g. for a MOPED guide.
        device: where the model lives.
        name: optional name prefix of the weight sites.

    Returns:
        A :class:`~pyrobayes.bayesian_model.BayesianModel`.

    Example::

        >>> import pyro
        >>> import torch
        >>> from pyrobayes.models.tabular import tabular_regression_model
        >>> model = tabular_regression_model(3, name="tab")
        >>> tr = pyro.poutine.trace(model).get_trace(torch.zeros(5, 3))
        >>> sites = [k for k, v in tr.nodes.items() if v["type"] == "sample"]
        >>> sites[:2], sites[-3:]                  # 3 layers' weights, then the noise std
        (['tab.net.0.weight', 'tab.net.0.bias'], ['tab.likelihood.noise_scale', 'data', 'obs'])
        >>> len(sites)
        9
        >>> round(float(tr.nodes["tab.net.0.weight"]["fn"].stddev[0, 0]), 4)   # 1.8/sqrt(3)
        1.0392
    """
    from pyrobayes.bayesian_model import BayesianModel
    from pyrobayes.convert import to_pyro
    from pyrobayes.likelihoods import Gaussian
    from pyrobayes.priors import LayerwiseNormalPrior

    if int(d) < 1:
        raise ValueError(f"tabular_regression_model needs d >= 1 features, got {d}")
    cfg = TABULAR_REGRESSION
    net = net if net is not None else MLP(int(d), tuple(hidden), 1, cfg["activation"])
    if device is not None:
        net = net.to(device)
    prior = LayerwiseNormalPrior(scale=cfg["weight_scale"], bias_scale=cfg["bias_scale"])
    noise_prior = noise_prior if noise_prior is not None else tabular_noise_prior()
    return BayesianModel(to_pyro(net, prior=prior, name=name), Gaussian(noise_prior=noise_prior))


def tabular_classifier_model(
    d: int,
    num_classes: int,
    hidden: Sequence[int] = TABULAR_CLASSIFICATION["hidden"],
    net: nn.Module | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
    logit_scale_prior: torch.distributions.Distribution | str | None = "default",
):
    """The Bayesian classifier for ``d`` standardised features and ``num_classes`` classes:

    .. math::

        W_\\ell \\sim \\mathcal N(0, s^2/\\text{fan\\_in}_\\ell), \\quad
        b_\\ell \\sim \\mathcal N(0, 1), \\quad
        y_i \\sim \\mathrm{Categorical}(\\mathrm{softmax}(f_W(x_i))),

    with :math:`f_W` a ``d``-50-50-``C`` tanh MLP and :math:`s = 3` (see
    ``TABULAR_CLASSIFICATION`` for why). Given the last hidden layer :math:`h(x) \\in (-1, 1)^{H}` the ``C``
    logits are i.i.d. :math:`\\mathcal N(0,\\ s^2 \\lVert h(x)\\rVert^2 / H + 1)`, so the
    prior is exchangeable in the class labels: every class has prior probability exactly
    :math:`1/C`, and the output biases make individual data sets imbalanced.

    Args:
        d: number of input features (>= 1).
        num_classes: number of classes ``C`` (>= 2).
        hidden: hidden layer widths.
        net: initial weights (an MLP of the same shape), e.g. for a MOPED guide.
        device: where the model lives.
        name: optional name prefix of the weight sites.
        logit_scale_prior: the prior of the latent logit scale :math:`\\tau`, labels
            :math:`y_i \\sim \\mathrm{Categorical}(\\mathrm{softmax}(\\tau f_W(x_i)))`,
            site ``model.likelihood.scale_site`` (see
            :class:`~pyrobayes.likelihoods.Categorical`): ``"default"``, the shipped PFN's
            :func:`tabular_logit_scale_prior` (LogNormal(0, 1)); ``None``: :math:`\\tau = 1`
            (the prior before 5 Dec 2026); or any :func:`logit_scale_prior_from` value.

    Returns:
        A :class:`~pyrobayes.bayesian_model.BayesianModel` with a
        :class:`~pyrobayes.likelihoods.Categorical` likelihood (labels ``0..C-1``).

    Example::

        >>> import pyro
        >>> import torch
        >>> from pyrobayes.models import tabular_classifier_model
        >>> model = tabular_classifier_model(3, 4, name="clf")
        >>> tr = pyro.poutine.trace(model).get_trace(torch.zeros(5, 3))
        >>> tr.nodes["clf.net.4.weight"]["value"].shape, tr.nodes["obs"]["value"].shape
        (torch.Size([4, 50]), torch.Size([5]))
        >>> round(float(tr.nodes["clf.net.4.weight"]["fn"].stddev[0, 0]), 4)   # 3/sqrt(50)
        0.4243
        >>> tabular_classifier_model(3, 1)
        Traceback (most recent call last):
        ...
        ValueError: tabular_classifier_model needs num_classes >= 2, got 1
    """
    from pyrobayes.bayesian_model import BayesianModel
    from pyrobayes.convert import to_pyro
    from pyrobayes.likelihoods import Categorical
    from pyrobayes.priors import LayerwiseNormalPrior

    if int(d) < 1:
        raise ValueError(f"tabular_classifier_model needs d >= 1 features, got {d}")
    if int(num_classes) < 2:
        raise ValueError(f"tabular_classifier_model needs num_classes >= 2, got {num_classes}")
    cfg = TABULAR_CLASSIFICATION
    net = (
        net if net is not None else MLP(int(d), tuple(hidden), int(num_classes), cfg["activation"])
    )
    if device is not None:
        net = net.to(device)
    prior = LayerwiseNormalPrior(scale=cfg["weight_scale"], bias_scale=cfg["bias_scale"])
    lik = Categorical(logit_scale_prior=logit_scale_prior_from(logit_scale_prior))
    return BayesianModel(to_pyro(net, prior=prior, name=name), lik)
