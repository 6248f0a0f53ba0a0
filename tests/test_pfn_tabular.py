"""Tabular PFN pieces: the tabular model and its latent noise, the tabular dataset prior,
variable feature counts, raw-unit mapping of the PPD, and input-domain checks."""

import math
import warnings

import pyro
import pytest
import torch

from pyrobayes.infer import forward_draws, sample_prior
from pyrobayes.likelihoods import Gaussian
from pyrobayes.models import tabular_regression_model
from pyrobayes.models.tabular import tabular_noise_prior
from pyrobayes.pfn import (
    PFN,
    PFNConfig,
    TabularBNNPrior,
    TrainConfig,
    pretrained,
    standardise_split,
    train_pfn,
)


def _tabular_pfn(max_features: int = 10) -> PFN:
    torch.manual_seed(0)
    cfg = PFNConfig(
        num_features=max_features,
        input_mode="tabular",
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_train=64,
        x_low=(-6.0,) * max_features,
        x_high=(6.0,) * max_features,
        borders=tuple(torch.linspace(-5, 5, 51).tolist()),
    )
    return PFN(cfg).eval()


# -- the model ------------------------------------------------------------------------


def test_tabular_model_has_latent_noise_site_before_the_plate():
    model = tabular_regression_model(4)
    x, y = torch.randn(30, 4), torch.randn(30)
    tr = pyro.poutine.trace(model).get_trace(x, y=y)
    names = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    noise = model.likelihood.noise_site
    assert noise == f"{model._pyro_name}.likelihood.noise_scale" and noise in names
    assert names.index(noise) < names.index("obs")
    assert tr.nodes[noise]["cond_indep_stack"] == ()  # not inside the data plate
    sigma = tr.nodes[noise]["value"]
    assert tr.nodes["obs"]["fn"].scale.unique().item() == pytest.approx(sigma.item())
    assert tuple(model.net[0].weight.shape) == (50, 4)


def test_noise_prior_quantiles():
    p = tabular_noise_prior()
    # median 0.2, central 95% [0.2 e^{-1.96*0.8}, 0.2 e^{1.96*0.8}] = [0.0417, 0.959]
    assert float(p.icdf(torch.tensor(0.5))) == pytest.approx(0.2, rel=1e-5)
    assert float(p.icdf(torch.tensor(0.025))) == pytest.approx(
        0.2 * math.exp(-1.96 * 0.8), rel=1e-3
    )
    assert float(p.icdf(torch.tensor(0.975))) == pytest.approx(0.2 * math.exp(1.96 * 0.8), rel=1e-3)


def test_gaussian_latent_noise_ppd_needs_and_uses_per_draw_scales():
    lik = Gaussian(noise_prior=tabular_noise_prior())
    out = torch.zeros(3, 5, 1)
    with pytest.raises(ValueError, match="noise_scale"):
        lik.ppd(out)
    ppd = lik.ppd(out, noise_scale=torch.tensor([0.1, 0.2, 0.3]))
    # mixture of N(0, s^2) with equal weights: variance = mean of s^2
    assert torch.allclose(ppd.variance, torch.full((5,), (0.01 + 0.04 + 0.09) / 3))
    with pytest.raises(ValueError, match="positive support"):
        Gaussian(noise_prior=torch.distributions.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="not both"):
        Gaussian(learn_scale=True, noise_prior=tabular_noise_prior())
    assert not Gaussian(0.1).latent_noise  # the fixed-noise default is unchanged


def test_fused_elbo_covers_the_latent_noise():
    # the noise std is drawn on the fused path (tests/test_fast_elbo.py checks it against
    # Pyro's traces)
    from pyro.infer.autoguide import AutoNormal

    from pyrobayes.infer.fast_elbo import supports_fused

    model = tabular_regression_model(2)
    assert supports_fused(model, AutoNormal(model))


# -- the dataset prior ----------------------------------------------------------------


def test_tabular_prior_features_are_standardised_and_varied():
    torch.manual_seed(0)
    prior = TabularBNNPrior(max_features=10)
    seen = set()
    for _ in range(40):
        x, y = prior.sample(8, 50)
        d = x.shape[-1]
        seen.add(d)
        assert 1 <= d <= 10 and y.shape == (8, 50)
        assert torch.allclose(x.mean(1), torch.zeros(8, d), atol=1e-5)
        sd = x.std(1, unbiased=False)
        assert ((sd - 1).abs() < 1e-4).logical_or(sd == 0).all()
    assert seen == set(range(1, 11))
    # binary/ordinal columns exist: some columns take few distinct values
    x = prior.sample_features(64, 200, 6)
    n_distinct = torch.tensor([[len(x[b, :, j].unique()) for j in range(6)] for b in range(64)])
    assert (n_distinct <= 2).any() and (n_distinct <= 7).sum() > (n_distinct <= 2).sum()
    # heavy-tailed/skewed columns exist: some standardised column has |skewness| > 2
    skew = (x**3).mean(1)
    assert (skew.abs() > 2).any()


