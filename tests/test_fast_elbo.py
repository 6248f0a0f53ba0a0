"""The fused ELBO is Pyro's Trace_ELBO estimator, evaluated without traces."""

import pytest
import torch
from pyro import poutine

from pyrobayes import Categorical, Gaussian, fit, to_bayesian
from pyrobayes.infer.fast_elbo import FusedMeanFieldELBO
from pyrobayes.infer.twin import linear_chain


def pyro_elbo_and_eps(model, guide, fused, x, y):
    gtr = poutine.trace(guide).get_trace(x, y=y)
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x, y=y)
    eps = {}
    for site in fused.sites:
        loc, scale = guide._get_loc_and_scale(site)
        eps[site] = ((gtr.nodes[site]["value"] - loc) / scale).detach()
    return mtr.log_prob_sum() - gtr.log_prob_sum(), eps


@pytest.mark.parametrize(
    "likelihood, prior",
    [
        (Gaussian(0.2, learn_scale=True), "layerwise"),
        (Categorical(), "pretrained"),
        (Categorical(), "scale_mixture"),
    ],
)
def test_fused_loss_equals_pyro_trace_elbo_for_the_same_draw(likelihood, prior):
    torch.manual_seed(0)
    out = 1 if isinstance(likelihood, Gaussian) else 3
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, out))
    model, guide = to_bayesian(net, delta=0.3, likelihood=likelihood, prior=prior)
    x = torch.randn(10, 3)
    y = torch.randn(10) if out == 1 else torch.randint(0, 3, (10,))
    model.likelihood.dataset_size = 40  # minibatch scaling N/B = 4 must agree too
    guide.setup(x, y=y)
    fused = FusedMeanFieldELBO(model, guide)
    elbo, eps = pyro_elbo_and_eps(model, guide, fused, x, y)
    loss = fused.loss(x, y=y, eps=eps)
    assert torch.allclose(loss, -elbo, rtol=1e-5)
    # and the gradients agree, so both paths optimise the same objective
    params = [p for p in guide.parameters() if p.requires_grad]
    g_pyro = torch.autograd.grad(-elbo, params)
    g_fused = torch.autograd.grad(loss, params)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_pyro, g_fused))


def test_fit_uses_fused_path_and_it_can_be_refused(monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    model, guide = to_bayesian(net, likelihood=Gaussian(0.1), prior="normal")
    x, y = torch.randn(16, 2), torch.randn(16)
    calls = []
    original = FusedMeanFieldELBO.loss
    monkeypatch.setattr(
        FusedMeanFieldELBO, "loss", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    h_fused = fit(model, guide, (x, y), epochs=3, batch_size=8, progress=False)
    assert len(calls) == 6  # 3 epochs x 2 batches, all through the fused step
    h_pyro = fit(model, guide, (x, y), epochs=3, batch_size=8, progress=False, fused=False)
    assert len(calls) == 6 and len(h_fused) == len(h_pyro) == 3
    with pytest.raises(ValueError, match="fused=True needs"):
        fit(model, guide, (x, y), epochs=1, progress=False, fused=True, num_particles=2)


@pytest.mark.parametrize("beta", [0.0, 0.3, 2.5])
def test_fused_kl_weight_matches_pyro_traces_under_scaled_latents(beta):
    """``fit``'s KL weight: Pyro's traces under ``_ScaleLatents(beta)`` (what the traced
    paths optimise) and the fused loss with ``fused.beta`` agree in value and gradients,
    with the minibatch plate scale from a ``data_size`` block."""
    from pyrobayes.infer.steppers import ScaleLatents as _ScaleLatents
    from pyrobayes.likelihoods import data_size

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model, guide = to_bayesian(net, delta=0.3, likelihood=Gaussian(0.2), prior="normal")
    x, y = torch.randn(10, 3), torch.randn(10)
    guide.setup(x, y=y)
    fused = FusedMeanFieldELBO(model, guide)
    fused.beta = beta
    with data_size(40), _ScaleLatents(beta):
        elbo, eps = pyro_elbo_and_eps(model, guide, fused, x, y)
    with data_size(40):
        loss = fused.loss(x, y=y, eps=eps)
    assert torch.allclose(loss, -elbo, rtol=1e-5)
    params = [p for p in guide.parameters() if p.requires_grad]
    g_pyro = torch.autograd.grad(-elbo, params)
    g_fused = torch.autograd.grad(loss, params)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_pyro, g_fused))
    # the weight really enters: the loss differs from the beta = 1 loss unless KL = 0
    fused.beta = 1.0
    with data_size(40):
        assert not torch.allclose(fused.loss(x, y=y, eps=eps), loss)


