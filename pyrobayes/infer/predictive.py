"""Posterior predictive: the network evaluated over a stack of weight draws at once.

``PosteriorPredictive`` draws ``S`` weight samples from the guide and evaluates the
network under them with :func:`~pyrobayes.infer.twin.forward_draws` (vectorised over the
draws), block by block so memory stays bounded, and hands the per-draw outputs to the
likelihood, which builds the mixture PPD

.. math::

    p(y \\mid x, D) \\approx \\frac1S \\sum_s p(y \\mid f_{w_s}(x)), \\qquad w_s \\sim q(w).

Pyro's ``Predictive`` runs the model once per draw (or cannot batch ``nn.Linear`` over a
leading sample dimension with ``parallel=True``), and does not switch to eval mode.

Example::

    >>> import torch
    >>> from pyrobayes import to_bayesian, Gaussian, PosteriorPredictive
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> model, guide = to_bayesian(net, likelihood=Gaussian(0.1))
    >>> ppd = PosteriorPredictive(model, guide, num_samples=50)(torch.linspace(-1, 1, 5)[:, None])
    >>> ppd.batch_shape
    torch.Size([5])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import identity_transform

from pyrobayes._pyro_compat import (
    loc_and_scale,
    needs_setup,
    pyro_name,
    setup_prototype,
    unpack_latent,
)
from pyrobayes.convert import check_input_dtype, check_sites, site_priors
from pyrobayes.guides._moped_legacy import pull_legacy_store, shared_name
from pyrobayes.guides.moped import model_sites
from pyrobayes.infer.flat_guide import guide_leaf, leaf_kind, unwrap_transform
from pyrobayes.infer.twin import fixed_tensors, forward_draws

__all__ = [
    "PosteriorPredictive",
    "sample_prior",
    "sample_posterior",
    "forward_draws",
    "fixed_tensors",
    "posterior_chunks",
    "check_guide",
]


def _check_count(name: str, value) -> None:
    """A positive whole number (``bool`` and ``2.5`` would otherwise be silently cast)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
def sample_prior(model: nn.Module, num_draws: int) -> dict[str, torch.Tensor]:
    """``{site: Tensor[num_draws, *shape]}`` drawn from each Bayesian site's prior.

    Example (the ``"normal"`` prior is a standard Normal per weight)::

        >>> import pyro, torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
        >>> from pyrobayes.infer.predictive import sample_prior
        >>> model = BayesianModel(to_pyro(torch.nn.Linear(1, 1), name="lin"), Gaussian(0.1))
        >>> pyro.set_rng_seed(0)
        >>> draws = sample_prior(model, 4000)
        >>> {k: (tuple(v.shape), round(v.std().item(), 1)) for k, v in draws.items()}
        {'lin.net.weight': ((4000, 1, 1), 1.0), 'lin.net.bias': ((4000, 1), 1.0)}
    """
    _check_count("num_draws", num_draws)
    return {site: d.sample((num_draws,)) for site, d in site_priors(model).items()}


def _guide_sites(guide: nn.Module) -> list[str] | None:
    """The latent sites ``guide`` draws: its prototype trace once set up, else the sites of
    the model it was built for (noted by the MOPED guides, or an autoguide's own
    ``model``); ``None`` when they cannot be known without running it."""
    trace = getattr(guide, "prototype_trace", None)
    if trace is not None:
        return [name for name, _ in trace.iter_stochastic_nodes()]
    noted = getattr(guide, "_model_sites", None)
    if noted is not None:
        return list(noted)
    own = getattr(guide, "model", None)
    if isinstance(own, nn.Module) and hasattr(own, "likelihood"):
        return list(model_sites(own))
    return None


