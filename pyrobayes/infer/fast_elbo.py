"""A fused single-particle ``Trace_ELBO`` step for the common case: a
:class:`~pyrobayes.bayesian_model.BayesianModel` under a mean-field Normal autoguide.

It computes exactly Pyro's ``Trace_ELBO`` estimator for one particle,

.. math::

    \\hat{\\mathcal L} = \\frac{N}{B}\\sum_{i\\in B} \\log p(y_i \\mid f_w(x_i))
        + \\beta\\big[\\log p(w) - \\log q(w)\\big],
    \\qquad w = \\mu + \\sigma \\odot \\varepsilon,

but evaluates it in one pass over tensors instead of recording and replaying Pyro traces
(the network runs through :func:`~pyrobayes.infer.twin.forward_draws` on one draw).
On small networks Pyro's per-site bookkeeping costs more than the arithmetic; this path
removes it. For ``AutoNormal``-family guides the sites are handled as ONE flat vector
(:mod:`pyrobayes.infer.flat_guide`): the draw, the softplus, :math:`\\log q` and a Normal
:math:`\\log p` are single vectorised operations, and each site's weight is a view. The
guide's parameters are the autoguide's own (a MOPED guide's two flat tensors), so
everything downstream (``PosteriorPredictive``, checkpoints, Pyro's own ``SVI``) sees
the same objects. A test
checks the value against Pyro's traces for the same weight draw.
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoNormal
from torch.distributions import biject_to

from pyrobayes._pyro_compat import (
    UNCONSTRAINED_SUFFIX,
    loc_and_scale,
    pyro_name,
    setup_prototype,
)
from pyrobayes.convert import bayesian_sites, site_priors
from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.infer.fast_check import eval_mode, likelihood_sites, log_density, trace_mismatch
from pyrobayes.infer.flat_guide import _FlatMeanField, guide_leaf, normal_log_q
from pyrobayes.infer.twin import forward_draws

__all__ = ["FusedMeanFieldELBO", "supports_fused"]


def supports_fused(model, guide) -> bool:
    """The fused step applies to a BayesianModel whose latent sites are its weights (and
    the likelihood's scalar latents: the noise std of ``Gaussian(noise_prior=...)``, the
    logit scale of ``Categorical(logit_scale_prior=...)``), under an ``AutoNormal``-family
    guide (e.g. :class:`~pyrobayes.guides.MOPEDNormal`).

    Example::

        >>> from torch import nn
        >>> from pyrobayes import Gaussian, to_bayesian
        >>> model, guide = to_bayesian(nn.Linear(2, 1), likelihood=Gaussian(0.1))
        >>> supports_fused(model, guide)
        True
    """
    return (
        isinstance(guide, AutoNormal)
        and hasattr(model, "likelihood")
        and hasattr(model, "net")
        and _latents_supported(model.likelihood)
    )


def _latents_supported(lik) -> bool:
    """The likelihood's own latent sites are ones the fused step draws: none, or scalars
    whose prior the likelihood gives (``latent_prior_on``: the noise std of
    ``Gaussian(noise_prior=...)``, the logit scale of ``Categorical(logit_scale_prior=...)``)."""
    sites = tuple(getattr(lik, "latent_sites", ()))
    if not sites:
        return True
    cpu = torch.device("cpu")
    try:
        priors = [lik.latent_prior_on(s, cpu, torch.float32) for s in sites]
    except (AttributeError, KeyError):
        return False
    return all(p.batch_shape == torch.Size() and p.event_shape == torch.Size() for p in priors)


class FusedMeanFieldELBO:
    """``loss(*inputs, y=..., **kw) -> Tensor``: the negative single-particle ELBO.

    Example (the loss :func:`~pyrobayes.infer.fit` minimises by default for such a pair)::

        >>> from torch import nn
        >>> from pyrobayes import Gaussian, to_bayesian
        >>> model, guide = to_bayesian(nn.Linear(2, 1), likelihood=Gaussian(0.1))
        >>> x, y = torch.randn(8, 2), torch.randn(8)
        >>> guide(x, y=y)  # doctest: +ELLIPSIS
        {...}
        >>> loss = FusedMeanFieldELBO(model, guide).loss(x, y=y)
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """

    def __init__(self, model, guide):
        if not supports_fused(model, guide):
            raise ValueError("the fused ELBO needs a BayesianModel and an AutoNormal-family guide")
        self.model, self.guide = model, guide
        self.sites = bayesian_sites(model)
        self.beta = 1.0
        self.local_reparam = False
        self._resolved = False
        self.one_node = True  # False: the autograd branch of _FlatMeanField.sample (tests)
        self._flat: _FlatMeanField | None = None
        self._why_not: str | None = None  # why the flat path does not cover this guide

    def _resolve(self) -> None:
        """Once: the flat view of the guide's sites (:class:`_FlatMeanField`) and getters
        for the likelihood's latent sites. Going through ``PyroModule.__getattr__`` for every
        level of every site name costs more than the arithmetic on a small net, so the
        leaves are looked up once (``guide_leaf``)."""
        if self._resolved:
            return
        try:
            self._flat = _FlatMeanField.build(self.guide, self.sites, site_priors(self.model))
        except ValueError as exc:
            self._flat, self._why_not = None, f"the fused ELBO does not cover this guide: {exc}"
        keywords = getattr(self.model.likelihood, "latent_keywords", {})
        self._latents = [
            (site, keywords[site], _getter(self.guide.locs, site), _getter(self.guide.scales, site))
            for site in getattr(self.model.likelihood, "latent_sites", ())
        ]
        self._resolved = True

    def loss(
        self, *inputs, y: torch.Tensor, eps: dict[str, torch.Tensor] | None = None, **kwargs
    ) -> torch.Tensor:
        """The negative ELBO for one weight draw on a batch (the likelihood term scaled by
        ``N / B``, the data size of the surrounding ``data_size`` block over the batch size).
        ``eps``: standard-normal noise per site name, to evaluate a given draw (tests).

        Example::

            >>> from torch import nn
            >>> from pyrobayes import Gaussian, to_bayesian
            >>> model, guide = to_bayesian(nn.Linear(1, 1), likelihood=Gaussian(0.1))
            >>> x, y = torch.randn(4, 1), torch.randn(4)
            >>> _ = guide(x, y=y)
            >>> elbo = FusedMeanFieldELBO(model, guide)
            >>> eps = {site: torch.zeros_like(w) for site, w in guide.median().items()}
            >>> bool(elbo.loss(x, y=y, eps=eps) == elbo.loss(x, y=y, eps=eps))  # w = loc
            True
        """
        return self._loss_and_output(inputs, y, eps, kwargs)[0]

    def _loss_and_output(self, inputs, y, eps, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the network output it scored (the output names the likelihood's
        sites for :meth:`verify`)."""
        self._resolve()
        if self._flat is None:
            raise ValueError(self._why_not)
        with LocalReparameterization() if self.local_reparam else contextlib.nullcontext() as lrt:
            weights, log_p, log_q = self._flat.sample(eps, lrt, self.one_node)
            out = forward_draws(self.model, weights, *inputs, train=self.model.training, **kwargs)
        lik = self.model.likelihood
        extra = {}
        for site, keyword, get_loc, get_scale in self._latents:  # e.g. the noise std
            value, lp, lq = self._latent_draw(site, get_loc(), get_scale(), eps)
            extra[keyword] = value
            log_p, log_q = log_p + lp, log_q + lq
        batch = out.shape[0]
        n = lik.plate_size(batch)
        log_lik = lik.log_prob_sum(out, y, **extra) * (n / batch)
        return -(log_lik + self.beta * (log_p - log_q)), out

    def verify(self, *inputs, y: torch.Tensor, **kwargs) -> str | None:
        """``None`` when this ELBO is Pyro's ``Trace_ELBO`` estimate for this model and guide,
        else why not (:func:`~pyrobayes.infer.fast_check.trace_mismatch`). Both are evaluated
        once on this batch at the guide's means (``eps = 0``): Pyro's guide trace there, the
        model's trace replayed on it, against :meth:`loss` at the same draw, every module in
        eval mode (the two paths would draw different dropout masks, and BatchNorm's
        statistics must not move). Running the guide under Pyro also puts its parameter
        objects in Pyro's param store (replacing entries of the same name: this ELBO trains
        the guide's own tensors and never reads the store), so a store saved after a fit
        holds the fit.

        Example (a subclass that adds a penalty is not what the fused ELBO computes)::

            >>> import pyro
            >>> from torch import nn
            >>> from pyrobayes import BayesianModel, Gaussian, to_bayesian
            >>> class Penalised(BayesianModel):
            ...     def forward(self, *inputs, y=None):
            ...         pyro.factor("penalty", torch.tensor(-1.0))
            ...         return super().forward(*inputs, y=y)
            >>> model, guide = to_bayesian(nn.Linear(1, 1), likelihood=Gaussian(0.1))
            >>> x, y = torch.randn(4, 1), torch.randn(4)
            >>> guide.setup(x)
            >>> FusedMeanFieldELBO(model, guide).verify(x, y=y) is None
            True
            >>> model.__class__ = Penalised
            >>> FusedMeanFieldELBO(model, guide).verify(x, y=y)
            "site 'penalty' is in the model's trace but not in the fused ELBO"
        """
        guide = self.guide
        if guide.prototype_trace is None:
            setup_prototype(guide, *inputs, y=y, **kwargs)
        self._resolve()
        if self._flat is None:
            return self._why_not
        names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
        with eval_mode(self.model), torch.no_grad():
            locs = self._guide_means(names, inputs, y, kwargs)
            guide_tr = poutine.trace(poutine.condition(guide, data=locs)).get_trace(
                *inputs, y=y, **kwargs
            )
            model_tr = poutine.trace(poutine.replay(self.model, trace=guide_tr)).get_trace(
                *inputs, y=y, **kwargs
            )
            eps = {n: torch.zeros_like(loc) for n, loc in zip(names, locs.values())}
            saved = self.beta, self.local_reparam
            self.beta, self.local_reparam = 1.0, False  # LRT would draw output noise
            try:
                loss, out = self._loss_and_output(inputs, y, eps, kwargs)
            finally:
                self.beta, self.local_reparam = saved
            model_lp, model_mag = log_density(model_tr)
            guide_lp, guide_mag = log_density(guide_tr)
        values = {n: guide_tr.nodes[n]["value"] for n in names}
        sites = {site: False for site in self.sites}
        sites.update(likelihood_sites(self.model.likelihood, out, y, values))
        return trace_mismatch(
            model_tr,
            sites,
            -loss,
            what="the fused ELBO",
            reference=model_lp - guide_lp,
            magnitude=model_mag + guide_mag,
            dists=site_priors(self.model),
        )

    def _guide_means(self, names: list[str], inputs, y, kwargs) -> dict[str, torch.Tensor]:
        """``{"<site>_unconstrained": mean}`` for conditioning the guide's draws on its
        means. First the guide's parameters go into Pyro's param store: entries of the same
        name are dropped (a guide run would otherwise swap the store's tensors into the
        guide), then one blocked guide run registers the guide's own."""
        store = pyro.get_param_store()
        prefix = pyro_name(self.guide)
        for path, _ in self.guide.named_parameters():
            if path.endswith(UNCONSTRAINED_SUFFIX):
                name = f"{prefix}.{path[: -len(UNCONSTRAINED_SUFFIX)]}"
                if name in store:
                    del store[name]
        locs = {f"{n}_unconstrained": loc_and_scale(self.guide, n)[0].detach() for n in names}
        with poutine.block():
            poutine.condition(self.guide, data=locs)(*inputs, y=y, **kwargs)
        return locs

    def _latent_draw(self, site: str, loc, scale, eps):
        r"""The guide's draw of a constrained latent (AutoNormal: a Normal in the
        unconstrained space pushed through ``t = biject_to(support)``) and its log prior
        and log guide density, :math:`\log q(t(z)) = \log\mathcal N(z;\mu,\sigma) -
        \log|t'(z)|`, as Pyro's traces score them."""
        e = eps[site] if eps is not None and site in eps else torch.randn_like(loc)
        z = loc + scale * e
        prior = self.model.likelihood.latent_prior_on(site, z.device, z.dtype)
        transform = biject_to(prior.support)
        value = transform(z)
        log_q = normal_log_q(e, scale) - transform.log_abs_det_jacobian(z, value).sum()
        return value, prior.log_prob(value).sum(), log_q


def _getter(root, name: str):
    """A zero-argument getter for the constrained guide tensor of site ``name`` under
    ``root`` (``guide_leaf``)."""
    leaf = guide_leaf(root, name)
    if leaf is None:
        raise KeyError(f"guide has no parameter for site {name!r}")
    store, key, transform = leaf
    if transform == torch.distributions.transforms.identity_transform:
        return lambda: store[key]
    return lambda: transform(store[key])
