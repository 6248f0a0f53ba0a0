"""Trace-free potential energy of a :class:`~pyrobayes.bayesian_model.BayesianModel` for HMC/NUTS.

The model is traced ONCE (:class:`Potential` construction) to find every latent sample site,
its prior and its support. Afterwards the potential

.. math:: U(u) = -\\Big[\\sum_k \\log p_k(T_k(u_k)) + \\log\\lvert\\det J_{T_k}(u_k)\\rvert
          + \\sum_{i=1}^N \\log p(y_i \\mid f_{w}(x_i), \\theta)\\Big],
          \\qquad T_k = \\mathrm{biject\\_to}(\\mathrm{support}_k),

is computed without Pyro's effect handlers: the weights go through the net's untouched twin
(:func:`~pyrobayes.infer.twin.forward_draws` on one draw, as the fused ELBO does) and the
likelihood is summed over all ``N`` training points (never scaled by a minibatch plate). Latent sites of the likelihood itself (e.g. a noise scale with a
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

import contextlib
import math
from collections.abc import Iterator, Mapping

import pyro.poutine as poutine
import torch
from torch import nn
from torch.distributions import biject_to, constraints

from pyrobayes._pyro_compat import is_subsample
from pyrobayes.convert import _converted_root, bayesian_sites
from pyrobayes.infer.fast_check import eval_mode, likelihood_sites, log_density, trace_mismatch
from pyrobayes.infer.twin import fixed_tensors, forward_draws
from pyrobayes.likelihoods import data_size

__all__ = ["FLAT", "Potential", "TracedPotential"]

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
        if is_subsample(site):  # a plate's index site
            continue
        priors[name] = site["fn"]
        init_values[name] = site["value"].detach()
    return priors, init_values


@contextlib.contextmanager
def _full_data(lik: nn.Module) -> Iterator[None]:
    """The likelihood's plate over the whole training set, unscaled: no ``dataset_size``
    left on it and no enclosing :func:`~pyrobayes.likelihoods.data_size` block (the
    potential sums over all ``N`` points)."""
    saved = getattr(lik, "dataset_size", None)
    lik.dataset_size = None
    try:
        with data_size(None):
            yield
    finally:
        lik.dataset_size = saved


def _likelihood_log_prob(
    lik: nn.Module, out: torch.Tensor, y: torch.Tensor, data: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The likelihood's observed sites' log density on ``out``, unscaled (full data,
    whatever plate size it was left with), its latent sites conditioned on ``data``."""
    tr = poutine.trace(poutine.condition(lik, data=dict(data))).get_trace(out, y)
    total = out.new_zeros(())
    for site in tr.nodes.values():
        if site["type"] == "sample" and site["is_observed"] and site["name"] not in data:
            total = total + site["fn"].log_prob(site["value"]).sum()
    return total


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
        model: a :class:`~pyrobayes.bayesian_model.BayesianModel`.
        x, y: the full training set (the likelihood sums over all of it).

    Call it with ``{site: unconstrained tensor}`` (what ``NUTS(potential_fn=...)`` passes).

    Example (the same number as minus the log joint of Pyro's trace of the model)::

        >>> import pyro, torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
        >>> from pyrobayes.infer.nuts.potential import Potential
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
        # looked up once: the net does not change while NUTS runs (a walk per gradient)
        self.fixed = fixed_tensors(net)
        self.weight_paths = {site: paths[0] for site, paths in bayesian_sites(model).items()}
        # the one trace: which sites are latent, their priors and supports; kept for verify
        with eval_mode(model), torch.no_grad(), _full_data(model.likelihood):
            tr = poutine.trace(model).get_trace(x, y=y)
        self._trace = tr
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

    def prior_scale(self) -> torch.Tensor:
        """Per coordinate of the flat vector ``[dim]``: the prior std on the unconstrained
        scale where the prior is a Normal on a real support (every weight of the comparison's
        models), 1 for a coordinate of any other site (e.g. a noise scale on its log scale).
        The unit of ``nuts_ppd``'s ``init_jitter``, the same as
        :attr:`~pyrobayes.infer.nuts.jax_potential.JaxLogDensity.prior_std` on the NumPyro backend.

        Example::

            >>> import torch
            >>> from pyrobayes import BayesianModel, Gaussian, NormalPrior, to_pyro
            >>> model = BayesianModel(to_pyro(torch.nn.Linear(2, 1), prior=NormalPrior(0.5)),
            ...                       Gaussian(0.3))
            >>> Potential(model, torch.zeros(4, 2), torch.zeros(4)).prior_scale()
            tensor([0.5000, 0.5000, 0.5000])
        """
        closed = 1.0 / self._inv_scale
        return torch.cat([closed, closed.new_ones(self.dim - self._n_closed)])

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

    def verify(self) -> str | None:
        """``None`` when this potential is minus the model's own log joint (plus the
        Jacobians of the unconstraining maps), else why not
        (:func:`~pyrobayes.infer.fast_check.trace_mismatch`): checked once at the setup
        trace's point against that trace (its sample sites, the weight priors' kinds, its
        log density). ``nuts_ppd`` falls back to :class:`TracedPotential` on a mismatch.

        Example (a subclass that adds a penalty is not what this potential computes)::

            >>> import pyro, torch
            >>> from pyrobayes import BayesianModel, Gaussian, to_pyro
            >>> class Penalised(BayesianModel):
            ...     def forward(self, *inputs, y=None):
            ...         pyro.factor("penalty", torch.tensor(-1.0))
            ...         return super().forward(*inputs, y=y)
            >>> x, y = torch.randn(5, 1), torch.randn(5)
            >>> Potential(BayesianModel(to_pyro(torch.nn.Linear(1, 1)), Gaussian(0.5)), x, y).verify()
            >>> Potential(Penalised(to_pyro(torch.nn.Linear(1, 1)), Gaussian(0.5)), x, y).verify()
            "site 'penalty' is in the model's trace but not in the NUTS potential"
        """
        values = dict(self.init_values)
        u = self.unconstrain(values)
        with torch.no_grad():
            fast = -self(u)
            jac = sum(
                self.transforms[s].log_abs_det_jacobian(u[s], v).sum() for s, v in values.items()
            )
            reference, magnitude = log_density(self._trace)
            out = self._output(values)
        sites = {s: False for s in self.weight_paths}
        sites.update(likelihood_sites(self.model.likelihood, out, self.y, values))
        return trace_mismatch(
            self._trace,
            sites,
            fast,
            what="the NUTS potential",
            reference=reference + jac,
            magnitude=magnitude + abs(float(jac)),
            dists={s: d for s, d in self.priors.items() if s in self.weight_paths},
        )

    def _output(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The network's output on the training inputs at the weights in ``values``."""
        return forward_draws(self.model, values, self.x, fixed=self.fixed)

    def log_likelihood(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:math:`\\sum_i \\log p(y_i \\mid f_w(x_i), \\theta)` over the full training set."""
        out = self._output(values)
        lik = self.model.likelihood
        if not self.extra_sites:  # e.g. Gaussian.log_prob_sum: one summed squared error
            return lik.log_prob_sum(out, self.y)
        return _likelihood_log_prob(lik, out, self.y, {s: values[s] for s in self.extra_sites})

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


class TracedPotential(Potential):
    """Pyro's own potential of the model behind :class:`Potential`'s flat interface: the
    model's trace conditioned on the constrained latents, minus its log density and the
    Jacobians (what ``NUTS(model)`` evaluates), and the network outputs read from the
    model's own run (the input its likelihood receives). ``nuts_ppd`` uses it when
    :meth:`Potential.verify` finds that the trace-free potential is not the model's (a
    subclass whose ``forward`` adds a factor or a sample site). Slower: one model trace per
    gradient.

    Example (the penalty is part of this potential)::

        >>> import pyro, torch
        >>> from pyrobayes import BayesianModel, Gaussian, to_pyro
        >>> class Penalised(BayesianModel):
        ...     def forward(self, *inputs, y=None):
        ...         pyro.factor("penalty", torch.tensor(-1.0))
        ...         return super().forward(*inputs, y=y)
        >>> model = Penalised(to_pyro(torch.nn.Linear(1, 1), name="pen"), Gaussian(0.5))
        >>> x, y = torch.randn(5, 1), torch.randn(5)
        >>> fast = Potential(model, x, y)
        >>> u = fast.unconstrain(fast.init_values)
        >>> round(float(TracedPotential.from_potential(fast)(u) - fast(u)), 4)  # the factor's -(-1)
        1.0
    """

    @classmethod
    def from_potential(cls, potential: Potential) -> TracedPotential:
        """The same sites, layout and start point as ``potential`` (no second setup trace)."""
        traced = object.__new__(cls)
        traced.__dict__.update(potential.__dict__)
        return traced

    def _joint_trace(self, values: Mapping[str, torch.Tensor], x, y) -> poutine.Trace:
        with _full_data(self.model.likelihood):
            return poutine.trace(poutine.condition(self.model, data=dict(values))).get_trace(x, y=y)

    def energy(self, flat: torch.Tensor) -> torch.Tensor:
        u = self.unpack(flat)
        values, jac = {}, flat.new_zeros(())
        for s, t in self.transforms.items():
            values[s] = t(u[s])
            jac = jac + t.log_abs_det_jacobian(u[s], values[s]).sum()
        return -(self._joint_trace(values, self.x, self.y).log_prob_sum() + jac)

    def outputs(self, draws: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``[S, N, ...]``: per draw (every latent site), what the model hands its
        likelihood at inputs ``x``."""
        seen: list[torch.Tensor] = []
        hook = self.model.likelihood.register_forward_pre_hook(
            lambda _module, args: seen.append(args[0].detach())
        )
        num = next(iter(draws.values())).shape[0]
        try:
            with torch.no_grad():
                for i in range(num):
                    before = len(seen)
                    self._joint_trace({s: v[i] for s, v in draws.items()}, x, None)
                    if len(seen) != before + 1:
                        raise ValueError(
                            f"{type(self.model).__name__}.forward must call its likelihood "
                            f"exactly once per run (called {len(seen) - before} times)"
                        )
        finally:
            hook.remove()
        return torch.stack(seen)

    def log_likelihood(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.outputs({s: v[None] for s, v in values.items()}, self.x)[0]
        lik = self.model.likelihood
        latents = {s: values[s] for s in getattr(lik, "latent_sites", ()) if s in values}
        return _likelihood_log_prob(lik, out, self.y, latents)