def check_guide(model: nn.Module, guide: nn.Module) -> None:
    """Raise a ``ValueError`` naming missing and unexpected sites when ``guide`` does not
    cover ``model``'s latent sites (weights and the likelihood's own, e.g. a noise std):
    typically a guide built for another model, whose sites carry the other model's name.
    Silent when the guide's sites cannot be known yet (an autoguide of a plain function
    that was never called); :func:`forward_draws` then checks the draws.

    Example::

        >>> import torch
        >>> from pyrobayes import to_bayesian
        >>> model_a, guide_a = to_bayesian(torch.nn.Linear(2, 1), name="a")
        >>> model_b, _ = to_bayesian(torch.nn.Linear(2, 1), name="b")
        >>> check_guide(model_a, guide_a)
        >>> check_guide(model_b, guide_a)
        Traceback (most recent call last):
        ...
        ValueError: the guide's sites do not match the model's sites: missing ['b.net.weight', 'b.net.bias']; unexpected ['a.net.weight', 'a.net.bias']; build the guide for this model (e.g. MOPEDNormal(model))
    """
    given = _guide_sites(guide)
    if given is None or not hasattr(model, "likelihood"):
        return
    hint = "; build the guide for this model (e.g. MOPEDNormal(model))"
    try:
        check_sites(model, given, "the guide's sites")  # the weight sites
    except ValueError as exc:
        raise ValueError(f"{exc}{hint}") from None
    known = set(given)
    missing = [s for s in model.likelihood.latent_sites if s not in known]
    if missing:
        expected = set(model_sites(model))
        unexpected = [s for s in given if s not in expected]
        raise ValueError(
            f"the guide's sites do not match the model's sites: missing {missing}; "
            f"unexpected {unexpected[:5]}{hint}"
        )


def _pull_from_store(guide: nn.Module) -> None:
    """Load trained values from Pyro's param store into a guide that was just set up here.

    Such a guide was never called, so it holds its initial (pretrained/MOPED) values; if
    the store holds parameters under its names (e.g. after
    ``pyro.get_param_store().load(...)``), Pyro semantics say the store wins, and ignoring
    them would silently predict from the initial values."""
    import pyro

    prefix = pyro_name(guide) if isinstance(guide, PyroModule) else None
    if not prefix or not hasattr(guide, "named_pyro_params"):
        return
    store = pyro.get_param_store()
    for name, _ in list(guide.named_pyro_params()):
        full = f"{prefix}.{name}"
        if full not in store:
            # a store saved before the guide's name carried its model's (MOPEDLowRank.loc)
            full = shared_name(guide, name)
            if full is None or full not in store:
                continue
        leaf = guide_leaf(guide, name)
        if leaf is None:  # a plain nn.Parameter (AutoLowRankMultivariateNormal's loc)
            leaf = (guide.get_parameter(name), None, identity_transform)
        params, key, transform = leaf
        raw = params if key is None else params[key]
        stored = store[full].detach()
        if stored.shape != raw.shape:
            raise ValueError(
                f"Pyro's param store holds {full!r} with shape {tuple(stored.shape)}, but this "
                f"guide's parameter has shape {tuple(raw.shape)}: the store belongs to another "
                "model (pyro.clear_param_store() to ignore it)"
            )
        with torch.no_grad():
            raw.copy_(transform.inv(stored.to(raw.device, raw.dtype)))
    pull_legacy_store(guide, store)  # a store saved per site, before MOPED's flat storage