def test_tabular_prior_noise_draws_match_the_noise_prior_quantiles():
    torch.manual_seed(1)
    prior = TabularBNNPrior(max_features=3)
    sig = []
    for _ in range(16):
        prior.sample(256, 4)
        sig.append(prior.last_noise)
    sig = torch.cat(sig)
    p = tabular_noise_prior()
    for q in (0.1, 0.5, 0.9):
        # 4096 draws: the empirical quantile's std in probability is sqrt(q(1-q)/4096) <= 0.008
        emp = float((sig <= p.icdf(torch.tensor(q))).float().mean())
        assert abs(emp - q) < 0.03


def test_tabular_prior_targets_are_model_function_plus_noise():
    torch.manual_seed(2)
    prior = TabularBNNPrior(max_features=2, min_features=2)
    x, y = prior.sample(4, 400)
    # rerun the same draws to get f: the residual std equals the drawn noise scale
    torch.manual_seed(2)
    prior2 = TabularBNNPrior(max_features=2, min_features=2)
    d = int(torch.randint(2, 3, ()).item())
    x2 = prior2.sample_features(4, 400, d)
    model = prior2.model(d)
    f = forward_draws(model, sample_prior(model, 4), x2, inputs_batched=True).reshape(4, 400)
    assert torch.equal(x, x2)
    resid_sd = (y - f).std(1)
    assert torch.allclose(resid_sd, prior.last_noise, rtol=0.15)


def test_sample_with_latents_returns_the_latents_that_made_the_data():
    prior = TabularBNNPrior(max_features=5, min_features=3)
    torch.manual_seed(3)
    x, y = prior.sample(4, 300)
    torch.manual_seed(3)
    d = int(torch.randint(3, 6, ()).item())
    x2, y2, latents = prior.sample_with_latents(4, 300, d)
    # same RNG stream as sample(): resumed PFN training draws the same data sets
    assert torch.equal(x, x2) and torch.equal(y, y2)
    model = prior.model(d)
    noise = model.likelihood.noise_site
    weights = {k: v for k, v in latents.items() if k != noise}
    f = forward_draws(model, weights, x2, inputs_batched=True).reshape(4, 300)
    z = (y2 - f) / latents[noise][:, None]
    # 1200 standardised residuals: mean s.e. 0.029, sd s.e. 0.02
    assert abs(float(z.mean())) < 0.12 and abs(float(z.std()) - 1) < 0.08
    with pytest.raises(ValueError, match="d must be in 1..5"):
        prior.sample_with_latents(1, 10, 6)


# -- the PFN's input handling ----------------------------------------------------------


@pytest.mark.parametrize("d", range(1, 11))
def test_tabular_pfn_handles_every_feature_count(d):
    pfn = _tabular_pfn()
    x = torch.randn(20, d)
    ppd = pfn.predict(x[:15], x[:15, 0] * 3 + 10, x[15:])
    assert ppd.batch_shape == (5,)
    assert torch.isfinite(ppd.mean).all()


def test_padding_columns_do_not_change_the_prediction():
    pfn = _tabular_pfn()
    torch.manual_seed(3)
    x, y = torch.randn(30, 4), torch.randn(30)
    a = pfn.predict(x[:20], y[:20], x[20:])
    padded = torch.cat([x, torch.zeros(30, 3)], dim=1)
    b = pfn.predict(padded[:20], y[:20], padded[20:])
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    # and a constant (e.g. an all-ones) column neither
    c = pfn.predict(
        torch.cat([x, torch.ones(30, 1)], 1)[:20], y[:20], torch.cat([x, torch.ones(30, 1)], 1)[20:]
    )
    assert torch.allclose(a.logits, c.logits, atol=1e-5)


