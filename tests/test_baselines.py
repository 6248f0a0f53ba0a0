"""Deep ensemble and MC dropout baselines on a small synthetic regression."""

import pytest
import torch
from torch.distributions import Normal

import pyrobayes.jobs.baselines as bl
from pyrobayes.jobs.baselines import fit_deep_ensemble, fit_mc_dropout
from pyrobayes.ppd import NormalMixturePPD


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=g)
    k = n * 3 // 4
    return x[:k], y[:k], x[k:], y[k:]


FAST_DROPOUT = dict(rates=(0.01, 0.1), taus=(10.0, 50.0), steps=300, passes=50)


def _constant_nll(y_train, y_test):
    return float(-Normal(y_train.mean(), y_train.std()).log_prob(y_test).mean())


def test_deep_ensemble_is_a_mixture_that_beats_a_constant():
    xtr, ytr, xte, yte = _data()
    ens = fit_deep_ensemble(xtr, ytr, max_steps=400)
    ppd = ens.predict(xte)
    assert isinstance(ppd, NormalMixturePPD) and ppd.batch_shape == (50,) and ppd.num_draws == 5
    assert float(-ppd.log_prob(yte).mean()) < _constant_nll(ytr, yte) - 1.0
    with torch.no_grad():
        means, variances = map(torch.stack, zip(*(m.mean_var(xte) for m in ens.members)))
    # law of total variance: the mixture's variance is the members' mean variance plus the
    # spread of their means, so never below the former and above it where members disagree
    assert torch.allclose(ppd.mean, means.mean(0))
    assert (ppd.variance >= variances.mean(0) - 1e-7).all()
    assert (ppd.variance > variances.mean(0) * 1.01).any()
    # five different members (own init and held-out rows), not one network five times
    assert len({round(float(m[0]), 6) for m in means}) == 5


def test_deep_ensemble_same_seed_same_result():
    xtr, ytr, xte, _ = _data(n=80)
    a = fit_deep_ensemble(xtr, ytr, members=2, max_steps=60, seed=3).predict(xte)
    b = fit_deep_ensemble(xtr, ytr, members=2, max_steps=60, seed=3).predict(xte)
    c = fit_deep_ensemble(xtr, ytr, members=2, max_steps=60, seed=4).predict(xte)
    assert torch.equal(a.loc, b.loc) and torch.equal(a.scale, b.scale)
    assert not torch.equal(a.loc, c.loc)


def test_mc_dropout_beats_a_constant_and_is_seeded():
    xtr, ytr, xte, yte = _data()
    fit = fit_mc_dropout(xtr, ytr, **FAST_DROPOUT)
    ppd = fit.predict(xte)
    assert isinstance(ppd, NormalMixturePPD) and ppd.batch_shape == (50,) and ppd.num_draws == 50
    assert float(-ppd.log_prob(yte).mean()) < _constant_nll(ytr, yte) - 0.5
    assert set(fit.grid) == {(0.01, 10.0), (0.01, 50.0), (0.1, 10.0), (0.1, 50.0)}
    assert fit.grid[(fit.rate, fit.tau)] == min(fit.grid.values())
    assert torch.allclose(ppd.scale, torch.tensor(fit.tau**-0.5))
    # dropout stays on at test time: the passes differ
    assert ppd.loc.std(0).mean() > 0
    again = fit_mc_dropout(xtr, ytr, **FAST_DROPOUT).predict(xte)
    assert torch.equal(again.loc, ppd.loc) and fit.predict(xte, passes=7).num_draws == 7


@pytest.mark.parametrize("shared", [True, False])
def test_mc_dropout_choices_see_training_rows_only(monkeypatch, shared):
    xtr, ytr, xte, _ = _data()
    seen = []
    real_fit, real_passes = bl._fit_dropout_net, bl._passes

    def spy_fit(x, y, *a, **kw):
        seen.append(("fit", x))
        return real_fit(x, y, *a, **kw)

    def spy_passes(net, x, *a, **kw):
        seen.append(("passes", x))
        return real_passes(net, x, *a, **kw)

    monkeypatch.setattr(bl, "_fit_dropout_net", spy_fit)
    monkeypatch.setattr(bl, "_passes", spy_passes)
    fit = fit_mc_dropout(xtr, ytr, **FAST_DROPOUT, shared_tau_fit=shared)
    train_rows = {float(v) for v in xtr[:, 0]}
    test_rows = {float(v) for v in xte[:, 0]}
    assert train_rows.isdisjoint(test_rows)
    # grid fits on the inner-training rows (one per rate, scored at both taus, when shared;
    # else one per grid point), scored on the inner-validation rows, then the refit on
    # every training row; nothing the function touched is a test row
    assert [kind for kind, _ in seen] == ["fit", "passes"] * (2 if shared else 4) + ["fit"]
    assert len(fit.grid) == 4
    for _, x in seen:
        assert {float(v) for v in x[:, 0]} <= train_rows
    fit_x, val_x = seen[0][1], seen[1][1]
    assert len(fit_x) + len(val_x) == len(xtr) and len(val_x) == 30
    assert {float(v) for v in fit_x[:, 0]}.isdisjoint({float(v) for v in val_x[:, 0]})
    assert len(seen[-1][1]) == len(xtr)
    fit.predict(xte)  # only prediction sees the test inputs
    assert len(seen[-1][1]) == len(xte)
