"""The full-support Riemann ("bar") distribution: the PFN's regression head.

The real line is cut at borders :math:`b_0 < b_1 < \\dots < b_K` into ``K`` buckets with
probabilities :math:`p = \\mathrm{softmax}(\\text{logits})`. Inner buckets
:math:`i = 1..K-2` carry a uniform density :math:`p_i / (b_{i+1} - b_i)`. The two outer
buckets are replaced by half-normal tails so that every real ``y`` has positive density
(Müller et al. 2022, automl/PFNs ``FullSupportBarDistribution``):

.. math::

    p(y) = p_0 \\, \\mathrm{HN}(b_1 - y; s_0) \\;\\; (y < b_1), \\qquad
    p(y) = p_{K-1} \\, \\mathrm{HN}(y - b_{K-1}; s_{K-1}) \\;\\; (y \\ge b_{K-1}),

where :math:`\\mathrm{HN}(\\cdot; s)` is the half-normal density with scale ``s``, chosen so
that the tail's median lies at the outer border:
:math:`s_0 = (b_1 - b_0) / \\Phi_{HN}^{-1}(0.5)`. The density integrates to
:math:`\\sum_i p_i = 1`.

Example::

    >>> import torch
    >>> from pyrobayes.pfn.bar import BarDistribution
    >>> d = BarDistribution(torch.linspace(-3, 3, 101), torch.zeros(100))
    >>> round(float(d.cdf(torch.tensor(0.0))), 6)
    0.5
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyrobayes.ppd import RegressionPPD

__all__ = ["BarDistribution", "BarCriterion", "borders_from_samples"]

# Median of the standard half-normal, sqrt(2) * erfinv(1/2).
_HN_MEDIAN = math.sqrt(2.0) * 0.4769362762044699
_SQRT2 = math.sqrt(2.0)


def borders_from_samples(ys: torch.Tensor, num_bars: int) -> torch.Tensor:
    """Bucket borders from equal-mass cuts of a (large) sample of prior ``y`` values.

    Args:
        ys: any-shaped sample of prior targets (flattened; NaNs rejected).
        num_bars: number of buckets ``K`` (returns ``K + 1`` borders).

    Returns:
        Strictly increasing float tensor of ``K + 1`` borders; the first/last are the
        sample's min/max (they only set the half-normal tails' scales).

    Example::

        >>> b = borders_from_samples(torch.randn(10_000), 10)
        >>> b.shape
        torch.Size([11])
    """
    ys = torch.as_tensor(ys).detach().flatten().to(torch.float64)
    if num_bars < 2:
        raise ValueError(f"num_bars must be at least 2, got {num_bars}")
    if not torch.isfinite(ys).all():
        raise ValueError("border samples contain NaN or infinite values")
    if ys.numel() < 2 * num_bars:
        raise ValueError(
            f"need at least {2 * num_bars} samples for {num_bars} bars, got {ys.numel()}"
        )
    ys, _ = ys.sort()
    idx = torch.linspace(0, ys.numel() - 1, num_bars + 1).round().long()
    borders = ys[idx]
    if not (borders[1:] > borders[:-1]).all():
        raise ValueError(
            "prior y sample has ties: borders are not strictly increasing (discrete prior?)"
        )
    return borders.to(torch.get_default_dtype())


def _check_borders(borders: torch.Tensor) -> None:
    if borders.dim() != 1 or borders.numel() < 3:
        raise ValueError(
            f"borders must be a 1-D tensor of at least 3 values, got shape {tuple(borders.shape)}"
        )
    if not torch.isfinite(borders).all() or not (borders[1:] > borders[:-1]).all():
        raise ValueError("borders must be finite and strictly increasing")


class BarDistribution(RegressionPPD):
    """Full-support bar distribution (a :class:`~pyrobayes.ppd.RegressionPPD`).

    Args:
        borders: ``[K + 1]`` strictly increasing bucket borders.
        logits: ``[*batch, K]`` unnormalised log bucket probabilities.

    ``mean`` and ``variance`` are exact (law of total variance over buckets: a uniform
    bucket has variance :math:`w^2/12`, a half-normal tail :math:`s^2 (1 - 2/\\pi)`);
    ``cdf``/``icdf`` are exact piecewise inverses; ``sample`` is inverse-transform
    sampling, so the tails are sampled too.

    Example::

        >>> d = BarDistribution(torch.linspace(-1, 1, 11), torch.randn(4, 10))
        >>> d.log_prob(torch.zeros(4)).shape
        torch.Size([4])
    """

    def __init__(self, borders: torch.Tensor, logits: torch.Tensor, validate_args=None):
        borders = torch.as_tensor(borders)
        logits = torch.as_tensor(logits)
        _check_borders(borders)
        if logits.dim() < 1 or logits.shape[-1] != borders.numel() - 1:
            raise ValueError(
                f"logits must have shape [*batch, {borders.numel() - 1}] for {borders.numel()} borders, "
                f"got {tuple(logits.shape)}"
            )
        if not torch.isfinite(logits).all():
            raise ValueError("BarDistribution got non-finite logits")
        self.borders = borders.to(device=logits.device, dtype=logits.dtype)
        self.logits = logits
        self.log_probs = torch.log_softmax(logits, dim=-1)
        self.probs = self.log_probs.exp()
        w = self.borders[1:] - self.borders[:-1]
        self.widths = w
        self.left_scale = w[0] / _HN_MEDIAN
        self.right_scale = w[-1] / _HN_MEDIAN
        super().__init__(batch_shape=logits.shape[:-1], validate_args=validate_args)

    @property
    def num_bars(self) -> int:
        return self.logits.shape[-1]

    # -- per-bucket moments -------------------------------------------------------
    def _bucket_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, w = self.borders, self.widths
        means = 0.5 * (b[1:] + b[:-1])
        variances = w.pow(2) / 12.0
        hn_mean = math.sqrt(2.0 / math.pi)
        hn_var = 1.0 - 2.0 / math.pi
        means = torch.cat(
            [
                (b[1] - self.left_scale * hn_mean).view(1),
                means[1:-1],
                (b[-2] + self.right_scale * hn_mean).view(1),
            ]
        )
        variances = torch.cat(
            [
                (self.left_scale**2 * hn_var).view(1),
                variances[1:-1],
                (self.right_scale**2 * hn_var).view(1),
            ]
        )
        return means, variances

    @property
    def mean(self) -> torch.Tensor:
        means, _ = self._bucket_moments()
        return (self.probs * means).sum(-1)

    @property
    def variance(self) -> torch.Tensor:
        means, variances = self._bucket_moments()
        mu = (self.probs * means).sum(-1, keepdim=True)
        return (self.probs * (variances + (means - mu).pow(2))).sum(-1)

    # -- density, cdf, quantiles ----------------------------------------------------
    def _prep(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        value = torch.as_tensor(value, dtype=self.logits.dtype, device=self.logits.device)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        value = value.expand(shape)
        # Bucket index: 0 for y < b_1 (left tail), K-1 for y >= b_{K-1} (right tail).
        idx = torch.searchsorted(self.borders[1:-1].contiguous(), value.contiguous(), right=True)
        return value, idx, shape

    def _gather(self, table: torch.Tensor, idx: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return table.expand(*shape, table.shape[-1]).gather(-1, idx.unsqueeze(-1)).squeeze(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value, idx, shape = self._prep(value)
        if not torch.isfinite(value).all():
            raise ValueError("log_prob got NaN or infinite values")
        b, k = self.borders, self.num_bars
        lp_bucket = self._gather(self.log_probs, idx, shape)
        inner = -torch.log(self.widths)[idx]
        left_d = (b[1] - value).clamp_min(0.0)
        right_d = (value - b[-2]).clamp_min(0.0)
        # log half-normal density: log(sqrt(2/pi)/s) - d^2 / (2 s^2)
        c = 0.5 * math.log(2.0 / math.pi)
        left = c - torch.log(self.left_scale) - 0.5 * (left_d / self.left_scale).pow(2)
        right = c - torch.log(self.right_scale) - 0.5 * (right_d / self.right_scale).pow(2)
        within = torch.where(idx == 0, left, torch.where(idx == k - 1, right, inner))
        return lp_bucket + within

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        value, idx, shape = self._prep(value)
        b, k = self.borders, self.num_bars
        cum = torch.cat([torch.zeros_like(self.probs[..., :1]), self.probs.cumsum(-1)], dim=-1)
        below = self._gather(cum, idx, shape)  # mass of buckets left of idx
        p = self._gather(self.probs, idx, shape)
        frac = ((value - b[idx]) / self.widths[idx]).clamp(0.0, 1.0)
        left = p * torch.erfc((b[1] - value).clamp_min(0.0) / (self.left_scale * _SQRT2))
        right = below + p * torch.erf((value - b[-2]).clamp_min(0.0) / (self.right_scale * _SQRT2))
        out = torch.where(idx == 0, left, torch.where(idx == k - 1, right, below + p * frac))
        return out.clamp(0.0, 1.0)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        q = torch.as_tensor(value, dtype=self.logits.dtype, device=self.logits.device)
        if ((q <= 0) | (q >= 1)).any():
            raise ValueError("icdf/quantile levels must lie strictly inside (0, 1)")
        shape = torch.broadcast_shapes(q.shape, self.batch_shape)
        q = q.expand(shape)
        b, k = self.borders, self.num_bars
        cum = self.probs.cumsum(-1)
        cum_e = cum.expand(*shape, k).contiguous()
        # First bucket whose cumulative mass exceeds q.
        idx = (
            torch.searchsorted(cum_e, q.unsqueeze(-1).contiguous(), right=True)
            .squeeze(-1)
            .clamp(0, k - 1)
        )
        p = self._gather(self.probs, idx, shape)
        below = self._gather(cum, idx, shape) - p
        inner = b[idx] + ((q - below) / p).clamp(0.0, 1.0) * self.widths[idx]
        tiny = torch.finfo(q.dtype).tiny
        # Half-normal quantile: s * sqrt(2) * erfinv(u).
        u_left = (1.0 - q / p).clamp(0.0, 1.0 - 1e-7 if q.dtype == torch.float32 else 1.0 - 1e-15)
        left = b[1] - self.left_scale * _SQRT2 * torch.erfinv(u_left)
        u_right = ((q - below) / p.clamp_min(tiny)).clamp(
            0.0, 1.0 - 1e-7 if q.dtype == torch.float32 else 1.0 - 1e-15
        )
        right = b[-2] + self.right_scale * _SQRT2 * torch.erfinv(u_right)
        return torch.where(idx == 0, left, torch.where(idx == k - 1, right, inner))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            tiny = torch.finfo(self.logits.dtype).eps
            u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(
                tiny, 1 - tiny
            )
            return self.icdf(u)

    def to(self, device: torch.device | str) -> BarDistribution:
        return BarDistribution(self.borders.to(device), self.logits.to(device))

    def __repr__(self) -> str:
        return f"BarDistribution(bars={self.num_bars}, batch_shape={tuple(self.batch_shape)})"


class BarCriterion(nn.Module):
    """Negative log-likelihood of targets under the bar distribution (the PFN loss).

    Holds the ``[K + 1]`` borders as a buffer (saved in checkpoints, follows
    ``.to(device)``), in the units of the raw targets.

    Example::

        >>> crit = BarCriterion(torch.linspace(-3, 3, 51))
        >>> crit(torch.zeros(8, 50), torch.randn(8)).shape
        torch.Size([8])
    """

    borders: torch.Tensor

    def __init__(self, borders: torch.Tensor):
        super().__init__()
        borders = torch.as_tensor(borders, dtype=torch.get_default_dtype())
        _check_borders(borders)
        self.register_buffer("borders", borders.clone())

    @property
    def num_bars(self) -> int:
        return self.borders.numel() - 1

    def distribution(self, logits: torch.Tensor) -> BarDistribution:
        """The bar distribution for ``logits`` of shape ``[*batch, K]``."""
        return BarDistribution(self.borders, logits)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-point NLL :math:`-\\log p(y)`, shape = the logits' batch shape (``y`` of that
        shape, or with a trailing 1: see :func:`~pyrobayes.ppd.align_value`)."""
        return -self.distribution(logits).log_prob(y)
