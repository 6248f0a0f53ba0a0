"""MOPED-initialised autoguides (Krishnan et al., AAAI 2020).

MOPED sets the variational posterior of each weight from the pretrained (MLE) value:

.. math::

    q(w) = \\mathcal N\\big(w_\\text{MLE},\\; (\\delta\\,|w_\\text{MLE}|)^2\\big),

elementwise. A floor ``min_scale`` keeps ``w = 0`` (or a tiny ``delta``) from giving a
zero scale, whose inverse softplus is ``-inf``; Pyro's softplus transform inverts stably
(``y + log(-expm1(-y))``) for any positive ``y``.

The pretrained values are *cloned* before they become guide parameters: Pyro keeps the
very tensors given to ``init_to_value`` as locs, so SVI would otherwise edit them.

:class:`MOPEDNormal` keeps the weight sites' locs and raw scales in two flat tensors from
construction, as Pyro's ``AutoDiagonalNormal`` does (``guide.loc``, ``guide.scale``), and
hands each site views of them, so Pyro's traces and the fused ELBO
(:mod:`pyrobayes.infer.fast_elbo`) optimise the same two parameters.

Example::

    >>> import torch
    >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
    >>> from pyrobayes.guides import MOPEDNormal
    >>> model = BayesianModel(to_pyro(torch.nn.Linear(2, 1), name="lin"), Gaussian(0.1))
    >>> guide = MOPEDNormal(model, delta=0.1)
    >>> guide.setup(torch.randn(4, 2))
    >>> bool((guide.scale > 0).all()), tuple(guide.loc.shape)  # 2 weights and a bias
    (True, (3,))
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_feasible, init_to_median, init_to_value
from pyro.nn import PyroParam
from pyro.nn.module import PyroModule
from torch.distributions import biject_to

from pyrobayes._pyro_compat import (
    UNCONSTRAINED_SUFFIX,
    event_dims,
    init_scale,
    loc_and_scale,
    pyro_name,
    set_pyro_name,
    setup_prototype,
    unconstrained_shapes,
)
from pyrobayes.convert import bayesian_sites, pretrained_values
from pyrobayes.options import Option

__all__ = ["MOPEDNormal", "MOPEDLowRank", "GuideKind", "moped_guide", "moped_scale"]


class GuideKind(Option):
    """Which MOPED guide :func:`moped_guide` builds: ``"normal"`` or ``"lowrank"``.

    Example::

        >>> from pyrobayes.guides.moped import GuideKind
        >>> GuideKind("lowrank") is GuideKind.LOWRANK, GuideKind.NORMAL == "normal"
        (True, True)
    """

    NORMAL = "normal"
    LOWRANK = "lowrank"


def _check_delta(delta: float, min_scale: float) -> None:
    # bool is an int subclass: `delta=True` would silently mean delta = 1.
    if not (
        isinstance(delta, (int, float))
        and not isinstance(delta, bool)
        and delta > 0
        and delta == delta
        and delta != float("inf")
    ):
        raise ValueError(f"MOPED delta must be a positive finite number, got {delta!r}")
    if isinstance(min_scale, bool) or not (
        isinstance(min_scale, (int, float)) and 0 < min_scale < float("inf")
    ):
        raise ValueError(f"min_scale must be positive, got {min_scale!r}")


def moped_scale(w: torch.Tensor, delta: float, min_scale: float = 1e-6) -> torch.Tensor:
    """Elementwise MOPED standard deviation :math:`\\max(\\delta|w|, \\text{min\\_scale})`.

    Example (a zero weight gets the floor)::

        >>> import torch
        >>> from pyrobayes.guides.moped import moped_scale
        >>> moped_scale(torch.tensor([2.0, -0.5, 0.0]), delta=0.1)
        tensor([2.0000e-01, 5.0000e-02, 1.0000e-06])
    """
    return (delta * w.detach().abs()).clamp_min(min_scale)


def _init_values(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pretrained_values(model).items()}


def model_sites(model) -> tuple[str, ...]:
    """The latent sites a guide for ``model`` must cover: the converted network's weight
    sites, then the likelihood's own latent sites (e.g. its noise std)."""
    likelihood = getattr(model, "likelihood", None)
    return (*bayesian_sites(model), *getattr(likelihood, "latent_sites", ()))


