"""Scores for posterior predictive distributions (PPDs).

Every metric takes a PPD (see :mod:`pyrobayes.ppd`) and the held-out targets, checks that
they fit together (batch shape of the PPD = shape of the targets, no NaN, labels in range)
and raises :class:`ValueError` naming the problem otherwise.

Regression (:class:`~pyrobayes.ppd.RegressionPPD`):

* :func:`nll` -- held-out negative log-likelihood of the (averaged) predictive density,
  :math:`-\\frac1N\\sum_i \\log p(y_i \\mid x_i, D)`;
* :func:`crps` -- continuous ranked probability score, closed form for Normal mixtures,
  numerical integral of :math:`(F(t) - 1\\{t \\ge y\\})^2` otherwise;
* :func:`interval_coverage` -- fraction of targets inside the central intervals;
* :func:`mae` / :func:`rmse` -- errors of the predictive mean;
* :func:`kl_divergence_grid` -- :math:`\\mathrm{KL}(p_\\text{ref} \\,\\|\\, q)` per query point
  on a grid of ``y`` values.

Classification (:class:`~pyrobayes.ppd.CategoricalPPD`): :func:`accuracy`, :func:`nll`,
:func:`expected_calibration_error`, :func:`brier_score`, :func:`roc_auc` (ROC-AUC of the
class probabilities: binary, or one-vs-rest macro), and :func:`ood_auroc` (rank-based
AUROC of an uncertainty score between in- and out-of-distribution inputs).

:func:`regression_metrics` and :func:`classification_metrics` compute all of them at once.

Example::

    >>> import torch
    >>> from pyrobayes.ppd import normal_ppd
    >>> from pyrobayes.metrics import regression_metrics
    >>> ppd = normal_ppd(torch.zeros(100), torch.ones(100))
    >>> m = regression_metrics(ppd, torch.randn(100))
    >>> sorted(m)[:3]
    ['coverage_50', 'coverage_90', 'coverage_95']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.distributions import Categorical, Distribution, Normal

from pyrobayes.options import Option
from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, RegressionPPD, normal_ppd

__all__ = [
    "Reduction",
    "CRPSMethod",
    "OODScore",
    "ReliabilityBins",
    "nll",
    "crps",
    "crps_normal",
    "interval_coverage",
    "mae",
    "rmse",
    "kl_divergence_grid",
    "kl_divergences_grid",
    "accuracy",
    "brier_score",
    "reliability_bins",
    "expected_calibration_error",
    "auroc",
    "roc_auc",
    "ood_scores",
    "ood_auroc",
    "regression_metrics",
    "classification_metrics",
    "DEFAULT_LEVELS",
]

DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)
_SQRT_PI = math.sqrt(math.pi)


class Reduction(Option):
    """How a per-point metric is reduced: ``"mean"`` -> float, ``"none"`` -> tensor.

    Example::

        >>> import torch
        >>> from pyrobayes.metrics import nll
        >>> from pyrobayes.ppd import normal_ppd
        >>> ppd, y = normal_ppd(torch.zeros(2), 1.0), torch.tensor([0.0, 2.0])
        >>> nll(ppd, y, reduction="none")             # 0.5 log(2 pi) + y^2 / 2
        tensor([0.9189, 2.9189])
        >>> round(nll(ppd, y, reduction=Reduction.MEAN), 4)
        1.9189
    """

    MEAN = "mean"
    NONE = "none"


class CRPSMethod(Option):
    """CRPS computation: closed form for Normal mixtures, numerical grid, or ``auto``.

    Example::

        >>> import torch
        >>> from pyrobayes.metrics import crps
        >>> from pyrobayes.ppd import normal_ppd
        >>> ppd, y = normal_ppd(torch.zeros(2), 1.0), torch.zeros(2)
        >>> exact = crps(ppd, y, method=CRPSMethod.CLOSED_FORM)
        >>> round(exact, 4), round(crps(ppd, y, method="grid"), 4)   # the grid agrees
        (0.2337, 0.2337)
    """

    AUTO = "auto"
    CLOSED_FORM = "closed_form"
    GRID = "grid"


class OODScore(Option):
    """Uncertainty score used to separate out-of-distribution inputs (higher = more OOD).

    ``entropy``: total predictive entropy; ``mutual_information``: its epistemic part;
    ``max_prob``: one minus the top class probability; ``variance`` (regression PPDs):
    predictive variance.

    Example::

        >>> import torch
        >>> from pyrobayes.metrics import ood_scores
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> # two weight draws, two points: the draws agree on point 0 (both 50/50) and
        >>> # disagree on point 1 (certain of class 0 vs certain of class 1)
        >>> ppd = CategoricalPPD(torch.tensor([[[0.5, 0.5], [1.0, 0.0]],
        ...                                    [[0.5, 0.5], [0.0, 1.0]]]))
        >>> ood_scores(ppd, "entropy")                # same total uncertainty ...
        tensor([0.6931, 0.6931])
        >>> ood_scores(ppd, OODScore.MUTUAL_INFORMATION)   # ... but only point 1 is epistemic
        tensor([0.0000, 0.6931])
    """

    ENTROPY = "entropy"
    MUTUAL_INFORMATION = "mutual_information"
    MAX_PROB = "max_prob"
    VARIANCE = "variance"


def _reduce(values: torch.Tensor, reduction: Reduction | str) -> float | torch.Tensor:
    red = Reduction.parse(reduction, "reduction")
    if red is Reduction.NONE:
        return values
    return float(values.mean())


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def _as_regression_ppd(ppd: Any, name: str = "ppd") -> RegressionPPD:
    if isinstance(ppd, RegressionPPD):
        return ppd
    if isinstance(ppd, Normal):
        return normal_ppd(ppd.loc, ppd.scale)
    if isinstance(ppd, CategoricalPPD | Categorical):
        raise ValueError(
            f"{name} is a classification PPD ({type(ppd).__name__}); this metric needs a "
            "RegressionPPD (use the classification metrics instead)"
        )
    raise ValueError(
        f"{name} must be a RegressionPPD (e.g. NormalMixturePPD) or torch Normal, "
        f"got {type(ppd).__name__}"
    )


def _as_categorical_ppd(ppd: Any, name: str = "ppd") -> CategoricalPPD:
    if isinstance(ppd, CategoricalPPD):
        return ppd
    if isinstance(ppd, Categorical):
        return CategoricalPPD(ppd.probs.unsqueeze(0))
    if isinstance(ppd, RegressionPPD | Normal):
        raise ValueError(
            f"{name} is a regression PPD ({type(ppd).__name__}); this metric needs a "
            "CategoricalPPD (use the regression metrics instead)"
        )
    raise ValueError(f"{name} must be a CategoricalPPD, got {type(ppd).__name__}")


def _ppd_tensor(ppd: Distribution) -> torch.Tensor:
    """A tensor carrying the PPD's dtype and device."""
    if isinstance(ppd, CategoricalPPD):
        return ppd.probs
    return ppd.mean