@torch.no_grad()
def sample_posterior(guide: nn.Module, num_draws: int, *args, **kwargs) -> dict[str, torch.Tensor]:
    """``{site: Tensor[num_draws, *shape]}`` from a fitted autoguide, drawn in one vectorised
    pass (``args``/``kwargs`` are the model inputs, needed only if the guide is not set up).

    Example (a MOPED guide around ``w = 2, b = 1`` with ``delta = 0.05``)::

        >>> import pyro, torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian
        >>> from pyrobayes.guides import MOPEDNormal
        >>> from pyrobayes.infer.predictive import sample_posterior
        >>> lin = torch.nn.Linear(1, 1)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(2.0), lin.bias.fill_(1.0)
        >>> guide = MOPEDNormal(BayesianModel(to_pyro(lin, name="lin"), Gaussian(0.1)), delta=0.05)
        >>> pyro.set_rng_seed(0)
        >>> draws = sample_posterior(guide, 4000, torch.zeros(1, 1))
        >>> {k: (tuple(v.shape), round(v.mean().item(), 2), round(v.std().item(), 2))
        ...  for k, v in draws.items()}
        {'lin.net.weight': ((4000, 1, 1), 2.0, 0.1), 'lin.net.bias': ((4000, 1), 1.0, 0.05)}
    """
    _check_count("num_draws", num_draws)
    if getattr(guide, "prototype_trace", None) is None:
        setup_prototype(guide, *args, **kwargs)
        _pull_from_store(guide)
    if isinstance(guide, AutoContinuous):
        latent = guide.get_posterior(*args, **kwargs).sample((num_draws,))
        return {site["name"]: value for site, value in unpack_latent(guide, latent)}
    flat = _softplus_normal_leaves(guide)
    if flat is not None:
        sites = [(name, loc, torch.nn.functional.softplus(raw)) for name, loc, raw in flat]
        return _flat_draws(sites, num_draws)
    sites = {}
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        loc, scale = loc_and_scale(guide, name)
        draw = loc + scale * torch.randn(
            (num_draws, *loc.shape), dtype=loc.dtype, device=loc.device
        )
        sites[name] = torch.distributions.biject_to(site["fn"].support)(draw)
    return sites


def _softplus_normal_leaves(guide: nn.Module) -> list | None:
    """``[(site, loc, raw scale)]`` for a mean-field Normal guide over real-valued sites
    whose scales are ``softplus`` of a raw parameter (``AutoNormal``, MOPED), read straight
    from the guide's tensors; ``None`` for any other guide (the general path)."""
    from pyro.infer.autoguide import AutoNormal

    if not isinstance(guide, AutoNormal):
        return None
    # a MOPED guide's weight sites: views of its two flat tensors
    own = guide.site_views(*guide.flat_storage()) if getattr(guide, "flat_sites", None) else {}
    out = []
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        if unwrap_transform(biject_to(site["fn"].support)) != identity_transform:
            return None  # a constrained site (e.g. a noise scale): its draw needs a transform
        if name in own:
            out.append((name, *own[name]))
            continue
        loc = guide_leaf(guide.locs, name)
        scale = guide_leaf(guide.scales, name)
        if leaf_kind(loc) != "identity" or leaf_kind(scale) != "softplus":
            return None
        out.append((name, loc[0][loc[1]], scale[0][scale[1]]))
    return out


def _flat_draws(sites: list, num_draws: int, buf: torch.Tensor | None = None) -> dict:
    """``loc + scale * eps`` per site ``(name, loc, scale)`` with ALL the standard-normal
    noise drawn by one ``torch.randn`` (site after site, each ``[num_draws, *shape]`` block
    contiguous): the same distribution as the per-site path, without a generator call and
    a constraint look-up per site. With ``buf`` the noise and then the draws are written
    into it (the draws are views of ``buf``, overwritten by the next call)."""
    total = sum(loc.numel() for _, loc, _ in sites)
    loc0 = sites[0][1]
    eps = torch.randn(
        num_draws * total,
        dtype=loc0.dtype,
        device=loc0.device,
        out=None if buf is None else buf[: num_draws * total],
    )
    out, offset = {}, 0
    for name, loc, scale in sites:
        k = num_draws * loc.numel()
        e = eps[offset : offset + k].view(num_draws, *loc.shape)
        out[name] = torch.addcmul(loc, scale, e, out=None if buf is None else e)
        offset += k
    return out


