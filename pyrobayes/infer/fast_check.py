"""The one setup check of the fast paths: Pyro's traces define the model.

The fused ELBO (:mod:`pyrobayes.infer.fast_elbo`) and the trace-free NUTS potential
(``pyrobayes.infer.nuts.potential``) compute a ``BayesianModel``'s log joint from its parts
(the converted net's weight priors, the twin forward, the likelihood) instead of running
the model. A subclass whose ``forward`` adds to the model (a ``pyro.factor`` penalty, an
extra sample site) would silently be a different model on those paths. So each fast path
evaluates itself once at setup at one point and compares with one Pyro trace of the model
at the same point:

* the same sample sites (names, observed or latent; a plate's index site is no site),
* the same kind of distribution where the fast path names one (type and event shape),
* the same total log density (the sum of every site's scaled ``log_prob_sum``, factor sites
  included) to a relative tolerance (``1e-5`` in float64, ``1e-4`` in float32, ``1e-2``
  in half precision) of the sum of the terms' magnitudes (so that large terms that cancel
  do not demand more than the dtype holds).

A mismatch gives the reason as a sentence; the caller falls back to Pyro's traces and says
so once (:func:`warn_fallback`, a :class:`FastPathFallbackWarning`).

Example (a model that adds a factor has a site the fast path lacks)::

    >>> import pyro, torch
    >>> def model():
    ...     pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))
    ...     pyro.factor("penalty", torch.tensor(-3.0))
    >>> tr = pyro.poutine.trace(model).get_trace()
    >>> trace_mismatch(tr, {"w": False}, tr.log_prob_sum(), what="the fast path")
    "site 'penalty' is in the model's trace but not in the fast path"
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping

import pyro.poutine as poutine
import torch
from torch import nn

from pyrobayes._pyro_compat import is_subsample

__all__ = [
    "FastPathFallbackWarning",
    "likelihood_sites",
    "log_density",
    "trace_mismatch",
    "trace_sites",
    "warn_fallback",
]

_RTOL = {torch.float64: 1e-5, torch.float32: 1e-4}
_RTOL_LOW = 1e-2  # bfloat16 / float16


class FastPathFallbackWarning(UserWarning):
    """A fast path found at setup that it does not compute the model's own log joint and
    stepped aside for Pyro's traces (same result, slower).

    Example (turn it into an error where a slow fallback must not go unnoticed)::

        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", FastPathFallbackWarning)
        ...     try:
        ...         warn_fallback("site 'penalty' is missing", "Pyro's Trace_ELBO")
        ...     except FastPathFallbackWarning as w:
        ...         print(w)
        site 'penalty' is missing; using Pyro's Trace_ELBO instead (same model, slower)
    """


def trace_sites(trace: poutine.Trace) -> dict[str, bool]:
    """``{name: is_observed}`` of a trace's sample sites, plates' index sites left out.

    Example::

        >>> import pyro, torch
        >>> def model():
        ...     with pyro.plate("data", 10, subsample_size=2):
        ...         pyro.sample("obs", pyro.distributions.Normal(0.0, 1.0), obs=torch.zeros(2))
        >>> trace_sites(pyro.poutine.trace(model).get_trace())
        {'obs': True}
    """
    return {
        name: bool(site["is_observed"])
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not is_subsample(site)
    }


def likelihood_sites(
    likelihood: nn.Module, out: torch.Tensor, y: torch.Tensor, values: Mapping[str, torch.Tensor]
) -> dict[str, bool]:
    """The sample sites the likelihood alone makes on network output ``out`` (its latent
    sites set to ``values``, latent still): the sites a fast path scores through
    ``Likelihood.log_prob_sum``.

    Example::

        >>> import torch, pyro.distributions as dist
        >>> from pyrobayes import Gaussian
        >>> lik = Gaussian(noise_prior=dist.LogNormal(-1.0, 0.5))
        >>> out, y = torch.zeros(4, 1), torch.zeros(4)
        >>> likelihood_sites(lik, out, y, {"noise_scale": torch.tensor(0.3)})
        {'noise_scale': False, 'obs': True}
    """
    data = {s: values[s] for s in getattr(likelihood, "latent_sites", ()) if s in values}
    with torch.no_grad():
        tr = poutine.trace(poutine.condition(likelihood, data=data)).get_trace(out, y)
    return {**trace_sites(tr), **{s: False for s in data}}


def log_density(trace: poutine.Trace) -> tuple[torch.Tensor, float]:
    """``(total, magnitude)``: the trace's summed scaled log density (factor sites
    included) and the sum of its sites' absolute log densities (the scale of rounding).

    Example::

        >>> import pyro, torch
        >>> def model():
        ...     pyro.sample("w", pyro.distributions.Normal(0.0, 1.0), obs=torch.tensor(0.0))
        ...     pyro.factor("penalty", torch.tensor(-3.0))
        >>> total, magnitude = log_density(pyro.poutine.trace(model).get_trace())
        >>> round(float(total), 4), round(magnitude, 4)
        (-3.9189, 3.9189)
    """
    total = trace.log_prob_sum()
    magnitude = sum(
        abs(float(site["log_prob_sum"]))
        for site in trace.nodes.values()
        if site["type"] == "sample" and "log_prob_sum" in site
    )
    return total, magnitude


def _kind(d) -> tuple[str, torch.Size]:
    base = d
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    return type(base).__name__, d.event_shape


def _site_mismatch(model: Mapping[str, bool], fast: Mapping[str, bool], what: str) -> str | None:
    def kind(observed: bool) -> str:
        return "observed" if observed else "latent"

    for name, observed in model.items():
        if name not in fast:
            return f"site {name!r} is in the model's trace but not in {what}"
        if fast[name] != observed:
            return (
                f"site {name!r} is {kind(observed)} in the model's trace but "
                f"{kind(fast[name])} in {what}"
            )
    for name in fast:
        if name not in model:
            return f"site {name!r} is in {what} but not in the model's trace"
    return None


def trace_mismatch(
    trace: poutine.Trace,
    fast_sites: Mapping[str, bool],
    fast_value: torch.Tensor,
    *,
    what: str,
    reference: torch.Tensor | None = None,
    magnitude: float | None = None,
    dists: Mapping[str, torch.distributions.Distribution] | None = None,
) -> str | None:
    """``None`` when a fast path at one point matches the model's ``trace`` at that point,
    else the first difference as a sentence.

    Args:
        trace: Pyro's trace of the model at the point.
        fast_sites: ``{name: is_observed}`` of the sites the fast path scores.
        fast_value: the fast path's log density at the point.
        what: how the sentence names the fast path (``"the fused ELBO"``).
        reference, magnitude: the log density to compare with and its scale (default:
            :func:`log_density` of ``trace``; a caller adds terms outside the model, e.g.
            ``- log q`` of a guide or a Jacobian).
        dists: the distribution the fast path uses per site, compared by type and event
            shape with the trace's.

    Example (the same sites, but another log density)::

        >>> import pyro, torch
        >>> def model():
        ...     pyro.sample("w", pyro.distributions.Normal(0.0, 1.0), obs=torch.tensor(1.0))
        >>> tr = pyro.poutine.trace(model).get_trace()
        >>> trace_mismatch(tr, {"w": True}, torch.tensor(-1.4189), what="X") is None
        True
        >>> trace_mismatch(tr, {"w": True}, torch.tensor(-0.9189), what="X")
        "X gives log density -0.9189 where the model's trace gives -1.41894"
    """
    reason = _site_mismatch(trace_sites(trace), fast_sites, what)
    if reason is not None:
        return reason
    for name, d in (dists or {}).items():
        expected, got = _kind(trace.nodes[name]["fn"]), _kind(d)
        if expected != got:
            return (
                f"site {name!r} is a {expected[0]} with event shape {tuple(expected[1])} in "
                f"the model's trace but a {got[0]} with event shape {tuple(got[1])} in {what}"
            )
    if reference is None or magnitude is None:
        reference, magnitude = log_density(trace)
    ref, fast = float(reference), float(fast_value)
    rtol = _RTOL.get(torch.as_tensor(fast_value).dtype, _RTOL_LOW)
    if not (math.isfinite(ref) or math.isfinite(fast)):
        return None  # both overflowed (a bad start): the first step reports it, by site
    if not abs(fast - ref) <= rtol * max(magnitude, 1.0):
        return f"{what} gives log density {fast:.6g} where the model's trace gives {ref:.6g}"
    return None


def warn_fallback(reason: str, fallback: str) -> None:
    """Say once, at setup, that a fast path stepped aside and why.

    Example::

        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_fallback("site 'z' is in the model's trace but not in X", "Y")
        >>> str(caught[0].message)
        "site 'z' is in the model's trace but not in X; using Y instead (same model, slower)"
    """
    warnings.warn(
        f"{reason}; using {fallback} instead (same model, slower)",
        FastPathFallbackWarning,
        stacklevel=3,
    )


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode, each one's own mode restored after: the check must not
    draw dropout masks (the two paths would draw different ones) or move BatchNorm's
    running statistics."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
