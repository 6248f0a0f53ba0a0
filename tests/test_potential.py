"""The trace-free potential equals the traced model's negative log joint (value and
gradient), including a likelihood with a constrained latent noise site."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import biject_to

from pyrobayes import BayesianModel, Gaussian, NormalPrior, to_pyro
from pyrobayes.infer.fast_check import FastPathFallbackWarning
from pyrobayes.infer.nuts.potential import FLAT, Potential, TracedPotential
from pyrobayes.infer.nuts.sampler import nuts_ppd
from pyrobayes.infer.twin import linear_chain
from pyrobayes.likelihoods import Likelihood
from pyrobayes.models.mlp import default_regression_model
from pyrobayes.ppd import NormalMixturePPD


class LatentNoiseGaussian(Likelihood):
    """y ~ N(f(x), sigma^2) with sigma ~ HalfNormal(0.5) a latent site, declared through the
    likelihood API (``latent_sites`` + ``ppd_from_draws``) under a name no rule could guess."""

    SITE = "likelihood.scale"

    def forward(self, outputs, y=None):
        loc = outputs.squeeze(-1)
        sigma = pyro.sample(self.SITE, dist.HalfNormal(torch.tensor(0.5)))
        with self._plate(loc.shape[0], loc.device):
            pyro.sample("obs", dist.Normal(loc, sigma), obs=y)
        return loc

    @property
    def latent_sites(self):
        return (self.SITE,)

    def ppd_from_draws(self, outputs, draws):
        loc = outputs.squeeze(-1)
        return NormalMixturePPD(loc, draws[self.SITE][:, None].to(loc.dtype).expand_as(loc))


class UndeclaredNoiseGaussian(LatentNoiseGaussian):
    """The same model, but the latent site is not declared: nuts_ppd cannot build its PPD."""

    @property
    def latent_sites(self):
        return ()


def _traced_potential(model, x, y, params):
    """Pyro's potential: -(log joint at T(u) + log|det J_T(u)|), through traces."""
    values, log_det = {}, 0.0
    tr0 = poutine.trace(model).get_trace(x, y=y)
    for name, u in params.items():
        t = biject_to(tr0.nodes[name]["fn"].support)
        values[name] = t(u)
        log_det = log_det + t.log_abs_det_jacobian(u, values[name]).sum()
    tr = poutine.trace(poutine.condition(model, data=values)).get_trace(x, y=y)
    return -(tr.log_prob_sum() + log_det)


def _check(model, x, y, seed):
    model.eval()
    pot = Potential(model, x, y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        u = {
            s: (torch.randn(v.shape, generator=g) * 0.7).requires_grad_(True)
            for s, v in pot.init_values.items()
        }
        mine = pot(u)
        (g_mine,) = [torch.autograd.grad(mine, list(u.values()))]
        ref = _traced_potential(model, x, y, u)
        g_ref = torch.autograd.grad(ref, list(u.values()))
        assert torch.allclose(mine, ref, rtol=1e-5, atol=1e-4), (mine, ref)
        for a, b in zip(g_mine, g_ref):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    return pot


def test_potential_matches_traced_log_joint_default_model():
    torch.manual_seed(0)
    model = default_regression_model()
    x = torch.linspace(-2, 2, 17)[:, None]
    y = torch.sin(2 * x[:, 0])
    pot = _check(model, x, y, seed=1)
    assert not pot.extra_sites and len(pot.priors) == 6


def test_flat_vector_is_the_same_potential():
    torch.manual_seed(0)
    model = BayesianModel(
        to_pyro(torch.nn.Linear(2, 1), prior=NormalPrior(1.0)), LatentNoiseGaussian()
    )
    x = torch.randn(9, 2)
    pot = Potential(model, x, x[:, 0])
    u = pot.unconstrain(pot.prior_draw())
    flat = pot.pack(u)
    assert flat.shape == (pot.dim,) == (2 + 1 + 1,)
    back = pot.unpack(flat)
    assert all(torch.equal(back[s], u[s]) for s in u)
    assert torch.equal(pot({FLAT: flat}), pot(u))
    # a chain dimension in front is kept
    assert pot.unpack(torch.stack([flat, flat]))["likelihood.scale"].shape == (2,)
    with pytest.raises(ValueError, match="must end in 4"):
        pot.unpack(torch.zeros(3))


def test_potential_ignores_minibatch_dataset_size():
    # a dataset_size left on the likelihood must not temper the full-data potential
    torch.manual_seed(0)
    model = default_regression_model()
    x = torch.linspace(-2, 2, 17)[:, None]
    y = torch.sin(2 * x[:, 0])
    pot = Potential(model, x, y)
    u = pot.unconstrain(pot.init_values)
    before = pot(u)
    model.likelihood.dataset_size = 1000
    assert torch.equal(pot(u), before)


def test_potential_with_constrained_latent_noise_site():
    torch.manual_seed(0)
    model = BayesianModel(
        to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0)), LatentNoiseGaussian()
    )
    x = torch.linspace(-2, 2, 15)[:, None]
    y = 0.5 * x[:, 0] + 0.2 * torch.randn(15)
    pot = _check(model, x, y, seed=2)
    assert pot.extra_sites == ["likelihood.scale"]


