"""Metrics against hand-computed values and closed forms; bad inputs raise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import constraints

from pyrobayes.metrics import (
    accuracy,
    auroc,
    brier_score,
    classification_metrics,
    crps,
    crps_normal,
    expected_calibration_error,
    interval_coverage,
    kl_divergence_grid,
    mae,
    nll,
    ood_auroc,
    ood_scores,
    regression_metrics,
    reliability_bins,
    rmse,
)
from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, RegressionPPD, normal_ppd


class LaplacePPD(RegressionPPD):
    """A non-Normal regression PPD (closed-form CRPS known) to exercise the grid CRPS."""

    support = constraints.real

    def __init__(self, loc: torch.Tensor, scale: float):
        self.loc = torch.as_tensor(loc, dtype=torch.float64)
        self.b = float(scale)
        super().__init__(batch_shape=self.loc.shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return torch.full_like(self.loc, 2 * self.b**2)

    def log_prob(self, value):
        return -(value - self.loc).abs() / self.b - math.log(2 * self.b)

    def cdf(self, value):
        z = (value - self.loc) / self.b
        return torch.where(z < 0, 0.5 * torch.exp(z), 1 - 0.5 * torch.exp(-z))

    def sample(self, sample_shape=()):
        return torch.distributions.Laplace(self.loc, self.b).sample(torch.Size(sample_shape))


def _hand_crps_normal(mu: float, s: float, y: float) -> float:
    z = (y - mu) / s
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return s * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


# ---------------------------------------------------------------- regression


def test_nll_of_normal_matches_closed_form():
    mu = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    s = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    y = torch.tensor([0.3, 2.0, 1.0], dtype=torch.float64)
    hand = [
        0.5 * math.log(2 * math.pi * si**2) + (yi - mi) ** 2 / (2 * si**2)
        for mi, si, yi in zip(mu.tolist(), s.tolist(), y.tolist())
    ]
    assert nll(normal_ppd(mu, s), y) == pytest.approx(np.mean(hand), rel=1e-12)
    per_point = nll(normal_ppd(mu, s), y, reduction="none")
    assert per_point.shape == (3,)
    assert per_point.tolist() == pytest.approx(hand, rel=1e-12)


def test_nll_of_mixture_averages_densities_not_log_densities():
    # Two draws centred at -1 and +1 (std 0.5): the mixture density at 0 is the average.
    ppd = NormalMixturePPD(torch.tensor([[-1.0], [1.0]], dtype=torch.float64), 0.5)
    dens = math.exp(-0.5 * 4) / (0.5 * math.sqrt(2 * math.pi))
    assert nll(ppd, torch.zeros(1, dtype=torch.float64)) == pytest.approx(
        -math.log(dens), rel=1e-12
    )


def test_crps_of_normal_matches_hand_formula():
    mu, s = [0.0, 1.0, -3.0, 2.0], [1.0, 0.3, 2.0, 5.0]
    y = [0.0, 1.5, 1.0, -10.0]
    ppd = normal_ppd(torch.tensor(mu, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    hand = [_hand_crps_normal(*a) for a in zip(mu, s, y)]
    got = crps(ppd, torch.tensor(y, dtype=torch.float64), reduction="none")
    assert got.tolist() == pytest.approx(hand, rel=1e-10)
    assert crps_normal(
        torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0)
    ).item() == pytest.approx((math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-6)


def test_mixture_crps_matches_monte_carlo():
    # CRPS = E|X - y| - 0.5 E|X - X'|; estimate both from n independent pairs (X, X').
    # The per-pair quantity |X - y| - 0.5|X - X'| is i.i.d., so its sample std / sqrt(n)
    # is the Monte-Carlo standard error; 5 SE bounds a false failure at < 1e-6.
    g = torch.Generator().manual_seed(0)
    loc = torch.tensor([[-2.0, 0.0], [0.5, 0.1], [1.5, -0.3]], dtype=torch.float64)  # S=3, B=2
    scale = torch.tensor([[0.3, 1.0], [0.8, 0.2], [0.5, 0.5]], dtype=torch.float64)
    ppd = NormalMixturePPD(loc, scale)
    y = torch.tensor([0.7, -0.1], dtype=torch.float64)
    exact = crps(ppd, y, reduction="none")

    n = 400_000

    def draw():
        k = torch.randint(0, 3, (n, 2), generator=g)
        idx = torch.arange(2).expand(n, 2)
        return loc[k, idx] + scale[k, idx] * torch.randn(n, 2, generator=g, dtype=torch.float64)

    x, x2 = draw(), draw()
    per_pair = (x - y).abs() - 0.5 * (x - x2).abs()
    est, se = per_pair.mean(0), per_pair.std(0) / math.sqrt(n)
    assert ((exact - est).abs() < 5 * se).all(), (exact, est, se)
    # and the mixture is not just the CRPS of a moment-matched Normal
    mm = crps_normal(ppd.mean, ppd.stddev, y)
    assert ((mm - exact).abs() > 10 * se).any()


def test_mixture_crps_with_one_noise_scale_takes_the_common_scale_path_exactly():
    # A fixed-noise mixture (every component's scale equal) uses one pair scale sqrt(2 s^2)
    # instead of S x S x n scale tensors: the same formula, so the same number as the
    # general path (forced here by scales that differ in the last bit) to rounding.
    g = torch.Generator().manual_seed(3)
    loc = torch.randn(300, 7, generator=g, dtype=torch.float64)
    y = torch.randn(7, generator=g, dtype=torch.float64)
    common = NormalMixturePPD(loc, torch.full_like(loc, 0.1))
    bumped = torch.full_like(loc, 0.1)
    bumped[0, 0] = torch.nextafter(torch.tensor(0.1, dtype=torch.float64), torch.tensor(1.0))
    general = NormalMixturePPD(loc, bumped)
    a = crps(common, y, reduction="none")
    b = crps(general, y, reduction="none")
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # and against the grid quadrature of the same mixture
    grid = crps(common, y, reduction="none", method="grid")
    assert torch.allclose(a, grid, atol=1e-4)


def test_grid_crps_matches_closed_forms():
    # Laplace(mu, b): CRPS = |y-mu| + b exp(-|y-mu|/b) - 3b/4 (Gneiting & Raftery 2007).
    mu = torch.tensor([0.0, 1.0, -2.0, 0.0], dtype=torch.float64)
    b = 0.7
    y = torch.tensor([0.0, 3.0, -2.5, -40.0], dtype=torch.float64)
    d = (y - mu).abs()
    hand = d + b * torch.exp(-d / b) - 0.75 * b
    got = crps(LaplacePPD(mu, b), y, reduction="none")
    assert torch.allclose(got, hand, rtol=1e-4, atol=1e-6)

    # the grid route on a Normal mixture agrees with the exact mixture formula
    loc = torch.tensor([[-1.0, 2.0], [1.0, 2.5]], dtype=torch.float64)
    ppd = NormalMixturePPD(loc, 0.4)
    y2 = torch.tensor([0.2, 5.0], dtype=torch.float64)
    exact = crps(ppd, y2, reduction="none", method="closed_form")
    grid = crps(ppd, y2, reduction="none", method="grid")
    assert torch.allclose(grid, exact, rtol=1e-5)
    with pytest.raises(ValueError, match="NormalMixturePPD"):
        crps(LaplacePPD(mu, b), y, method="closed_form")


def test_interval_coverage_counts_points_inside():
    ppd = normal_ppd(torch.zeros(4), torch.ones(4))
    # z-values against the half-widths 0.674 (50%), 1.645 (90%), 1.960 (95%)
    y = torch.tensor([0.5, -1.0, 1.7, 2.5])
    cov = interval_coverage(ppd, y)
    assert cov == {0.5: pytest.approx(0.25), 0.9: pytest.approx(0.5), 0.95: pytest.approx(0.75)}
    with pytest.raises(ValueError, match="levels"):
        interval_coverage(ppd, y, levels=[1.5])


def test_mae_and_rmse():
    ppd = NormalMixturePPD(torch.tensor([[0.0, 2.0], [2.0, 2.0]]), 1.0)  # means [1, 2]
    y = torch.tensor([4.0, 1.0])
    assert mae(ppd, y) == pytest.approx(2.0)
    assert rmse(ppd, y) == pytest.approx(math.sqrt((9 + 1) / 2))


def test_kl_grid_matches_normal_kl():
    m1 = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    s1 = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    m2 = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    s2 = torch.tensor([1.0, 0.6, 1.0], dtype=torch.float64)
    exact = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    got = kl_divergence_grid(normal_ppd(m1, s1), normal_ppd(m2, s2))
    assert torch.allclose(got, exact, rtol=1e-4, atol=1e-6)
    # shared grid and mean reduction
    grid = torch.linspace(-15, 15, 4001, dtype=torch.float64)
    mean_kl = kl_divergence_grid(
        normal_ppd(m1, s1), normal_ppd(m2, s2), grid=grid, reduction="mean"
    )
    assert mean_kl == pytest.approx(float(exact.mean()), rel=1e-4)
    # KL to itself is zero; direction matters
    assert torch.allclose(
        kl_divergence_grid(normal_ppd(m1, s1), normal_ppd(m1, s1)),
        torch.zeros(3, dtype=torch.float64),
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="batch shapes"):
        kl_divergence_grid(normal_ppd(m1, s1), normal_ppd(m1[:2], s1[:2]))


def test_regression_metrics_dict():
    ppd = normal_ppd(torch.zeros(4, dtype=torch.float64), 1.0)
    y = torch.tensor([0.5, -1.0, 1.7, 2.5], dtype=torch.float64)
    ref = normal_ppd(torch.ones(4, dtype=torch.float64), 1.0)
    m = regression_metrics(ppd, y, reference=ref)
    assert set(m) == {
        "nll",
        "crps",
        "mae",
        "rmse",
        "coverage_50",
        "coverage_90",
        "coverage_95",
        "kl_to_reference",
    }
    assert m["coverage_90"] == pytest.approx(0.5)
    assert m["kl_to_reference"] == pytest.approx(0.5, rel=1e-4)
    assert m["crps"] == pytest.approx(
        np.mean([_hand_crps_normal(0, 1, v) for v in y.tolist()]), rel=1e-10
    )
    assert all(isinstance(v, float) for v in m.values())
    # numpy targets are accepted
    assert regression_metrics(ppd, y.numpy())["nll"] == pytest.approx(m["nll"])


@pytest.mark.parametrize(
    "y, message",
    [
        (torch.zeros(4, 1), r"shape \(4, 1\).*reshape"),
        (torch.zeros(3), r"shape \(3,\)"),
        (torch.tensor([0.0, float("nan"), 0.0, 0.0]), "NaN"),
        (torch.tensor([0.0, float("inf"), 0.0, 0.0]), "infinite"),
    ],
)
def test_regression_metrics_reject_bad_targets(y, message):
    ppd = normal_ppd(torch.zeros(4), 1.0)
    for metric in (nll, crps, mae, interval_coverage, regression_metrics):
        with pytest.raises(ValueError, match=message):
            metric(ppd, y)


def test_regression_metrics_reject_wrong_kind_and_options():
    cat = CategoricalPPD(torch.full((1, 4, 3), 1 / 3))
    with pytest.raises(ValueError, match="classification PPD"):
        crps(cat, torch.zeros(4))
    with pytest.raises(ValueError, match="regression PPD"):
        accuracy(normal_ppd(torch.zeros(4), 1.0), torch.zeros(4))
    ppd = normal_ppd(torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="unknown reduction 'sum'; valid: mean, none"):
        nll(ppd, torch.zeros(4), reduction="sum")
    with pytest.raises(ValueError, match="unknown CRPS method"):
        crps(ppd, torch.zeros(4), method="exact")


# ---------------------------------------------------------------- classification


PROBS = torch.tensor(
    [
        [0.95, 0.03, 0.02],  # label 0, conf .95 -> bin (.8, 1], correct
        [0.85, 0.10, 0.05],  # label 1, conf .85 -> bin (.8, 1], wrong
        [0.50, 0.30, 0.20],  # label 0, conf .50 -> bin (.4, .6], correct
        [0.45, 0.35, 0.20],  # label 2, conf .45 -> bin (.4, .6], wrong
        [0.70, 0.20, 0.10],  # label 0, conf .70 -> bin (.6, .8], correct
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 1, 0, 2, 0])


def test_accuracy_nll_brier_by_hand():
    ppd = CategoricalPPD(PROBS.unsqueeze(0))
    assert accuracy(ppd, LABELS) == pytest.approx(3 / 5)
    hand_nll = -np.mean(np.log([0.95, 0.10, 0.50, 0.20, 0.70]))
    assert nll(ppd, LABELS) == pytest.approx(hand_nll, rel=1e-12)
    hand_brier = np.mean(
        [
            0.05**2 + 0.03**2 + 0.02**2,
            0.85**2 + 0.90**2 + 0.05**2,
            0.50**2 + 0.30**2 + 0.20**2,
            0.45**2 + 0.35**2 + 0.80**2,
            0.30**2 + 0.20**2 + 0.10**2,
        ]
    )
    assert brier_score(ppd, LABELS) == pytest.approx(hand_brier, rel=1e-12)


def test_nll_of_categorical_averages_probabilities_over_draws():
    draws = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two certain, disagreeing draws
    assert nll(CategoricalPPD(draws), torch.tensor([1])) == pytest.approx(math.log(2))


def test_ece_on_constructed_example():
    ppd = CategoricalPPD(PROBS.unsqueeze(0))
    # bins of width .2: (.8,1]: conf .90 acc .5 (2 pts); (.4,.6]: conf .475 acc .5 (2 pts);
    # (.6,.8]: conf .70 acc 1 (1 pt)  ->  ECE = .4*2/5 + .025*2/5 + .3*1/5 = .23
    assert expected_calibration_error(ppd, LABELS, n_bins=5) == pytest.approx(0.23, abs=1e-12)
    rb = reliability_bins(ppd, LABELS, n_bins=5)
    assert rb.counts.tolist() == [0, 0, 2, 1, 2]
    assert rb.accuracy[4] == pytest.approx(0.5) and rb.confidence[4] == pytest.approx(0.9)
    assert np.isnan(rb.accuracy[0])
    # one bin: ECE = |overall accuracy - mean confidence|
    assert expected_calibration_error(ppd, LABELS, n_bins=1) == pytest.approx(abs(0.6 - 0.69))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(ppd, LABELS, n_bins=0)


def test_ece_is_small_for_calibrated_labels():
    # labels drawn from the predicted probabilities: ECE -> 0 (at rate ~ sqrt(bins / N))
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(20_000, 4, generator=g), -1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    assert expected_calibration_error(CategoricalPPD(probs.unsqueeze(0)), labels, n_bins=10) < 0.02
    # an over-confident copy of the same predictor is clearly miscalibrated
    sharp = torch.softmax(3 * probs.log(), -1)
    assert expected_calibration_error(CategoricalPPD(sharp.unsqueeze(0)), labels, n_bins=10) > 0.08


def test_auroc_hand_example_with_ties():
    neg = [0.1, 0.4, 0.35, 0.8]
    pos = [0.9, 0.4, 0.5]
    # pairs (pos > neg) + 0.5 (tie): 0.9 beats 4; 0.4 beats 0.1, 0.35, ties 0.4 -> 2.5;
    # 0.5 beats 3 -> (4 + 2.5 + 3) / 12
    assert auroc(neg, pos) == pytest.approx(9.5 / 12)
    assert auroc([1.0, 1.0], [1.0]) == pytest.approx(0.5)
    assert auroc([0.0], [1.0]) == 1.0 and auroc([1.0], [0.0]) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])


def test_auroc_matches_sklearn_with_many_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    neg, pos = rng.integers(0, 6, 300), rng.integers(2, 9, 200)
    expected = sklearn_metrics.roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[neg, pos])
    assert auroc(torch.as_tensor(neg), pos) == pytest.approx(expected, rel=1e-12)


def test_ood_auroc_entropy_and_mutual_information():
    # in-distribution: confident draws that agree; OOD: draws that disagree (high MI)
    ind = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.8, 0.2]], [[0.9, 0.1], [0.85, 0.15]]]))
    ood = CategoricalPPD(torch.tensor([[[0.95, 0.05], [0.1, 0.9]], [[0.05, 0.95], [0.9, 0.1]]]))
    assert ood_auroc(ind, ood, "entropy") == 1.0
    assert ood_auroc(ind, ood, "mutual_information") == 1.0
    assert ood_auroc(ood, ind, "mutual_information") == 0.0
    assert ood_scores(ood, "mutual_information").min() > 0.3
    with pytest.raises(ValueError, match="unknown OOD score 'energy'"):
        ood_auroc(ind, ood, "energy")
    m = classification_metrics(ind, torch.tensor([0, 0]), ood_ppd=ood)
    assert m["auroc_entropy"] == 1.0 and m["auroc_mutual_information"] == 1.0
    assert set(m) == {
        "accuracy",
        "nll",
        "ece",
        "brier",
        "auroc_entropy",
        "auroc_mutual_information",
    }


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 1, 3, 0, 0]), r"\[0, 2\].*\[0, 3\]"),
        (torch.tensor([0, -1, 0, 0, 0]), r"\[0, 2\]"),
        (torch.tensor([0.0, 1.5, 0.0, 0.0, 0.0]), "non-integer"),
        (torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0]), "NaN"),
        (torch.tensor([0, 1, 0]), r"shape \(3,\)"),
        (torch.nn.functional.one_hot(LABELS, 3), "one-hot"),
    ],
)
def test_classification_metrics_reject_bad_labels(labels, message):
    ppd = CategoricalPPD(PROBS.unsqueeze(0))
    for metric in (accuracy, nll, brier_score, expected_calibration_error, classification_metrics):
        with pytest.raises(ValueError, match=message):
            metric(ppd, labels)


def test_float_integer_labels_and_numpy_are_accepted():
    ppd = CategoricalPPD(PROBS.unsqueeze(0))
    assert accuracy(ppd, LABELS.double()) == accuracy(ppd, LABELS.numpy()) == pytest.approx(0.6)


def test_grid_crps_and_kl_on_the_pfn_bar_distribution():
    # The PFN's output type goes through the grid CRPS; check it against a Monte-Carlo
    # estimate from its own sampler (5 standard errors, as for the mixture) and check that
    # the grid KL of a bar distribution to itself is 0 and to a shifted copy is positive.
    from pyrobayes.pfn.bar import BarDistribution

    g = torch.Generator().manual_seed(3)
    borders = torch.linspace(-2, 2, 21, dtype=torch.float64)
    bar = BarDistribution(borders, torch.randn(3, 20, generator=g, dtype=torch.float64))
    y = torch.tensor([0.1, -1.7, 2.6], dtype=torch.float64)
    exact = crps(bar, y, reduction="none")
    n = 200_000
    torch.manual_seed(0)
    x, x2 = bar.sample((n,)), bar.sample((n,))
    per_pair = (x - y).abs() - 0.5 * (x - x2).abs()
    est, se = per_pair.mean(0), per_pair.std(0) / math.sqrt(n)
    assert ((exact - est).abs() < 5 * se).all(), (exact, est, se)
    assert torch.allclose(
        kl_divergence_grid(bar, bar), torch.zeros(3, dtype=torch.float64), atol=1e-9
    )
    shifted = BarDistribution(borders, bar.logits.roll(1, -1))
    assert (kl_divergence_grid(bar, shifted) > 0.01).all()
    assert set(regression_metrics(bar, y)) >= {"nll", "crps", "coverage_90"}
