r"""Multi-chain convergence diagnostics: rank-normalised split :math:`\hat R`, bulk and tail ESS.

The estimators of Vehtari, Gelman, Simpson, Carpenter and Bürkner (2021), "Rank-normalization,
folding, and localization: an improved :math:`\hat R` for assessing convergence of MCMC"
(Bayesian Analysis 16(2)), as Stan, ArviZ and NumPyro report them. Every function takes draws
shaped ``[chains, draws, *event]`` and returns one value per event element, ``[*event]``:

* :func:`split_rhat` -- the larger of the bulk :math:`\hat R` (rank-normalised split chains)
  and the tail :math:`\hat R` (the same on draws folded around the median), so chains that
  differ in location *or* in scale are caught;
* :func:`ess_bulk` -- effective sample size of the rank-normalised split chains (how well the
  centre of the distribution is estimated);
* :func:`ess_tail` -- the smaller ESS of the indicators :math:`1\{\theta \le q_{5\%}\}` and
  :math:`1\{\theta \le q_{95\%}\}` (how well the 90% interval is estimated);
* :func:`summarize` -- all three over a dict of functionals, reduced to the worst value and a
  one-line verdict (:class:`ConvergenceReport`).

Thresholds (Vehtari et al. 2021): :math:`\hat R \le 1.01` is their recommendation, 1.05 the
hard limit used here by default (above it the chains have certainly not mixed); bulk and tail
ESS of at least 100 per chain are recommended for reliable quantiles and Monte-Carlo
standard errors. :func:`summarize` defaults to ``rhat_max=1.05`` and ``ess_min=100`` *in
total* per functional, a floor for a cheap reference; pass ``ess_min=400`` (4 chains x 100)
to follow the paper.

A single chain is split into its two halves, so a drift within the chain still shows; but one
chain cannot show that it missed a mode another chain would have found, so
:func:`summarize` never calls one chain "converged".

Computed in float64 on the device of the input (the CPU for MPS, which has no float64);
results come back in the input's floating dtype (float64 for integer or boolean draws).
Non-finite draws give NaN for that element.

Example::

    >>> import torch
    >>> from pyrobayes.diagnostics import summarize
    >>> g = torch.Generator().manual_seed(0)
    >>> report = summarize({"mu": torch.randn(4, 500, generator=g)})
    >>> report.converged, report.num_chains, report.num_draws
    (True, 4, 500)
    >>> stuck = torch.randn(4, 500, generator=g) + torch.tensor([-3.0, -3.0, 3.0, 3.0])[:, None]
    >>> summarize(stuck).verdict.startswith("NOT converged: max R-hat")
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["ConvergenceReport", "ess_bulk", "ess_tail", "split_rhat", "summarize"]

# Blom's offset for turning ranks into normal scores (Vehtari et al. 2021, eq. 14)
_BLOM = 3.0 / 8.0
_TAIL_PROBS = (0.05, 0.95)
_MIN_DRAWS = 4


def split_rhat(x: torch.Tensor) -> torch.Tensor:
    r"""Rank-normalised split :math:`\hat R`, the max of its bulk and tail (folded) versions.

    Each of the :math:`C` chains of :math:`N` draws is split into halves (the middle draw of an
    odd :math:`N` is dropped), giving :math:`M = 2C` chains of :math:`n = \lfloor N/2 \rfloor`.
    The draws are replaced by normal scores of their pooled ranks,
    :math:`z = \Phi^{-1}\big((r - 3/8) / (S + 1/4)\big)` with :math:`S = Mn` (ties get the
    average rank), and with :math:`W` the mean within-chain variance and :math:`B/n` the
    variance of the chain means,

    .. math:: \hat R = \sqrt{\frac{\frac{n-1}{n} W + \frac{B}{n}}{W}}.

    The tail version repeats this on :math:`|\theta - \operatorname{median}(\theta)|`, which
    catches chains with equal location and different scale. 1 at convergence; above 1.01
    (recommended) or 1.05 (hard limit) the chains have not mixed. All chains constant at the
    same value give 1, constant at different values ``inf``. Being rank-based it measures
    how much the chains overlap, not how far apart they are: chains split into two groups
    that never overlap give about 1.7 whatever the distance.

    Args:
        x: draws ``[chains, draws, *event]``, at least 4 draws per chain.

    Returns:
        ``[*event]``, in ``x``'s floating dtype, on its device.

    Example::

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(4, 1000, 2, generator=g)
        >>> [round(v, 2) for v in split_rhat(x).tolist()]
        [1.0, 1.0]
        >>> x[:2] += 3.0  # two chains stuck elsewhere
        >>> bool((split_rhat(x) > 1.5).all())
        True
    """
    z, event, out = _prepare(x, "split_rhat")
    split = _split_chains(z)
    bulk = _rhat(_rank_normalise(split))
    folded = (split - _median(split)).abs()
    tail = _rhat(_rank_normalise(folded))
    return _finish(torch.maximum(bulk, tail), z, event, out)


def ess_bulk(x: torch.Tensor) -> torch.Tensor:
    r"""Bulk effective sample size: multi-chain ESS of the rank-normalised split chains.

    With :math:`\hat\rho_t` the autocorrelation at lag :math:`t` estimated across the
    :math:`M` split chains (Stan's combination of the per-chain autocovariances
    :math:`\hat\gamma_{m,t}` with the between-chain variance),

    .. math:: \hat\rho_t = 1 - \frac{W - \frac1M\sum_m \hat\gamma_{m,t}}{\widehat{\mathrm{var}}^+},
              \qquad \widehat{\mathrm{ESS}} = \frac{Mn}{\hat\tau}, \quad
              \hat\tau = -1 + 2\sum_{t=0}^{2k+1}\hat\rho_t + \hat\rho_{2k+2},

    where the sum stops at the first pair :math:`\hat\rho_{2k'} + \hat\rho_{2k'+1} \le 0`
    (Geyer's initial positive sequence; the pair sums are made non-increasing, Geyer's initial
    monotone sequence) and :math:`\hat\tau \ge 1/\log_{10}(Mn)`. Rank normalisation makes it
    defined for heavy tails. Roughly :math:`CN` for independent draws, less for correlated
    ones; it can exceed :math:`CN` for antithetic chains.

    Args:
        x: draws ``[chains, draws, *event]``, at least 4 draws per chain.

    Returns:
        ``[*event]``, in ``x``'s floating dtype, on its device.

    Example::

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> e = ess_bulk(torch.randn(4, 1000, generator=g))  # ~4000 for independent draws
        >>> 3400 < float(e) < 4600
        True
    """
    z, event, out = _prepare(x, "ess_bulk")
    return _finish(_ess(_rank_normalise(_split_chains(z))), z, event, out)


def ess_tail(x: torch.Tensor) -> torch.Tensor:
    r"""Tail effective sample size: the smaller ESS of the 5% and 95% quantile indicators.

    :math:`\min_{p \in \{0.05, 0.95\}} \widehat{\mathrm{ESS}}\big(1\{\theta \le \hat q_p\}\big)`
    with :math:`\hat q_p` the pooled sample quantile (linear interpolation, R's type 7) and the
    ESS of :func:`ess_bulk` on the split (not rank-normalised) indicator chains: how many
    independent draws the estimate of the central 90% interval is worth.

    Args:
        x: draws ``[chains, draws, *event]``, at least 4 draws per chain.

    Returns:
        ``[*event]``, in ``x``'s floating dtype, on its device.

    Example::

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> e = ess_tail(torch.randn(4, 1000, generator=g))
        >>> 3000 < float(e) < 5000
        True
    """
    z, event, out = _prepare(x, "ess_tail")
    flat = z.reshape(-1, z.shape[-1])
    ess = [_ess(_split_chains((z <= _quantile(flat, p)).to(z.dtype))) for p in _TAIL_PROBS]
    return _finish(torch.minimum(*ess), z, event, out)


@dataclass(frozen=True)
class ConvergenceReport:
    """The worst diagnostics over all functionals of a multi-chain run, and a verdict.

    * ``max_rhat``: largest :func:`split_rhat` (NaN when a draw is not finite);
    * ``min_ess_bulk`` / ``min_ess_tail``: smallest :func:`ess_bulk` / :func:`ess_tail`;
    * ``num_chains``, ``num_draws``: draws per chain;
    * ``worst``: the functional (``name`` or ``name[i, j]``) with the largest R-hat;
    * ``converged``: R-hat <= ``rhat_max``, both ESS >= ``ess_min``, all draws finite and at
      least 2 chains (one chain cannot show that it missed a mode);
    * ``verdict``: one line for tables and logs, e.g.
      ``"converged (4 chains x 500 draws, max R-hat 1.00, min bulk ESS 1803, min tail ESS
      1502)"`` or ``"NOT converged: max R-hat 1.31 > 1.05 (f[3])"``.

    Example::

        >>> import torch
        >>> g = torch.Generator().manual_seed(1)
        >>> r = summarize(torch.randn(1, 400, generator=g))
        >>> r.converged, r.verdict.split(":")[0]
        (False, 'unverified')
    """

    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    num_chains: int
    num_draws: int
    worst: str
    converged: bool
    verdict: str


def summarize(
    draws: Mapping[str, torch.Tensor] | torch.Tensor,
    rhat_max: float = 1.05,
    ess_min: float = 100.0,
) -> ConvergenceReport:
    """Diagnose a multi-chain run from its draws of one or more functionals.

    Args:
        draws: ``{name: Tensor[chains, draws, *event]}`` (every entry with the same number of
            chains and draws; each event element is one functional, e.g. the predictive mean
            at every query point and the training log-likelihood), or one such tensor.
        rhat_max: largest acceptable :func:`split_rhat`; 1.05 is the hard limit, Vehtari et
            al. (2021) recommend 1.01.
        ess_min: smallest acceptable bulk and tail ESS, in total over chains (default 100);
            the paper recommends 100 *per chain*, i.e. ``100 * chains``.

    Returns:
        A :class:`ConvergenceReport`.

    Example::

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> r = summarize({"f": torch.randn(4, 500, 3, generator=g),
        ...                "log_lik": torch.randn(4, 500, generator=g)}, ess_min=400)
        >>> r.converged, round(r.max_rhat, 2), r.min_ess_bulk > 400
        (True, 1.0, True)
        >>> r.verdict.split(" (")[0]
        'converged'
    """
    if not (math.isfinite(rhat_max) and rhat_max >= 1.0):
        raise ValueError(f"rhat_max must be a finite number >= 1, got {rhat_max!r}")
    if not (math.isfinite(ess_min) and ess_min >= 0.0):
        raise ValueError(f"ess_min must be a finite number >= 0, got {ess_min!r}")
    named = _named_draws(draws)
    rhat, bulk, tail, names = [], [], [], []
    for name, x in named.items():
        rhat.append(split_rhat(x).double().cpu().flatten())
        bulk.append(ess_bulk(x).double().cpu().flatten())
        tail.append(ess_tail(x).double().cpu().flatten())
        names += _element_names(name, tuple(x.shape[2:]))
    r, b, t = torch.cat(rhat), torch.cat(bulk), torch.cat(tail)
    chains, n = next(iter(named.values())).shape[:2]
    finite = bool(torch.isfinite(b).all() and torch.isfinite(t).all() and not r.isnan().any())
    max_rhat = float(r.max()) if finite else float("nan")
    worst = names[int(torch.nan_to_num(r, nan=math.inf).argmax())]
    report = dict(
        max_rhat=max_rhat,
        min_ess_bulk=float(b.min()) if finite else float("nan"),
        min_ess_tail=float(t.min()) if finite else float("nan"),
        num_chains=int(chains),
        num_draws=int(n),
        worst=worst,
    )
    problems = _problems(report, finite, rhat_max, ess_min)
    converged = not problems and chains >= 2
    verdict = _verdict(report, problems, converged)
    return ConvergenceReport(**report, converged=converged, verdict=verdict)


# --- summarize's pieces ---------------------------------------------------------------------


def _named_draws(draws: Mapping[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
    """The non-empty entries as ``{name: tensor}``, after checking shapes agree."""
    if isinstance(draws, torch.Tensor):
        draws = {"x": draws}
    if not isinstance(draws, Mapping) or not draws:
        raise TypeError(
            "summarize expects a tensor [chains, draws, ...] or a non-empty dict of them, "
            f"got {type(draws).__name__}"
        )
    shapes = {}
    for name, x in draws.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"draws[{name!r}] must be a tensor, got {type(x).__name__}")
        _check_shape(x, f"draws[{name!r}]")
        shapes[name] = tuple(x.shape[:2])
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in shapes.items())
        raise ValueError(f"all draws need the same (chains, draws); got {listed}")
    named = {k: v for k, v in draws.items() if v[0, 0].numel() > 0}
    if not named:
        raise ValueError("every entry of draws has an empty event shape; nothing to diagnose")
    return named


def _element_names(name: str, event: tuple[int, ...]) -> list[str]:
    if not event:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in _indices(event)]


def _indices(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    idx: list[tuple[int, ...]] = [()]
    for size in shape:
        idx = [i + (j,) for i in idx for j in range(size)]
    return idx


def _problems(report: dict, finite: bool, rhat_max: float, ess_min: float) -> list[str]:
    if not finite:
        return [f"non-finite draws in {report['worst']}"]
    problems = []
    if report["max_rhat"] > rhat_max:
        problems.append(f"max R-hat {report['max_rhat']:.2f} > {rhat_max:g} ({report['worst']})")
    for kind in ("bulk", "tail"):
        value = report[f"min_ess_{kind}"]
        if value < ess_min:
            problems.append(f"min {kind} ESS {value:.0f} < {ess_min:g}")
    return problems


def _verdict(report: dict, problems: list[str], converged: bool) -> str:
    chains, n = report["num_chains"], report["num_draws"]
    if problems:
        verdict = "NOT converged: " + "; ".join(problems)
        if chains == 1:
            verdict += " (1 chain)"
        return verdict
    stats = (
        f"max R-hat {report['max_rhat']:.2f}, min bulk ESS {report['min_ess_bulk']:.0f}, "
        f"min tail ESS {report['min_ess_tail']:.0f}"
    )
    if not converged:
        return (
            f"unverified: 1 chain x {n} draws cannot show non-convergence "
            f"(split R-hat {report['max_rhat']:.2f}, min bulk ESS "
            f"{report['min_ess_bulk']:.0f}); run >= 4 chains"
        )
    return f"converged ({chains} chains x {n} draws, {stats})"


# --- the estimators, on [chains, draws, E] float64 ------------------------------------------


def _check_shape(x: torch.Tensor, what: str) -> None:
    if x.dim() < 2:
        raise ValueError(
            f"{what} must be shaped [chains, draws, *event], got shape {tuple(x.shape)}; "
            "add a chain dimension with x.unsqueeze(0) for a single chain"
        )
    if x.shape[0] < 1 or x.shape[1] < _MIN_DRAWS:
        raise ValueError(
            f"{what} needs at least 1 chain of at least {_MIN_DRAWS} draws, got "
            f"{x.shape[0]} chain(s) of {x.shape[1]} draws (shape {tuple(x.shape)})"
        )
    if x.is_complex():
        raise TypeError(f"{what} must be real, got {x.dtype}")


def _prepare(
    x: torch.Tensor, what: str
) -> tuple[torch.Tensor, tuple[int, ...], tuple[torch.dtype, torch.device]]:
    """``x`` as float64 ``[chains, draws, E]``, its event shape and the output dtype/device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a tensor [chains, draws, *event], got {type(x)}")
    _check_shape(x, what)
    out = (x.dtype if x.is_floating_point() else torch.float64, x.device)
    # MPS has no float64; the diagnostics are cheap next to the sampling
    device = torch.device("cpu") if x.device.type == "mps" else x.device
    event = tuple(x.shape[2:])
    z = x.detach().to(device=device, dtype=torch.float64).reshape(x.shape[0], x.shape[1], -1)
    return z, event, out


