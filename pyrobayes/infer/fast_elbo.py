"""A fused single-particle ``Trace_ELBO`` step for the common case: a
:class:`~pyrobayes.model.BayesianModel` under a mean-field Normal autoguide.

It computes exactly Pyro's ``Trace_ELBO`` estimator for one particle,

.. math::

    \\hat{\\mathcal L} = \\frac{N}{B}\\sum_{i\\in B} \\log p(y_i \\mid f_w(x_i))
        + \\beta\\big[\\log p(w) - \\log q(w)\\big],
    \\qquad w = \\mu + \\sigma \\odot \\varepsilon,

but evaluates it in one pass over tensors instead of recording and replaying Pyro traces
(the network runs through ``torch.func.functional_call`` on the converted module's twin).
On small networks Pyro's per-site bookkeeping costs more than the arithmetic; this path
removes it. The guide's parameters are the autoguide's own, so everything downstream
(``PosteriorPredictive``, checkpoints, Pyro's own ``SVI``) sees the same objects. A test
checks the value against Pyro's traces for the same weight draw.
"""

from __future__ import annotations

import math

import torch
from pyro.infer.autoguide import AutoNormal
from torch.func import functional_call

from pyrobayes.convert import PRETRAINED_SUFFIX, _converted_root, bayesian_sites, site_priors

__all__ = ["FusedMeanFieldELBO", "supports_fused"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def supports_fused(model, guide) -> bool:
    """The fused step applies to a BayesianModel whose only latent sites are its weights,
    under an ``AutoNormal``-family guide (e.g. :class:`~pyrobayes.guides.MOPEDNormal`)."""
    return isinstance(guide, AutoNormal) and hasattr(model, "likelihood") and hasattr(model, "net")


class FusedMeanFieldELBO:
    """``loss(*inputs, y=..., **kw) -> Tensor``: the negative single-particle ELBO."""

    def __init__(self, model, guide):
        if not supports_fused(model, guide):
            raise ValueError("the fused ELBO needs a BayesianModel and an AutoNormal-family guide")
        self.model, self.guide = model, guide
        self.net, _ = _converted_root(model)
        self.sites = bayesian_sites(model)
        self.beta = 1.0

    def _fixed(self) -> dict[str, torch.Tensor]:
        # Live parameters (not detached): deterministic weights keep training as in SVI.
        out = dict(self.net.named_parameters())
        for name, t in self.net.named_buffers():
            if not name.endswith(PRETRAINED_SUFFIX):
                out[name] = t
        return out

    def loss(
        self, *inputs, y: torch.Tensor, eps: dict[str, torch.Tensor] | None = None, **kwargs
    ) -> torch.Tensor:
        priors = site_priors(self.model)
        log_p = log_q = 0.0
        weights = {}
        for site, paths in self.sites.items():
            loc, scale = self.guide._get_loc_and_scale(site)
            e = eps[site] if eps is not None else torch.randn_like(loc)
            w = loc + scale * e
            weights[paths[0]] = w
            # log N(w; loc, scale) with w - loc = scale * e, without recomputing (w-loc)/scale
            log_q = log_q - (0.5 * e.pow(2) + scale.log()).sum() - e.numel() * _HALF_LOG_2PI
            log_p = log_p + priors[site].log_prob(w)
        twin = self.net._pyrobayes_twin
        twin.train(self.model.training)
        out = self.model.output_fn(
            functional_call(twin, {**self._fixed(), **weights}, inputs, kwargs)
        )
        lik = self.model.likelihood
        batch = out.shape[0]
        n = lik.dataset_size or batch
        log_lik = lik.log_prob(out, y).sum() * (n / batch)
        return -(log_lik + self.beta * (log_p - log_q))
