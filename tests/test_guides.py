import pyro
import pytest
import torch
from torch import nn

from pyrobayes import (
    BayesianModel,
    Gaussian,
    MOPEDLowRank,
    MOPEDNormal,
    fit,
    moped_guide,
    to_bayesian,
    to_pyro,
)


def model_and_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    with torch.no_grad():
        net[0].weight[0, 0] = 0.0  # MOPED's degenerate case: |w| = 0
    x = torch.randn(32, 2)
    y = torch.sin(x[:, 0])
    return net, x, y


def test_moped_loc_is_pretrained_and_scale_is_delta_abs_w_floored():
    net, x, y = model_and_data()
    model, guide = to_bayesian(net, delta=0.1, likelihood=Gaussian(0.1), name="mp")
    guide.setup(x, y=y)
    locs = guide.locs.mp.net._modules
    scales = guide.scales.mp.net._modules
    assert torch.equal(locs["0"].weight, net[0].weight)
    assert torch.equal(locs["2"].bias, net[2].bias)
    expected = (0.1 * net[0].weight.detach().abs()).clamp_min(1e-6)
    assert torch.allclose(scales["0"].weight, expected, rtol=1e-5, atol=1e-9)
    assert float(scales["0"].weight[0, 0].detach()) == pytest.approx(1e-6, rel=1e-3)
    assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_tiny_delta_gives_finite_parameters():
    net, x, y = model_and_data()
    _, guide = to_bayesian(net, delta=1e-30, likelihood=Gaussian(0.1))
    guide.setup(x, y=y)
    assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_svi_does_not_edit_the_pretrained_weights():
    net, x, y = model_and_data()
    before = net[0].weight.detach().clone()
    model, guide = to_bayesian(net, delta=0.1, likelihood=Gaussian(0.1), prior="normal")
    fit(model, guide, (x, y), epochs=5, batch_size=16, lr=0.05, progress=False)
    assert torch.equal(net[0].weight, before)
    assert torch.equal(model.net._modules["0"].weight_pretrained, before)
    site = f"{model._pyro_name}.net.0.weight"
    assert not torch.allclose(guide.loc_and_scale(site)[0], before)


def test_freeze_loc_keeps_means_while_scales_learn():
    net, x, y = model_and_data()
    model, guide = to_bayesian(
        net, delta=0.1, freeze=True, likelihood=Gaussian(0.1), prior="normal", name="fr"
    )
    guide.setup(x, y=y)
    s0 = guide.scales.fr.net._modules["0"].weight.detach().clone()
    fit(model, guide, (x, y), epochs=5, batch_size=16, lr=0.05, progress=False)
    assert torch.equal(guide.locs.fr.net._modules["0"].weight, net[0].weight)
    assert not torch.allclose(guide.scales.fr.net._modules["0"].weight, s0)


def test_lowrank_guide_has_moped_mean_and_diagonal():
    net, x, y = model_and_data()
    model = BayesianModel(to_pyro(net, name="lr"), Gaussian(0.1))
    guide = MOPEDLowRank(model, rank=3, delta=0.2)
    guide.setup(x, y=y)
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert torch.allclose(guide.loc, flat)
    diag = (0.2 * flat.abs()).clamp_min(1e-6)
    assert torch.allclose(guide.scale, diag, rtol=1e-5, atol=1e-9)
    assert guide.cov_factor.shape == (flat.numel(), 3)
    # initial marginal stds are MOPED's up to the 1% random factors
    marg = guide.get_posterior().variance.sqrt()
    assert torch.allclose(marg, diag, rtol=0.01, atol=1e-6)


def test_bad_guide_options():
    net, x, y = model_and_data()
    model = BayesianModel(to_pyro(net), Gaussian(0.1))
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="delta must be a positive"):
            MOPEDNormal(model, delta=bad)
    with pytest.raises(ValueError, match="unknown guide 'flow'"):
        moped_guide(model, "flow")
    with pytest.raises(ValueError, match="rank"):
        MOPEDLowRank(model, rank=0)


def test_guide_params_live_in_param_store_under_unique_names():
    net, x, y = model_and_data()
    m1, g1 = to_bayesian(net, likelihood=Gaussian(0.1))
    m2, g2 = to_bayesian(net, likelihood=Gaussian(0.1))
    g1.setup(x, y=y)
    g2.setup(x, y=y)
    pyro.infer.SVI(m1, g1, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO()).step(x, y=y)
    assert torch.equal(g2.loc_and_scale(f"{m2._pyro_name}.net.0.weight")[0], net[0].weight)
    assert not torch.equal(g1.loc_and_scale(f"{m1._pyro_name}.net.0.weight")[0], net[0].weight)