def test_nuts_samples_latent_noise_and_maps_it_back():
    torch.manual_seed(0)
    model = BayesianModel(
        to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0)), LatentNoiseGaussian()
    )
    g = torch.Generator().manual_seed(3)
    x = torch.rand(60, 1, generator=g) * 4 - 2
    y = 0.5 * x[:, 0] + 0.2 * torch.randn(60, generator=g)
    ppd, info = nuts_ppd(
        model,
        x,
        y,
        torch.zeros(2, 1),
        num_warmup=150,
        num_samples=200,
        progress=False,
        seed=0,
        return_mcmc=True,
    )
    sigma = info.draws["likelihood.scale"]
    assert (sigma > 0).all()  # mapped back to the constrained space
    # 60 points with true sigma 0.2: the posterior of sigma concentrates within ~+-0.05
    assert 0.14 < sigma.mean().item() < 0.27, sigma.mean()
    assert isinstance(ppd, NormalMixturePPD)
    assert torch.allclose(ppd.scale[:, 0], sigma)
    assert info.max_r_hat < 1.1


def test_nuts_init_from_network_and_rejects_bad_init():
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)
    model = BayesianModel(to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0)), "gaussian")
    x = torch.linspace(-1, 1, 10)[:, None]
    ppd = nuts_ppd(
        model, x, x[:, 0], x[:2], init=net, num_warmup=20, num_samples=10, progress=False, seed=0
    )
    assert ppd.num_draws == 4 * 10  # 4 chains by default
    with pytest.raises(ValueError, match="unknown sites"):
        nuts_ppd(model, x, x[:, 0], x[:2], init={"nope": torch.zeros(1)}, progress=False)
    with pytest.raises(ValueError, match="init must be"):
        nuts_ppd(model, x, x[:, 0], x[:2], init=3, progress=False)


def test_nuts_refuses_an_undeclared_latent_likelihood_site():
    model = BayesianModel(
        to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0)), UndeclaredNoiseGaussian()
    )
    x = torch.linspace(-1, 1, 10)[:, None]
    with pytest.raises(ValueError, match=r"likelihood\.scale.*latent_sites=\(\)"):
        nuts_ppd(model, x, x[:, 0], x[:2], num_warmup=5, num_samples=5, progress=False)


@pytest.mark.filterwarnings("ignore:NUTS reference NOT converged")  # a short run: shapes only
def test_nuts_with_gaussian_noise_prior_mixes_over_noise_draws():
    # the library's own latent noise (Gaussian(noise_prior=...)): its PPD gets one sigma per draw
    from pyrobayes import Gaussian

    torch.manual_seed(0)
    model = BayesianModel(
        to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0)),
        Gaussian(noise_prior=dist.LogNormal(-1.6, 0.8)),
    )
    x = torch.linspace(-2, 2, 30)[:, None]
    y = 0.5 * x[:, 0] + 0.2 * torch.randn(30, generator=torch.Generator().manual_seed(4))
    ppd, info = nuts_ppd(
        model, x, y, x[:3], num_warmup=60, num_samples=40, progress=False, seed=0, return_mcmc=True
    )
    sigma = info.draws[model.likelihood.noise_site]
    assert sigma.shape == (4 * 40,) and (sigma > 0).all()  # 4 chains x 40 draws
    assert torch.allclose(ppd.scale[:, 0], sigma)


