import math

import pytest
import torch

from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, normal_ppd


def mixture():
    g = torch.Generator().manual_seed(0)
    return NormalMixturePPD(torch.randn(40, 6, generator=g), 0.2 + torch.rand(40, 6, generator=g))


def test_mixture_moments_follow_the_law_of_total_variance():
    p = mixture()
    assert torch.allclose(p.mean, p.loc.mean(0))
    expected = (p.scale**2 + p.loc**2).mean(0) - p.loc.mean(0) ** 2
    assert torch.allclose(p.variance, expected, atol=1e-6)
    s = p.sample((200_000,))
    assert s.shape == (200_000, 6)
    # Monte-Carlo standard error of the mean is sd/sqrt(n) ~ 0.003; allow 5 of them
    assert torch.allclose(s.mean(0), p.mean, atol=5 * float(p.stddev.max()) / math.sqrt(200_000))
    assert torch.allclose(s.var(0), p.variance, rtol=0.02)


def test_mixture_density_integrates_to_one_and_matches_cdf():
    p = mixture()
    y = torch.linspace(-12, 12, 20001)[:, None].expand(-1, 6)
    dens = p.log_prob(y).exp()
    assert torch.allclose(torch.trapezoid(dens, y[:, 0], dim=0), torch.ones(6), atol=1e-4)
    h = 1e-3
    fd = (p.cdf(y[5000:5003] + h) - p.cdf(y[5000:5003] - h)) / (2 * h)
    assert torch.allclose(fd, dens[5000:5003], rtol=1e-3, atol=1e-6)


def test_icdf_inverts_cdf_and_intervals_nest():
    p = mixture()
    for q in (0.01, 0.3, 0.5, 0.9, 0.999):
        assert torch.allclose(p.cdf(p.icdf(torch.tensor(q))), torch.full((6,), q), atol=1e-5)
    lo50, hi50 = p.interval(0.5)
    lo90, hi90 = p.interval(0.9)
    assert (lo90 < lo50).all() and (hi50 < hi90).all()
    with pytest.raises(ValueError, match="strictly inside"):
        p.icdf(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        p.interval(1.5)


def test_single_normal_matches_torch():
    p = normal_ppd(torch.tensor([0.0, 1.0]), 2.0)
    ref = torch.distributions.Normal(torch.tensor([0.0, 1.0]), 2.0)
    y = torch.tensor([0.3, -1.0])
    assert torch.allclose(p.log_prob(y), ref.log_prob(y))
    assert torch.allclose(p.icdf(torch.tensor(0.975)), ref.icdf(torch.tensor(0.975)), atol=1e-4)


def test_bad_mixture_inputs():
    with pytest.raises(ValueError, match="non-finite"):
        NormalMixturePPD(torch.tensor([[float("nan")]]), 1.0)
    with pytest.raises(ValueError, match="positive"):
        NormalMixturePPD(torch.zeros(2, 3), 0.0)


def test_categorical_entropy_decomposition():
    # two confident draws that disagree: low aleatoric, high epistemic uncertainty
    p = CategoricalPPD(torch.tensor([[[0.99, 0.01]], [[0.01, 0.99]]]))
    assert torch.allclose(p.probs, torch.tensor([[0.5, 0.5]]))
    assert p.entropy().item() == pytest.approx(math.log(2), abs=1e-6)
    h = -(0.99 * math.log(0.99) + 0.01 * math.log(0.01))
    assert p.aleatoric_entropy().item() == pytest.approx(h, abs=1e-6)
    assert p.mutual_information().item() == pytest.approx(math.log(2) - h, abs=1e-6)
    assert p.log_prob(torch.tensor([1])).item() == pytest.approx(math.log(0.5), abs=1e-6)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        p.log_prob(torch.tensor([2]))
    # averaging probabilities, not logits: agreeing draws keep MI at zero
    same = CategoricalPPD.from_logits(torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]]))
    assert same.mutual_information().item() == pytest.approx(0.0, abs=1e-7)


def test_mixture_scores_broadcast_a_scalar_value():
    # Like any torch distribution: a scalar value is scored at every batch element.
    ppd = NormalMixturePPD(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.ones(2, 2))
    full = torch.zeros(2)
    assert torch.equal(ppd.cdf(torch.tensor(0.0)), ppd.cdf(full))
    assert torch.equal(ppd.log_prob(0.0), ppd.log_prob(full))


# --------------------------------------------------------------------------------------
# value shapes: a column of targets (N, 1) is one target per point, never an (N, N) grid
# --------------------------------------------------------------------------------------


