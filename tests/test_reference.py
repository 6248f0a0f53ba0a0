"""NUTS reference against the exact conjugate answer; exact GP re-export; input checks."""

from __future__ import annotations

import math

import pytest
import torch

from pyrobayes import BayesianModel, Gaussian, NormalPrior, forward_draws, to_pyro
from pyrobayes.diagnostics import ess_bulk
from pyrobayes.gp import exact_gp_ppd as gp_exact_gp_ppd
from pyrobayes.infer.nuts.sampler import exact_gp_ppd, nuts_ppd
from pyrobayes.ppd import NormalMixturePPD

NOISE, PRIOR_STD = 0.3, 1.0


def _linear_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(20, 1, generator=g) * 4 - 2
    y = 0.8 * x[:, 0] - 0.3 + NOISE * torch.randn(20, generator=g)
    model = BayesianModel(
        to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(PRIOR_STD)), Gaussian(scale=NOISE)
    )
    return model, x, y


def _exact_linear_ppd(x, y, xq):
    """Conjugate Bayesian linear regression, features phi(x) = [x, 1], theta ~ N(0, s_p^2 I):
    posterior precision A = I/s_p^2 + Phi^T Phi / s^2, mean A^-1 Phi^T y / s^2; predictive
    N(phi*^T m, phi*^T A^-1 phi* + s^2). Returns the mean and the epistemic variance."""
    phi = torch.cat([x, torch.ones_like(x)], 1).double()
    a = torch.eye(2, dtype=torch.float64) / PRIOR_STD**2 + phi.T @ phi / NOISE**2
    m = torch.linalg.solve(a, phi.T @ y.double() / NOISE**2)
    q = torch.cat([xq, torch.ones_like(xq)], 1).double()
    return q @ m, (q @ torch.linalg.inv(a) * q).sum(1)


@pytest.mark.parametrize(
    "backend, chains, samples", [("numpyro", 4, 300), ("pyro", 1, 600)], ids=["numpyro", "pyro"]
)
def test_nuts_matches_conjugate_linear_regression(backend, chains, samples):
    model, x, y = _linear_problem()
    xq = torch.tensor([[-3.0], [0.0], [1.5], [4.0]])
    ppd, mcmc = nuts_ppd(
        model,
        x,
        y,
        xq,
        num_warmup=300,
        num_samples=samples,
        num_chains=chains,
        progress=False,
        seed=0,
        return_mcmc=True,
        backend=backend,
    )
    assert mcmc.backend == backend
    assert isinstance(ppd, NormalMixturePPD) and ppd.num_draws == chains * samples
    assert ppd.batch_shape == (4,)
    exact_mean, exact_epi = _exact_linear_ppd(x, y, xq)

    # Monte-Carlo error of the draws: the PPD mean is the average of f_s(x*) over draws,
    # with standard error sd(f) / sqrt(ESS); its epistemic variance is a sample variance of
    # (Gaussian) f_s, with standard error var(f) * sqrt(2 / ESS). ESS comes from the chains'
    # autocorrelation. 4.5 standard errors on each of 4 points: a false failure < 1e-4.
    f = ppd.loc.double().reshape(chains, samples, 4)  # per-draw predictive means
    ess = ess_bulk(f)
    assert (ess > 100).all(), ess  # the chains mix; otherwise the tolerance is meaningless
    mean_se = exact_epi.sqrt() / ess.sqrt()
    assert ((ppd.mean.double() - exact_mean).abs() < 4.5 * mean_se).all(), (
        ppd.mean,
        exact_mean,
        mean_se,
    )
    epi_se = exact_epi * (2 / ess).sqrt()
    assert ((ppd.epistemic_variance.double() - exact_epi).abs() < 4.5 * epi_se).all()
    # the total predictive std adds the known noise; its error follows from the variance's
    exact_std = (exact_epi + NOISE**2).sqrt()
    assert ((ppd.stddev.double() - exact_std).abs() < 4.5 * epi_se / (2 * exact_std)).all()

    # min_ess is over the PPD's ingredients (the f(x*) draws and the log-likelihood), by
    # the rank-normalised estimator on the split chains; one chain is never "converged"
    assert mcmc.min_ess > 100 and mcmc.min_ess_tail > 100
    assert mcmc.num_chains == chains and mcmc.converged == (chains > 1)

    # the PPD is built from exactly the MCMC draws
    again = forward_draws(model, mcmc.get_samples(), xq)
    assert torch.allclose(again.squeeze(-1), ppd.loc)


@pytest.mark.filterwarnings("ignore:num_chains=2 is more than available_cpu")
def test_nuts_seed_is_reproducible_and_leaves_caller_rng_alone():
    model, x, y = _linear_problem()
    xq = torch.zeros(1, 1)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = nuts_ppd(model, x, y, xq, num_warmup=30, num_samples=30, progress=False, seed=5)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    b = nuts_ppd(model, x, y, xq, num_warmup=30, num_samples=30, progress=False, seed=5)
    assert torch.equal(a.loc, b.loc)
    two = nuts_ppd(
        model, x, y, xq, num_warmup=30, num_samples=20, num_chains=2, progress=False, seed=5
    )
    assert two.num_draws == 40


def test_nuts_restores_train_mode():
    model, x, y = _linear_problem()
    model.train()
    nuts_ppd(model, x, y, x[:1], num_warmup=5, num_samples=5, progress=False, seed=0)
    assert model.training


