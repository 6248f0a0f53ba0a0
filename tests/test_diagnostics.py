"""Multi-chain R-hat / ESS (pyrobayes.diagnostics) on cases with a known answer, and against
ArviZ's numbers for the same draws."""

import math

import pytest
import torch

from pyrobayes.diagnostics import (
    ConvergenceReport,
    _rank_normalise,
    _rhat,
    _split_chains,
    ess_bulk,
    ess_tail,
    split_rhat,
    summarize,
)


def _normal(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _ar1(rho: float, chains: int, draws: int, seed: int = 0) -> torch.Tensor:
    """Stationary AR(1) chains x_t = rho x_{t-1} + e_t (x_0 from the stationary law)."""
    e = _normal((chains, draws), seed)
    x = torch.empty_like(e)
    x[:, 0] = e[:, 0] / math.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + e[:, t]
    return x


def test_iid_normal_chains_have_rhat_one_and_full_ess():
    # 4 x 1000 iid draws, 50 coordinates. Over 200 seeds' coordinates the largest R-hat - 1
    # was 0.0023 and the bulk ESS / 4000 had sd 0.043 (min 0.83 of 200), so 1 +- 0.01 and
    # 15% (3.5 sd) per coordinate leave room for 50 coordinates.
    x = _normal((4, 1000, 50))
    assert ((split_rhat(x) - 1).abs() < 0.01).all()
    assert ((ess_bulk(x) / 4000 - 1).abs() < 0.15).all()
    # indicator chains of iid draws are iid too; their ESS has a bit more noise (sd 0.044)
    assert ((ess_tail(x) / 4000 - 1).abs() < 0.2).all()
    report = summarize({"theta": x})
    assert report.converged and report.verdict.startswith("converged (4 chains x 1000 draws")


@pytest.mark.parametrize("rho, draws", [(0.5, 4000), (0.9, 20000)])
def test_ar1_ess_matches_the_integrated_autocorrelation_time(rho, draws):
    # For AR(1), tau = (1 + rho) / (1 - rho). The estimator's relative sd was 7.4% (rho 0.5,
    # 4 x 1000) and 13% (rho 0.9, 4 x 2000) over 200 seeds; with 4x / 10x the draws it is
    # ~4%, so 20% is about 5 sd.
    x = _ar1(rho, 4, draws, seed=1)
    expected = 4 * draws * (1 - rho) / (1 + rho)
    assert float(ess_bulk(x)) == pytest.approx(expected, rel=0.2)
    assert float(split_rhat(x)) < 1.01


def test_chains_stuck_in_two_modes_are_not_converged():
    x = _normal((4, 500)) + torch.tensor([-3.0, -3.0, 3.0, 3.0], dtype=torch.float64)[:, None]
    # Ranks only see that the two groups are separated, not how far apart: two perfectly
    # separated pairs of chains give ~1.73 (the raw R-hat would be ~3.2) at any distance.
    assert float(split_rhat(x)) > 1.7
    far = x * torch.tensor([1.0, 1.0, 10.0, 10.0], dtype=torch.float64)[:, None]
    assert float(split_rhat(far)) == pytest.approx(float(split_rhat(x)), abs=0.02)
    report = summarize({"mu": x})
    assert not report.converged
    assert report.verdict.startswith("NOT converged: max R-hat")
    assert "> 1.05 (mu)" in report.verdict


def test_folded_rhat_catches_chains_with_equal_means_and_different_scales():
    # chain sds 1, 1, 3, 3 around the same mean: the rank-normalised (bulk) R-hat sees equal
    # chain means; |x - median| differs ~3x between the chains, which the folded R-hat sees.
    x = (
        _normal((4, 1000), seed=2)
        * torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)[:, None]
    )
    bulk_only = float(_rhat(_rank_normalise(_split_chains(x[..., None]))))
    assert bulk_only < 1.01
    assert float(split_rhat(x)) > 1.1
    assert not summarize(x).converged


# ArviZ 0.23.4 (numpy 2.4.6, scipy 1.17.1), az.rhat(x, method="rank"), az.ess(x, "bulk"),
# az.ess(x, "tail") on the draws of _reference_cases(). ArviZ returns NaN R-hat for one chain;
# that value is its own split-chain code (arviz.stats.diagnostics._rhat of _z_scale of
# _split_chains, max with the folded one), which is what split_rhat does for one chain.
ARVIZ = {
    "iid": (1.005408232999099, 411.4676029113517, 405.76359859907717),
    "ar1_odd": (1.1553159241329543, 16.799983933953467, 31.058173069833156),
    "scales": (1.1409910341094003, 318.8042389492437, 249.15551028147172),
    "one_chain_trend": (1.5574219379587946, 1.998581950822511, 20.266983732367724),
    "ties": (1.0079271518026973, 73.54063790360718, 50.30732860520092),
}


def _hash_normal(n: int, offset: int = 0) -> torch.Tensor:
    """Deterministic pseudo-normal draws that do not depend on torch's RNG (so the ArviZ
    numbers above stay valid across torch versions): a sine hash through the normal icdf."""
    k = torch.arange(offset, offset + n, dtype=torch.float64)
    u = torch.frac(torch.sin(k * 12.9898 + 78.233).abs() * 43758.5453)
    return torch.special.ndtri(u.clamp(1e-9, 1 - 1e-9))