def _regression_ppds() -> dict:
    from pyrobayes.pfn.bar import BarDistribution
    from pyrobayes.ppd import AffinePPD

    g = torch.Generator().manual_seed(1)
    n = 5
    mix = NormalMixturePPD(torch.randn(7, n, generator=g), 0.5 + torch.rand(7, n, generator=g))
    bar = BarDistribution(torch.linspace(-3, 3, 21), torch.randn(n, 20, generator=g))
    return {
        "mixture": mix,
        "normal_ppd": normal_ppd(torch.randn(n, generator=g), 0.7),
        "affine(mixture)": AffinePPD(mix, loc=1.0, scale=2.0),
        "affine(bar)": AffinePPD(bar, loc=torch.randn(n, generator=g), scale=3.0),
        "bar": bar,
    }


@pytest.mark.parametrize("kind", list(_regression_ppds()))
@pytest.mark.parametrize("method", ["log_prob", "cdf"])
def test_a_column_of_targets_scores_one_target_per_point(kind, method):
    ppd = _regression_ppds()[kind]
    y = torch.linspace(-1.0, 1.5, 5)
    flat = getattr(ppd, method)(y)
    column = getattr(ppd, method)(y.unsqueeze(-1))  # (N, 1), like the README tour's y_train
    assert flat.shape == column.shape == ppd.batch_shape
    torch.testing.assert_close(column, flat)


@pytest.mark.parametrize("kind", list(_regression_ppds()))
@pytest.mark.parametrize("method", ["log_prob", "cdf"])
def test_values_that_would_broadcast_past_the_batch_raise(kind, method):
    ppd = _regression_ppds()[kind]
    for bad in [(3, 1), (5, 1, 1), (2, 5, 1), (5, 2), (3,)]:
        with pytest.raises(ValueError, match=r"batch_shape \(5,\)") as err:
            getattr(ppd, method)(torch.zeros(bad))
        assert str(bad) in str(err.value)


@pytest.mark.parametrize("kind", list(_regression_ppds()))
def test_legitimate_value_shapes_still_broadcast(kind):
    ppd = _regression_ppds()[kind]
    y = torch.linspace(-1.0, 1.5, 5)
    # a scalar (or a single value) is scored at every point
    torch.testing.assert_close(ppd.log_prob(torch.tensor(0.3)), ppd.log_prob(torch.full((5,), 0.3)))
    torch.testing.assert_close(ppd.cdf(torch.tensor([0.3])), ppd.cdf(torch.full((5,), 0.3)))
    # leading sample dimensions in front of the batch shape, as torch.distributions allow
    grid = torch.stack([y, y + 1, y - 1])
    lp = ppd.log_prob(grid)
    assert lp.shape == (3, 5)
    torch.testing.assert_close(lp[1], ppd.log_prob(y + 1))
    # the bisection icdf (cdf with a leading level dimension) and intervals still work
    lo, hi = ppd.interval(0.8)
    torch.testing.assert_close(ppd.cdf(hi) - ppd.cdf(lo), torch.full((5,), 0.8), atol=1e-4, rtol=0)
    assert ppd.icdf(torch.tensor([[0.1], [0.9]])).shape == (2, 5)


def test_a_user_subclass_gets_the_same_shape_rule():
    from pyrobayes.ppd import RegressionPPD

    class Shifted(RegressionPPD):
        def __init__(self, loc):
            self.loc = loc
            super().__init__(batch_shape=loc.shape)

        def log_prob(self, value):
            return torch.distributions.Normal(self.loc, 1.0).log_prob(value)

        def cdf(self, value):
            return torch.distributions.Normal(self.loc, 1.0).cdf(value)

    ppd = Shifted(torch.zeros(4))
    assert ppd.log_prob(torch.zeros(4, 1)).shape == (4,)
    with pytest.raises(ValueError, match="batch_shape"):
        ppd.cdf(torch.zeros(2, 1))


def test_categorical_labels_as_a_column_score_one_label_per_point():
    g = torch.Generator().manual_seed(0)
    ppd = CategoricalPPD(torch.softmax(torch.randn(6, 4, 3, generator=g), -1))
    labels = torch.tensor([0, 2, 1, 2])
    flat = ppd.log_prob(labels)
    assert flat.shape == (4,)
    torch.testing.assert_close(ppd.log_prob(labels.unsqueeze(-1)), flat)
    # a single label is scored at every point; a stack of label vectors keeps its dimension
    torch.testing.assert_close(ppd.log_prob(torch.tensor(2)), ppd.log_prob(torch.full((4,), 2)))
    assert ppd.log_prob(torch.stack([labels, labels.flip(0)])).shape == (2, 4)
    with pytest.raises(ValueError, match=r"batch_shape \(4,\).*\(2, 1\)"):
        ppd.log_prob(torch.zeros(2, 1, dtype=torch.long))