def _site_aliases(model) -> dict[str, str]:
    """``{keyword: site}`` of the likelihood's latent sites: ``init_values`` may name the
    noise std by its keyword (``"noise_scale"``) as well as by its model-prefixed site."""
    keywords = getattr(getattr(model, "likelihood", None), "latent_keywords", {})
    return {kw: site for site, kw in keywords.items()}


def _check_init_values(guide, names) -> None:
    """Every ``init_values`` name must be a latent site of the model (Pyro would silently
    ignore a misspelt or foreign one and start that site at its prior median)."""
    sites = [n for n, _ in guide.prototype_trace.iter_stochastic_nodes()]
    unknown = sorted(set(names) - set(sites))
    if unknown:
        others = [s for s in sites if s not in guide._weight_sites]
        raise ValueError(
            f"init_values names {unknown}, which are not latent sites of this model; "
            f"its non-weight latent sites are {others}"
        )


def _init_to_prior_median(site: dict) -> torch.Tensor:
    """Start a latent site that has no pretrained value (e.g. a latent noise scale) at its
    prior median :math:`F^{-1}(1/2)`. Pyro's default fallback, ``init_to_feasible``, puts it
    at the image of 0 in unconstrained space, i.e. :math:`\\sigma = 1` for a positive scale:
    the whole standardised target variance called noise, far from any sensible start."""
    fn = site["fn"]
    try:
        # a 0-dim CPU 0.5 combines with parameters of any device/dtype
        value = fn.icdf(torch.tensor(0.5)).expand(fn.batch_shape + fn.event_shape)
        if torch.isfinite(value).all():
            return value.detach().clone()
    except (NotImplementedError, AttributeError, TypeError, ValueError, RuntimeError):
        pass
    return init_to_median(site, fallback=init_to_feasible)


def _loc_init(pretrained: dict[str, torch.Tensor], init_values: dict | None, aliases: dict):
    """Pretrained weights, then the caller's values for other latent sites (a likelihood
    keyword in ``aliases`` stands for its site), then the prior median. ``init_values``
    must not name weight sites (their start is MOPED's)."""
    extra = {
        aliases.get(k, k): torch.as_tensor(v).detach().clone()
        for k, v in (init_values or {}).items()
    }
    clash = sorted(set(extra) & set(pretrained))
    if clash:
        raise ValueError(
            f"init_values names weight sites {clash[:3]}; MOPED starts weights at the "
            "pretrained network (change the network instead)"
        )
    return init_to_value(values={**pretrained, **extra}, fallback=_init_to_prior_median), extra


def _latent_only(model):
    # The guide is over weights only; hiding the observation lets it be set up from
    # inputs alone (without targets the 'obs' site would look like a discrete latent).
    return poutine.block(model, hide=["obs"])


