"""Trace-free potential energy of a :class:`~pyrobayes.model.BayesianModel` for HMC/NUTS.

The model is traced ONCE (:class:`Potential` construction) to find every latent sample site,
its prior and its support. Afterwards the potential

.. math:: U(u) = -\\Big[\\sum_k \\log p_k(T_k(u_k)) + \\log\\lvert\\det J_{T_k}(u_k)\\rvert
          + \\sum_{i=1}^N \\log p(y_i \\mid f_{w}(x_i), \\theta)\\Big],
          \\qquad T_k = \\mathrm{biject\\_to}(\\mathrm{support}_k),

is computed without Pyro's effect handlers: the weights go through the net's untouched twin
(``torch.func.functional_call`` with :func:`~pyrobayes.infer.twin.fixed_tensors`, or ``F.linear``
per layer for a plain Linear chain, as the fused ELBO does) and the likelihood is summed over all ``N`` training points (never scaled
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
from torch.distributions import biject_to, constraints
from torch.func import functional_call

from pyrobayes.convert import _converted_root, bayesian_sites
from pyrobayes.infer.twin import _linear_chain, chain_forward_one, fixed_tensors, tied_paths
from pyrobayes.likelihoods import Gaussian
from pyrobayes.model import default_output

__all__ = ["FLAT", "Potential"]

FLAT = "_flat"  # the one site name NUTS sees: all latents concatenated, unconstrained


def _latent_sites(
    tr: poutine.Trace,
) -> tuple[dict[str, torch.distributions.Distribution], dict[str, torch.Tensor]]:
    """The latent sample sites of a trace: ``(priors, detached values)``, plate indices skipped."""
    priors: dict[str, torch.distributions.Distribution] = {}
    init_values: dict[str, torch.Tensor] = {}
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if type(site["fn"]).__name__ == "_Subsample":  # a plate's index site
            continue
        priors[name] = site["fn"]
        init_values[name] = site["value"].detach()
    return priors, init_values


def _split_closed_form(
    priors: Mapping[str, torch.distributions.Distribution],
    init_values: Mapping[str, torch.Tensor],
) -> tuple[list[str], list[str]]:
    """Sites with a Normal prior on a real support (closed-form log-density), and the rest."""
    closed, other = [], []
    for s, d in priors.items():
        base = d.base_dist if isinstance(d, torch.distributions.Independent) else d
        support = d.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if (
            type(base).__name__ == "Normal"
            and support is constraints.real
            and d.event_shape == init_values[s].shape
        ):
            closed.append(s)
        else:
            other.append(s)
    return closed, other


def _closed_form_normal(
    priors: Mapping[str, torch.distributions.Distribution],
    init_values: Mapping[str, torch.Tensor],
    closed: list[str],
    empty: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Concatenated locs, inverse scales and log-normaliser of the ``closed`` Normal priors."""
    locs, inv_scales = [], []
    const = 0.0
    for s in closed:
        d = priors[s]
        base = d.base_dist if isinstance(d, torch.distributions.Independent) else d
        loc, scale = torch.broadcast_tensors(base.loc.detach(), base.scale.detach())
        loc, scale = (
            loc.expand(init_values[s].shape),
            scale.expand(init_values[s].shape),
        )
        locs.append(loc.reshape(-1))
        inv_scales.append(1.0 / scale.reshape(-1))
        const -= float((scale.log() + 0.5 * math.log(2 * math.pi)).sum())
    loc_cat = torch.cat(locs) if locs else empty
    inv_scale_cat = torch.cat(inv_scales) if inv_scales else empty
    return loc_cat, inv_scale_cat, const


