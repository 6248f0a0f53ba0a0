"""The optional NumPyro NUTS backend: its JAX log density equals the torch potential, and
its sampler recovers a known posterior."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch import nn

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402

from pyrobayes import BayesianModel, Categorical, Gaussian, NormalPrior, to_pyro  # noqa: E402
from pyrobayes.infer.nuts.jax_potential import _starts, jax_log_density, numpyro_nuts  # noqa: E402
from pyrobayes.infer.nuts.potential import Potential  # noqa: E402
from pyrobayes.models.mlp import default_regression_model  # noqa: E402
from pyrobayes.models.tabular import tabular_regression_model  # noqa: E402
from pyrobayes.priors import ScaleMixturePrior  # noqa: E402


def _regression(n: int = 12, d: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, torch.sin(2 * x.sum(-1)) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)


def _classifier(logit_scale_prior=None):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 8), nn.GELU(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 3))
    # a deterministic bias: a constant in the JAX density
    bnn = to_pyro(net.double(), exclude="2.bias", name="clf")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(15, 2, generator=g, dtype=torch.float64)
    lik = Categorical(logit_scale_prior=logit_scale_prior)
    return BayesianModel(bnn, lik), x, torch.randint(3, (15,), generator=g)


def _cases():
    torch.manual_seed(0)
    fixed = default_regression_model(name="fix").double()
    latent = tabular_regression_model(3, name="tab").double()
    return {
        "fixed noise": (fixed, *_regression()),
        "latent noise": (latent, *_regression(d=3)),
        "categorical": _classifier(),
        # the latent logit scale: sampled as exp(u), its log prior and Jacobian in the density
        "categorical, latent logit scale": _classifier(dist.LogNormal(0.3, 0.7)),
    }


@pytest.mark.parametrize(
    "case", ["fixed noise", "latent noise", "categorical", "categorical, latent logit scale"]
)
def test_log_density_equals_torch_potential(case):
    model, x, y = _cases()[case]
    dens = jax_log_density(model, x, y)
    pot = Potential(model, x, y)
    torch.manual_seed(3)
    for _ in range(3):
        values = pot.prior_draw()
        u = {s: t.detach().clone().requires_grad_(True) for s, t in pot.unconstrain(values).items()}
        energy = pot(u)
        grads = dict(zip(u, torch.autograd.grad(energy, list(u.values()))))
        with dens.precision():
            flat = jnp.asarray(dens.pack(values))
            value, grad = jax.value_and_grad(dens.log_density)(flat)
        assert value.dtype == jnp.float64
        energy = float(energy.detach())
        assert abs(float(value) + energy) <= 1e-8 * abs(energy)
        # the gradient in the torch layout: d/du (-U) = -grad U, site by site
        want = torch.cat([-grads[s.name].reshape(-1) for s in dens.sites])
        got = torch.from_numpy(np.array(grad))
        assert float((got - want).abs().max()) <= 1e-8 * float(want.abs().max())


def test_precision_is_scoped():
    model, x, y = _cases()["fixed noise"]
    dens = jax_log_density(model, x, y)
    with dens.precision():
        assert jnp.zeros(1).dtype == jnp.float64
    assert jnp.zeros(1).dtype == jnp.float32  # other users of jax keep their default


def test_pack_unpack_round_trip_and_noise_on_log_scale():
    model, x, y = _cases()["latent noise"]
    dens = jax_log_density(model, x, y)
    noise = model.likelihood.noise_site
    assert dens.sites[-1].name == noise and dens.sites[-1].positive
    values = Potential(model, x, y).prior_draw()
    flat = dens.pack(values)
    assert math.isclose(flat[-1], math.log(float(values[noise])), rel_tol=1e-12)
    back = dens.unpack(flat)
    for s, v in values.items():
        assert torch.allclose(back[s], v, rtol=1e-12)


def test_unsupported_models_raise():
    x, y = _regression()
    softplus = to_pyro(nn.Sequential(nn.Linear(1, 4), nn.Softplus(), nn.Linear(4, 1)).double())
    with pytest.raises(NotImplementedError, match="Softplus"):
        jax_log_density(BayesianModel(softplus, Gaussian(0.1)), x, y)
    mixture = to_pyro(nn.Linear(1, 1).double(), prior=ScaleMixturePrior(), name="mix")
    with pytest.raises(NotImplementedError, match="Normal prior"):
        jax_log_density(BayesianModel(mixture, Gaussian(0.1)), x, y)


def test_starts_keep_a_given_point_and_jitter_by_prior_std():
    torch.manual_seed(0)
    model = default_regression_model(name="st")
    x, y = (t.float() for t in _regression())
    dens = jax_log_density(model, x, y)
    start = dens.pack(Potential(model, x, y).prior_draw())
    assert (_starts(dens, start, 1, 0.1, seed=0) == start).all()  # one chain: exactly there
    starts = _starts(dens, start, 4, 0.1, seed=0)
    assert starts.shape == (4, dens.dim)
    z = (starts - start) / dens.prior_std
    assert 0.07 < float(z.std()) < 0.13  # jitter of 0.1 prior std per coordinate
    assert (_starts(dens, starts, 4, 0.1, seed=0) == starts).all()
    with pytest.raises(ValueError, match="init must be"):
        _starts(dens, start[:-1], 4, 0.1, seed=0)


@pytest.mark.slow  # ~5 s, most of it compiling the NUTS loop
def test_nuts_recovers_conjugate_gaussian_posterior():
    """y = w x + b + N(0, 0.5^2), w, b ~ N(0, 1): the posterior is Gaussian in closed form."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, generator=g)
    y = 0.7 * x[:, 0] - 0.2 + 0.5 * torch.randn(30, generator=g)
    model = BayesianModel(
        to_pyro(nn.Linear(1, 1), prior=NormalPrior(1.0), name="lin"), Gaussian(0.5)
    )
    res = numpyro_nuts(model, x, y, num_chains=4, num_warmup=300, num_samples=500, seed=0)
    feats = torch.cat([x, torch.ones(30, 1)], 1).double()
    precision = torch.eye(2, dtype=torch.float64) + feats.T @ feats / 0.25
    cov = torch.linalg.inv(precision)
    mean = cov @ (feats.T @ y.double()) / 0.25
    w = res.draws["lin.net.weight"].reshape(-1).double()
    b = res.draws["lin.net.bias"].reshape(-1).double()
    assert res.draws["lin.net.weight"].shape == (4, 500, 1, 1)
    assert res.draws["lin.net.weight"].dtype == torch.float32
    for draws, m, v in ((w, mean[0], cov[0, 0]), (b, mean[1], cov[1, 1])):
        # Monte Carlo error of the mean with >= 500 effective draws: sd / sqrt(500)
        assert abs(float(draws.mean() - m)) < 4 * math.sqrt(float(v) / 500)
        assert abs(float(draws.var() / v) - 1) < 0.2
    assert res.num_grads >= 4 * 800 and res.num_steps.shape == (4, 800)
    assert not res.diverging.any()