def _block_sampler(guide: nn.Module, inputs, kwargs) -> Callable[[int, int], dict]:
    """The guide's draws as the draw function of ``forward_draws`` (``(start, stop) ->``
    ``stop - start`` draws), the same draws from the same random numbers as
    ``sample_posterior`` block by block. For a mean-field softplus-Normal guide
    (:func:`_softplus_normal_leaves`) each block's noise is drawn into one buffer reused
    across blocks and turned into the draws in place, so a block's weights stay
    cache-sized and are written once, and the leaves and ``softplus`` scales are looked
    up once per call, not per block."""
    leaves = None if isinstance(guide, AutoContinuous) else _softplus_normal_leaves(guide)
    if not leaves:
        return lambda start, stop: sample_posterior(guide, stop - start, *inputs, **kwargs)
    with torch.no_grad():
        sites = [(name, loc, torch.nn.functional.softplus(raw)) for name, loc, raw in leaves]
    total = sum(loc.numel() for _, loc, _ in sites)
    bufs: list[torch.Tensor] = []

    def draw(start: int, stop: int) -> dict:
        if not bufs:  # the first block is the largest
            bufs.append(sites[0][1].new_empty((stop - start) * total))
        return _flat_draws(sites, stop - start, bufs[0])

    return draw


def posterior_chunks(
    guide: nn.Module, num_samples: int, chunk_size: int | None, *args, **kwargs
) -> Iterator[dict[str, torch.Tensor]]:
    """``num_samples`` guide draws, yielded ``chunk_size`` at a time (``None``: all at once),
    so the weight samples of a large network never all live in memory together.

    Example::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.predictive import posterior_chunks
        >>> model, guide = to_bayesian(torch.nn.Linear(3, 2), likelihood=Gaussian(0.1))
        >>> chunks = posterior_chunks(guide, 10, 4, torch.zeros(1, 3))
        >>> [tuple(c[k].shape) for c in chunks for k in c if k.endswith("weight")]
        [(4, 2, 3), (4, 2, 3), (2, 2, 3)]
    """
    _check_count("num_samples", num_samples)
    step = num_samples if chunk_size is None else chunk_size
    done = 0
    while done < num_samples:
        n = min(step, num_samples - done)
        yield sample_posterior(guide, n, *args, **kwargs)
        done += n


