"""A mean-field Normal guide's sites as ONE flat vector: the fused ELBO's draw and
:math:`\\log p(w) - \\log q(w)` in one autograd node.

:class:`_FlatMeanField` reads the guide's locs and raw scales as two flat vectors (site
order, each flattened), so the softplus, the draw :math:`w = \\mu + \\sigma\\odot\\varepsilon`,
:math:`\\log q` and a Normal :math:`\\log p` are single vectorised operations, and each
site's weight is a view of the flat draw. A :class:`~pyrobayes.guides.MOPEDNormal` keeps
its weights in two flat tensors already (``guide.loc``, ``guide.scale``): they are read
as they are, so the optimiser updates the guide's own two parameters. For another
``AutoNormal`` the per-site tensors are concatenated at each step.

Example (a MOPED guide: the flat loc IS the guide's parameter)::

    >>> import torch
    >>> from pyrobayes import to_bayesian, Gaussian
    >>> from pyrobayes.convert import bayesian_sites, site_priors
    >>> from pyrobayes.infer.flat_guide import _FlatMeanField
    >>> model, guide = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1), name="m")
    >>> guide.setup(torch.randn(4, 2), y=torch.randn(4))
    >>> flat = _FlatMeanField.build(guide, bayesian_sites(model), site_priors(model))
    >>> loc, raw = flat.inputs()
    >>> loc.shape, loc is guide.flat_storage()[0]
    (torch.Size([3]), True)
"""

from __future__ import annotations

import math

import pyro.distributions
import torch
from pyro.distributions.transforms import SoftplusTransform
from torch.distributions import Independent, Normal, biject_to

from pyrobayes._pyro_compat import UNCONSTRAINED_SUFFIX, param_constraint

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# exp overflows float32 past rho ~ 88.7; a non-finite draw with a raw scale from here on
# is redone with torch's softplus kernel (scale ~ rho there)
_EXP_SAFE = 80.0


# Pyro's softplus_positive constraint maps to its own SoftplusTransform (also F.softplus)
_SOFTPLUS = (torch.distributions.transforms.SoftplusTransform, SoftplusTransform)


def unwrap_transform(transform):
    """The element-wise transform inside an ``IndependentTransform``."""
    while isinstance(transform, torch.distributions.transforms.IndependentTransform):
        transform = transform.base_transform
    return transform


def guide_leaf(root, name: str) -> tuple[dict, str, torch.distributions.Transform] | None:
    """The one guide-leaf lookup: ``(store, key, transform)`` where a Pyro autoguide keeps
    the tensor named ``name`` under ``root`` (``store[key]``: a parameter's unconstrained
    tensor, or a buffer for a frozen mean) and the element-wise transform from it to the
    constrained value (identity for a loc, softplus for an ``AutoNormal`` scale); ``None``
    when there is no such tensor. Used by the fused ELBO, the predictive's flat draws and
    the param-store loading (:func:`~pyrobayes.infer.predictive.sample_posterior`).

    Example::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> model, guide = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1), name="m")
        >>> guide.setup(torch.randn(4, 2))
        >>> store, key, t = guide_leaf(guide, "scale")  # a MOPED guide's flat raw scale
        >>> key, type(t).__name__, guide_leaf(guide.scales, "m.nothing")
        ('scale_unconstrained', 'SoftplusTransform', None)
    """
    module = root
    *path, attr = name.split(".")
    for part in path:
        module = module._modules.get(part)
        if module is None:
            return None
    if attr + UNCONSTRAINED_SUFFIX in module._parameters:
        transform = unwrap_transform(biject_to(param_constraint(module, attr)))
        return module._parameters, attr + UNCONSTRAINED_SUFFIX, transform
    if attr in module._buffers:  # frozen means
        return module._buffers, attr, torch.distributions.transforms.identity_transform
    return None


