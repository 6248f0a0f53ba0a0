"""Posterior predictive distributions (PPDs): the one type every predictor returns.

Every way pyrobayes predicts (SVI on a converted network, a PFN, an exact GP, NUTS)
returns a :class:`torch.distributions.Distribution` whose ``batch_shape`` is the set of
query points. Metrics, comparison tables and plots only ever see these objects.

Monte-Carlo PPDs built from posterior draws are *mixtures*: densities and class
probabilities are averaged over draws,

.. math::

    p(y \\mid x, D) \\approx \\frac{1}{S} \\sum_{s=1}^S p(y \\mid x, \\theta_s),

never sampled labels or logits.

Example::

    >>> import torch
    >>> from pyrobayes.ppd import NormalMixturePPD
    >>> ppd = NormalMixturePPD(torch.zeros(10, 3), torch.ones(10, 3))
    >>> ppd.batch_shape
    torch.Size([3])
    >>> lo, hi = ppd.interval(0.95)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import Distribution, Normal, constraints

__all__ = [
    "RegressionPPD",
    "NormalMixturePPD",
    "MixturePPD",
    "CategoricalPPD",
    "AffinePPD",
    "normal_ppd",
    "affine_ppd",
    "align_value",
]


def align_value(value: Any, batch_shape: torch.Size, what: str = "PPD") -> torch.Tensor:
    """``value`` as a tensor a PPD of ``batch_shape`` scores point by point.

    The value-shape rule of every PPD's ``log_prob``/``cdf``, with ``B = batch_shape``:

    - ``B + (1,)`` (a column of targets, e.g. ``y_train`` shaped ``(N, 1)``): the trailing
      1 is dropped, one target per point; never the ``(N, N)`` grid broadcasting would give;
    - a shape that broadcasts to ``B`` (a scalar, ``(1,)``, ``B`` itself): expanded to ``B``;
    - ``(*S, *B)``: leading sample dimensions ``S`` in front of exactly ``B`` (a grid of
      values at every point; expand a ``(S, 1)`` grid to ``(S, *B)`` first);
    - anything else would score more points than the PPD has: a ``ValueError`` naming
      both shapes.

    Example::

        >>> align_value(torch.zeros(3, 1), torch.Size([3])).shape
        torch.Size([3])
        >>> align_value(torch.tensor(0.5), torch.Size([3])).shape
        torch.Size([3])
    """
    value = torch.as_tensor(value)
    shape, k = tuple(value.shape), len(batch_shape)
    batch = tuple(batch_shape)
    if k and shape == batch + (1,):
        return value.squeeze(-1)
    if len(shape) <= k:
        try:
            if torch.broadcast_shapes(value.shape, batch_shape) == batch_shape:
                return value.expand(batch_shape)
        except RuntimeError:
            pass
    elif shape[len(shape) - k :] == batch:
        return value
    raise ValueError(
        f"{what} with batch_shape {batch} cannot score a value of shape {shape}: pass one "
        f"value per point, shape {batch} (or {batch + (1,)}), a scalar, or values with "
        f"leading sample dimensions, shape (S, {', '.join(map(str, batch))})"
    )


def _aligned(method: Callable) -> Callable:
    """``method(self, value, ...)`` with ``value`` passed through :func:`align_value`."""

    @functools.wraps(method)
    def wrapper(self, value, *args, **kwargs):
        return method(
            self, align_value(value, self.batch_shape, type(self).__name__), *args, **kwargs
        )

    wrapper._aligns_value = True  # type: ignore[attr-defined]
    return wrapper


class _PPD(Distribution):
    """Base of every PPD: each subclass's own ``log_prob`` and ``cdf`` see their value
    through :func:`align_value` (one shape rule for all, user subclasses included)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("log_prob", "cdf"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_aligns_value", False):
                setattr(cls, name, _aligned(method))


class RegressionPPD(_PPD):
    """Shared interface of 1-D regression PPDs (batch shape = query points).

    Subclasses provide ``mean``, ``variance``, ``log_prob``, ``cdf`` and ``sample``;
    ``icdf`` defaults to a vectorised bisection on ``cdf`` so that every PPD has
    quantiles and central intervals.

    Values given to ``log_prob``/``cdf`` follow one shape rule (:func:`align_value`,
    applied to every subclass's methods): one value per point (shape ``batch_shape``, or
    ``batch_shape + (1,)`` whose trailing 1 is dropped, so a ``(N, 1)`` column of targets
    is scored point by point), a scalar (scored at every point), or leading sample
    dimensions in front of exactly ``batch_shape``; anything else raises ``ValueError``.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import RegressionPPD, normal_ppd
        >>> ppd = normal_ppd(torch.zeros(1), 1.0)
        >>> isinstance(ppd, RegressionPPD)
        True
        >>> ppd.cdf(torch.zeros(1)), ppd.quantile(0.975)   # icdf by bisection on the cdf
        (tensor([0.5000]), tensor([1.9600]))
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        q = torch.as_tensor(value, dtype=self.mean.dtype, device=self.mean.device)
        if ((q <= 0) | (q >= 1)).any():
            raise ValueError("icdf/quantile levels must lie strictly inside (0, 1)")
        q = torch.broadcast_to(q, torch.broadcast_shapes(q.shape, self.batch_shape))
        std = self.stddev
        # Bracket wide enough for any mixture of the PPD's components, then bisect:
        # 60 halvings take the bracket below float64 resolution for sane scales.
        width = 12.0 * std + 1e-6
        lo = (self.mean - width).expand_as(q).clone()
        hi = (self.mean + width).expand_as(q).clone()
        for _ in range(8):  # widen rare brackets that heavy tails escape
            bad = (self.cdf(lo) > q) | (self.cdf(hi) < q)
            if not bad.any():
                break
            lo = torch.where(self.cdf(lo) > q, lo - 4 * width, lo)
            hi = torch.where(self.cdf(hi) < q, hi + 4 * width, hi)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < q
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def quantile(self, q: float | torch.Tensor) -> torch.Tensor:
        """Quantile(s) of the predictive at each query point (alias of ``icdf``)."""
        return self.icdf(q)

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Central ``level`` interval ``(lower, upper)`` at each query point."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"interval level must be in (0, 1), got {level}")
        alpha = (1.0 - level) / 2.0
        return self.icdf(torch.tensor(alpha)), self.icdf(torch.tensor(1.0 - alpha))


class NormalMixturePPD(RegressionPPD):
    """Equal-weight mixture of Normals over ``S`` posterior draws.

    Args:
        loc: predictive means per draw, shape ``[S, *batch]``.
        scale: predictive noise std per draw, broadcastable to ``loc``.

    The moments follow the law of total variance:
    :math:`\\mathbb{E}[y] = \\bar\\mu`, :math:`\\mathrm{Var}[y] = \\overline{\\sigma^2} +
    \\overline{\\mu^2} - \\bar\\mu^2` (aleatoric + epistemic).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import NormalMixturePPD
        >>> # two draws at two query points: they disagree at the first, agree at the second
        >>> ppd = NormalMixturePPD(torch.tensor([[0.0, 2.0], [2.0, 2.0]]), 1.0)
        >>> ppd
        NormalMixturePPD(draws=2, batch_shape=(2,))
        >>> ppd.mean, ppd.aleatoric_variance, ppd.epistemic_variance
        (tensor([1., 2.]), tensor([1., 1.]), tensor([1., 0.]))
        >>> ppd.variance
        tensor([2., 1.])
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor | float, validate_args=None):
        loc = torch.as_tensor(loc)
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        if loc.dim() < 1:
            raise ValueError("loc must have a leading draw dimension: shape [S, *batch]")
        scale = torch.broadcast_to(scale, loc.shape)
        if not torch.isfinite(loc).all() or not torch.isfinite(scale).all():
            raise ValueError("NormalMixturePPD got non-finite loc or scale")
        if (scale <= 0).any():
            raise ValueError("NormalMixturePPD scale must be positive")
        self.loc, self.scale = loc, scale
        super().__init__(batch_shape=loc.shape[1:], validate_args=validate_args)

    @property
    def num_draws(self) -> int:
        return self.loc.shape[0]

    def _component(self) -> Normal:
        return Normal(self.loc, self.scale)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.mean(0)

    @property
    def aleatoric_variance(self) -> torch.Tensor:
        return self.scale.pow(2).mean(0)

    @property
    def epistemic_variance(self) -> torch.Tensor:
        return self.loc.var(0, unbiased=False)

    @property
    def variance(self) -> torch.Tensor:
        return self.aleatoric_variance + self.epistemic_variance

    def _value(self, value: torch.Tensor) -> torch.Tensor:
        # align_value (the base class) has given value at least the batch dimensions.
        return value.to(dtype=self.loc.dtype, device=self.loc.device)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value = self._value(value)
        batch = tuple(self.batch_shape)
        lead = value.shape[: value.dim() - len(batch)]
        rows = value.reshape(-1, *batch)  # [M, *B]: M values per point (a grid, samples)
        # -log(sigma) - log(2 pi)/2 - log(S): the per-component constant, once
        const = -torch.log(self.scale) - 0.5 * math.log(2 * math.pi) - math.log(self.num_draws)
        # Blocks of values: the [block, S, *B] intermediate stays in cache (a KL grid of
        # 1025 values x 600 draws x 200 points at once is ~0.5 GB and 6x slower).
        per_row = max(1, self.num_draws * math.prod(batch))
        block = max(1, (1 << 18) // per_row)
        out = [
            torch.logsumexp(
                const - 0.5 * ((rows[i : i + block, None] - self.loc) / self.scale).square(), 1
            )
            for i in range(0, rows.shape[0], block)
        ]
        return torch.cat(out).reshape(*lead, *batch)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        value = self._value(value)
        draw_dim = -len(self.batch_shape) - 1
        return self._component().cdf(value.unsqueeze(draw_dim)).mean(draw_dim)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        n = int(math.prod(sample_shape)) if sample_shape else 1
        idx = torch.randint(self.num_draws, (n, *self.batch_shape), device=self.loc.device)
        loc = torch.gather(self.loc.expand(n, *self.loc.shape), 1, idx.unsqueeze(1)).squeeze(1)
        scale = torch.gather(self.scale.expand(n, *self.scale.shape), 1, idx.unsqueeze(1)).squeeze(
            1
        )
        with torch.no_grad():
            out = loc + scale * torch.randn_like(loc)
        return out.reshape(sample_shape + self.batch_shape)

    def to(self, device: torch.device | str) -> NormalMixturePPD:
        return NormalMixturePPD(self.loc.to(device), self.scale.to(device))

    def __repr__(self) -> str:
        return f"NormalMixturePPD(draws={self.num_draws}, batch_shape={tuple(self.batch_shape)})"


class MixturePPD(RegressionPPD):
    """Equal-weight mixture of ``K`` regression PPDs of one batch shape (e.g. a PFN's bar
    distributions given ``K`` different context sets):

    .. math::

        p(y) = \\frac1K \\sum_k p_k(y),\\qquad
        \\mathbb E[y] = \\overline{\\mu_k},\\qquad
        \\mathrm{Var}[y] = \\overline{\\sigma_k^2} + \\overline{\\mu_k^2} - \\overline{\\mu_k}^2;

    ``log_prob`` is a log-sum-exp over the components, ``cdf`` their mean, quantiles by the
    base class's bisection on the cdf.

    Example::

        >>> import torch
        >>> a, b = normal_ppd(torch.zeros(2), 1.0), normal_ppd(torch.full((2,), 2.0), 1.0)
        >>> mix = MixturePPD([a, b])
        >>> mix.mean, mix.variance   # 1 + (0^2 + 2^2)/2 - 1^2
        (tensor([1., 1.]), tensor([2., 2.]))
        >>> bool(torch.allclose(mix.cdf(torch.ones(2)), torch.full((2,), 0.5)))
        True
        >>> MixturePPD([a, normal_ppd(torch.zeros(3), 1.0)])
        Traceback (most recent call last):
        ...
        ValueError: MixturePPD components must share one batch shape, got [(2,), (3,)]
    """

    def __init__(self, components: list[RegressionPPD], validate_args=None):
        components = list(components)
        if not components or not all(isinstance(c, RegressionPPD) for c in components):
            raise ValueError("MixturePPD needs at least one RegressionPPD component")
        shapes = sorted({tuple(c.batch_shape) for c in components})
        if len(shapes) != 1:
            raise ValueError(f"MixturePPD components must share one batch shape, got {shapes}")
        self.components = components
        super().__init__(batch_shape=components[0].batch_shape, validate_args=validate_args)

    @property
    def num_components(self) -> int:
        return len(self.components)

    @property
    def mean(self) -> torch.Tensor:
        return torch.stack([c.mean for c in self.components]).mean(0)

    @property
    def variance(self) -> torch.Tensor:
        means = torch.stack([c.mean for c in self.components])
        variances = torch.stack([c.variance for c in self.components])
        return variances.mean(0) + means.var(0, unbiased=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lp = torch.stack([c.log_prob(value) for c in self.components])
        return torch.logsumexp(lp, 0) - math.log(self.num_components)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        return torch.stack([c.cdf(value) for c in self.components]).mean(0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        draws = torch.stack([c.sample(sample_shape) for c in self.components])
        idx = torch.randint(self.num_components, (1, *draws.shape[1:]), device=draws.device)
        return torch.gather(draws, 0, idx).squeeze(0)

    def __repr__(self) -> str:
        return (
            f"MixturePPD(components={self.num_components}, batch_shape={tuple(self.batch_shape)})"
        )


def normal_ppd(loc: torch.Tensor, scale: torch.Tensor | float) -> NormalMixturePPD:
    """A single Normal per query point (e.g. an exact GP) as a one-draw mixture.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> ppd = normal_ppd(torch.tensor([0.0, 1.0]), 2.0)
        >>> ppd.num_draws, ppd.variance
        (1, tensor([4., 4.]))
        >>> ppd.interval(0.95)                     # mean -/+ 1.96 * 2
        (tensor([-3.9199, -2.9199]), tensor([3.9199, 4.9199]))
    """
    loc = torch.as_tensor(loc)
    return NormalMixturePPD(
        loc.unsqueeze(0), torch.as_tensor(scale, dtype=loc.dtype).expand_as(loc).unsqueeze(0)
    )


class AffinePPD(RegressionPPD):
    """The PPD of :math:`y = a + b\\,z` for :math:`z \\sim` ``base`` and :math:`b > 0`:
    how a PPD of standardised targets becomes one in raw units.

    .. math::

        \\log p_y(y) = \\log p_z\\big((y - a)/b\\big) - \\log b, \\qquad
        F_y(y) = F_z\\big((y - a)/b\\big), \\qquad Q_y(q) = a + b\\,Q_z(q),

    (the ``- log b`` is the Jacobian), mean :math:`a + b\\,\\mathbb E z` and variance
    :math:`b^2 \\mathrm{Var}\\,z`.

    Args:
        base: any :class:`RegressionPPD` (e.g. a PFN's bar distribution).
        loc: :math:`a`, a number or a tensor broadcastable to ``base.batch_shape``.
        scale: :math:`b > 0`, likewise.

    Example::

        >>> base = normal_ppd(torch.zeros(2), 1.0)
        >>> raw = AffinePPD(base, loc=10.0, scale=2.0)
        >>> d = raw.log_prob(torch.tensor([10.0, 10.0])) - base.log_prob(torch.zeros(2))
        >>> round(float(d[0]), 4)  # - log 2, the Jacobian
        -0.6931
    """

    def __init__(self, base: RegressionPPD, loc: torch.Tensor | float, scale: torch.Tensor | float):
        if not isinstance(base, RegressionPPD):
            raise ValueError(f"AffinePPD needs a RegressionPPD base, got {type(base).__name__}")
        like = base.mean
        loc = torch.as_tensor(loc, dtype=like.dtype, device=like.device)
        scale = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
        if not torch.isfinite(loc).all() or not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ValueError("AffinePPD needs a finite loc and a finite, positive scale")
        self.base, self.loc, self.scale = base, loc, scale
        super().__init__(batch_shape=base.batch_shape)

    def _z(self, value: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        return (value - self.loc) / self.scale

    @property
    def mean(self) -> torch.Tensor:
        return self.loc + self.scale * self.base.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2) * self.base.variance

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(self._z(value)) - self.scale.log()

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.cdf(self._z(value))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        return self.loc + self.scale * self.base.icdf(value)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.loc + self.scale * self.base.sample(sample_shape)

    def __repr__(self) -> str:
        return f"AffinePPD({self.base!r})"


def affine_ppd(
    ppd: RegressionPPD, loc: torch.Tensor | float, scale: torch.Tensor | float
) -> RegressionPPD:
    """``ppd`` of :math:`z` mapped to :math:`y = a + b z` (:math:`b > 0`): a
    :class:`NormalMixturePPD` stays one (exactly: every component moves), anything else is
    wrapped in :class:`AffinePPD`.

    Example::

        >>> ppd = affine_ppd(normal_ppd(torch.zeros(3), 1.0), loc=5.0, scale=3.0)
        >>> ppd.mean, ppd.variance
        (tensor([5., 5., 5.]), tensor([9., 9., 9.]))
    """
    if isinstance(ppd, NormalMixturePPD):
        s = torch.as_tensor(scale, dtype=ppd.loc.dtype, device=ppd.loc.device)
        a = torch.as_tensor(loc, dtype=ppd.loc.dtype, device=ppd.loc.device)
        if not torch.isfinite(a).all() or not torch.isfinite(s).all() or (s <= 0).any():
            raise ValueError("affine_ppd needs a finite loc and a finite, positive scale")
        return NormalMixturePPD(a + s * ppd.loc, s * ppd.scale)
    return AffinePPD(ppd, loc, scale)


def as_class_indices(y, num_classes: int, logits_shape: torch.Size | None = None) -> torch.Tensor:
    """Validate class labels and return them as a ``long`` tensor.

    Integer tensors pass; floating tensors pass only if every value is a whole number
    (e.g. labels stored as float in a data file), anything else (``1.7``) is an error
    rather than being truncated to a class. One-hot labels (same shape as the logits)
    are rejected with a hint to take the argmax."""
    y = torch.as_tensor(y)
    if y.dtype == torch.bool:
        raise ValueError("labels are booleans; pass class indices (0 .. num_classes-1) as ints")
    if logits_shape is not None and num_classes > 1 and tuple(y.shape) == tuple(logits_shape):
        raise ValueError(
            f"labels of shape {tuple(y.shape)} match the logits' shape: they look one-hot, "
            "pass class indices (argmax) instead, e.g. y.argmax(-1)"
        )
    if y.is_floating_point() or y.is_complex():
        if y.is_complex() or not torch.isfinite(y).all() or (y != y.round()).any():
            raise ValueError(
                "a categorical likelihood needs integer class labels, got non-integer values "
                f"(e.g. {y.flatten()[(y != y.round()).flatten()][:3].tolist()}); for real-valued "
                "targets use likelihood=Gaussian(...)"
            )
        y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got range [{int(y.min())}, {int(y.max())}]"
        )
    return y.long()


class CategoricalPPD(_PPD):
    """Categorical PPD: class probabilities averaged over ``S`` posterior draws.

    Args:
        probs_per_draw: shape ``[S, *batch, C]``; each draw's class probabilities.

    ``log_prob`` takes labels by the shape rule of :func:`align_value`: one label per
    point (a ``(N, 1)`` column too), a single label for every point, or leading sample
    dimensions in front of exactly ``batch_shape``.

    The predictive entropy splits into an aleatoric part (expected entropy of each
    draw) and an epistemic part, the mutual information between label and weights:
    :math:`\\mathbb{H}[\\bar p] = \\mathbb{E}_s \\mathbb{H}[p_s] + \\mathrm{MI}`.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> # two confident draws that disagree: all the uncertainty is epistemic
        >>> ppd = CategoricalPPD(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
        >>> ppd
        CategoricalPPD(draws=2, batch_shape=(1,), classes=2)
        >>> ppd.probs
        tensor([[0.5000, 0.5000]])
        >>> ppd.entropy(), ppd.aleatoric_entropy(), ppd.mutual_information()
        (tensor([0.6931]), tensor([0.]), tensor([0.6931]))
    """

    arg_constraints: dict = {}
    has_enumerate_support = True

    def __init__(self, probs_per_draw: torch.Tensor, validate_args=None):
        p = torch.as_tensor(probs_per_draw)
        if p.dim() < 2:
            raise ValueError("probs_per_draw must have shape [S, *batch, C]")
        if not torch.isfinite(p).all() or (p < 0).any():
            raise ValueError("CategoricalPPD got negative or non-finite probabilities")
        self.probs_per_draw = p / p.sum(-1, keepdim=True)
        self.probs = self.probs_per_draw.mean(0)
        super().__init__(batch_shape=p.shape[1:-1], validate_args=validate_args)

    @classmethod
    def from_logits(cls, logits_per_draw: torch.Tensor) -> CategoricalPPD:
        return cls(torch.softmax(logits_per_draw, dim=-1))

    @property
    def support(self):
        return constraints.integer_interval(0, self.num_classes - 1)

    @property
    def num_classes(self) -> int:
        return self.probs.shape[-1]

    @property
    def num_draws(self) -> int:
        return self.probs_per_draw.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    def predict(self) -> torch.Tensor:
        """The most probable label at each query point."""
        return self.probs.argmax(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value = as_class_indices(value, self.num_classes).to(self.probs.device)
        logp = self.probs.clamp_min(torch.finfo(self.probs.dtype).tiny).log()
        logp = logp.expand(value.shape + (self.num_classes,))
        return logp.gather(-1, value.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def _entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Total predictive entropy :math:`\\mathbb{H}[\\bar p]` (nats)."""
        return self._entropy(self.probs)

    def aleatoric_entropy(self) -> torch.Tensor:
        """Expected entropy of a single draw's prediction (nats)."""
        return self._entropy(self.probs_per_draw).mean(0)

    def mutual_information(self) -> torch.Tensor:
        """Epistemic part: entropy minus expected entropy (nats, >= 0)."""
        return (self.entropy() - self.aleatoric_entropy()).clamp_min(0.0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return torch.distributions.Categorical(probs=self.probs).sample(sample_shape)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return torch.distributions.Categorical(probs=self.probs).enumerate_support(expand)

    def to(self, device: torch.device | str) -> CategoricalPPD:
        return CategoricalPPD(self.probs_per_draw.to(device))

    def __repr__(self) -> str:
        return (
            f"CategoricalPPD(draws={self.num_draws}, batch_shape={tuple(self.batch_shape)}, "
            f"classes={self.num_classes})"
        )