class _Setup:
    def _remember(self, model, init_values: dict | None):
        """Note the model's sites (a guide used with another model is refused by name,
        :func:`pyrobayes.infer.predictive.check_guide`) and return the ``init_loc_fn``."""
        self._pretrained = _init_values(model)
        self._weight_sites = tuple(self._pretrained)
        self._model_sites = model_sites(model)
        init_loc_fn, extra = _loc_init(self._pretrained, init_values, _site_aliases(model))
        self._init_names = tuple(extra)
        return init_loc_fn

    def _name_after(self, model) -> None:
        """Per-model param-store names, ``<GuideClass>.<model>.<param>``: two guides of the
        same class for two models never share an entry of Pyro's param store (state saved
        under the shared ``<GuideClass>.<param>`` names still loads, see
        :mod:`pyrobayes.guides._moped_legacy`)."""
        name = pyro_name(model) if isinstance(model, PyroModule) else ""
        if name:
            set_pyro_name(self, f"{type(self).__name__}.{name}")

    def setup(self, *args, **kwargs) -> None:
        """Build the guide's parameters now (Pyro builds them lazily on the first call)."""
        if self.prototype_trace is None:
            setup_prototype(self, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        # Set up before entering the module's Pyro context: inside it every parameter
        # assigned during setup would go to Pyro's param store (and into the trace of that
        # first step), also the per-site ones the MOPED values then replace.
        self.setup(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class MOPEDNormal(_Setup, AutoNormal):
    """Mean-field Normal guide with MOPED initialisation, its weights in two flat tensors.

    Pyro's ``AutoNormal`` (the trace structure: each site drawn at an auxiliary
    ``<site>_unconstrained`` Normal site, so ``Trace_ELBO``, ``TraceMeanField_ELBO`` and
    :class:`~pyrobayes.guides.LocalReparameterization` work unchanged), but the weight
    sites' locs and raw scales live in ONE flat vector each, as in ``AutoDiagonalNormal``:
    ``guide.loc`` (a ``PyroParam``, or a buffer with ``freeze_loc``) and ``guide.scale``
    (a ``softplus_positive`` ``PyroParam``), site after site in
    :func:`~pyrobayes.convert.bayesian_sites` order (:attr:`flat_sites`). Each site reads
    views of them (``_get_loc_and_scale``), so every optimiser, Pyro's or torch's, on
    Pyro's traces or the fused ELBO, updates the same two tensors. Other latent sites (a
    likelihood's noise std) keep ``AutoNormal``'s per-site parameters under
    ``guide.locs``/``guide.scales``. The guide's Pyro name carries the model's
    (``MOPEDNormal.<model>``), so guides of two models never share a param-store entry.

    Args:
        model: a :class:`~pyrobayes.bayesian_model.BayesianModel` (or any model wrapping a
            ``to_pyro`` network).
        delta: relative initial scale :math:`\\delta > 0`.
        freeze_loc: keep the means at the pretrained values (only the scales learn).
        min_scale: floor of the initial scale.
        init_values: start values of latent sites that are not weights (e.g.
            ``{"noise_scale": 0.3}``, the likelihood's keyword, or the full site name
            ``{model.likelihood.noise_site: 0.3}``); any other such site starts at its
            prior median; a name that is no latent site of the model is a ``ValueError``.

    Example (means at the pretrained weights, scales ``delta * |w|``)::

        >>> import torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
        >>> from pyrobayes.guides import MOPEDNormal
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, -4.0]]))
        >>> guide = MOPEDNormal(BayesianModel(to_pyro(lin, name="lin"), Gaussian(0.1)), delta=0.1)
        >>> guide.setup(torch.randn(4, 2))
        >>> loc, scale = guide.loc_and_scale("lin.net.weight")
        >>> loc.tolist(), [round(s, 4) for s in scale.flatten().tolist()]  # float32
        ([[1.0, -4.0]], [0.1, 0.4])
        >>> guide.flat_sites
        [('lin.net.weight', 0, 2, torch.Size([1, 2]))]
    """

    def __init__(
        self,
        model,
        delta: float = 0.05,
        freeze_loc: bool = False,
        min_scale: float = 1e-6,
        init_values: dict[str, torch.Tensor | float] | None = None,
    ):
        _check_delta(delta, min_scale)
        self.delta, self.freeze_loc, self.min_scale = (
            float(delta),
            bool(freeze_loc),
            float(min_scale),
        )
        init_loc_fn = self._remember(model, init_values)
        super().__init__(_latent_only(model), init_loc_fn=init_loc_fn)
        self._name_after(model)  # per-model param-store names: "MOPEDNormal.<model>.loc"
        self.flat_sites: list[tuple[str, int, int, torch.Size]] = []
        self._views: dict | None = None

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        _check_init_values(self, self._init_names)
        self._own_flat_storage()
        # The clones are now owned by the guide; drop ours so memory is not held twice.
        self._pretrained = {}

    def _own_flat_storage(self) -> None:
        """Move the weight sites out of ``AutoNormal``'s per-site parameters into the flat
        ``loc`` and ``scale`` (MOPED's :math:`\\max(\\delta|w|, \\text{min\\_scale})`)."""
        locs, scales, entries, offset = [], [], [], 0
        for name in (s for s in self._weight_sites if s in event_dims(self)):
            parent, leaf = _parent(self.locs, name)
            loc = parent._parameters[leaf + UNCONSTRAINED_SUFFIX].detach()
            locs.append(loc.reshape(-1))
            w = self._pretrained[name]
            scales.append(moped_scale(w, self.delta, self.min_scale).to(loc).reshape(-1))
            entries.append((name, offset, offset + loc.numel(), loc.shape))
            offset += loc.numel()
        kinds = sorted({f"{t.dtype} on {t.device}" for t in locs})
        if len(kinds) > 1:
            raise TypeError(
                "MOPEDNormal keeps all weights in one tensor, but they differ in dtype or "
                f"device ({', '.join(kinds)}): convert the network to one dtype and device"
            )
        if not entries:
            return
        for name, *_ in entries:  # the per-site weight parameters AutoNormal made: gone
            parent, leaf = _parent(self.locs, name)
            delattr(parent, leaf)
            delattr(_parent(self.scales, name)[0], leaf)
        self.flat_sites = entries
        loc = torch.cat(locs)
        if self.freeze_loc:
            # A buffer, not a PyroParam: SVI never sees it, and it still moves with .to().
            self.register_buffer("loc", loc.clone())
        else:
            self.loc = PyroParam(loc, constraints.real, 1)
        self.scale = PyroParam(torch.cat(scales), self.scale_constraint, 1)

    def flat_storage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, raw scale)``: the two flat tensors themselves (the unconstrained leaves,
        no param-store lookup), ``scale = softplus(raw)``."""
        loc = self._buffers["loc"] if self.freeze_loc else self._parameters["loc_unconstrained"]
        return loc, self._parameters["scale_unconstrained"]

    def site_views(self, loc: torch.Tensor, scale: torch.Tensor) -> dict:
        """``{site: (loc, scale)}``: flat ``loc``/``scale`` tensors (the constrained scale or
        the raw one) split into the weight sites' shapes (views; one ``split``, whose
        backward is one concatenation)."""
        sizes = [b - a for _, a, b, _ in self.flat_sites]
        return {
            name: (lo.view(shape), sc.view(shape))
            for (name, _, _, shape), lo, sc in zip(
                self.flat_sites, loc.split(sizes), scale.split(sizes)
            )
        }

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if not self.flat_sites:
            return super().forward(*args, **kwargs)
        # the flat parameters read once per run (one pyro.param each, one softplus)
        self._views = self.site_views(self.loc, self.scale)
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._views = None

    def _get_loc_and_scale(self, name):
        if self._views is not None and name in self._views:
            return self._views[name]
        for site, a, b, shape in self.flat_sites:
            if site == name:
                loc, raw = self.flat_storage()
                return loc[a:b].view(shape), biject_to(self.scale_constraint)(raw[a:b]).view(shape)
        return super()._get_loc_and_scale(name)

    def loc_and_scale(self, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The current variational mean and std of one weight site."""
        if self.prototype_trace is None:
            raise RuntimeError(
                "the guide is not set up yet: call guide.setup(*inputs) or fit first"
            )
        return loc_and_scale(self, site)