def test_affine_map_of_targets_shifts_nll_by_log_scale():
    pfn = _tabular_pfn()
    torch.manual_seed(4)
    x, y = torch.randn(40, 3), torch.randn(40)
    a, b = 123.0, 7.5
    p0 = pfn.predict(x[:30], y[:30], x[30:])
    p1 = pfn.predict(x[:30], a + b * y[:30], x[30:])
    nll0 = -p0.log_prob(y[30:])
    nll1 = -p1.log_prob(a + b * y[30:])
    assert torch.allclose(nll1 - nll0, torch.full_like(nll0, math.log(b)), atol=1e-4)
    assert torch.allclose(p1.mean, a + b * p0.mean, rtol=1e-5)
    # and the feature scale does not matter at all (standardised by the training split)
    p2 = pfn.predict(5 * x[:30] - 2, y[:30], 5 * x[30:] - 2)
    assert torch.allclose(p0.logits, p2.logits, atol=1e-5)


def test_too_many_features_is_a_clear_error():
    pfn = _tabular_pfn(max_features=4)
    x = torch.randn(10, 5)
    with pytest.raises(ValueError, match="1..4 features"):
        pfn.predict(x[:8], torch.randn(8), x[8:])
    with pytest.raises(ValueError, match="x_query has 2 features but x_train has 3"):
        pfn.predict(torch.randn(8, 3), torch.randn(8), torch.randn(2, 2))


def test_standardise_split_uses_only_the_training_rows():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    y = torch.tensor([[2.0, 4.0, -50.0]])
    xt, yt, xq, yq, loc, sd = standardise_split(x[:, :2], y[:, :2], x[:, 2:], y[:, 2:])
    assert torch.allclose(xt[0, :, 0], torch.tensor([-1.0, 1.0]))
    assert float(xq) == pytest.approx(98.0)
    assert float(loc) == 3.0 and float(sd) == 1.0 and float(yq) == pytest.approx(-53.0)


# -- the y-domain check for every PFN ---------------------------------------------------


def test_1d_pfn_warns_for_targets_outside_the_trained_range():
    pfn = pretrained("bnn-1d")
    x = torch.linspace(-1, 1, 10)
    lo, hi = pfn.config.borders[0], pfn.config.borders[-1]
    with pytest.warns(UserWarning, match="outside the range"):
        pfn.predict(x, 100 + torch.sin(x), torch.tensor([0.0]))
    with pytest.raises(ValueError, match=f"{lo:.4g}, {hi:.4g}"):
        pfn.predict(x, 100 + torch.sin(x), torch.tensor([0.0]), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pfn.predict(x, torch.sin(x), torch.tensor([0.0]))  # in range: silent


# -- training end to end ----------------------------------------------------------------


def test_tabular_training_runs_and_resumes(tmp_path):
    prior = TabularBNNPrior(max_features=3)
    kw = dict(
        batch_size=8,
        max_train=20,
        min_train=1,
        size_sampling="log_uniform",
        num_queries=8,
        tokens_per_step=120,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=32,
        num_bars=20,
        border_samples=2000,
        progress=False,
        checkpoint_every=3,
        out=str(tmp_path / "t"),
    )
    full = train_pfn(prior, TrainConfig(steps=6, **kw))
    train_pfn(
        TabularBNNPrior(max_features=3),
        TrainConfig(
            steps=6,
            time_limit=0.0,
            out=str(tmp_path / "r"),
            **{k: v for k, v in kw.items() if k != "out"},
        ),
    )
    resumed = train_pfn(
        TabularBNNPrior(max_features=3),
        TrainConfig(
            steps=6,
            resume=True,
            out=str(tmp_path / "r"),
            **{k: v for k, v in kw.items() if k != "out"},
        ),
    )
    assert full.model.config.input_mode == "tabular"
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_shipped_bnn_tabular_checkpoint():
    from pyrobayes.pfn.checkpoint import checkpoint_paths
    from pyrobayes.pfn.pretrained import CHECKPOINT_DIR

    weights, meta = checkpoint_paths(CHECKPOINT_DIR / "bnn-tabular")
    assert weights.stat().st_size <= 25 * 2**20
    pfn = pretrained("bnn-tabular")
    c = pfn.config
    assert c.input_mode == "tabular" and c.num_features >= 10 and c.max_train >= 500
    assert c.prior["kind"] == "bnn-tabular"
    torch.manual_seed(5)
    for d in (1, 10):
        x = torch.randn(520, d)
        y = 50 + 10 * torch.tanh(x[:, 0])
        ppd = pfn.predict(x[:500], y[:500], x[500:])
        assert ppd.batch_shape == (20,) and torch.isfinite(ppd.log_prob(y[500:])).all()
    with pytest.raises(ValueError, match="at most"):
        pfn.predict(
            torch.randn(c.max_train + 1, 2), torch.randn(c.max_train + 1), torch.randn(1, 2)
        )
