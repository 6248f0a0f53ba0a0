"""Trace-free potential energy of a :class:`~pyrobayes.model.BayesianModel` for HMC/NUTS.

The model is traced ONCE (:class:`Potential` construction) to find every latent sample site,
its prior and its support. Afterwards the potential

.. math:: U(u) = -\\Big[\\sum_k \\log p_k(T_k(u_k)) + \\log\\lvert\\det J_{T_k}(u_k)\\rvert
          + \\sum_{i=1}^N \\log p(y_i \\mid f_{w}(x_i), \\theta)\\Big],
          \\qquad T_k = \\mathrm{biject\\_to}(\\mathrm{support}_k),

is computed without Pyro's effect handlers: the weights go through the net's untouched twin
(``torch.func.functional_call`` with :func:`~pyrobayes.infer.predictive.fixed_tensors`, as the
fused ELBO does) and the likelihood is summed over all ``N`` training points (never scaled
by a minibatch plate). Latent sites of the likelihood itself (e.g. a noise scale with a
prior) are substituted into a tiny trace of the likelihood only, never the network.

Example::

    >>> import torch
    >>> from pyrobayes.models.mlp import default_regression_model
    >>> model = default_regression_model()
    >>> x = torch.linspace(-1, 1, 8)[:, None]
    >>> pot = Potential(model, x, torch.sin(x[:, 0]))
    >>> u = pot.unconstrain(pot.prior_draw())
    >>> bool(torch.isfinite(pot(u)))
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro.poutine as poutine
import torch
from torch import nn
from torch.distributions import biject_to
from torch.func import functional_call

from pyrobayes.convert import _converted_root, bayesian_sites
from pyrobayes.infer.predictive import fixed_tensors
from pyrobayes.model import default_output

__all__ = ["Potential"]


class Potential:
    """Negative log joint of a ``BayesianModel`` on unconstrained latents, trace-free.

    Args:
        model: a :class:`~pyrobayes.model.BayesianModel`.
        x, y: the full training set (the likelihood sums over all of it).

    Call it with ``{site: unconstrained tensor}`` (what ``NUTS(potential_fn=...)`` passes).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        self.model, self.x, self.y = model, x, y
        net, _ = _converted_root(model)
        self.twin = net._pyrobayes_twin
        self.fixed = fixed_tensors(net)
        device = x.device
        if next(self.twin.parameters(), torch.empty(0, device=device)).device != device:
            self.twin.to(device)
        self.twin.eval()
        self.output_fn = getattr(model, "output_fn", None) or default_output
        self.weight_paths = {site: paths[0] for site, paths in bayesian_sites(model).items()}
        # the one trace: which sites are latent, their priors and supports
        with torch.no_grad():
            tr = poutine.trace(model).get_trace(x, y=y)
        self.priors: dict[str, torch.distributions.Distribution] = {}
        self.init_values: dict[str, torch.Tensor] = {}
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if type(site["fn"]).__name__ == "_Subsample":  # a plate's index site
                continue
            self.priors[name] = site["fn"]
            self.init_values[name] = site["value"].detach()
        missing = [s for s in self.weight_paths if s not in self.priors]
        if missing:
            raise ValueError(f"weight sites {missing[:3]} are not latent in the model's trace")
        self.extra_sites = [s for s in self.priors if s not in self.weight_paths]
        self.transforms = {s: biject_to(d.support) for s, d in self.priors.items()}
        # Normal priors (every weight prior of the default model) in closed form: Pyro's
        # Independent(Normal).log_prob with argument validation is a third of a gradient
        self._normal: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for s, d in self.priors.items():
            base = d.base_dist if isinstance(d, torch.distributions.Independent) else d
            if type(base).__name__ == "Normal" and d.event_shape == self.init_values[s].shape:
                loc, scale = base.loc.detach(), base.scale.detach()
                loc, scale = torch.broadcast_tensors(loc, scale)
                const = -(scale.log() + 0.5 * math.log(2 * math.pi)).sum()
                self._normal[s] = (loc, 1.0 / scale, const)

    def prior_draw(self) -> dict[str, torch.Tensor]:
        """One draw of every latent site from its prior (constrained space)."""
        return {s: d.sample() for s, d in self.priors.items()}

    def unconstrain(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {s: self.transforms[s].inv(v) for s, v in values.items()}

    def constrain(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {s: self.transforms[s](u) for s, u in params.items()}

    def log_likelihood(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:math:`\\sum_i \\log p(y_i \\mid f_w(x_i), \\theta)` over the full training set."""
        weights = {self.weight_paths[s]: values[s] for s in self.weight_paths}
        out = self.output_fn(functional_call(self.twin, {**self.fixed, **weights}, (self.x,)))
        lik = self.model.likelihood
        if not self.extra_sites:
            return lik.log_prob(out, self.y).sum()
        # latent likelihood parameters: condition them into a trace of the likelihood alone
        # and sum its observed sites unscaled (full data, whatever plate size it was left with)
        data = {s: values[s] for s in self.extra_sites}
        tr = poutine.trace(poutine.condition(lik, data=data)).get_trace(out, self.y)
        total = out.new_zeros(())
        for site in tr.nodes.values():
            if site["type"] == "sample" and site["is_observed"] and site["name"] not in data:
                total = total + site["fn"].log_prob(site["value"]).sum()
        return total

    def __call__(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        values, log_det = {}, 0.0
        log_prior = 0.0
        for s, u in params.items():
            t = self.transforms[s]
            v = t(u)
            values[s] = v
            log_det = log_det + t.log_abs_det_jacobian(u, v).sum()
            if s in self._normal:
                loc, inv_scale, const = self._normal[s]
                log_prior = log_prior + const - 0.5 * ((v - loc) * inv_scale).square().sum()
            else:
                log_prior = log_prior + self.priors[s].log_prob(v).sum()
        return -(log_prior + log_det + self.log_likelihood(values))