@pytest.mark.parametrize("beta", [1.0, 0.4])
@pytest.mark.parametrize("kind", ["noise std", "logit scale"])
def test_fused_loss_with_a_latent_likelihood_site_equals_pyro_traces(beta, kind):
    """``Gaussian(noise_prior=...)`` adds the latent noise site, ``Categorical(
    logit_scale_prior=...)`` the latent logit scale (LogNormal priors, the guide's Normal in
    log space pushed through exp): the fused loss scores them as Pyro's traces do, Jacobian
    included, in value and in every guide parameter's gradient."""
    import pyro.distributions as dist

    from pyrobayes.infer.steppers import ScaleLatents as _ScaleLatents
    from pyrobayes.likelihoods import data_size

    torch.manual_seed(2)
    outputs = 1 if kind == "noise std" else 3
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, outputs))
    if kind == "noise std":
        lik = Gaussian(noise_prior=dist.LogNormal(-1.6, 0.8))
        x, y = torch.randn(10, 3), torch.randn(10)
    else:  # float64: the softmax's float32 round-off in the gradients is ~1e-5
        lik = Categorical(logit_scale_prior=dist.LogNormal(0.0, 1.0))
        net, x, y = net.double(), torch.randn(10, 3, dtype=torch.float64), torch.randint(3, (10,))
    model, guide = to_bayesian(net, delta=0.3, likelihood=lik, prior="normal", name="noisy")
    guide.setup(x, y=y)
    (noise,) = model.likelihood.latent_sites  # e.g. "noisy.likelihood.noise_scale"
    local = noise.rsplit(".", 1)[1]
    with torch.no_grad():  # a latent's guide away from its initial values
        getattr(guide.locs.noisy.likelihood, local).fill_(-1.2)
    fused = FusedMeanFieldELBO(model, guide)
    fused.beta = beta
    with data_size(40), _ScaleLatents(beta):
        gtr = poutine.trace(guide).get_trace(x, y=y)
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x, y=y)
    elbo = mtr.log_prob_sum() - gtr.log_prob_sum()
    # the standard-normal draws behind the guide's values (for the noise: behind its
    # unconstrained auxiliary site), so the fused loss evaluates the same draw
    eps = {}
    for site in fused.sites:
        m, s = guide._get_loc_and_scale(site)
        eps[site] = ((gtr.nodes[site]["value"] - m) / s).detach()
    m, s = guide._get_loc_and_scale(noise)
    eps[noise] = ((gtr.nodes[noise + "_unconstrained"]["value"] - m) / s).detach()
    with data_size(40):
        loss = fused.loss(x, y=y, eps=eps)
    assert torch.allclose(loss, -elbo, rtol=1e-6, atol=1e-6)
    params = [p for p in guide.parameters() if p.requires_grad]
    g_pyro = torch.autograd.grad(-elbo, params)
    g_fused = torch.autograd.grad(loss, params)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(g_pyro, g_fused))
    # the noise parameters really get a gradient (the site is not silently dropped)
    names = [n for n, p in guide.named_parameters() if p.requires_grad]
    noise_grads = [g for n, g in zip(names, g_fused) if local in n]
    assert len(noise_grads) == 2 and all(g.abs().sum() > 0 for g in noise_grads)
    assert fused.verify(x, y=y) is None  # the check fit runs before taking this path


def test_fit_takes_the_fused_path_for_a_latent_noise_model(monkeypatch):
    from pyro.infer.autoguide import AutoNormal

    from pyrobayes.models.tabular import tabular_regression_model

    torch.manual_seed(0)
    model = tabular_regression_model(3, hidden=(8,), name="tabfused")
    guide = AutoNormal(model)
    x, y = torch.randn(32, 3), torch.randn(32)
    calls = []
    original = FusedMeanFieldELBO.loss
    monkeypatch.setattr(
        FusedMeanFieldELBO, "loss", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    h = fit(model, guide, (x, y), epochs=3, batch_size=16, lr=0.02, progress=False)
    assert len(calls) == 6 and all(torch.isfinite(torch.tensor(h.losses)))


@pytest.mark.parametrize("large_scale", [None, 85.0, 95.0])
def test_flat_draw_node_equals_the_autograd_branch_in_value_and_gradient(large_scale):
    """The one-node draw (``_DrawLogRatio``: softplus as ``log1p(exp(rho))`` with the
    backward's sigmoid from the kept ``exp(rho)``; a raw scale of 85 keeps ``exp`` finite
    at 8e36, where ``g * exp(rho)`` would overflow before a division; one of 95 makes
    ``exp`` overflow and the node redo the draw with torch's softplus kernel) against the
    per-site autograd path, for the same noise."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model, guide = to_bayesian(net, delta=0.3, likelihood=Categorical(), prior="pretrained")
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    guide.setup(x, y=y)
    fused = FusedMeanFieldELBO(model, guide)
    eps = {s: torch.randn_like(guide._get_loc_and_scale(s)[0]) for s in fused.sites}
    if large_scale is not None:  # one huge raw scale
        site = next(s for s in fused.sites if s.endswith("2.bias"))
        start = next(a for name, a, *_ in guide.flat_sites if name == site)
        with torch.no_grad():  # the guide's flat raw scale
            guide.flat_storage()[1][start] = large_scale
        assert guide._get_loc_and_scale(site)[1][0] > 80  # softplus(rho) = rho
    params = [p for p in guide.parameters() if p.requires_grad]
    loss = fused.loss(x, y=y, eps=eps)
    g_flat = torch.autograd.grad(loss, params)
    assert fused._flat is not None and fused._flat.normal is not None
    fused.one_node = False  # the autograd branch
    loss_ref = fused.loss(x, y=y, eps=eps)
    g_ref = torch.autograd.grad(loss_ref, params)
    assert torch.isfinite(loss) and torch.allclose(loss, loss_ref, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(g_flat, g_ref))


def test_fused_loss_with_tied_linear_weights_equals_pyro_trace_elbo():
    """A weight shared by two layers of a Linear chain: the fused path hands its one draw to
    both parameter paths, as Pyro's traces do."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    )
    net[2].weight = net[0].weight
    model, guide = to_bayesian(net, delta=0.3, likelihood=Gaussian(0.2), prior="normal")
    x, y = torch.randn(10, 3), torch.randn(10)
    guide.setup(x, y=y)
    fused = FusedMeanFieldELBO(model, guide)
    assert ["0.weight", "2.weight"] in fused.sites.values()  # one site, two paths
    assert linear_chain(model, x) is not None  # the forward takes the Linear chain
    elbo, eps = pyro_elbo_and_eps(model, guide, fused, x, y)
    assert torch.allclose(fused.loss(x, y=y, eps=eps), -elbo, rtol=1e-5)