def _to_tensor(x: Any, like: torch.Tensor, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be converted to a tensor: {err}") from None
    return t.to(device=like.device)


def _check_targets(ppd: Distribution, y: Any, name: str = "y") -> torch.Tensor:
    """Regression targets as a float tensor of the PPD's batch shape, finite."""
    like = _ppd_tensor(ppd)
    t = _to_tensor(y, like, name)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
    t = t.to(like.dtype)
    if t.shape != ppd.batch_shape:
        hint = ""
        if t.numel() == ppd.batch_shape.numel():
            hint = f" (same number of elements: reshape {name} to {tuple(ppd.batch_shape)})"
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but the PPD's batch shape (query points) is "
            f"{tuple(ppd.batch_shape)}{hint}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: no held-out points to score")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains {int(torch.isnan(t).sum())} NaN value(s)")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains infinite value(s)")
    return t


def _check_labels(ppd: CategoricalPPD, labels: Any, name: str = "labels") -> torch.Tensor:
    """Class labels as a long tensor of the PPD's batch shape, in ``[0, C-1]``."""
    t = _to_tensor(labels, ppd.probs, name)
    if t.is_floating_point():
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains {int(torch.isnan(t).sum())} NaN value(s)")
        if not torch.isfinite(t).all() or (t != t.round()).any():
            raise ValueError(f"{name} must be integer class indices, got non-integer floats")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be integer class indices, got dtype {t.dtype}")
    t = t.long()
    if t.shape != ppd.batch_shape:
        hint = ""
        if t.dim() == len(ppd.batch_shape) + 1 and t.shape[-1] == ppd.num_classes:
            hint = " (looks one-hot: pass class indices, e.g. labels.argmax(-1))"
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but the PPD's batch shape (query points) is "
            f"{tuple(ppd.batch_shape)}{hint}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: no held-out points to score")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= ppd.num_classes:
        raise ValueError(
            f"{name} must lie in [0, {ppd.num_classes - 1}] for a {ppd.num_classes}-class PPD, "
            f"got values in [{lo}, {hi}]"
        )
    return t


# --------------------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------------------