_LOWRANK_DTYPES = {"torch.float32", "torch.float64"}


class MOPEDLowRank(_Setup, AutoLowRankMultivariateNormal):
    """Low-rank-plus-diagonal multivariate Normal with the MOPED mean and diagonal.

    :math:`q(w) = \\mathcal N(w_\\text{MLE}, W W^\\top + \\mathrm{diag}(\\delta|w_\\text{MLE}|)^2)`
    with ``W`` of shape ``[D, rank]`` initialised small, so the initial marginals are MOPED's.
    Non-weight latent sites start at ``init_values`` or their prior median, as in
    :class:`MOPEDNormal`. The guide's Pyro name carries the model's
    (``MOPEDLowRank.<model>``), so low-rank guides of two models never share a param-store
    entry.

    Example (one flat vector of all weights; ``cov_factor`` is ``[D, rank]``)::

        >>> import torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
        >>> from pyrobayes.guides import MOPEDLowRank
        >>> lin = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, -4.0]])), lin.bias.zero_()
        >>> guide = MOPEDLowRank(BayesianModel(to_pyro(lin), Gaussian(0.1)), rank=1, delta=0.1)
        >>> guide.setup(torch.randn(4, 2))
        >>> guide.loc.tolist(), tuple(guide.cov_factor.shape)
        ([1.0, -4.0, 0.0], (3, 1))
        >>> guide.scale  # MOPED's diagonal, the zero bias at the floor
        tensor([1.0000e-01, 4.0000e-01, 1.0000e-06], grad_fn=<SoftplusBackward0>)
    """

    def __init__(
        self,
        model,
        rank: int = 10,
        delta: float = 0.05,
        min_scale: float = 1e-6,
        init_values: dict[str, torch.Tensor | float] | None = None,
    ):
        _check_delta(delta, min_scale)
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.delta, self.min_scale = float(delta), float(min_scale)
        init_loc_fn = self._remember(model, init_values)
        low = sorted({str(v.dtype) for v in self._pretrained.values()} - _LOWRANK_DTYPES)
        if low:
            # LowRankMultivariateNormal factors its capacitance matrix by Cholesky, which
            # has no half-precision kernel (and would be too inaccurate in bf16 anyway).
            raise TypeError(
                f"MOPEDLowRank needs float32 or float64 weights, got {', '.join(low)}: the "
                "low-rank Normal's Cholesky has no half-precision kernel. Use the mean-field "
                "guide (MOPEDNormal, guide='normal') or convert the network with .float()"
            )
        super().__init__(
            _latent_only(model),
            init_loc_fn=init_loc_fn,
            rank=rank,
        )
        self._name_after(model)  # per-model param-store names: "MOPEDLowRank.<model>.loc"

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        _check_init_values(self, self._init_names)
        pieces = []
        for name, shape in unconstrained_shapes(self).items():
            if name in self._pretrained:
                pieces.append(
                    moped_scale(self._pretrained[name], self.delta, self.min_scale).reshape(-1)
                )
            else:
                pieces.append(
                    self.loc.new_full(
                        (int(torch.Size(shape).numel()),), 0.5**0.5 * init_scale(self)
                    )
                )
        scale = torch.cat(pieces).to(self.loc)
        self.scale = PyroParam(scale, constraint=self.scale_constraint)
        with torch.no_grad():
            # Small random factors: the initial marginals stay (almost exactly) MOPED's.
            self.cov_factor.copy_(
                scale[:, None] * 1e-2 * torch.randn_like(self.cov_factor) / self.rank**0.5
            )
        self._pretrained = {}


def _parent(root: PyroModule, name: str):
    *path, leaf = name.split(".")
    for part in path:
        root = getattr(root, part)
    return root, leaf


def moped_guide(model, kind: str | GuideKind = "normal", **kwargs):
    """The guide factory: ``"normal"`` (:class:`MOPEDNormal`) or ``"lowrank"``
    (:class:`MOPEDLowRank`) with their keyword options.

    Example::

        >>> import torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
        >>> from pyrobayes.guides import moped_guide
        >>> model = BayesianModel(to_pyro(torch.nn.Linear(2, 1)), Gaussian(0.1))
        >>> type(moped_guide(model, "lowrank", rank=2)).__name__
        'MOPEDLowRank'
        >>> type(moped_guide(model, delta=0.01)).__name__
        'MOPEDNormal'
    """
    kind = GuideKind.parse(kind, "guide")
    return (
        MOPEDNormal(model, **kwargs) if kind is GuideKind.NORMAL else MOPEDLowRank(model, **kwargs)
    )