def _reference_cases() -> dict[str, torch.Tensor]:
    ar = _hash_normal(453, 1000).reshape(3, 151)  # odd draws: the middle draw is dropped
    for t in range(1, ar.shape[1]):
        ar[:, t] += 0.8 * ar[:, t - 1]
    scales = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)[:, None]
    trend = torch.linspace(0, 2, 50, dtype=torch.float64)
    return {
        "iid": _hash_normal(400).reshape(4, 100),
        "ar1_odd": ar,
        "scales": _hash_normal(320, 2000).reshape(4, 80) * scales,
        "one_chain_trend": (trend + _hash_normal(50, 3000))[None],
        "ties": torch.round(1.5 * _hash_normal(80, 4000)).reshape(2, 40),  # 7 distinct values
    }


@pytest.mark.parametrize("name", sorted(ARVIZ))
def test_matches_arviz(name):
    # same estimator, float64 both ways: they agreed to ~1e-15 when the values were made
    x = _reference_cases()[name]
    rhat, bulk, tail = ARVIZ[name]
    assert float(split_rhat(x)) == pytest.approx(rhat, rel=1e-6)
    assert float(ess_bulk(x)) == pytest.approx(bulk, rel=1e-6)
    assert float(ess_tail(x)) == pytest.approx(tail, rel=1e-6)


def test_event_elements_are_diagnosed_independently():
    # the Geyer truncation is vectorised over elements: each must stop at its own lag
    columns = [
        _reference_cases()["iid"],
        _ar1(0.9, 4, 100, seed=5),
        _normal((4, 100), seed=6)
        * torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)[:, None],
        torch.round(_normal((4, 100), seed=7)),  # ties
    ]
    x = torch.stack(columns, dim=-1).reshape(4, 100, 2, 2)
    for fn in (split_rhat, ess_bulk, ess_tail):
        batched = fn(x)
        assert batched.shape == (2, 2)
        for k, column in enumerate(columns):
            assert float(batched.flatten()[k]) == pytest.approx(float(fn(column)), rel=1e-12)


def test_single_chain_cannot_be_called_converged():
    x = _normal((1, 2000), seed=3)
    assert float(split_rhat(x)) < 1.01  # the two halves agree
    report = summarize(x)
    assert not report.converged
    assert report.verdict.startswith("unverified: 1 chain x 2000 draws cannot show")
    trend = summarize(_reference_cases()["one_chain_trend"])
    assert trend.verdict.startswith("NOT converged: max R-hat 1.56 > 1.05 (x)")
    assert trend.verdict.endswith("(1 chain)")


def test_dtype_and_shape_follow_the_input():
    x = _normal((2, 50, 3)).float()
    for fn in (split_rhat, ess_bulk, ess_tail):
        out = fn(x)
        assert out.dtype == torch.float32 and out.shape == (3,)
        assert torch.allclose(out.double(), fn(x.double()), rtol=1e-5)
    ints = torch.randint(0, 5, (2, 40), generator=torch.Generator().manual_seed(0))
    assert split_rhat(ints).dtype == torch.float64 and split_rhat(ints).shape == ()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_results_stay_on_the_input_device():
    x = _normal((4, 200, 3)).cuda()
    for fn in (split_rhat, ess_bulk, ess_tail):
        out = fn(x)
        assert out.device == x.device
        assert torch.allclose(out.cpu(), fn(x.cpu()), rtol=1e-9)


def test_constant_draws():
    same = torch.full((4, 20), 2.5)
    assert float(split_rhat(same)) == 1.0 and float(ess_bulk(same)) == 80.0
    stuck = torch.arange(4.0)[:, None].expand(4, 20)  # each chain frozen at its own value
    assert float(split_rhat(stuck)) == math.inf
    report = summarize(stuck)
    assert not report.converged and "max R-hat inf > 1.05" in report.verdict


def test_non_finite_draws_give_nan_and_not_converged():
    x = _normal((4, 100, 2))
    x[1, 5, 0] = math.nan
    assert split_rhat(x)[0].isnan() and ess_bulk(x)[0].isnan() and ess_tail(x)[0].isnan()
    assert torch.isfinite(split_rhat(x)[1])
    report = summarize({"f": x})
    assert not report.converged and report.verdict == "NOT converged: non-finite draws in f[0]"
    assert math.isnan(report.max_rhat)


def test_summarize_reports_the_worst_functional_and_low_ess():
    good = _normal((4, 300, 2))
    sticky = _ar1(0.97, 4, 300, seed=4)
    report = summarize({"f": good, "log_lik": sticky}, ess_min=200)
    assert isinstance(report, ConvergenceReport)
    assert (report.num_chains, report.num_draws) == (4, 300)
    assert report.worst == "log_lik"
    assert report.min_ess_bulk == pytest.approx(float(ess_bulk(sticky)))
    assert report.min_ess_bulk < 200 and "min bulk ESS" in report.verdict
    assert report.max_rhat == pytest.approx(float(split_rhat(sticky)))
    with pytest.raises(AttributeError):
        report.converged = True  # frozen


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\[chains, draws, \*event\].*unsqueeze"):
        split_rhat(torch.zeros(100))
    with pytest.raises(ValueError, match="at least 4 draws"):
        ess_bulk(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"same \(chains, draws\).*a: \(4, 10\), b: \(2, 10\)"):
        summarize({"a": torch.zeros(4, 10), "b": torch.zeros(2, 10)})
    with pytest.raises(TypeError, match="non-empty dict"):
        summarize({})
    with pytest.raises(TypeError, match=r"draws\['a'\] must be a tensor"):
        summarize({"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="empty event shape"):
        summarize({"a": torch.zeros(4, 10, 0)})
    with pytest.raises(ValueError, match="rhat_max"):
        summarize(torch.zeros(4, 10), rhat_max=0.9)
    with pytest.raises(ValueError, match="ess_min"):
        summarize(torch.zeros(4, 10), ess_min=math.nan)