def nll(ppd: Distribution, y: Any, reduction: Reduction | str = "mean") -> float | torch.Tensor:
    """Held-out negative log-likelihood :math:`-\\frac1N \\sum_i \\log p(y_i \\mid x_i, D)`.

    Works for regression PPDs (density, nats) and classification PPDs (probability of the
    true label). Monte-Carlo PPDs average densities/probabilities over draws before the log,
    which is the quantity the PFN paper relates to the KL to the true PPD.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> round(nll(normal_ppd(torch.zeros(1), 1.0), torch.zeros(1)), 4)  # 0.5 log(2 pi)
        0.9189
    """
    if isinstance(ppd, CategoricalPPD | Categorical):
        cat = _as_categorical_ppd(ppd)
        t = _check_labels(cat, y)
        return _reduce(-cat.log_prob(t), reduction)
    reg = _as_regression_ppd(ppd)
    t = _check_targets(reg, y)
    return _reduce(-reg.log_prob(t), reduction)


def crps_normal(loc: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CRPS of :math:`\\mathcal N(\\mu, \\sigma^2)` at ``y`` (Gneiting & Raftery 2007).

    .. math:: \\mathrm{CRPS} = \\sigma\\big(z(2\\Phi(z) - 1) + 2\\varphi(z) - 1/\\sqrt\\pi\\big),
              \\quad z = (y - \\mu)/\\sigma.

    Example::

        >>> import torch
        >>> float(crps_normal(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0)))
        0.23369...
    """
    z = (y - loc) / scale
    return scale * (z * (2 * _std_normal_cdf(z) - 1) + 2 * _std_normal_pdf(z) - 1 / _SQRT_PI)


def _std_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


def _std_normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _abs_normal_mean(m: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """:math:`\\mathbb E|Z|` for :math:`Z \\sim \\mathcal N(m, s^2)` (folded-normal mean),
    :math:`s\\,(2\\varphi(z) + z\\,\\mathrm{erf}(z/\\sqrt2))` with :math:`z = m/s`."""
    z = m / s
    return s * (math.sqrt(2 / math.pi) * torch.exp(-0.5 * z * z) + z * torch.erf(z / math.sqrt(2)))


def _crps_normal_mixture(ppd: NormalMixturePPD, y: torch.Tensor) -> torch.Tensor:
    """Closed-form mixture CRPS, :math:`\\mathbb E|X-y| - \\tfrac12 \\mathbb E|X-X'|`.

    With equal weights over ``S`` components ``N(mu_s, s_s^2)``:
    :math:`\\mathbb E|X-y| = \\frac1S\\sum_s A(\\mu_s - y, s_s)` and
    :math:`\\mathbb E|X-X'| = \\frac1{S^2}\\sum_{s,t} A(\\mu_s-\\mu_t, \\sqrt{s_s^2+s_t^2})`
    where ``A(m, s)`` is the folded-normal mean. The pair term costs O(S^2) per query point
    (5-10 s for S = 1000 draws and 500 points on a laptop-class CPU); it is evaluated in blocks
    of draws, using the symmetry ``A(m, s) = A(-m, s)`` to visit each pair once.
    """
    # float64: the two terms are O(scale) and the score can be much smaller than either.
    loc = ppd.loc.to(torch.float64).reshape(ppd.num_draws, -1)
    var = ppd.scale.to(torch.float64).reshape(ppd.num_draws, -1).pow(2)
    yf = y.to(torch.float64).reshape(-1)
    s_count, n = loc.shape
    term1 = _abs_normal_mean(loc - yf, var.sqrt()).mean(0)
    # one noise scale for every draw and point (a fixed-noise likelihood): the pair scale
    # sqrt(2 var) is one number, and the S x S x n scale tensors need not be built
    v0 = var.reshape(-1)[0]
    common = math.sqrt(2 * float(v0)) if bool((var == v0).all()) else None
    # Block I of rows against columns I..S-1: the diagonal block (I x I) holds both (i, j)
    # and (j, i); the blocks to its right are the upper triangle, counted twice.
    block = max(1, min(s_count, (1 << 22) // max(1, s_count * n)))
    pair_sum = torch.zeros(n, dtype=torch.float64, device=loc.device)
    for i0 in range(0, s_count, block):
        i1 = min(i0 + block, s_count)
        diag = _abs_normal_mean(
            loc[i0:i1, None] - loc[None, i0:i1],
            common or (var[i0:i1, None] + var[None, i0:i1]).sqrt(),
        )
        pair_sum += diag.sum((0, 1))
        if i1 < s_count:
            right = _abs_normal_mean(
                loc[i0:i1, None] - loc[None, i1:],
                common or (var[i0:i1, None] + var[None, i1:]).sqrt(),
            )
            pair_sum += 2 * right.sum((0, 1))
    out = term1 - 0.5 * pair_sum / (s_count * s_count)
    return out.reshape(ppd.batch_shape).to(ppd.loc.dtype)


def _crps_grid(ppd: RegressionPPD, y: torch.Tensor, num_points: int, tail: float) -> torch.Tensor:
    """CRPS by quadrature of :math:`\\int (F(t) - 1\\{t \\ge y\\})^2 dt`.

    The integral is split at ``y`` (where the integrand jumps) into
    :math:`\\int_a^y F^2 + \\int_y^b (1-F)^2`, with ``[a, b]`` the PPD's central
    ``1 - 2 tail`` range widened to contain ``y``; the neglected tails contribute
    at most ``E[(a - X)^+] + E[(X - b)^+]``, negligible for light or half-normal tails.
    """
    lo, hi = _quantiles(ppd, (tail, 1.0 - tail))
    dtype = lo.dtype
    a = torch.minimum(lo, y)
    b = torch.maximum(hi, y)
    u = torch.linspace(0.0, 1.0, num_points, dtype=dtype, device=y.device)
    u = u.reshape((num_points,) + (1,) * y.dim())
    left = a + (y - a) * u
    right = y + (b - y) * u
    f_left = ppd.cdf(left).pow(2)
    f_right = (1.0 - ppd.cdf(right)).pow(2)
    return torch.trapezoid(f_left, left, dim=0) + torch.trapezoid(f_right, right, dim=0)


def crps(
    ppd: Distribution,
    y: Any,
    reduction: Reduction | str = "mean",
    method: CRPSMethod | str = "auto",
    num_points: int = 2049,
    tail: float = 1e-7,
) -> float | torch.Tensor:
    """Continuous ranked probability score (lower is better, same units as ``y``).

    .. math:: \\mathrm{CRPS}(F, y) = \\int (F(t) - 1\\{t \\ge y\\})^2\\,dt
              = \\mathbb E|X - y| - \\tfrac12 \\mathbb E|X - X'|.

    ``method="auto"`` uses the exact mixture formula for :class:`NormalMixturePPD` (the
    pair term costs O(S^2) per point) and the numerical ``cdf`` integral on a
    ``num_points`` grid for every other :class:`RegressionPPD` (e.g. the PFN's bar
    distribution). ``"grid"`` forces the integral.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> round(crps(normal_ppd(torch.zeros(1), 1.0), torch.zeros(1)), 5)
        0.23369
    """
    reg = _as_regression_ppd(ppd)
    t = _check_targets(reg, y)
    how = CRPSMethod.parse(method, "CRPS method")
    if how is CRPSMethod.AUTO:
        how = CRPSMethod.CLOSED_FORM if isinstance(reg, NormalMixturePPD) else CRPSMethod.GRID
    if how is CRPSMethod.CLOSED_FORM:
        if not isinstance(reg, NormalMixturePPD):
            raise ValueError(
                f"closed-form CRPS needs a NormalMixturePPD, got {type(reg).__name__}; "
                "use method='grid' or 'auto'"
            )
        values = _crps_normal_mixture(reg, t)
    else:
        if num_points < 3:
            raise ValueError(f"num_points must be >= 3, got {num_points}")
        if not 0.0 < tail < 0.5:
            raise ValueError(f"tail must be in (0, 0.5), got {tail}")
        values = _crps_grid(reg, t, num_points, tail)
    return _reduce(values, reduction)


def interval_coverage(
    ppd: Distribution, y: Any, levels: Sequence[float] | float = DEFAULT_LEVELS
) -> dict[float, float]:
    """Fraction of targets inside each central predictive interval.

    For a level :math:`\\ell`, the interval is
    :math:`[F^{-1}(\\tfrac{1-\\ell}2), F^{-1}(\\tfrac{1+\\ell}2)]`; a calibrated PPD covers
    about :math:`\\ell` of held-out points.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> cov = interval_coverage(normal_ppd(torch.zeros(3), 1.0), torch.tensor([0.0, 1.0, 3.0]), 0.9)
        >>> {level: round(c, 4) for level, c in cov.items()}  # 2 of 3 points inside
        {0.9: 0.6667}
    """
    reg = _as_regression_ppd(ppd)
    t = _check_targets(reg, y)
    lv = (levels,) if isinstance(levels, int | float) else tuple(levels)
    if not lv:
        raise ValueError("levels must not be empty")
    for level in lv:
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"interval levels must lie in (0, 1), got {level}")
    # One quantile call for all interval ends: a bisection icdf costs ~70 cdf calls each.
    ends = _quantiles(reg, [q for lvl in lv for q in ((1 - lvl) / 2, (1 + lvl) / 2)])
    out = {}
    for i, level in enumerate(lv):
        lo, hi = ends[2 * i], ends[2 * i + 1]
        out[float(level)] = float(((t >= lo) & (t <= hi)).to(torch.float64).mean())
    return out


def _quantiles(ppd: RegressionPPD, levels: Sequence[float]) -> torch.Tensor:
    """``ppd.icdf`` at several levels at once: shape ``[len(levels), *batch_shape]``."""
    like = ppd.mean
    q = torch.tensor([float(v) for v in levels], dtype=like.dtype, device=like.device)
    q = q.reshape((len(levels),) + (1,) * len(ppd.batch_shape))
    out = ppd.icdf(q)
    return out.expand((len(levels),) + tuple(ppd.batch_shape))


def mae(ppd: Distribution, y: Any, reduction: Reduction | str = "mean") -> float | torch.Tensor:
    """Mean absolute error of the predictive mean, :math:`\\frac1N\\sum_i |\\mathbb E[y_i] - y_i|`.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> mae(normal_ppd(torch.zeros(2), 1.0), torch.tensor([1.0, -3.0]))
        2.0
    """
    reg = _as_regression_ppd(ppd)
    t = _check_targets(reg, y)
    return _reduce((reg.mean - t).abs(), reduction)


def rmse(ppd: Distribution, y: Any) -> float:
    """Root mean squared error of the predictive mean.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> rmse(normal_ppd(torch.zeros(2), 1.0), torch.tensor([3.0, -4.0]))
        3.5355...
    """
    reg = _as_regression_ppd(ppd)
    t = _check_targets(reg, y)
    return float((reg.mean - t).pow(2).mean().sqrt())


def kl_divergence_grid(
    reference: Distribution,
    candidate: Distribution,
    num_points: int = 1025,
    tail: float = 1e-6,
    grid: Any | None = None,
    reduction: Reduction | str = "none",
) -> float | torch.Tensor:
    """KL divergence from a reference PPD to a candidate, per query point, on a ``y`` grid.

    .. math:: \\mathrm{KL}(p \\,\\|\\, q)(x) = \\int p(y\\mid x) \\,
              \\big(\\log p(y\\mid x) - \\log q(y\\mid x)\\big)\\, dy

    integrated with the trapezoidal rule. By default each query point gets its own grid of
    ``num_points`` values spanning the reference's central ``1 - 2 tail`` mass (where the
    integrand lives); pass ``grid`` (a 1-D increasing tensor) to use one shared grid.
    Both PPDs must have the same batch shape. Returns a tensor of shape ``batch_shape``
    by default (``reduction="mean"`` gives the average). Several candidates against one
    reference: :func:`kl_divergences_grid` (the reference's grid and density once).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> p, q = normal_ppd(torch.zeros(1), 1.0), normal_ppd(torch.ones(1), 1.0)
        >>> round(float(kl_divergence_grid(p, q)[0]), 4)  # (mu_p - mu_q)^2 / 2
        0.5
    """
    return kl_divergences_grid(
        reference, {"candidate": candidate}, num_points, tail, grid, reduction
    )["candidate"]


def kl_divergences_grid(
    reference: Distribution,
    candidates: Mapping[str, Distribution],
    num_points: int = 1025,
    tail: float = 1e-6,
    grid: Any | None = None,
    reduction: Reduction | str = "none",
) -> dict[str, float | torch.Tensor]:
    """:func:`kl_divergence_grid` from one reference to each of ``candidates`` (a dict of
    PPDs), evaluating the reference's grid and log-density once (for a mixture over many
    NUTS draws that is most of the work).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> p = normal_ppd(torch.zeros(2), 1.0)
        >>> kl = kl_divergences_grid(p, {"same": p, "shifted": normal_ppd(torch.ones(2), 1.0)},
        ...                          reduction="mean")
        >>> {k: round(float(v), 4) for k, v in kl.items()}
        {'same': 0.0, 'shifted': 0.5}
    """
    ref = _as_regression_ppd(reference, "reference")
    cands = {k: _as_regression_ppd(c, "candidate") for k, c in candidates.items()}
    for c in cands.values():
        if ref.batch_shape != c.batch_shape:
            raise ValueError(
                f"reference and candidate have different batch shapes "
                f"{tuple(ref.batch_shape)} vs {tuple(c.batch_shape)}"
            )
    ys = _kl_grid(ref, num_points, tail, grid)
    logp = ref.log_prob(ys)
    p = logp.exp()
    out = {}
    for name, cand in cands.items():
        logq = cand.log_prob(ys.to(cand.mean.device)).to(logp.device)
        # p log(p/q) -> 0 where p underflows, even when q also does (avoids 0 * (-inf - -inf)).
        integrand = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
        out[name] = _reduce(torch.trapezoid(integrand, ys, dim=0), reduction)
    return out


def _kl_grid(ref, num_points: int, tail: float, grid: Any | None) -> torch.Tensor:
    """The ``y`` values ``[num_points, *batch_shape]`` the KL integral is evaluated on."""
    like = ref.mean
    if grid is None:
        if num_points < 3:
            raise ValueError(f"num_points must be >= 3, got {num_points}")
        if not 0.0 < tail < 0.5:
            raise ValueError(f"tail must be in (0, 0.5), got {tail}")
        lo, hi = _quantiles(ref, (tail, 1.0 - tail))
        u = torch.linspace(0.0, 1.0, num_points, dtype=like.dtype, device=like.device)
        return lo + (hi - lo) * u.reshape((num_points,) + (1,) * len(ref.batch_shape))
    g = _to_tensor(grid, like, "grid").to(like.dtype)
    if g.dim() != 1 or g.numel() < 3:
        raise ValueError(f"grid must be a 1-D tensor of >= 3 values, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all() or (g.diff() <= 0).any():
        raise ValueError("grid must be finite and strictly increasing")
    return g.reshape((g.numel(),) + (1,) * len(ref.batch_shape)).expand(
        (g.numel(),) + tuple(ref.batch_shape)
    )


# --------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------


def accuracy(ppd: Distribution, labels: Any) -> float:
    """Fraction of points whose most probable class (under the averaged PPD) is correct.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> ppd = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.3, 0.7]]]))
        >>> accuracy(ppd, torch.tensor([0, 0]))
        0.5
    """
    cat = _as_categorical_ppd(ppd)
    t = _check_labels(cat, labels)
    return float((cat.predict() == t).to(torch.float64).mean())


def brier_score(
    ppd: Distribution, labels: Any, reduction: Reduction | str = "mean"
) -> float | torch.Tensor:
    """Multi-class Brier score :math:`\\frac1N\\sum_i\\sum_c (p_{ic} - 1\\{y_i = c\\})^2`.

    Ranges from 0 (certain and right) to 2 (certain and wrong).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> brier_score(CategoricalPPD(torch.tensor([[[0.5, 0.5]]])), torch.tensor([0]))
        0.5
    """
    cat = _as_categorical_ppd(ppd)
    t = _check_labels(cat, labels)
    onehot = torch.nn.functional.one_hot(t, cat.num_classes).to(cat.probs.dtype)
    return _reduce((cat.probs - onehot).pow(2).sum(-1), reduction)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (equal-width confidence bins).

    Attributes:
        edges: ``n_bins + 1`` bin edges on [0, 1]; bin ``b`` is ``(edges[b], edges[b+1]]``.
        counts: number of points per bin.
        confidence: mean top-class probability per bin (NaN for empty bins).
        accuracy: fraction correct per bin (NaN for empty bins).
        ece: expected calibration error :math:`\\sum_b \\frac{n_b}{N} |acc_b - conf_b|`.

    Example::

        >>> import torch
        >>> from pyrobayes.metrics import reliability_bins
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> ppd = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.6, 0.4]]]))
        >>> bins = reliability_bins(ppd, torch.tensor([0, 1]), n_bins=2)
        >>> bins.counts.tolist(), bins.confidence.round(2).tolist(), bins.accuracy.tolist()
        ([0, 2], [nan, 0.75], [nan, 0.5])
        >>> round(bins.ece, 2)                        # |0.5 - 0.75| * 2/2
        0.25
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability_bins(ppd: Distribution, labels: Any, n_bins: int = 15) -> ReliabilityBins:
    """Bin points by confidence (top-class probability) into ``n_bins`` equal-width bins.

    Bin ``b`` holds confidences in :math:`(b/M, (b+1)/M]` (the first also holds 0).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> ppd = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.6, 0.4]]]))
        >>> reliability_bins(ppd, torch.tensor([0, 1]), n_bins=2).counts.tolist()
        [0, 2]
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    cat = _as_categorical_ppd(ppd)
    t = _check_labels(cat, labels)
    conf, pred = cat.probs.max(-1)
    conf = conf.reshape(-1).detach().cpu()
    correct = (pred == t).reshape(-1).to(torch.float64).cpu()
    # Edges in the probabilities' own dtype, so a confidence of exactly k/M (e.g. 0.6 in
    # float32) lands in the bin it reads as, not one over after a float64 cast.
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=conf.dtype)
    # bucketize(right=False) gives i with edges[i-1] < conf <= edges[i] on the inner edges.
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    conf = conf.to(torch.float64)
    edges = edges.to(torch.float64)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    nonempty = counts > 0
    mean_conf = torch.where(nonempty, conf_sum / counts.clamp_min(1), torch.nan)
    mean_acc = torch.where(nonempty, acc_sum / counts.clamp_min(1), torch.nan)
    gaps = torch.where(nonempty, (mean_acc - mean_conf).abs() * counts, torch.zeros_like(counts))
    ece = float(gaps.sum() / conf.numel())
    return ReliabilityBins(
        edges=edges.numpy(),
        counts=counts.long().numpy(),
        confidence=mean_conf.numpy(),
        accuracy=mean_acc.numpy(),
        ece=ece,
    )