def _finish(
    value: torch.Tensor,
    z: torch.Tensor,
    event: tuple[int, ...],
    out: tuple[torch.dtype, torch.device],
) -> torch.Tensor:
    # a NaN/inf draw would otherwise yield a confident-looking number from its rank
    value = value.masked_fill(~torch.isfinite(z).all(0).all(0), math.nan)
    return value.reshape(event).to(dtype=out[0], device=out[1])


def _split_chains(z: torch.Tensor) -> torch.Tensor:
    """``[C, N, E]`` -> ``[2C, N // 2, E]``: first and last halves (odd N: middle draw out)."""
    half = z.shape[1] // 2
    return torch.cat([z[:, :half], z[:, z.shape[1] - half :]], dim=0)


def _rank_normalise(z: torch.Tensor) -> torch.Tensor:
    """Normal scores of the pooled average ranks, per element of ``E``."""
    m, n, e = z.shape
    cols = z.reshape(m * n, e).T.contiguous()  # [E, S]
    ordered = cols.sort(dim=-1).values
    # average rank of tied values: (#less + #less-or-equal + 1) / 2
    less = torch.searchsorted(ordered, cols, right=False)
    less_equal = torch.searchsorted(ordered, cols, right=True)
    rank = (less + less_equal + 1).to(z.dtype) / 2
    size = m * n
    scores = torch.special.ndtri((rank - _BLOM) / (size - 2 * _BLOM + 1))
    return scores.T.reshape(m, n, e)


