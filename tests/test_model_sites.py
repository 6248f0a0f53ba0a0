"""Every site a model owns carries that model's name; a guide, an input or a noise prior
that does not belong to the model is refused with a clear error (issue 18)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrobayes import BayesianModel, Gaussian, PosteriorPredictive, fit, to_pyro
from pyrobayes.guides import MOPEDLowRank, MOPEDNormal
from pyrobayes.infer.predictive import forward_draws, sample_posterior


def _latent_model(seed=0, hidden=0):
    torch.manual_seed(seed)
    if hidden:
        net = torch.nn.Sequential(
            torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )
    else:
        net = torch.nn.Linear(2, 1)
    lik = Gaussian(noise_prior=dist.LogNormal(torch.tensor(-1.6), torch.tensor(0.5)))
    return BayesianModel(to_pyro(net, prior="normal"), lik)


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([1.0, -0.5]) + 0.8 * torch.randn(n, generator=g)


def _noise_site(model) -> str:
    (site,) = model.likelihood.latent_sites
    return site


def test_two_models_have_different_noise_sites():
    a, b = _latent_model(), _latent_model()
    assert _noise_site(a) != _noise_site(b)
    assert _noise_site(a).startswith(a._pyro_name + ".")
    assert _noise_site(b).startswith(b._pyro_name + ".")
    # the site a trace records is the declared one
    tr = pyro.poutine.trace(a).get_trace(torch.zeros(3, 2))
    assert _noise_site(a) in tr.nodes and "noise_scale" not in tr.nodes


def test_second_guide_starts_at_its_own_noise_not_the_first_fit():
    """After a fit through Pyro's param store (fused=False), a fresh guide for another model
    must start its noise where asked (it used to pick up the first fit's 0.8)."""
    x, y = _data()
    a = _latent_model()
    ga = MOPEDNormal(a, init_values={_noise_site(a): 0.8})
    fit(a, ga, (x, y), epochs=5, lr=1e-2, fused=False, progress=False)
    fitted_a = float(ga.median(x)[_noise_site(a)])
    b = _latent_model(seed=2)
    gb = MOPEDNormal(b, init_values={_noise_site(b): 0.2})
    gb(x)  # the first call: PyroModule reads Pyro's param store here
    assert float(gb.median(x)[_noise_site(b)]) == pytest.approx(0.2, rel=1e-5)
    assert abs(fitted_a - 0.2) > 0.1  # the test would notice a shared site


def test_shared_likelihood_gets_its_own_copy_per_model():
    lik = Gaussian(noise_prior=dist.LogNormal(-1.6, 0.5))
    a = BayesianModel(to_pyro(torch.nn.Linear(2, 1)), lik)
    b = BayesianModel(to_pyro(torch.nn.Linear(2, 1)), lik)
    assert a.likelihood is lik and b.likelihood is not lik
    assert _noise_site(a) != _noise_site(b)
    assert _noise_site(a).startswith(a._pyro_name + ".")


def test_standalone_likelihood_keeps_the_plain_site_name():
    lik = Gaussian(noise_prior=dist.LogNormal(-1.6, 0.5))
    assert lik.latent_sites == ("noise_scale",)
    ppd = lik.ppd_from_draws(torch.zeros(3, 4, 1), {"noise_scale": torch.ones(3)})
    assert ppd.batch_shape == (4,)


def test_torch_noise_prior_is_converted_and_fits():
    x, y = _data(16)
    lik = Gaussian(noise_prior=torch.distributions.LogNormal(0.0, 1.0))
    assert type(lik.noise_prior) is dist.LogNormal  # Pyro's class, same parameters
    assert float(lik.noise_prior.scale) == 1.0
    model = BayesianModel(to_pyro(torch.nn.Linear(2, 1)), lik)
    guide = MOPEDNormal(model)
    history = fit(model, guide, (x, y), epochs=2, progress=False)
    assert len(history) == 2


def test_unconvertible_torch_noise_prior_is_refused():
    prior = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(0.0, 1.0), [torch.distributions.transforms.ExpTransform()]
    )
    with pytest.raises(TypeError, match="pyro.distributions"):
        Gaussian(noise_prior=prior)


@pytest.mark.parametrize(
    "prior", [dist.Normal(0.0, 1.0), dist.Uniform(-1.0, 1.0), torch.distributions.Normal(0.0, 1.0)]
)
def test_noise_prior_without_positive_support_is_refused(prior):
    with pytest.raises(ValueError, match="positive support"):
        Gaussian(noise_prior=prior)


@pytest.mark.parametrize("hidden", [0, 4])
@pytest.mark.parametrize("latent", [False, True])
def test_float64_inputs_to_a_float32_predictive_are_named(hidden, latent):
    model = _latent_model(hidden=hidden)
    if not latent:
        model = BayesianModel(model.net, Gaussian(0.1))
    guide = MOPEDNormal(model)
    guide.setup(torch.zeros(2, 2))  # set up: the fast paths used to meet the double first
    with pytest.raises(TypeError, match=r"torch\.float64.*torch\.float32"):
        PosteriorPredictive(model, guide, num_samples=4)(torch.zeros(3, 2, dtype=torch.float64))


