"""Posterior predictive: the network evaluated over a stack of weight draws at once.

``PosteriorPredictive`` draws ``S`` weight samples from the guide, then evaluates the
network for all of them in one vectorised call (``torch.func.vmap`` over
``torch.func.functional_call`` of the untouched twin of the original module), in chunks
so memory stays bounded, and hands the per-draw outputs to the likelihood, which builds
the mixture PPD

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

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from pyrobayes.convert import PRETRAINED_SUFFIX, _converted_root, bayesian_sites, site_priors
from pyrobayes.model import default_output

__all__ = ["PosteriorPredictive", "sample_prior", "sample_posterior", "forward_draws"]


@torch.no_grad()
def sample_prior(model: nn.Module, num_draws: int) -> dict[str, torch.Tensor]:
    """``{site: Tensor[num_draws, *shape]}`` drawn from each Bayesian site's prior."""
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    return {site: d.sample((num_draws,)) for site, d in site_priors(model).items()}


@torch.no_grad()
def sample_posterior(guide: nn.Module, num_draws: int, *args, **kwargs) -> dict[str, torch.Tensor]:
    """``{site: Tensor[num_draws, *shape]}`` from a fitted autoguide, drawn in one vectorised
    pass (``args``/``kwargs`` are the model inputs, needed only if the guide is not set up)."""
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if getattr(guide, "prototype_trace", None) is None:
        guide._setup_prototype(*args, **kwargs)
    if hasattr(guide, "get_posterior") and hasattr(guide, "_unpack_latent"):
        latent = guide.get_posterior(*args, **kwargs).sample((num_draws,))
        return {site["name"]: value for site, value in guide._unpack_latent(latent)}
    sites = {}
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        loc, scale = guide._get_loc_and_scale(name)
        draw = loc + scale * torch.randn(
            (num_draws, *loc.shape), dtype=loc.dtype, device=loc.device
        )
        sites[name] = torch.distributions.biject_to(site["fn"].support)(draw)
    return sites


def fixed_tensors(net: nn.Module, detach: bool = True) -> dict[str, torch.Tensor]:
    """Deterministic parameters and buffers of the converted net, keyed like the twin's
    (``detach=False`` keeps the live parameters, so training through them still works)."""
    out = {}
    for name, t in net.named_parameters():
        out[name] = t.detach() if detach else t
    for name, t in net.named_buffers():
        if not name.endswith(PRETRAINED_SUFFIX):
            out[name] = t
    return out


def forward_draws(
    model: nn.Module,
    draws: Mapping[str, torch.Tensor],
    *inputs: torch.Tensor,
    inputs_batched: bool = False,
    chunk_size: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """The network's outputs under each of ``S`` weight draws: ``Tensor[S, *out_shape]``.

    Args:
        model: a :class:`~pyrobayes.model.BayesianModel` (or a ``to_pyro`` network).
        draws: ``{site: Tensor[S, *shape]}`` (from :func:`sample_prior`, a guide, or MCMC).
        inputs: the network's positional inputs, shared by all draws; with
            ``inputs_batched=True`` each has a leading ``S`` dimension (one data set per draw).
        chunk_size: draws evaluated per vectorised call (bounds peak memory).
        kwargs: keyword inputs of the network (shared by all draws, e.g. ``attention_mask``).
    """
    net, _ = _converted_root(model)
    sites = bayesian_sites(model)
    missing = [s for s in sites if s not in draws]
    if missing:
        raise ValueError(f"draws are missing sites {missing[:3]}; expected {list(sites)[:3]} ...")
    num = {int(draws[s].shape[0]) for s in sites}
    if len(num) != 1:
        raise ValueError(f"draws disagree on the number of samples: {sorted(num)}")
    (num_draws,) = num
    if inputs_batched and any(x.shape[0] != num_draws for x in inputs):
        raise ValueError("with inputs_batched=True every input needs a leading dimension of size S")
    twin = net._pyrobayes_twin
    fixed = fixed_tensors(net)
    device = next(iter(fixed.values())).device if fixed else next(iter(draws.values())).device
    if next(twin.parameters(), torch.empty(0, device=device)).device != device:
        twin.to(device)  # the twin is not a registered submodule, so it follows lazily
    twin.eval()
    output_fn = getattr(model, "output_fn", None) or default_output
    stacked = {paths[0]: draws[site] for site, paths in sites.items()}

    def one(params, *xs):
        return output_fn(functional_call(twin, {**fixed, **params}, xs, kwargs))

    in_dims = (0, *([0 if inputs_batched else None] * len(inputs)))
    with torch.no_grad():
        return vmap(one, in_dims=in_dims, randomness="different", chunk_size=chunk_size)(
            stacked, *inputs
        )


class PosteriorPredictive:
    """Posterior predictive of a fitted model and guide, returned as a PPD.

    Args:
        model: the :class:`~pyrobayes.model.BayesianModel` that was fitted.
        guide: its fitted guide (any Pyro autoguide over the weight sites).
        num_samples: number of posterior weight draws ``S``.
        chunk_size: draws evaluated per vectorised call; ``None`` for all at once.

    Calling it with the network's inputs returns a
    :class:`~pyrobayes.ppd.NormalMixturePPD` (Gaussian likelihood) or a
    :class:`~pyrobayes.ppd.CategoricalPPD` (Categorical likelihood).
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        num_samples: int = 100,
        chunk_size: int | None = 32,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.model, self.guide = model, guide
        self.num_samples, self.chunk_size = int(num_samples), chunk_size

    def draws(self, *inputs, **kwargs) -> dict[str, torch.Tensor]:
        return sample_posterior(self.guide, self.num_samples, *inputs, **kwargs)

    def outputs(self, *inputs, **kwargs) -> torch.Tensor:
        """Per-draw network outputs ``[S, *out_shape]``; draws are made chunk by chunk so
        that weight samples of large networks never all live in memory at once."""
        self.model.eval()
        step = self.chunk_size or self.num_samples
        outs, done = [], 0
        while done < self.num_samples:
            n = min(step, self.num_samples - done)
            draws = sample_posterior(self.guide, n, *inputs, **kwargs)
            outs.append(forward_draws(self.model, draws, *inputs, **kwargs))
            done += n
        return torch.cat(outs)

    def __call__(self, *inputs, **kwargs):
        for x in inputs:
            if torch.is_tensor(x) and x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError("inputs contain NaN or inf")
        return self.model.likelihood.ppd(self.outputs(*inputs, **kwargs))


def prior_predictive(model: nn.Module, *inputs, num_samples: int = 100, **kwargs):
    """The prior predictive PPD at ``inputs`` (weights from their priors)."""
    draws = sample_prior(model, num_samples)
    return model.likelihood.ppd(forward_draws(model, draws, *inputs, **kwargs))