def test_chains_compiled_ahead_give_the_same_run_and_are_checked():
    """``nuts_ppd(compiled=compile_nuts(...))`` (how ``pyrobayes compare`` overlaps XLA
    compilation with fitting the MLP) draws exactly what compiling inside gives, seed for
    seed; chains compiled for another budget, model or data set are refused."""
    from pyrobayes.infer.nuts.jax_potential import compile_nuts
    from pyrobayes.infer.nuts.sampler import nuts_ppd

    model = tabular_regression_model(2, name="ahead")
    x, y = _regression(n=10, d=2)
    model, x, y = model.float(), x.float(), y.float()
    kw = dict(num_chains=2, num_warmup=30, num_samples=20, max_tree_depth=6, progress=False)
    box = {"c": compile_nuts(model, x, y, background=True, **kw)}  # XLA on another thread
    _, ahead = nuts_ppd(model, x, y, x[:3], seed=4, return_mcmc=True, compiled=box["c"], **kw)
    _, inside = nuts_ppd(model, x, y, x[:3], seed=4, return_mcmc=True, **kw)
    for k in inside.draws:
        assert torch.equal(ahead.draws[k], inside.draws[k]), k
    assert ahead.num_grads == inside.num_grads
    assert box["c"].compile_seconds > box["c"].lower_seconds > 0
    with pytest.raises(ValueError, match=r"other settings: num_samples=21 \(compiled: 20\)"):
        nuts_ppd(model, x, y, x[:3], compiled=box["c"], **(kw | {"num_samples": 21}))
    with pytest.raises(ValueError, match="other training data"):
        nuts_ppd(model, x, y + 1, x[:3], compiled=box["c"], **kw)
    other = tabular_regression_model(2, name="other").float()
    with pytest.raises(ValueError, match="another model object"):
        nuts_ppd(other, x, y, x[:3], compiled=box["c"], **kw)
    with pytest.raises(ValueError, match="compiled= holds NumPyro chains"):
        nuts_ppd(model, x, y, x[:3], compiled=box["c"], backend="pyro", **kw)


def test_chains_in_threads_draw_what_one_thread_draws(monkeypatch):
    """On a CPU ``chain_method="auto"`` runs the sequential chains in groups, one thread per
    core (XLA releases the GIL): same chains, same keys, so exactly the same draws as one
    thread running them all (``"sequential"``)."""
    import pyrobayes.infer.nuts.jax_potential as jp

    monkeypatch.setattr(jp, "_chain_threads", lambda n: 2 if n % 2 == 0 else 1)
    model = tabular_regression_model(2, name="threads")
    x, y = _regression(n=12, d=2)
    model, x, y = model.float(), x.float(), y.float()
    kw = dict(num_chains=4, num_warmup=30, num_samples=20, max_tree_depth=6, seed=3)
    grouped = numpyro_nuts(model, x, y, chain_method="auto", **kw)
    single = numpyro_nuts(model, x, y, chain_method="sequential", **kw)
    assert jp.compile_nuts(model, x, y, num_chains=4).settings["chain_threads"] == 2
    assert grouped.flat.shape == single.flat.shape == (4, 20, grouped.density.dim)
    np.testing.assert_array_equal(grouped.flat, single.flat)
    np.testing.assert_array_equal(grouped.num_steps, single.num_steps)
    np.testing.assert_array_equal(grouped.step_size, single.step_size)


def test_chain_threads_divide_the_chains_within_the_cores(monkeypatch):
    import os

    import pyrobayes.infer.nuts.jax_potential as jp

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [jp._chain_threads(c) for c in (1, 2, 3, 4, 6)] == [1, 2, 1, 2, 2]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [jp._chain_threads(c) for c in (4, 6, 7)] == [4, 6, 7]