@pytest.mark.parametrize("setup", [False, True])
@pytest.mark.parametrize("hidden", [0, 4])
@pytest.mark.parametrize("kind", ["normal", "lowrank"])
def test_guide_of_another_model_in_predictive(kind, hidden, setup):
    a, b = _latent_model(hidden=hidden), _latent_model(hidden=hidden)
    guide = MOPEDNormal(a) if kind == "normal" else MOPEDLowRank(a, rank=1)
    if setup:
        guide.setup(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="guide.*missing.*unexpected") as err:
        PosteriorPredictive(b, guide, num_samples=4)(torch.zeros(3, 2))
    assert b._pyro_name in str(err.value) and a._pyro_name in str(err.value)


def test_draws_of_another_model_are_named():
    a, b = _latent_model(hidden=4), _latent_model(hidden=4)
    draws = sample_posterior(MOPEDNormal(a), 3, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="missing.*unexpected"):
        forward_draws(b, draws, torch.zeros(2, 2))


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("kind", ["normal", "lowrank"])
def test_guide_of_another_model_in_fit(kind, fused):
    x, y = _data(8)
    a, b = _latent_model(), _latent_model()
    guide = MOPEDNormal(a) if kind == "normal" else MOPEDLowRank(a, rank=1)
    with pytest.raises(ValueError, match="guide.*missing.*unexpected"):
        fit(b, guide, (x, y), epochs=1, fused=fused, progress=False)


def test_guide_of_another_model_in_fit_after_setup():
    x, y = _data(8)
    a, b = _latent_model(), _latent_model()
    guide = pyro.infer.autoguide.AutoNormal(a)
    guide(x)
    with pytest.raises(ValueError, match="guide.*missing.*unexpected"):
        fit(b, guide, (x, y), epochs=1, fused=False, progress=False)


@pytest.mark.parametrize("legacy", [False, True])
def test_saved_latent_noise_fit_loads_into_a_renamed_model(tmp_path, legacy):
    """A fit saved under one model name loads into a model of another name; so does a
    file from before the noise site carried the model's name (``locs.noise_scale``)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pyrobayes import load, save

    x, y = _data(16)
    a = _latent_model()
    ga = MOPEDNormal(a)
    fit(a, ga, (x, y), epochs=10, lr=1e-2, progress=False)
    path = tmp_path / "fit.safetensors"
    save(path, a, ga)
    if legacy:
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        tensors = {k.replace(_noise_site(a), "noise_scale"): v for k, v in tensors.items()}
        assert "guide/locs.noise_scale_unconstrained" in tensors
        save_file(tensors, str(path), metadata=meta)
    b = _latent_model(seed=3)
    gb = MOPEDNormal(b)
    load(path, b, gb, x)
    noise = float(ga.median(x)[_noise_site(a)])
    assert float(gb.median(x)[_noise_site(b)]) == pytest.approx(noise, rel=1e-6)
    fresh = _latent_model()
    g0 = MOPEDNormal(fresh)
    g0.setup(x)
    assert noise != pytest.approx(float(g0.median(x)[_noise_site(fresh)]), rel=1e-3)


def test_init_values_take_the_noise_keyword_or_the_site_and_refuse_others():
    x = torch.zeros(2, 2)
    model = _latent_model()
    for key in ("noise_scale", _noise_site(model)):
        guide = MOPEDNormal(model, init_values={key: 0.37})
        guide.setup(x)
        assert float(guide.median(x)[_noise_site(model)]) == pytest.approx(0.37, rel=1e-5)
    other = _latent_model()
    for cls in (MOPEDNormal, lambda m, **kw: MOPEDLowRank(m, rank=1, **kw)):
        guide = cls(model, init_values={_noise_site(other): 0.37})
        with pytest.raises(ValueError, match="not latent sites of this model.*noise_scale"):
            guide.setup(x)


def test_tabular_prior_latents_name_the_models_noise_site():
    from pyrobayes.pfn import TabularBNNPrior

    prior = TabularBNNPrior()
    _, _, latents = prior.sample_with_latents(2, 10, d=2)
    site = prior.model(2).likelihood.noise_site
    assert site in latents and site.endswith(".likelihood.noise_scale")
    assert "noise_scale" not in latents


def test_guide_without_the_models_noise_site_is_named():
    """Same weight sites (same name), but the guide's model had a fixed noise."""
    torch.manual_seed(0)
    fixed = BayesianModel(to_pyro(torch.nn.Linear(2, 1), name="m"), Gaussian(0.1))
    latent = BayesianModel(
        to_pyro(torch.nn.Linear(2, 1), name="m"), Gaussian(noise_prior=dist.LogNormal(-1.6, 0.5))
    )
    guide = MOPEDNormal(fixed)
    with pytest.raises(ValueError, match=r"missing \['m\.likelihood\.noise_scale'\]"):
        PosteriorPredictive(latent, guide, num_samples=4)(torch.zeros(3, 2))
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"missing \['m\.likelihood\.noise_scale'\]"):
        fit(latent, guide, (x, y), epochs=1, progress=False)