class Potential:
    """Negative log joint of a ``BayesianModel`` on unconstrained latents, trace-free.

    Args:
        model: a :class:`~pyrobayes.model.BayesianModel`.
        x, y: the full training set (the likelihood sums over all of it).

    Call it with ``{site: unconstrained tensor}`` (what ``NUTS(potential_fn=...)`` passes).

    Example (the same number as minus the log joint of Pyro's trace of the model)::

        >>> import pyro, torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
        >>> from pyrobayes.infer.potential import Potential
        >>> model = BayesianModel(to_pyro(torch.nn.Linear(1, 1), name="lin"), Gaussian(0.5))
        >>> x, y = torch.randn(5, 1), torch.randn(5)
        >>> pot = Potential(model, x, y)
        >>> w = {"lin.net.weight": torch.tensor([[0.3]]), "lin.net.bias": torch.tensor([-0.2])}
        >>> trace = pyro.poutine.trace(pyro.condition(model, data=w)).get_trace(x, y=y)
        >>> torch.allclose(pot(pot.unconstrain(w)), -trace.log_prob_sum())
        True
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
        sites = bayesian_sites(model)
        self.weight_paths = {site: paths[0] for site, paths in sites.items()}
        self._tied = tied_paths(sites)
        # A plain Linear/element-wise chain (the default MLP) runs as F.linear per layer, as
        # the fused ELBO does: functional_call's per-call module walk and parameter swap
        # were a third of a potential + gradient evaluation at the default model's size
        self._chain = _linear_chain(model, self.twin, x)
        # the one trace: which sites are latent, their priors and supports
        with torch.no_grad():
            tr = poutine.trace(model).get_trace(x, y=y)
        self.priors, self.init_values = _latent_sites(tr)
        missing = [s for s in self.weight_paths if s not in self.priors]
        if missing:
            raise ValueError(f"weight sites {missing[:3]} are not latent in the model's trace")
        self.extra_sites = [s for s in self.priors if s not in self.weight_paths]
        self.transforms = {s: biject_to(d.support) for s, d in self.priors.items()}
        # One flat vector: Pyro's per-step bookkeeping (dicts of momenta, mass-matrix blocks,
        # one autograd leaf each) scales with the number of sites, so NUTS sees a single
        # site FLAT and each latent is a view of it. Normal priors on real supports (every
        # weight prior of the default model) go first: their log-density is one closed-form
        # expression over the concatenated locs/scales (Pyro's Independent(Normal).log_prob
        # with argument validation was a third of a gradient) and they need no bijection.
        closed, other = _split_closed_form(self.priors, self.init_values)
        self.layout: list[tuple[str, int, int, torch.Size]] = []
        offset = 0
        for s in closed + other:
            shape = self.init_values[s].shape
            self.layout.append((s, offset, offset + shape.numel(), shape))
            offset += shape.numel()
        self.dim = offset
        self._sizes = [b - a for _, a, b, _ in self.layout]
        self._n_closed = sum(self.init_values[s].numel() for s in closed)
        self._loc, self._inv_scale, self._const = _closed_form_normal(
            self.priors, self.init_values, closed, self.x.new_zeros(0)
        )
        self._loc_scaled = self._loc * self._inv_scale
        self._other = other
        # A Gaussian likelihood with a fixed scale in closed form too: building a validated
        # Normal per call costs three argument checks, each a device sync
        self._gauss: tuple[torch.Tensor, float, float] | None = None
        lik = model.likelihood
        if type(lik) is Gaussian and not self.extra_sites:
            y_sq = Gaussian._squeeze(y)
            scale = float(lik.scale.detach())
            const = -y_sq.numel() * (math.log(scale) + 0.5 * math.log(2 * math.pi))
            self._gauss = (y_sq, 0.5 / scale**2, const)

    def prior_draw(self) -> dict[str, torch.Tensor]:
        """One draw of every latent site from its prior (constrained space)."""
        return {s: d.sample() for s, d in self.priors.items()}

    def unconstrain(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {s: self.transforms[s].inv(v) for s, v in values.items()}

    def constrain(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {s: self.transforms[s](u) for s, u in params.items()}

    def pack(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{site: unconstrained [*batch, *shape]}`` -> the flat vector ``[*batch, dim]``."""
        missing = [s for s, *_ in self.layout if s not in params]
        if missing:
            raise ValueError(f"missing latent sites {missing[:3]}")
        first = params[self.layout[0][0]]
        batch = first.shape[: first.dim() - len(self.layout[0][3])]
        return torch.cat([params[s].reshape((*batch, b - a)) for s, a, b, _ in self.layout], -1)

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat vector ``[*batch, dim]`` -> ``{site: view [*batch, *shape]}``."""
        if flat.shape[-1] != self.dim:
            raise ValueError(f"flat latent vector must end in {self.dim}, got {tuple(flat.shape)}")
        batch = flat.shape[:-1]
        # one split (its backward is one concatenation) rather than a slice per site; a
        # vector site's part already has its shape (no reshape node to run and differentiate)
        parts = flat.split(self._sizes, -1)
        return {
            s: part if len(shape) == 1 else part.reshape((*batch, *shape))
            for (s, _, _, shape), part in zip(self.layout, parts)
        }

    def log_likelihood(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:math:`\\sum_i \\log p(y_i \\mid f_w(x_i), \\theta)` over the full training set."""
        weights = {self.weight_paths[s]: values[s] for s in self.weight_paths}
        if self._chain is not None:
            for alias, path in self._tied.items():
                weights[alias] = weights[path]
            out = chain_forward_one(self._chain, weights, self.fixed, self.x)
        else:
            out = self.output_fn(functional_call(self.twin, {**self.fixed, **weights}, (self.x,)))
        lik = self.model.likelihood
        if self._gauss is not None:
            y_sq, half_precision, const = self._gauss
            loc = Gaussian._squeeze(out)
            # one fused op (and one backward node) for sum_i (y_i - f_i)^2
            sq = nn.functional.mse_loss(loc, y_sq.to(loc.dtype), reduction="sum")
            return const - half_precision * sq
        if not self.extra_sites:
            return lik.log_prob_sum(out, self.y)
        # latent likelihood parameters: condition them into a trace of the likelihood alone
        # and sum its observed sites unscaled (full data, whatever plate size it was left with)
        data = {s: values[s] for s in self.extra_sites}
        tr = poutine.trace(poutine.condition(lik, data=data)).get_trace(out, self.y)
        total = out.new_zeros(())
        for site in tr.nodes.values():
            if site["type"] == "sample" and site["is_observed"] and site["name"] not in data:
                total = total + site["fn"].log_prob(site["value"]).sum()
        return total

    def energy(self, flat: torch.Tensor) -> torch.Tensor:
        """:math:`U(u)` of one flat unconstrained vector ``[dim]``."""
        values = self.unpack(flat)
        head = flat[: self._n_closed]
        # sum_k ((u_k - m_k) / s_k)^2 as one fused op on pre-scaled locs
        sq = nn.functional.mse_loss(head * self._inv_scale, self._loc_scaled, reduction="sum")
        log_joint = self._const - 0.5 * sq
        for s in self._other:
            u = values[s]
            t = self.transforms[s]
            v = t(u)
            values[s] = v
            log_joint = log_joint + t.log_abs_det_jacobian(u, v).sum()
            log_joint = log_joint + self.priors[s].log_prob(v).sum()
        return -(log_joint + self.log_likelihood(values))

    def __call__(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:math:`U` of ``{FLAT: flat}`` (what NUTS passes) or of ``{site: unconstrained}``."""
        if FLAT in params and len(params) == 1:
            return self.energy(params[FLAT])
        return self.energy(self.pack(params))