def _median(z: torch.Tensor) -> torch.Tensor:
    return _quantile(z.reshape(-1, z.shape[-1]), 0.5)


def _quantile(flat: torch.Tensor, p: float) -> torch.Tensor:
    """Type-7 (linear) quantile over dim 0 of ``[S, E]``; torch.quantile caps its input size."""
    ordered = flat.sort(dim=0).values
    h = (flat.shape[0] - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, flat.shape[0] - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def _variances(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean within-chain variance W and the pooled estimate var+ = (n-1)/n W + var(means)."""
    n = z.shape[1]
    within = z.var(dim=1, unbiased=True).mean(dim=0)
    between = z.mean(dim=1).var(dim=0, unbiased=True)
    return within, (n - 1) / n * within + between


def _rhat(z: torch.Tensor) -> torch.Tensor:
    within, var_plus = _variances(z)
    rhat = (var_plus / within).sqrt()
    # every draw equal: nothing left to mix (0/0); chains constant at different values stay inf
    return torch.where((within == 0) & (var_plus == 0), torch.ones_like(rhat), rhat)


def _autocovariance(z: torch.Tensor) -> torch.Tensor:
    """Biased (1/n) autocovariance per chain and lag, ``[M, n, E]``, through the FFT.

    Stan's and Geyer's estimator; ``pyro.ops.stats.autocovariance`` divides lag t by n - t,
    which changes where the initial positive sequence stops.
    """
    n = z.shape[1]
    centred = z - z.mean(dim=1, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=2 * n, dim=1)
    return torch.fft.irfft(spectrum.abs().square(), n=2 * n, dim=1)[:, :n] / n


def _ess(z: torch.Tensor) -> torch.Tensor:
    """Multi-chain ESS of ``[M, n, E]`` (Stan/Geyer initial monotone sequence), ``[E]``."""
    m, n, _ = z.shape
    within, var_plus = _variances(z)
    rho = 1.0 - (within - _autocovariance(z).mean(dim=0)) / var_plus  # [n, E]
    rho[0] = 1.0
    tau = _geyer_tau(rho)
    size = m * n
    tau = tau.clamp_min(1.0 / math.log10(size))
    constant = z.amax(dim=(0, 1)) == z.amin(dim=(0, 1))
    return torch.where(constant, torch.full_like(tau, float(size)), size / tau)


def _geyer_tau(rho: torch.Tensor) -> torch.Tensor:
    r"""Integrated autocorrelation time from :math:`\hat\rho_t` ``[n, E]``.

    Pairs :math:`P_k = \hat\rho_{2k} + \hat\rho_{2k+1}` are summed up to (excluding) the first
    :math:`P_L \le 0` or the last pair with :math:`2L + 1 < n - 2` (Stan's scan), made
    non-increasing, and :math:`\hat\rho_{2L}` is added once when it is positive or
    :math:`P_L \ge 0` (Stan's "improve estimation" step).
    """
    n = rho.shape[0]
    num_pairs = n // 2
    pairs = rho[: 2 * num_pairs].reshape(num_pairs, 2, -1).sum(dim=1)  # [K, E]
    # pair k >= 1 is looked at while 2k - 1 < n - 3 and every earlier pair is positive
    k = torch.arange(num_pairs, device=rho.device)
    in_scan = ((2 * k - 1) < (n - 3)) & (k >= 1)
    previous_positive = torch.cumprod((pairs > 0).to(rho.dtype), dim=0)
    previous_positive = torch.cat([torch.ones_like(pairs[:1]), previous_positive[:-1]])
    looked_at = in_scan[:, None] & (previous_positive > 0)
    last = looked_at.sum(dim=0)  # L: pairs 0..L-1 enter the sum, [E]
    monotone = pairs.cummin(dim=0).values
    used = k[:, None] < last[None, :]
    tau = -1.0 + 2.0 * (monotone * used).sum(dim=0)
    rho_last = rho.gather(0, (2 * last)[None]).squeeze(0)
    pair_last = pairs.gather(0, last.clamp_max(num_pairs - 1)[None]).squeeze(0)
    keep = (rho_last > 0) | (pair_last >= 0)
    return tau + torch.where(keep, rho_last, torch.zeros_like(rho_last))
