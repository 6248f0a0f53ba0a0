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

import contextlib
import math

import torch
from pyro.infer.autoguide import AutoNormal
from torch.distributions import Independent, Normal, biject_to

from pyrobayes._pyro_compat import UNCONSTRAINED_SUFFIX, param_constraint
from pyrobayes.convert import _converted_root, bayesian_sites, site_priors
from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.infer.twin import fixed_tensors, twin_forward

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
        self.local_reparam = False
        self._getters = None

    def _resolve(self) -> None:
        """Per site, direct handles on the guide's tensors and a cheap prior log-density.

        Going through ``PyroModule.__getattr__`` for every level of every site name costs
        more than the arithmetic on a small net, so the leaves are looked up once."""
        self._getters = {
            site: (_leaf(self.guide.locs, site), _leaf(self.guide.scales, site))
            for site in self.sites
        }
        self._priors = {site: _fast_log_prob(d) for site, d in site_priors(self.model).items()}

    def loss(
        self, *inputs, y: torch.Tensor, eps: dict[str, torch.Tensor] | None = None, **kwargs
    ) -> torch.Tensor:
        if self._getters is None:
            self._resolve()
        with LocalReparameterization() if self.local_reparam else contextlib.nullcontext() as lrt:
            log_p = log_q = 0.0
            weights = {}
            for site, paths in self.sites.items():
                get_loc, get_scale = self._getters[site]
                loc, scale = get_loc(), get_scale()
                e = eps[site] if eps is not None else torch.randn_like(loc)
                w = loc + scale * e
                weights[paths[0]] = w
                if lrt is not None:
                    lrt.register(w, loc, scale)
                # log N(w; loc, scale) with w - loc = scale * e, without recomputing (w-loc)/scale
                log_q = log_q - (0.5 * e.pow(2) + scale.log()).sum() - e.numel() * _HALF_LOG_2PI
                log_p = log_p + self._priors[site](w)
            twin = self.net._pyrobayes_twin
            twin.train(self.model.training)
            out = twin_forward(
                self.model,
                weights,
                *inputs,
                net=self.net,
                fixed=fixed_tensors(self.net, detach=False),
                **kwargs,
            )
        lik = self.model.likelihood
        batch = out.shape[0]
        n = lik.plate_size(batch)
        log_lik = lik.log_prob(out, y).sum() * (n / batch)
        return -(log_lik + self.beta * (log_p - log_q))


def _leaf(root, name: str):
    """A zero-argument getter for the guide tensor of site ``name`` under ``root``."""
    module = root
    *path, attr = name.split(".")
    for part in path:
        module = module._modules[part]
    if attr + UNCONSTRAINED_SUFFIX in module._parameters:
        raw = module._parameters[attr + UNCONSTRAINED_SUFFIX]
        transform = biject_to(param_constraint(module, attr))
        if isinstance(transform, torch.distributions.transforms.IndependentTransform):
            transform = transform.base_transform
        if transform == torch.distributions.transforms.identity_transform:
            return lambda: raw
        return lambda: transform(raw)
    if attr in module._buffers:  # frozen means
        return lambda: module._buffers[attr]
    raise KeyError(f"guide has no parameter for site {name!r}")


def _fast_log_prob(d):
    """``d.log_prob`` for an ``Independent(Normal)`` prior whose scale is one number
    broadcast over the parameter, without materialising the broadcast scale (twice)."""
    base = d.base_dist if isinstance(d, Independent) else None
    if isinstance(base, Normal) and all(st == 0 for st in base.scale.stride()):
        scale = base.scale.reshape(-1)[0]
        loc = base.loc
        const = float(torch.log(scale)) + _HALF_LOG_2PI
        if all(st == 0 for st in loc.stride()):
            loc = loc.reshape(-1)[0]

        def log_prob(w):
            return -0.5 * ((w - loc) / scale).pow(2).sum() - w.numel() * const

        return log_prob
    return d.log_prob