def test_potential_with_tied_linear_weights_matches_traced_log_joint():
    """A weight shared by two layers is one site; the Linear-chain forward must use its draw
    under both parameter paths, as Pyro's trace of the model does."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    )
    net[2].weight = net[0].weight
    model = BayesianModel(to_pyro(net, prior=NormalPrior(1.0), name="tied"), Gaussian(0.3))
    x = torch.randn(11, 3)
    _check(model, x, x[:, 0], seed=2)
    assert linear_chain(model, x) is not None  # the potential's forward takes the chain


# --- the setup check: NUTS steps aside for a model the trace-free potential is not -------


class _Penalised(BayesianModel):
    """A strong penalty on the outputs (a ``pyro.factor`` site): it pulls f(x) to 0."""

    def forward(self, *inputs, y=None, **kwargs):
        out = super().forward(*inputs, y=y, **kwargs)
        pyro.factor("penalty", -200.0 * out.pow(2).sum())
        return out


class _Shifted(BayesianModel):
    """An extra latent site: the outputs are shifted by ``shift`` ~ N(3, 0.1)."""

    def forward(self, *inputs, y=None, **kwargs):
        shift = pyro.sample("shift", dist.Normal(3.0, 0.1))
        return self.likelihood(self.output_fn(self.net(*inputs, **kwargs)) + shift, y)


def _linear(cls):
    torch.manual_seed(0)
    model = cls(to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0), name="lin"), Gaussian(0.3))
    x = torch.linspace(-1, 1, 12)[:, None]
    return model, x, x[:, 0] + 0.1 * torch.randn(12)


@pytest.mark.parametrize(("cls", "site"), [(_Penalised, "penalty"), (_Shifted, "shift")])
def test_potential_check_names_what_the_model_adds(cls, site):
    model, x, y = _linear(cls)
    pot = Potential(model, x, y)
    assert pot.verify() == f"site {site!r} is in the model's trace but not in the NUTS potential"
    # the fallback is Pyro's own log joint: minus the traced model's, plus the Jacobians
    traced = TracedPotential.from_potential(pot)
    values = pot.prior_draw()
    tr = poutine.trace(poutine.condition(model, data=values)).get_trace(x, y=y)
    assert torch.allclose(traced(pot.unconstrain(values)), -tr.log_prob_sum(), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:NUTS has not converged")
@pytest.mark.parametrize("cls", [_Penalised, _Shifted])
def test_nuts_falls_back_to_pyro_traces_and_says_so_once(cls):
    model, x, y = _linear(cls)
    xq = torch.tensor([[0.0], [0.5]])
    with pytest.warns(FastPathFallbackWarning) as caught:
        ppd, info = nuts_ppd(
            model,
            x,
            y,
            xq,
            num_warmup=40,
            num_samples=40,
            progress=False,
            seed=0,
            return_mcmc=True,
        )
    assert len([w for w in caught if w.category is FastPathFallbackWarning]) == 1
    bias = float(info.get_samples()["lin.net.bias"].mean())
    if cls is _Penalised:
        # the penalty pins the predictions to ~0 (the trace-free potential: f(x) ~ x)
        assert torch.allclose(ppd.mean, torch.zeros(2), atol=0.1)
    else:
        # shift ~ N(3, 0.1) is sampled, the bias makes up for it, and the PPD is the
        # model's own f(x) + shift ~ x (the twin alone would predict x - 3)
        assert abs(float(info.get_samples()["shift"].mean()) - 3.0) < 0.3
        assert abs(bias + 3.0) < 0.3
        assert torch.allclose(ppd.mean, xq[:, 0], atol=0.25)


@pytest.mark.filterwarnings("ignore:NUTS has not converged")  # a short run
def test_nuts_keeps_the_trace_free_potential_for_a_plain_model(monkeypatch):
    def traced(*args, **kwargs):
        raise AssertionError("the plain BayesianModel left the trace-free potential")

    monkeypatch.setattr(TracedPotential, "energy", traced)
    model, x, y = _linear(BayesianModel)
    assert Potential(model, x, y).verify() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastPathFallbackWarning)
        nuts_ppd(model, x, y, x[:2], num_warmup=5, num_samples=5, progress=False, seed=0)


@pytest.mark.parametrize("dataset_size", [None, 1000])
def test_potential_check_accepts_latent_noise_and_a_left_dataset_size(dataset_size):
    model = BayesianModel(
        to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0)), LatentNoiseGaussian()
    )
    model.likelihood.dataset_size = dataset_size  # the potential sums the full data unscaled
    x = torch.linspace(-2, 2, 15)[:, None]
    assert Potential(model, x, 0.5 * x[:, 0]).verify() is None
    assert model.likelihood.dataset_size == dataset_size