def test_nuts_progress_is_plain_lines_in_a_log(capsys):
    model, x, y = _linear_problem()
    nuts_ppd(
        model,
        x,
        y,
        x[:1],
        num_warmup=10,
        num_samples=10,
        num_chains=1,
        progress=True,
        seed=0,
        backend="pyro",
    )
    err = capsys.readouterr().err  # pytest's capture is not a TTY
    lines = [ln for ln in err.splitlines() if ln.startswith("NUTS:")]
    assert lines[0].startswith("NUTS: 0/20 steps") and lines[-1].startswith("NUTS: 20/20")
    assert len(lines) <= 12 and "\r" not in err


def test_nuts_rejects_bad_input():
    model, x, y = _linear_problem()
    with pytest.raises(ValueError, match="20 points but y_train has 19"):
        nuts_ppd(model, x, y[:19], x, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        nuts_ppd(model, x, torch.full_like(y, math.nan), x, progress=False)
    with pytest.raises(ValueError, match="x_query points have shape"):
        nuts_ppd(model, x, y, torch.zeros(3, 2), progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        nuts_ppd(model, x, y, x, num_samples=0, progress=False)
    with pytest.raises(ValueError, match="num_chains"):
        nuts_ppd(model, x, y, x, num_chains=0, progress=False)
    with pytest.raises(ValueError, match="BayesianModel"):
        nuts_ppd(torch.nn.Linear(1, 1), x, y, x, progress=False)


def test_exact_gp_is_reexported():
    assert exact_gp_ppd is gp_exact_gp_ppd
    ppd = exact_gp_ppd(
        torch.zeros(0), torch.zeros(0), torch.zeros(2), outputscale=1.0, noise_std=0.1
    )
    assert torch.allclose(ppd.variance, torch.full((2,), 1.01))


def test_nuts_backend_choice():
    model, x, y = _linear_problem()
    kw = dict(num_warmup=20, num_samples=20, num_chains=2, progress=False, seed=0)
    _, auto = nuts_ppd(model, x, y, x[:1], return_mcmc=True, **kw)
    assert auto.backend == "numpyro" and auto.mcmc is None  # the nuts extra is installed
    assert auto.num_grads > 2 * 40  # every chain, warm-up included
    with pytest.raises(ValueError, match="unknown NUTS backend 'stan'; valid: auto, numpyro"):
        nuts_ppd(model, x, y, x[:1], backend="stan", **kw)
    # a model NumPyro cannot express (a Conv layer) is Pyro's under "auto", an error otherwise
    conv = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 1)), torch.nn.Conv1d(1, 1, 1))
    conv.append(torch.nn.Flatten(0))
    model_c = BayesianModel(to_pyro(conv, prior=NormalPrior(1.0)), Gaussian(scale=NOISE))
    _, info = nuts_ppd(model_c, x, y, x[:1], return_mcmc=True, **kw)
    assert info.backend == "pyro" and info.mcmc is not None
    with pytest.raises(NotImplementedError, match="torch potential"):
        nuts_ppd(model_c, x, y, x[:1], backend="numpyro", **kw)


def test_init_jitter_means_prior_stds_on_both_backends():
    """``init_jitter`` is in units of each coordinate's prior std (unconstrained scale) on
    both backends: a model whose layers have different prior stds (1.04, 1, 0.25) and a
    latent log noise scale (unit 1). With 2000 jittered starts the per-site std of
    ``(start - u0) / (jitter * unit)`` is 1 up to sampling error (relative s.e. of a std
    from n draws ~ 1/sqrt(2n) <= 1.6%; tolerance 8%, 5 s.e.)."""
    pytest.importorskip("numpyro")
    from pyrobayes.infer.nuts.jax_potential import _starts, jax_log_density
    from pyrobayes.infer.nuts.potential import Potential
    from pyrobayes.infer.nuts.sampler import _pyro_starts
    from pyrobayes.models.tabular import tabular_regression_model

    torch.manual_seed(0)
    model = tabular_regression_model(3, name="jit")
    x, y = torch.randn(10, 3), torch.randn(10)
    pot, dens = Potential(model, x, y), jax_log_density(model, x, y)
    init = pot.init_values
    torch_unit, jax_unit = pot.unpack(pot.prior_scale()), dens.prior_std
    # the same unit, site by site (the two flat layouts order the sites differently)
    for s in dens.sites:
        expect = torch.as_tensor(jax_unit[s.start : s.stop]).reshape(s.shape)
        assert torch.allclose(torch_unit[s.name].double(), expect.double(), rtol=1e-6), s.name
    assert {s.name for s in dens.sites if s.positive} == {"jit.likelihood.noise_scale"}
    assert float(torch_unit["jit.likelihood.noise_scale"]) == 1.0
    assert float(torch_unit["jit.net.2.weight"].max()) < 0.3  # not the absolute jitter of old
    chains, jitter = 2000, 0.1
    pyro_u = _pyro_starts(pot, init, chains, jitter)
    pyro_dev = pot.unpack((pyro_u - pot.pack(pot.unconstrain(init))) / (jitter * pot.prior_scale()))
    jax_u = _starts(dens, init, chains, jitter, seed=3)
    jax_dev = (jax_u - dens.pack(init)) / (jitter * dens.prior_std)
    for s in dens.sites:
        for name, dev in (
            ("pyro", pyro_dev[s.name].reshape(chains, -1)),
            ("numpyro", torch.as_tensor(jax_dev[:, s.start : s.stop]).double()),
        ):
            assert abs(float(dev.std()) - 1.0) < 0.08, (name, s.name, float(dev.std()))
    with pytest.raises(ValueError, match="init_jitter must be a finite number >= 0"):
        nuts_ppd(model, x, y, x[:1], init_jitter=-0.1, num_warmup=1, num_samples=1)