class PosteriorPredictive:
    """Posterior predictive of a fitted model and guide, returned as a PPD.

    Args:
        model: the :class:`~pyrobayes.bayesian_model.BayesianModel` that was fitted.
        guide: its fitted guide (any Pyro autoguide over the weight sites).
        num_samples: number of posterior weight draws ``S``.
        chunk_size: draws evaluated per vectorised call; ``None`` for all at once.
        mc_dropout: keep the network's ``nn.Dropout*`` layers active during the draws
            (MC dropout on top of the weight posterior); BatchNorm etc. stay in eval mode.

    Calling it with the network's inputs returns a
    :class:`~pyrobayes.ppd.NormalMixturePPD` (Gaussian likelihood) or a
    :class:`~pyrobayes.ppd.CategoricalPPD` (Categorical likelihood).

    Example (``q``: ``w ~ N(2, 0.1^2)``, ``b ~ N(1, 0.05^2)``, noise 0.1, so at ``x = 0, 1``
    the mean is ``1, 3`` and the epistemic variance ``0.05^2, 0.05^2 + 0.1^2``)::

        >>> import pyro, torch
        >>> from pyrobayes import to_pyro, BayesianModel, Gaussian, PosteriorPredictive
        >>> from pyrobayes.guides import MOPEDNormal
        >>> lin = torch.nn.Linear(1, 1)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(2.0), lin.bias.fill_(1.0)
        >>> model = BayesianModel(to_pyro(lin), Gaussian(0.1))
        >>> guide = MOPEDNormal(model, delta=0.05)
        >>> pyro.set_rng_seed(0)
        >>> ppd = PosteriorPredictive(model, guide, num_samples=2000)(torch.tensor([[0.0], [1.0]]))
        >>> type(ppd).__name__, ppd.num_draws, ppd.mean.round(decimals=1).tolist()
        ('NormalMixturePPD', 2000, [1.0, 3.0])
        >>> expected = torch.tensor([0.05**2, 0.05**2 + 0.1**2])
        >>> torch.allclose(ppd.epistemic_variance, expected, rtol=0.1)
        True
        >>> torch.allclose(ppd.variance, ppd.epistemic_variance + 0.1**2)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        num_samples: int = 100,
        chunk_size: int | None = 32,
        mc_dropout: bool = False,
    ):
        _check_count("num_samples", num_samples)
        if chunk_size is not None:
            _check_count("chunk_size", chunk_size)
        self.model, self.guide = model, guide
        self.num_samples, self.chunk_size = int(num_samples), chunk_size
        self.mc_dropout = bool(mc_dropout)

    def draws(self, *inputs, **kwargs) -> dict[str, torch.Tensor]:
        return sample_posterior(self.guide, self.num_samples, *inputs, **kwargs)

    def _prepare(self, *inputs, **kwargs) -> None:
        """Eval mode, then the checks a wrong pair would otherwise fail deep inside (a raw
        dtype error or a ``KeyError``): the inputs' dtype against the network's, and the
        guide's sites against the model's (a never-called guide is set up here first, as
        the sampling paths below would do, from Pyro's param store where it holds them)."""
        self.model.eval()
        check_input_dtype(getattr(self.model, "net", self.model), *inputs, **kwargs)
        if needs_setup(self.guide):
            check_guide(self.model, self.guide)  # before running the guide's own model
            setup_prototype(self.guide, *inputs, **kwargs)
            _pull_from_store(self.guide)
        check_guide(self.model, self.guide)

    def outputs(self, *inputs, **kwargs) -> torch.Tensor:
        """Per-draw network outputs ``[S, *out_shape]``; draws are made block by block as
        ``forward_draws`` evaluates them (at most ``chunk_size`` per block, fewer on the
        batched Linear path, which keeps each block cache-sized), so that weight samples of
        large networks never all live in memory at once."""
        self._prepare(*inputs, **kwargs)
        return forward_draws(
            self.model,
            _block_sampler(self.guide, inputs, kwargs),
            *inputs,
            num_draws=self.num_samples,
            chunk_size=self.chunk_size,
            mc_dropout=self.mc_dropout,
            **kwargs,
        )

    def __call__(self, *inputs, **kwargs):
        for x in inputs:
            if torch.is_tensor(x) and x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError("inputs contain NaN or inf")
        lik = self.model.likelihood
        if not lik.latent_sites:
            return lik.ppd(self.outputs(*inputs, **kwargs))
        # a latent likelihood site (a noise scale) varies per draw along with the weights
        self._prepare(*inputs, **kwargs)
        outs, latents = [], {s: [] for s in lik.latent_sites}
        for draws in posterior_chunks(
            self.guide, self.num_samples, self.chunk_size, *inputs, **kwargs
        ):
            outs.append(
                forward_draws(self.model, draws, *inputs, mc_dropout=self.mc_dropout, **kwargs)
            )
            for s in latents:
                latents[s].append(draws[s])
        return lik.ppd_from_draws(torch.cat(outs), {s: torch.cat(v) for s, v in latents.items()})


def prior_predictive(model: nn.Module, *inputs, num_samples: int = 100, **kwargs):
    """The prior predictive PPD at ``inputs`` (weights from their priors)."""
    check_input_dtype(getattr(model, "net", model), *inputs, **kwargs)
    draws = sample_prior(model, num_samples)
    lik = model.likelihood
    return lik.ppd_from_draws(
        forward_draws(model, draws, *inputs, **kwargs), lik.sample_latents(num_samples)
    )
