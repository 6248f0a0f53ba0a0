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
removes it. For ``AutoNormal``-family guides the sites are handled as ONE flat vector
(:class:`_FlatMeanField`): the draw, the softplus, :math:`\\log q` and a Normal
:math:`\\log p` are single vectorised operations, and each site's weight is a view. The
guide's parameters are the autoguide's own, so everything downstream
(``PosteriorPredictive``, checkpoints, Pyro's own ``SVI``) sees the same objects. A test
checks the value against Pyro's traces for the same weight draw.
"""

from __future__ import annotations

import contextlib
import math

import pyro.distributions
import torch
from pyro.distributions.transforms import SoftplusTransform
from pyro.infer.autoguide import AutoNormal
from torch.distributions import Independent, Normal, biject_to

from pyrobayes._pyro_compat import UNCONSTRAINED_SUFFIX, param_constraint
from pyrobayes.convert import _converted_root, bayesian_sites, site_priors
from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.infer.twin import (
    _linear_chain,
    chain_forward_one,
    fixed_tensors,
    tied_paths,
    twin_forward,
)

__all__ = ["FusedMeanFieldELBO", "supports_fused"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def supports_fused(model, guide) -> bool:
    """The fused step applies to a BayesianModel whose latent sites are its weights (and,
    with ``Gaussian(noise_prior=...)``, the noise std), under an ``AutoNormal``-family
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
    """The likelihood's own latent sites are ones the fused step draws: none, or the one
    scalar noise std of ``Gaussian(noise_prior=...)``."""
    sites = tuple(getattr(lik, "latent_sites", ()))
    if not sites:
        return True
    return (
        sites == (getattr(lik, "NOISE_SITE", None),)
        and getattr(lik, "noise_prior", None) is not None
    )


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
        self.net, _ = _converted_root(model)
        self.sites = bayesian_sites(model)
        self._tied = tied_paths(self.sites)
        self.beta = 1.0
        self.local_reparam = False
        self._getters = None
        self._flat: _FlatMeanField | None = None
        self._chains: dict = {}

    def _chain(self, twin, x):
        """:func:`_linear_chain` of this twin for inputs like ``x``, looked up once per input
        kind (it walks the twin's children, which does not change during a fit)."""
        key = torch.is_tensor(x) and (x.dim(), x.dtype)
        hit = self._chains.get(key)
        if hit is None or hit[0] is not twin:
            hit = self._chains[key] = (twin, _linear_chain(self.model, twin, x))
        return hit[1]

    def _resolve(self) -> None:
        """Per site, direct handles on the guide's tensors and a cheap prior log-density.

        Going through ``PyroModule.__getattr__`` for every level of every site name costs
        more than the arithmetic on a small net, so the leaves are looked up once."""
        self._getters = {
            site: (_leaf(self.guide.locs, site), _leaf(self.guide.scales, site))
            for site in self.sites
        }
        priors = site_priors(self.model)
        self._priors = {site: _fast_log_prob(d) for site, d in priors.items()}
        self._flat = _FlatMeanField.build(self.guide, self.sites, priors)
        self._latents = [
            (site, _leaf(self.guide.locs, site), _leaf(self.guide.scales, site))
            for site in getattr(self.model.likelihood, "latent_sites", ())
        ]

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
        if self._getters is None:
            self._resolve()
        with LocalReparameterization() if self.local_reparam else contextlib.nullcontext() as lrt:
            if self._flat is not None:
                weights, log_p, log_q = self._flat.sample(eps, lrt)
            else:
                weights, log_p, log_q = self._per_site(eps, lrt)
            twin = self.net._pyrobayes_twin
            twin.train(self.model.training)
            fixed = fixed_tensors(self.net, detach=False)
            chain = None
            if not kwargs and len(inputs) == 1:
                chain = self._chain(twin, inputs[0])
            if chain is not None:  # a Linear chain: F.linear per layer, no parameter swap
                for alias, path in self._tied.items():
                    weights[alias] = weights[path]
                out = chain_forward_one(chain, weights, fixed, inputs[0])
            else:
                out = twin_forward(
                    self.model, weights, *inputs, net=self.net, fixed=fixed, **kwargs
                )
        lik = self.model.likelihood
        extra = {}
        for site, get_loc, get_scale in self._latents:  # the noise std, drawn after the net
            value, lp, lq = self._latent_draw(site, get_loc(), get_scale(), eps)
            extra["noise_scale"] = value
            log_p, log_q = log_p + lp, log_q + lq
        batch = out.shape[0]
        n = lik.plate_size(batch)
        log_lik = lik.log_prob_sum(out, y, **extra) * (n / batch)
        return -(log_lik + self.beta * (log_p - log_q))

    def _latent_draw(self, site: str, loc, scale, eps):
        r"""The guide's draw of a constrained latent (AutoNormal: a Normal in the
        unconstrained space pushed through ``t = biject_to(support)``) and its log prior
        and log guide density, :math:`\log q(t(z)) = \log\mathcal N(z;\mu,\sigma) -
        \log|t'(z)|`, as Pyro's traces score them."""
        e = eps[site] if eps is not None and site in eps else torch.randn_like(loc)
        z = loc + scale * e
        prior = self.model.likelihood._noise_prior_on(z.device, z.dtype)
        transform = biject_to(prior.support)
        value = transform(z)
        log_q = (
            -(0.5 * e.pow(2) + scale.log()).sum()
            - e.numel() * _HALF_LOG_2PI
            - transform.log_abs_det_jacobian(z, value).sum()
        )
        return value, prior.log_prob(value).sum(), log_q

    def _per_site(self, eps, lrt):
        """The general path: one sampling and log-density expression per site."""
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
        return weights, log_p, log_q


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


# Pyro's softplus_positive constraint maps to its own SoftplusTransform (also F.softplus)
_SOFTPLUS = (torch.distributions.transforms.SoftplusTransform, SoftplusTransform)


def _unwrap(transform):
    """The element-wise transform inside an ``IndependentTransform``."""
    while isinstance(transform, torch.distributions.transforms.IndependentTransform):
        transform = transform.base_transform
    return transform


def _raw_leaf(root, name: str):
    """``(module, key, kind)``: where the guide stores site ``name``'s tensor under ``root``
    and how it maps to the constrained value (``"identity"``, ``"softplus"``), or ``None``
    when the flat path does not cover it (another constraint)."""
    module = root
    *path, attr = name.split(".")
    for part in path:
        module = module._modules.get(part)
        if module is None:
            return None
    if attr + UNCONSTRAINED_SUFFIX in module._parameters:
        transform = _unwrap(biject_to(param_constraint(module, attr)))
        if transform == torch.distributions.transforms.identity_transform:
            return module._parameters, attr + UNCONSTRAINED_SUFFIX, "identity"
        if isinstance(transform, _SOFTPLUS):
            return module._parameters, attr + UNCONSTRAINED_SUFFIX, "softplus"
        return None
    if attr in module._buffers:  # frozen means
        return module._buffers, attr, "identity"
    return None


def _normal_prior_parts(d):
    """``(loc, scale)`` of an ``Independent(Normal)`` prior with fixed (non-trained)
    parameters, else ``None``."""
    base = d.base_dist if isinstance(d, Independent) else d
    # exactly Normal (torch's or Pyro's wrapper), not a subclass with its own log_prob
    if type(base) not in (Normal, pyro.distributions.Normal):
        return None
    if base.loc.requires_grad or base.scale.requires_grad:
        return None
    return base.loc, base.scale


class _DrawLogRatio(torch.autograd.Function):
    r"""The guide's draw of every site and :math:`\log p(w) - \log q(w)` as ONE autograd
    node: ``apply(layout, e, prior_loc, prior_prec, *locs, *raws)`` returns the per-site
    weights (views of one flat draw, shaped like the sites) and then

    .. math::

        r = \log p(w) - \log q(w)
          = -\tfrac12 (w-m)^\top \Lambda (w-m) + \tfrac12 \varepsilon^\top\varepsilon
            + \textstyle\sum_i \log\sigma_i \quad (+\text{constants}),
        \qquad w = \mu + \sigma\odot\varepsilon,\ \sigma = \mathrm{softplus}(\rho),

    for a Normal prior :math:`\mathcal N(m, \Lambda^{-1})` with diagonal precision
    :math:`\Lambda` (a scalar or a vector). ``log q`` is written through
    :math:`\varepsilon` (``w - mu = sigma * eps``), which gives the same total derivative
    as differentiating :math:`\log q(w)` through :math:`w`. The backward is the chain rule
    in a few vector passes,

    .. math::

        \bar w = g_w - g_r \Lambda (w - m),\qquad \bar\mu = \bar w,\qquad
        \bar\rho = \big(\bar w\odot\varepsilon + g_r/\sigma\big)\odot
        \mathrm{sigmoid}(\rho),

    handing each parameter a view of the flat gradients. Autograd through the separate
    operations (a reshape and a concatenation per parameter, the dozen element-wise
    operations, a split and a view per site) would record and replay some forty nodes
    per step and sweep a full-length temporary for most of them."""

    @staticmethod
    def forward(ctx, layout, e, prior_loc, prior_prec, *tensors):
        sizes, shapes = layout
        k = len(sizes)
        # the concatenations are this node's own buffers: the draw and exp(rho) overwrite
        # them (fewer full-length temporaries, which no longer fit the cache together)
        loc = torch.cat([t.reshape(-1) for t in tensors[:k]])
        raw = torch.cat([t.reshape(-1) for t in tensors[k:]])
        # Pyro's softplus_positive transform, sigma = log1p(exp(rho)) (torch's own formula
        # below its threshold): keeping exp(rho) gives the backward its
        # sigmoid(rho) = exp(rho) / (1 + exp(rho)) without another transcendental pass, and
        # exp + log1p cost half of torch's CPU softplus kernel. exp overflows past rho ~ 88
        # (sigma ~ rho there, a scale of 88): from 80 on the softplus kernel takes over (the
        # check reads one number per step, as fit reads the loss every step anyway).
        if float(raw.max()) < 80.0:
            exp_raw = raw.exp_()
            scale = torch.log1p(exp_raw)
        else:
            exp_raw, scale = None, torch.nn.functional.softplus(raw)
        w = loc.addcmul_(scale, e)
        d = w - prior_loc
        if prior_prec.dim() == 0:
            log_p = -0.5 * prior_prec * torch.dot(d, d)
        else:
            log_p = -0.5 * torch.dot(d * prior_prec, d)
        log_q = -(0.5 * torch.dot(e, e) + scale.log().sum())
        ctx.save_for_backward(raw if exp_raw is None else exp_raw, scale, e, d, prior_prec)
        ctx.raw_saved = exp_raw is None
        ctx.layout = layout
        ctx.param_shapes = [t.shape for t in tensors]
        weights = [part.view(shape) for part, shape in zip(w.split(sizes), shapes)]
        return (*weights, log_p - log_q)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        raw_or_exp, scale, e, d, prec = ctx.saved_tensors
        sizes, _ = ctx.layout
        k = len(sizes)
        g_r = grads[-1]
        if g_r is None:
            g_r = torch.zeros((), dtype=d.dtype, device=d.device)
        g_w = torch.cat(
            [g.reshape(-1) if g is not None else d.new_zeros(n) for g, n in zip(grads[:-1], sizes)]
        )
        # g_w is this backward's own concatenation: update it in place
        if prec.dim() == 0:
            g_w.addcmul_(d, -g_r * prec)
        else:
            g_w.addcmul_(d, prec * -g_r)
        need = ctx.needs_input_grad[4:]
        g_locs = [None] * k
        if any(need[:k]):
            g_locs = [g.view(shape) for g, shape in zip(g_w.split(sizes), ctx.param_shapes[:k])]
        g_raws = [None] * k
        if any(need[k:]):
            g_raw = torch.mul(g_w, e).addcdiv_(g_r.expand_as(scale), scale)
            if ctx.raw_saved:
                g_raw.mul_(torch.sigmoid(raw_or_exp))
            else:  # sigmoid(rho) = exp(rho) / (1 + exp(rho))
                g_raw.mul_(raw_or_exp).div_(raw_or_exp + 1.0)
            g_raws = [g.view(shape) for g, shape in zip(g_raw.split(sizes), ctx.param_shapes[k:])]
        return (None, None, None, None, *g_locs, *g_raws)


class _FlatMeanField:
    """All sites of a mean-field Normal guide as one flat vector.

    Per step the guide's locs and raw scales are concatenated once (``torch.cat``; its
    backward hands each parameter a view of the flat gradient), so the softplus, the
    draw :math:`w = \\mu + \\sigma\\odot\\varepsilon`, :math:`\\log q(w)` and, for Normal
    priors, :math:`\\log p(w)` are single vectorised operations instead of one small
    expression per site; each site's weight is a view of the flat draw. The arithmetic is
    the per-site path's, so values and gradients are Pyro's ``Trace_ELBO``'s.
    """

    def __init__(self, sites, locs, scales, prior_fns, prior_loc, prior_prec, prior_const):
        self.sites = sites  # [(site, path, start, end, shape)]
        self.locs, self.scales = locs, scales  # [(dict, key)]
        self.prior_fns = prior_fns  # per-site log-density when priors are not all Normal
        self.prior_loc, self.prior_prec, self.prior_const = prior_loc, prior_prec, prior_const
        self.numel = sites[-1][3] if sites else 0
        self.sizes = [b - a for _, _, a, b, _ in sites]
        self._paths = [path for _, path, *_ in sites]
        self._layout = (self.sizes, [shape for *_, shape in sites])

    @classmethod
    def build(cls, guide, sites: dict, priors: dict) -> _FlatMeanField | None:
        if not sites:
            return None
        entries, locs, scales, offset = [], [], [], 0
        for site, paths in sites.items():
            loc = _raw_leaf(guide.locs, site)
            scale = _raw_leaf(guide.scales, site)
            if loc is None or scale is None or loc[2] != "identity" or scale[2] != "softplus":
                return None
            t = loc[0][loc[1]]
            if scale[0][scale[1]].shape != t.shape:
                return None
            entries.append((site, paths[0], offset, offset + t.numel(), t.shape))
            locs.append(loc[:2])
            scales.append(scale[:2])
            offset += t.numel()
        parts = {site: _normal_prior_parts(priors[site]) for site in sites}
        if all(p is not None for p in parts.values()):
            mus, precs, const = [], [], 0.0
            for site, _path, a, b, shape in entries:
                mu, sd = parts[site]
                mus.append(mu.detach().expand(shape).reshape(-1))
                precs.append(sd.detach().expand(shape).reshape(-1).pow(-2))
                const -= float(sd.detach().log().expand(shape).sum()) + (b - a) * _HALF_LOG_2PI
            prec = torch.cat(precs)
            # one prior scale for all sites (the common case): a scalar precision
            prec = prec[:1].reshape(()) if bool((prec == prec[0]).all()) else prec
            return cls(entries, locs, scales, None, torch.cat(mus), prec, const)
        fns = {site: _fast_log_prob(priors[site]) for site in sites}
        return cls(entries, locs, scales, fns, None, None, 0.0)

    def _views(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        # split (not slicing): its backward is one concatenation, where each slice's would
        # scatter into its own zero-filled buffer of the full length
        return {
            path: part.view(shape)
            for (_, path, *_, shape), part in zip(self.sites, w.split(self.sizes))
        }

    def sample(self, eps: dict | None, lrt):
        if lrt is None and self.prior_fns is None:
            # the common case (Normal priors, no local reparameterisation): the draw and
            # log p - log q in one autograd node with a hand-written backward
            locs = [d[k] for d, k in self.locs]
            if eps is not None:
                e = torch.cat([eps[site].reshape(-1) for site, *_ in self.sites])
            else:  # the same draw as randn_like of the concatenated locs
                e = torch.randn(self.numel, dtype=locs[0].dtype, device=locs[0].device)
            *ws, log_ratio = _DrawLogRatio.apply(
                self._layout, e, self.prior_loc, self.prior_prec,
                *locs, *(d[k] for d, k in self.scales),
            )  # fmt: skip
            log_ratio = log_ratio + (self.prior_const + self.numel * _HALF_LOG_2PI)
            return dict(zip(self._paths, ws)), log_ratio, 0.0
        loc = torch.cat([d[k].reshape(-1) for d, k in self.locs])
        raw = torch.cat([d[k].reshape(-1) for d, k in self.scales])
        if eps is not None:
            e = torch.cat([eps[site].reshape(-1) for site, *_ in self.sites])
        else:
            e = torch.randn_like(loc)
        # torch's own softplus kernel (Pyro's softplus_positive transform): measured 2.5x
        # faster forward and backward than a composition of exp/log kernels on this CPU
        scale = torch.nn.functional.softplus(raw)
        w = torch.addcmul(loc, scale, e)
        # log N(w; loc, scale) with w - loc = scale * e (e carries no gradient)
        log_q = -(0.5 * torch.dot(e, e) + scale.log().sum()) - self.numel * _HALF_LOG_2PI
        weights = self._views(w)
        if lrt is not None:
            for (_, path, *_, shape), lo, sc in zip(
                self.sites, loc.split(self.sizes), scale.split(self.sizes)
            ):
                lrt.register(weights[path], lo.view(shape), sc.view(shape))
        if self.prior_fns is None:
            d = w - self.prior_loc
            if self.prior_prec.dim() == 0:
                log_p = -0.5 * self.prior_prec * torch.dot(d, d) + self.prior_const
            else:
                log_p = -0.5 * torch.dot(d * self.prior_prec, d) + self.prior_const
        else:
            log_p = sum(self.prior_fns[site](weights[path]) for site, path, *_ in self.sites)
        return weights, log_p, log_q