def leaf_kind(leaf) -> str | None:
    """``"identity"``, ``"softplus"`` or ``None`` (another transform) for a
    ``guide_leaf`` result: the flat path covers the first two."""
    if leaf is None:
        return None
    if leaf[2] == torch.distributions.transforms.identity_transform:
        return "identity"
    return "softplus" if isinstance(leaf[2], _SOFTPLUS) else None


def normal_log_q(e: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""The one mean-field log q of the fused paths:
    :math:`\sum_i \log\mathcal N(w_i; \mu_i, \sigma_i^2)` at :math:`w = \mu +
    \sigma\odot\varepsilon`, written through :math:`\varepsilon` (``w - mu = sigma * e``,
    ``e`` carries no gradient): :math:`-\tfrac12\varepsilon^\top\varepsilon -
    \sum_i\log\sigma_i - \tfrac n2\log 2\pi`, the same value and total derivative as
    Pyro's ``Normal(mu, sigma).log_prob(w)``."""
    e = e.reshape(-1)
    return -(0.5 * torch.dot(e, e) + scale.log().sum()) - e.numel() * _HALF_LOG_2PI


def normal_log_prior(d: torch.Tensor, prec: torch.Tensor, const: float) -> torch.Tensor:
    r"""The one Normal log prior of the fused paths: :math:`-\tfrac12 d^\top \Lambda d +
    c` for ``d = w - m`` (flat), a diagonal precision :math:`\Lambda` (a scalar or a
    vector) and ``const`` :math:`c = -\sum_i \log s_i - \tfrac n2 \log 2\pi`."""
    if prec.dim() == 0:
        return -0.5 * prec * torch.dot(d, d) + const
    return -0.5 * torch.dot(d * prec, d) + const


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


def _draw(e, prior, loc, raw, fast: bool):
    """``(exp(rho) or None, sigma, w, w - m, log p - log q)`` for flat tensors (no autograd);
    ``prior``: ``(m, precision, const)`` of :func:`normal_log_prior`.

    ``fast``: Pyro's softplus_positive transform as ``sigma = log1p(exp(rho))`` (torch's own
    formula below its threshold). On the CPU ``exp`` + ``log1p`` cost half of torch's
    softplus kernel, and the kept ``exp(rho)`` gives the backward its
    ``sigmoid(rho) = exp(rho) / (1 + exp(rho))`` without another transcendental pass."""
    if fast:
        exp_raw = raw.exp()
        scale = torch.log1p(exp_raw)
    else:
        exp_raw, scale = None, torch.nn.functional.softplus(raw)
    w = torch.addcmul(loc, scale, e)
    d = w - prior[0]
    return exp_raw, scale, w, d, normal_log_prior(d, prior[1], prior[2]) - normal_log_q(e, scale)


class _DrawLogRatio(torch.autograd.Function):
    r"""The guide's draw of every site and :math:`\log p(w) - \log q(w)` as ONE autograd
    node: ``apply(layout, e, prior, loc, raw)`` with the flat locs and raw
    scales returns the per-site weights (views of one flat draw, shaped like the sites) and
    then

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
        \mathrm{sigmoid}(\rho).

    Autograd through the separate operations (the dozen element-wise operations, a split
    and a view per site) would record and replay some forty nodes per step and sweep a
    full-length temporary for most of them."""

    @staticmethod
    def forward(ctx, layout, e, prior, loc, raw):
        sizes, shapes = layout
        parts = _draw(e, prior, loc, raw, raw.device.type == "cpu")
        # exp overflowed (a raw scale past ~88.7 makes the ratio inf or nan): torch's
        # softplus kernel instead. One number is read per step, as fit reads the loss.
        if parts[0] is not None and not math.isfinite(float(parts[-1])):
            if float(raw.max()) >= _EXP_SAFE:
                parts = _draw(e, prior, loc, raw, False)
        exp_raw, scale, w, d, ratio = parts
        ctx.save_for_backward(raw if exp_raw is None else exp_raw, scale, e, d, prior[1])
        ctx.exp_saved = exp_raw is not None
        ctx.sizes = sizes
        weights = [part.view(shape) for part, shape in zip(w.split(sizes), shapes)]
        return (*weights, ratio)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        raw_or_exp, scale, e, d, prec = ctx.saved_tensors
        g_r = grads[-1]
        if g_r is None:
            g_r = torch.zeros((), dtype=d.dtype, device=d.device)
        g_w = torch.cat(
            [
                g.reshape(-1) if g is not None else d.new_zeros(n)
                for g, n in zip(grads[:-1], ctx.sizes)
            ]
        )
        g_w.addcmul_(d, prec * -g_r)  # g_w is this backward's own concatenation
        g_raw = None
        if ctx.needs_input_grad[4]:
            g_raw = torch.mul(g_w, e).addcdiv_(g_r.expand_as(scale), scale)
            if ctx.exp_saved:  # sigmoid(rho) = exp(rho) / (1 + exp(rho)), never overflows
                s = raw_or_exp + 1.0
                g_raw.mul_(torch.div(raw_or_exp, s, out=s))
            else:
                g_raw.mul_(torch.sigmoid(raw_or_exp))
        return None, None, None, (g_w if ctx.needs_input_grad[3] else None), g_raw


class _FlatMeanField:
    """All sites of a mean-field Normal guide as one flat vector (see the module's doc):
    the only fused path of the ELBO. Its two branches (the one-node draw with Normal
    priors, autograd otherwise) are both tested equal to Pyro's ``Trace_ELBO``.
    """

    def __init__(self, sites, locs, scales, priors, normal):
        self.sites = sites  # [(site, start, end, shape)]
        self.locs, self.scales = locs, scales  # [(dict, key)]: one flat leaf, or one per site
        self.priors = priors  # {site: prior}: Pyro's log_prob when not all priors are Normal
        self.normal = normal  # (m, precision, const) of normal_log_prior, or None
        self.numel = sites[-1][2] if sites else 0
        self.sizes = [b - a for _, a, b, _ in sites]
        self._names = [site for site, *_ in sites]
        self._layout = (self.sizes, [shape for *_, shape in sites])

    @classmethod
    def build(cls, guide, sites: dict, priors: dict) -> _FlatMeanField:
        """The flat view of ``guide``'s ``sites``; a ``ValueError`` naming the first site
        whose loc is not an unconstrained tensor or whose scale is not ``softplus`` of one
        of the same shape (then the fused ELBO does not apply)."""
        if not sites:
            raise ValueError("the model has no Bayesian weight sites")
        own = getattr(guide, "flat_sites", None)
        if own:
            entries, locs, scales = _own_leaves(guide, sites, own)
        else:
            entries, locs, scales = _site_leaves(guide, sites)
        parts = {site: _normal_prior_parts(priors[site]) for site in sites}
        if not all(p is not None for p in parts.values()):
            return cls(entries, locs, scales, {site: priors[site] for site in sites}, None)
        mus, precs, const = [], [], 0.0
        for site, a, b, shape in entries:
            mu, sd = parts[site]
            mus.append(mu.detach().expand(shape).reshape(-1))
            precs.append(sd.detach().expand(shape).reshape(-1).pow(-2))
            const -= float(sd.detach().log().expand(shape).sum()) + (b - a) * _HALF_LOG_2PI
        prec = torch.cat(precs)
        # one prior scale for all sites (the common case): a scalar precision
        prec = prec[:1].reshape(()) if bool((prec == prec[0]).all()) else prec
        return cls(entries, locs, scales, None, (torch.cat(mus), prec, const))

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, raw)``: a guide's own flat leaves, else concatenations of its site
        tensors."""
        if len(self.locs) == 1:  # a flat-storage guide (or a single site)
            (d, k), (e, j) = self.locs[0], self.scales[0]
            loc, raw = d[k], e[j]
            return (loc, raw) if loc.dim() == 1 else (loc.reshape(-1), raw.reshape(-1))
        locs = [d[k].reshape(-1) for d, k in self.locs]
        return torch.cat(locs), torch.cat([d[k].reshape(-1) for d, k in self.scales])

    def _views(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        # split (not slicing): its backward is one concatenation, where each slice's would
        # scatter into its own zero-filled buffer of the full length
        return {
            site: part.view(shape)
            for (site, *_, shape), part in zip(self.sites, w.split(self.sizes))
        }

    def sample(self, eps: dict | None, lrt, one_node: bool = True):
        """``(weights by site, log p(w), log q(w))`` for one draw (``eps``: the
        standard normals per site, else drawn here; ``lrt``: a
        :class:`~pyrobayes.guides.LocalReparameterization` to register the draws with).
        ``one_node=False`` takes the autograd branch even where :class:`_DrawLogRatio`
        applies (the tests compare the two)."""
        loc, raw = self.inputs()
        if eps is not None:
            e = torch.cat([eps[site].reshape(-1) for site, *_ in self.sites])
        else:  # the same draw as randn_like of the concatenated locs
            e = torch.randn(self.numel, dtype=loc.dtype, device=loc.device)
        if one_node and lrt is None and self.normal is not None:
            # the common case (Normal priors, no local reparameterisation): the draw and
            # log p - log q in one autograd node with a hand-written backward
            *ws, log_ratio = _DrawLogRatio.apply(self._layout, e, self.normal, loc, raw)
            return dict(zip(self._names, ws)), log_ratio, 0.0
        # torch's own softplus kernel (Pyro's softplus_positive transform)
        scale = torch.nn.functional.softplus(raw)
        w = torch.addcmul(loc, scale, e)
        weights = self._views(w)
        if lrt is not None:
            for (site, *_, shape), lo, sc in zip(
                self.sites, loc.split(self.sizes), scale.split(self.sizes)
            ):
                lrt.register(weights[site], lo.view(shape), sc.view(shape))
        if self.normal is not None:
            m, prec, const = self.normal
            log_p = normal_log_prior(w - m, prec, const)
        else:
            log_p = sum(self.priors[site].log_prob(weights[site]) for site, *_ in self.sites)
        return weights, log_p, normal_log_q(e, scale)


def _own_leaves(guide, sites: dict, own: list):
    """``(entries, [loc leaf], [raw scale leaf])`` of a guide that keeps its weight sites
    in two flat tensors (``flat_sites``: ``[(site, start, end, shape)]``)."""
    if [name for name, *_ in own] != list(sites):
        raise ValueError("the guide's flat storage does not hold exactly the model's weight sites")
    loc, scale = guide_leaf(guide, "loc"), guide_leaf(guide, "scale")
    if leaf_kind(loc) != "identity" or leaf_kind(scale) != "softplus":
        raise ValueError("the guide's flat loc is not unconstrained or its scale not softplus")
    return list(own), [loc[:2]], [scale[:2]]


def _site_leaves(guide, sites: dict):
    """``(entries, loc leaves, raw scale leaves)``, one leaf per site, of an ``AutoNormal``."""
    entries, locs, scales, offset = [], [], [], 0
    for site in sites:
        loc, scale = guide_leaf(guide.locs, site), guide_leaf(guide.scales, site)
        if leaf_kind(loc) != "identity" or leaf_kind(scale) != "softplus":
            raise ValueError(f"site {site!r} is not an unconstrained loc with a softplus scale")
        t = loc[0][loc[1]]
        if scale[0][scale[1]].shape != t.shape:
            raise ValueError(f"site {site!r} has a loc and a scale of different shapes")
        entries.append((site, offset, offset + t.numel(), t.shape))
        locs.append(loc[:2])
        scales.append(scale[:2])
        offset += t.numel()
    return entries, locs, scales
