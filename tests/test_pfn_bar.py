"""The full-support bar distribution: normalisation, cdf/icdf, density, sampling."""

import math

import pytest
import torch
from scipy import stats

from pyrobayes.pfn import BarCriterion, BarDistribution, borders_from_samples
from pyrobayes.ppd import RegressionPPD


def _dist(batch=3, bars=40, seed=0) -> BarDistribution:
    g = torch.Generator().manual_seed(seed)
    # Well-separated borders (widths >= 0.05) so a fine grid resolves every bucket.
    borders = torch.cumsum(torch.rand(bars + 1, generator=g, dtype=torch.float64) + 0.05, 0) - 10
    logits = 2 * torch.randn(batch, bars, generator=g, dtype=torch.float64)
    logits[:, 0] += 3  # heavy left tail, so the tails carry real mass in every test
    logits[:, -1] += 2
    return BarDistribution(borders, logits)


def _midpoint_grid(
    d: BarDistribution, per_bucket: int = 200, tail: float = 80.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint-rule nodes and weights whose cells never straddle a border (the density
    jumps there), covering the tails out to +-``tail``."""
    edges = torch.cat(
        [torch.tensor([d.borders[1] - tail]), d.borders[1:-1], torch.tensor([d.borders[-2] + tail])]
    )
    cells = []
    for a, b in zip(edges[:-1], edges[1:]):
        n = per_bucket * (50 if b - a > 10 else 1)
        cells.append(torch.linspace(float(a), float(b), n + 1, dtype=torch.float64))
    mids = torch.cat([(c[1:] + c[:-1]) / 2 for c in cells])
    widths = torch.cat([c[1:] - c[:-1] for c in cells])
    return mids, widths


def test_is_a_regression_ppd():
    assert isinstance(_dist(), RegressionPPD)
    assert _dist().batch_shape == torch.Size([3])


def test_integrates_to_one_including_tails():
    d = _dist()
    y, dy = _midpoint_grid(d)
    p = d.log_prob(y.unsqueeze(-1).expand(-1, 3)).exp()
    # midpoint rule is exact on the flat buckets; the tails' error is O(dy^2)
    torch.testing.assert_close(
        (p * dy.unsqueeze(-1)).sum(0), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0
    )
    left = y < d.borders[1]
    tail = (p[left] * dy[left].unsqueeze(-1)).sum(0)
    torch.testing.assert_close(tail, d.probs[:, 0], atol=1e-6, rtol=0)


def test_mean_and_variance_match_numerical_moments():
    d = _dist()
    y, dy = _midpoint_grid(d)
    w = d.log_prob(y.unsqueeze(-1).expand(-1, 3)).exp() * dy.unsqueeze(-1)
    mean = (w * y.unsqueeze(-1)).sum(0)
    # per-bucket variance of the midpoint rule is (cell^2/12) short: well below the tolerance
    var = (w * (y.unsqueeze(-1) - mean) ** 2).sum(0)
    torch.testing.assert_close(d.mean, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(d.variance, var, rtol=1e-4, atol=0)


def test_cdf_and_icdf_are_inverses():
    d = _dist()
    q = torch.linspace(1e-6, 1 - 1e-6, 2001, dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(d.cdf(d.icdf(q)), q.expand(-1, 3), atol=1e-12, rtol=0)
    y = torch.linspace(-30, 30, 2001, dtype=torch.float64).unsqueeze(-1)
    c = d.cdf(y.expand(-1, 3))
    ok = (c > 1e-9) & (c < 1 - 1e-9)
    torch.testing.assert_close(
        d.icdf(c.clamp(1e-9, 1 - 1e-9))[ok], y.expand(-1, 3)[ok], atol=1e-7, rtol=0
    )
    assert torch.all(c[1:] >= c[:-1])  # monotone


def test_log_prob_matches_finite_difference_of_cdf():
    d = _dist()
    # points away from borders (where the density jumps)
    y = torch.linspace(-40, 40, 3001, dtype=torch.float64).unsqueeze(-1).expand(-1, 3)
    h = 1e-6
    fd = (d.cdf(y + h) - d.cdf(y - h)) / (2 * h)
    near = (y[:, :1] - d.borders).abs().min(-1, keepdim=True).values < 2 * h
    dens = d.log_prob(y).exp()
    mask = ~near.expand_as(dens)
    torch.testing.assert_close(dens[mask], fd[mask], rtol=1e-5, atol=1e-8)


def test_samples_follow_the_cdf_ks_test_with_tails():
    torch.manual_seed(0)
    d = _dist(batch=1)
    s = d.sample((20_000,))[:, 0]
    one = BarDistribution(d.borders, d.logits[0])
    ks = stats.kstest(s.numpy(), lambda v: one.cdf(torch.as_tensor(v)).numpy())
    # KS critical value at alpha = 0.001 is 1.95 / sqrt(n).
    assert ks.statistic < 1.95 / math.sqrt(20_000)
    # tails are sampled with their probability (binomial s.e. ~ 0.003)
    frac_left = (s < d.borders[1]).double().mean()
    frac_right = (s >= d.borders[-2]).double().mean()
    assert abs(frac_left - d.probs[0, 0]) < 0.015
    assert abs(frac_right - d.probs[0, -1]) < 0.015
    assert (s < d.borders[0]).any() and (s > d.borders[-1]).any()


def test_interval_and_quantile():
    d = _dist()
    lo, hi = d.interval(0.9)
    torch.testing.assert_close(d.cdf(hi) - d.cdf(lo), torch.full((3,), 0.9, dtype=torch.float64))
    torch.testing.assert_close(d.quantile(0.5), d.icdf(torch.tensor(0.5)))


def test_borders_from_samples_are_equal_mass():
    torch.manual_seed(0)
    ys = torch.randn(100_000)
    b = borders_from_samples(ys, 50)
    assert b.shape == (51,) and torch.all(b[1:] > b[:-1])
    counts = torch.histc(ys, bins=50, min=float(b[0]), max=float(b[-1]))
    inner = torch.bucketize(ys, b[1:-1])
    counts = torch.bincount(inner, minlength=50)
    assert counts.min() >= 1990 and counts.max() <= 2010


def test_criterion_is_negative_log_prob_and_holds_borders_as_buffer():
    crit = BarCriterion(torch.linspace(-3, 3, 31))
    assert "borders" in dict(crit.named_buffers())
    logits, y = torch.randn(5, 30), torch.randn(5) * 3
    torch.testing.assert_close(crit(logits, y), -crit.distribution(logits).log_prob(y))


def test_bad_inputs():
    with pytest.raises(ValueError, match="strictly increasing"):
        BarDistribution(torch.tensor([0.0, 1.0, 1.0, 2.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="logits must have shape"):
        BarDistribution(torch.linspace(0, 1, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        BarDistribution(torch.linspace(0, 1, 5), torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="strictly inside"):
        _dist().icdf(torch.tensor(1.0))
    with pytest.raises(ValueError, match="ties"):
        borders_from_samples(torch.zeros(1000), 10)


def test_a_column_of_targets_is_one_target_per_point_never_a_grid():
    # y shaped (N, 1) used to broadcast against the (N,) batch into an (N, N) matrix.
    d = _dist()
    y = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(d.log_prob(y.unsqueeze(-1)), d.log_prob(y))
    torch.testing.assert_close(d.cdf(y.unsqueeze(-1)), d.cdf(y))
    crit = BarCriterion(d.borders)
    torch.testing.assert_close(crit(d.logits, y.unsqueeze(-1)), crit(d.logits, y))
    with pytest.raises(ValueError, match=r"batch_shape \(3,\).*\(5, 1\)"):
        d.log_prob(torch.zeros(5, 1, dtype=torch.float64))