def expected_calibration_error(ppd: Distribution, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins.

    .. math:: \\mathrm{ECE} = \\sum_{b=1}^M \\frac{n_b}{N}\\,|\\mathrm{acc}_b - \\mathrm{conf}_b|

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> ppd = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.9, 0.1]]]))
        >>> round(expected_calibration_error(ppd, torch.tensor([0, 1]), n_bins=10), 6)
        0.4
    """
    return reliability_bins(ppd, labels, n_bins).ece


def auroc(negatives: Any, positives: Any) -> float:
    """Area under the ROC curve for scores where *positives* should score higher.

    Computed from ranks (Mann-Whitney U): ties get their average rank, so a tie between a
    positive and a negative counts one half,

    .. math:: \\mathrm{AUROC} = P(s_+ > s_-) + \\tfrac12 P(s_+ = s_-).

    Example::

        >>> auroc([0.1, 0.2], [0.2, 0.9])
        0.875
    """
    neg = torch.as_tensor(
        np.asarray(negatives) if not isinstance(negatives, torch.Tensor) else negatives
    )
    pos = torch.as_tensor(
        np.asarray(positives) if not isinstance(positives, torch.Tensor) else positives
    )
    neg = neg.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    pos = pos.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    if neg.numel() == 0 or pos.numel() == 0:
        raise ValueError(
            f"AUROC needs at least one score in each set, got {neg.numel()} in-distribution "
            f"and {pos.numel()} out-of-distribution"
        )
    for name, s in (("in-distribution", neg), ("out-of-distribution", pos)):
        if torch.isnan(s).any():
            raise ValueError(f"{name} scores contain {int(torch.isnan(s).sum())} NaN value(s)")
    scores = torch.cat([neg, pos])
    order = torch.argsort(scores, stable=True)
    _, counts = torch.unique_consecutive(scores[order], return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    avg_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based mean rank of each tie group
    ranks = torch.empty_like(scores)
    ranks[order] = torch.repeat_interleave(avg_rank, counts)
    n_neg, n_pos = neg.numel(), pos.numel()
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_auc(ppd: Distribution, labels: Any) -> float:
    """ROC-AUC of a classifier's averaged class probabilities (rank-based, ties count 1/2,
    as :func:`auroc`).

    Two classes: the AUC of :math:`p(y = 1 \\mid x)` for telling class 1 from class 0.
    More classes: one-vs-rest macro average,

    .. math:: \\mathrm{AUC}_\\text{ovr} = \\frac1{|C'|} \\sum_{c \\in C'}
              \\mathrm{AUC}\\big(\\{p_c(x_i) : y_i = c\\},\\ \\{p_c(x_i) : y_i \\ne c\\}\\big),

    scikit-learn's ``roc_auc_score(y, p, multi_class="ovr", average="macro")``. ``C'`` are
    the classes present among ``labels`` (scikit-learn refuses labels that miss a class;
    here such a class, whose AUC is undefined, is left out of the average). NaN when no
    class has both positives and negatives (e.g. every label the same).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> p1 = torch.tensor([0.1, 0.4, 0.35, 0.8])
        >>> ppd = CategoricalPPD(torch.stack([1 - p1, p1], -1)[None])
        >>> roc_auc(ppd, torch.tensor([0, 0, 1, 1]))    # 3 of the 4 (pos, neg) pairs ordered
        0.75
    """
    cat = _as_categorical_ppd(ppd)
    t = _check_labels(cat, labels).reshape(-1).cpu()
    probs = cat.probs.detach().reshape(-1, cat.num_classes).to("cpu", torch.float64)
    classes = [1] if cat.num_classes == 2 else range(cat.num_classes)
    aucs = []
    for c in classes:
        pos = t == c
        if bool(pos.any()) and not bool(pos.all()):
            aucs.append(auroc(probs[~pos, c], probs[pos, c]))
    return math.fsum(aucs) / len(aucs) if aucs else math.nan


def ood_scores(ppd: Distribution, score: OODScore | str = "entropy") -> torch.Tensor:
    """Per-point uncertainty score of a PPD (higher = more uncertain), see :class:`OODScore`.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> ood_scores(CategoricalPPD(torch.tensor([[[0.5, 0.5]]])), "max_prob")
        tensor([0.5000])
    """
    kind = OODScore.parse(score, "OOD score")
    if kind is OODScore.VARIANCE:
        return _as_regression_ppd(ppd).variance
    cat = _as_categorical_ppd(ppd)
    if kind is OODScore.ENTROPY:
        return cat.entropy()
    if kind is OODScore.MUTUAL_INFORMATION:
        return cat.mutual_information()
    return 1.0 - cat.probs.max(-1).values


def ood_auroc(
    ppd_in: Distribution, ppd_out: Distribution, score: OODScore | str = "entropy"
) -> float:
    """AUROC of an uncertainty score for telling out-of-distribution inputs from in-distribution.

    1.0: every OOD input is more uncertain than every in-distribution input; 0.5: chance.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> sure = CategoricalPPD(torch.tensor([[[0.99, 0.01], [0.9, 0.1]]]))
        >>> unsure = CategoricalPPD(torch.tensor([[[0.5, 0.5], [0.6, 0.4]]]))
        >>> ood_auroc(sure, unsure)
        1.0
    """
    s_in = ood_scores(ppd_in, score)
    s_out = ood_scores(ppd_out, score)
    return auroc(s_in, s_out)


# --------------------------------------------------------------------------------------
# conveniences
# --------------------------------------------------------------------------------------


def _level_key(level: float) -> str:
    pct = 100 * level
    return f"coverage_{int(round(pct))}" if abs(pct - round(pct)) < 1e-9 else f"coverage_{pct:g}"


def regression_metrics(
    ppd: Distribution,
    y: Any,
    levels: Sequence[float] = DEFAULT_LEVELS,
    reference: Distribution | None = None,
) -> dict[str, float]:
    """All regression scores of a PPD at once.

    Returns ``{"nll", "crps", "mae", "rmse", "coverage_50", "coverage_90", "coverage_95"}``
    (one coverage key per level) and ``"kl_to_reference"`` (mean over query points of
    :func:`kl_divergence_grid`) when a reference PPD is given.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> m = regression_metrics(normal_ppd(torch.zeros(4), 1.0), torch.zeros(4))
        >>> m["mae"], m["coverage_50"]
        (0.0, 1.0)
    """
    reg = _as_regression_ppd(ppd)
    _check_targets(reg, y)
    out: dict[str, float] = {
        "nll": nll(reg, y),
        "crps": crps(reg, y),
        "mae": mae(reg, y),
        "rmse": rmse(reg, y),
    }
    for level, cov in interval_coverage(reg, y, levels).items():
        out[_level_key(level)] = cov
    if reference is not None:
        out["kl_to_reference"] = kl_divergence_grid(reference, reg, reduction="mean")
    return out


def classification_metrics(
    ppd: Distribution,
    labels: Any,
    n_bins: int = 15,
    ood_ppd: Distribution | None = None,
    scores: Sequence[OODScore | str] = ("entropy", "mutual_information"),
) -> dict[str, float]:
    """All classification scores of a PPD at once.

    Returns ``{"accuracy", "nll", "ece", "brier"}`` and, when ``ood_ppd`` (the PPD on
    out-of-distribution inputs) is given, ``"auroc_<score>"`` for each OOD score in
    ``scores`` (see :class:`OODScore`).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> ppd = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]))
        >>> classification_metrics(ppd, torch.tensor([0, 1]))["accuracy"]
        1.0
    """
    cat = _as_categorical_ppd(ppd)
    _check_labels(cat, labels)
    out: dict[str, float] = {
        "accuracy": accuracy(cat, labels),
        "nll": nll(cat, labels),
        "ece": expected_calibration_error(cat, labels, n_bins),
        "brier": brier_score(cat, labels),
    }
    if ood_ppd is not None:
        ood = _as_categorical_ppd(ood_ppd, "ood_ppd")
        if ood.num_classes != cat.num_classes:
            raise ValueError(
                f"ood_ppd has {ood.num_classes} classes but the in-distribution PPD has "
                f"{cat.num_classes}"
            )
        for s in scores:
            kind = OODScore.parse(s, "OOD score")
            out[f"auroc_{kind.value}"] = ood_auroc(cat, ood, kind)
    return out
