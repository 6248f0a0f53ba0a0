"""The vectorised fast paths (flat mean-field ELBO, one-call guide sampling, batched
matrix products for Linear chains, fused Adam) equal the general paths they replace."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrobayes import BayesianModel, Categorical, Gaussian, fit, to_bayesian, to_pyro
from pyrobayes.guides import MOPEDNormal
from pyrobayes.infer import twin as twin_mod
from pyrobayes.infer.fast_check import FastPathFallbackWarning
from pyrobayes.infer.fast_elbo import FusedMeanFieldELBO
from pyrobayes.infer.predictive import _softplus_normal_leaves, sample_posterior
from pyrobayes.infer.steppers import FusedStepper, TorchStepper, default_optimiser
from pyrobayes.likelihoods import data_size


def _mlp(out=3, bias=True):
    return torch.nn.Sequential(
        torch.nn.Linear(5, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 16, bias=bias),
        torch.nn.Tanh(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(16, out),
    )


@pytest.mark.parametrize("prior", ["pretrained", "layerwise", "scale_mixture"])
@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("local_reparam", [False, True])
def test_flat_elbo_equals_pyro_trace_elbo(prior, freeze, local_reparam):
    """Both branches of the one fused path (the one-node draw, autograd with a non-Normal
    prior or local reparameterisation), frozen means included, against Pyro's traces for
    the same noise; with local reparameterisation Pyro's traces run under the same
    messenger with the same output noise."""
    from pyro import poutine

    from pyrobayes.guides import LocalReparameterization

    torch.manual_seed(0)
    # float64: the loss (~1e3) minus its large prior terms leaves gradients of ~0.4, so
    # float32 would agree to ~1e-4 only; in float64 both sides are exact to ~1e-12
    model, guide = to_bayesian(
        _mlp().double(), delta=0.2, likelihood=Categorical(), prior=prior, freeze=freeze
    )
    model.eval()  # no dropout: both paths see the same network
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    guide.setup(x, y=y)
    fused = FusedMeanFieldELBO(model, guide)
    fused.local_reparam = local_reparam
    lrt = LocalReparameterization if local_reparam else __import__("contextlib").nullcontext
    torch.manual_seed(1)
    with lrt():
        gtr = poutine.trace(guide).get_trace(x, y=y)
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(x, y=y)
    elbo = mtr.log_prob_sum() - gtr.log_prob_sum()
    eps = {}
    for s in fused.sites:
        m, sd = guide._get_loc_and_scale(s)
        eps[s] = ((gtr.nodes[s]["value"] - m) / sd).detach()
    params = [p for p in guide.parameters() if p.requires_grad]
    torch.manual_seed(1)
    guide(x, y=y)  # the guide's draws, so the output noise comes next in both runs
    flat_loss = fused.loss(x, y=y, eps=eps)
    assert fused._flat is not None  # the MOPED guide takes the flat path
    assert torch.allclose(flat_loss, -elbo, rtol=1e-10)
    g_flat = torch.autograd.grad(flat_loss, params)
    g_pyro = torch.autograd.grad(-elbo, params)
    assert all(torch.allclose(a, b, rtol=1e-8, atol=1e-10) for a, b in zip(g_flat, g_pyro))


def test_flat_guide_draws_are_loc_plus_scale_times_one_noise_vector():
    torch.manual_seed(0)
    model, guide = to_bayesian(_mlp(), delta=0.2, likelihood=Categorical())
    x = torch.randn(4, 5)
    guide.setup(x)
    leaves = _softplus_normal_leaves(guide)
    assert leaves is not None and [n for n, *_ in leaves] == [
        n for n, _ in guide.prototype_trace.iter_stochastic_nodes()
    ]
    torch.manual_seed(3)
    draws = sample_posterior(guide, 6)
    torch.manual_seed(3)
    eps = torch.randn(6 * sum(loc.numel() for _, loc, _ in leaves))
    offset = 0
    for name, loc, _ in leaves:
        k = 6 * loc.numel()
        m, s = guide._get_loc_and_scale(name)
        expected = m + s * eps[offset : offset + k].view(6, *loc.shape)
        assert torch.allclose(draws[name], expected, atol=1e-6)
        offset += k


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [None, 4])
def test_linear_chain_forward_equals_vmap_path(bias, chunk, monkeypatch):
    torch.manual_seed(0)
    # layer 0: Bayesian weight, fixed bias; layer 2: no bias; layer 5: all Bayesian
    model, guide = to_bayesian(
        _mlp(bias=bias), delta=0.2, likelihood=Categorical(), include=["0.weight", "2.*", "5.*"]
    )
    x = torch.randn(7, 5)
    guide.setup(x)
    draws = sample_posterior(guide, 9)
    assert twin_mod.linear_chain(model, x) is not None
    fast = twin_mod.forward_draws(model, draws, x, chunk_size=chunk)
    one = twin_mod.forward_draws(model, {k: v[4] for k, v in draws.items()}, x)
    monkeypatch.setattr(twin_mod, "_chain_for", lambda *a, **k: None)
    general = twin_mod.forward_draws(model, draws, x, chunk_size=chunk)
    assert fast.shape == general.shape == (9, 7, 3)
    assert torch.allclose(fast, general, atol=1e-5)
    assert one.shape == (7, 3) and torch.allclose(one, general[4], atol=1e-5)  # one draw


def test_linear_chain_declines_what_it_cannot_batch():
    model, _ = to_bayesian(
        torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.Flatten()), likelihood=Gaussian(0.1)
    )
    assert twin_mod.linear_chain(model, torch.randn(4, 2, 5)) is None
    model, _ = to_bayesian(_mlp(), likelihood=Categorical())
    assert twin_mod.linear_chain(model, torch.randn(4, 5)) is not None
    assert twin_mod.linear_chain(model, torch.randn(2, 4, 5)) is None  # 3-D input
    assert twin_mod.linear_chain(model, torch.zeros(4, 5, dtype=torch.long)) is None
    model.output_fn = torch.nn.functional.log_softmax  # not the default output map
    assert twin_mod.linear_chain(model, torch.randn(4, 5)) is None


def test_the_users_optimiser_is_used_as_given_and_the_default_is_fused_adam():
    """``fit(optim=None)`` builds ``default_optimiser(lr)`` (Adam, one fused kernel); an
    optimiser the user passes is built as given; both over the guide's own parameters
    (a MOPED guide's two flat tensors)."""
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = default_optimiser(0.1)(p)
    assert opt.defaults["fused"] is True and opt.defaults["lr"] == 0.1
    torch.manual_seed(0)
    model, guide = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1), prior="normal")
    x = torch.randn(32, 2)
    y = x @ torch.tensor([1.0, -2.0])
    built = []

    def mine(params):
        built.append(torch.optim.Adam(params, lr=0.05, foreach=True))
        return built[-1]

    fit(model, guide, (x, y), epochs=2, batch_size=16, optim=mine, progress=False)
    assert len(built) == 1 and built[0].defaults["fused"] is None
    assert built[0].param_groups[0]["params"] == list(guide.flat_storage())
    st = FusedStepper(model, guide, default_optimiser(0.05), {"beta": 1.0})
    first = st.step(x, y=y)
    for _ in range(200):
        last = st.step(x, y=y)
    assert st.opt.defaults["fused"] is True and len(st.params) == 2 and last < first


@pytest.mark.parametrize("num_samples, chunk", [(9, None), (10, 4), (3, 32)])
def test_predictive_chain_path_makes_the_same_draws_as_the_general_path(
    num_samples, chunk, monkeypatch
):
    """``PosteriorPredictive.outputs`` on a Linear chain draws block by block in place
    (one buffer for the noise, the batched chain path); it must give exactly what
    sampling each chunk and calling ``forward_draws`` gives, from the same random
    numbers (blocks of 3 draws here, so several blocks and a short last one)."""
    from pyrobayes import PosteriorPredictive
    from pyrobayes.infer.predictive import posterior_chunks

    torch.manual_seed(0)
    model, guide = to_bayesian(
        _mlp(), delta=0.2, likelihood=Categorical(), include=["0.weight", "2.*", "5.*"]
    )
    x = torch.randn(7, 5)
    guide.setup(x)
    monkeypatch.setattr(twin_mod, "_block_draws", lambda chain, x: 3)
    calls = []
    chain_fn = twin_mod._chain_forward
    monkeypatch.setattr(twin_mod, "_chain_forward", lambda *a: calls.append(a[3:]) or chain_fn(*a))
    torch.manual_seed(5)
    fast = PosteriorPredictive(model, guide, num_samples=num_samples, chunk_size=chunk).outputs(x)
    state_after_fast = torch.get_rng_state()
    assert calls == [(x, num_samples, min(chunk or num_samples, 3))]  # the batched path
    torch.manual_seed(5)
    step = min(chunk or num_samples, 3)
    general = torch.cat(
        [twin_mod.forward_draws(model, d, x) for d in posterior_chunks(guide, num_samples, step)]
    )
    assert fast.shape == (num_samples, 7, 3)
    assert torch.equal(fast, general)
    assert torch.equal(state_after_fast, torch.get_rng_state())  # the same random numbers used


def test_linear_chain_reuses_buffers_without_touching_the_input(monkeypatch):
    """Blocks of 2 draws reuse one buffer per hidden layer and write the last layer's
    rows straight into the output: an activation before the first layer must not act in
    place on the caller's input, and an out-of-place activation after the last layer
    (GELU) must still land in the output; all equal to the general ``vmap`` path."""
    nn = torch.nn
    net = nn.Sequential(
        nn.Tanh(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 2),
        nn.GELU(),
    )  # fmt: skip
    torch.manual_seed(0)
    model, guide = to_bayesian(net, delta=0.3, likelihood=Gaussian(0.1))
    x = torch.randn(5, 4)
    x_before = x.clone()
    guide.setup(x)
    draws = sample_posterior(guide, 7)
    monkeypatch.setattr(twin_mod, "_block_draws", lambda chain, x: 2)
    fast = twin_mod.forward_draws(model, draws, x)
    assert torch.equal(x, x_before)
    monkeypatch.setattr(twin_mod, "_chain_for", lambda *a, **k: None)
    general = twin_mod.forward_draws(model, draws, x)
    assert fast.shape == general.shape == (7, 5, 2)
    assert torch.allclose(fast, general, atol=1e-6)


# --- the setup check: the fused ELBO steps aside for a model it does not compute --------


class _Penalised(BayesianModel):
    """Adds a ``pyro.factor`` penalty on the outputs: a site the fused ELBO never scores."""

    def forward(self, *inputs, y=None, **kwargs):
        out = super().forward(*inputs, y=y, **kwargs)
        pyro.factor("penalty", -100.0 * out.pow(2).sum())
        return out


class _Shifted(BayesianModel):
    """An extra latent sample site (a shift of the outputs) the fused ELBO knows nothing of."""

    def forward(self, *inputs, y=None, **kwargs):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        out = self.output_fn(self.net(*inputs, **kwargs)) + shift
        return self.likelihood(out, y)


def _regression(cls=BayesianModel, likelihood=None, dtype=torch.float32):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = cls(to_pyro(net.to(dtype), name="reg"), likelihood or Gaussian(0.1))
    x = torch.linspace(-1, 1, 32, dtype=dtype)[:, None]
    return model, MOPEDNormal(model, delta=0.1), x, torch.sin(3 * x[:, 0])


def _fit(model, guide, x, y, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(
            model, guide, (x, y), epochs=3, batch_size=16, lr=0.01, seed=3, progress=False, **kw
        )
    fallbacks = [w for w in caught if issubclass(w.category, FastPathFallbackWarning)]
    return history.losses, [str(w.message) for w in fallbacks]


@pytest.mark.parametrize(("cls", "site"), [(_Penalised, "penalty"), (_Shifted, "shift")])
def test_fit_falls_back_to_pyro_traces_for_a_model_that_adds_to_itself(cls, site):
    losses, warned = _fit(*_regression(cls))
    pyro.clear_param_store()
    expected, none = _fit(*_regression(cls), fused=False)
    assert losses == expected  # the very objective (and draws) of Pyro's Trace_ELBO
    assert none == []
    assert len(warned) == 1  # said once, at setup, not per step
    assert f"site {site!r} is in the model's trace but not in the fused ELBO" in warned[0]


def test_fit_keeps_the_fused_path_for_a_plain_model(monkeypatch):
    def traced_step(*args, **kwargs):
        raise AssertionError("the plain BayesianModel left the fused path")

    monkeypatch.setattr(TorchStepper, "step", traced_step)
    losses, warned = _fit(*_regression())
    assert warned == [] and len(losses) == 3


def test_fused_true_refuses_a_model_the_fused_elbo_does_not_compute():
    with pytest.raises(ValueError, match="site 'penalty' is in the model's trace"):
        _fit(*_regression(_Penalised), fused=True)


def _class_model(**kw):
    torch.manual_seed(0)
    model, guide = to_bayesian(_mlp(), delta=0.2, likelihood=Categorical(), **kw)
    return model, guide, torch.randn(12, 5), torch.randint(0, 3, (12,))


@pytest.mark.parametrize(
    "build",
    [
        lambda: _class_model(),
        lambda: _class_model(prior="scale_mixture"),  # not a Normal prior: per-site log p
        lambda: _class_model(freeze=True),  # frozen means are buffers
        lambda: _regression(likelihood=Gaussian(noise_prior=dist.LogNormal(-1.6, 0.8))),
        lambda: _regression(dtype=torch.float64),
    ],
    ids=["categorical", "scale-mixture", "frozen-means", "latent-noise", "float64"],
)
def test_setup_check_accepts_what_the_fused_elbo_computes(build):
    model, guide, x, y = build()
    model.train()
    with data_size(3 * len(x)):  # a minibatch: the likelihood scaled by N / B on both paths
        assert FusedMeanFieldELBO(model, guide).verify(x, y=y) is None
    assert model.training and all(m.training for m in model.modules())  # modes restored


def test_setup_check_names_a_changed_likelihood_density():
    """Same sites, other numbers: a subclass that rescales the likelihood's input."""

    class Doubled(BayesianModel):
        def forward(self, *inputs, y=None, **kwargs):
            return self.likelihood(2.0 * self.output_fn(self.net(*inputs, **kwargs)), y)

    model, guide, x, y = _regression(Doubled)
    reason = FusedMeanFieldELBO(model, guide).verify(x, y=y)
    assert reason is not None and reason.startswith("the fused ELBO gives log density")


# --- Pyro's param store holds the fitted guide ----------------------------------------------


def test_param_store_saved_after_a_default_fit_restores_the_fit(tmp_path):
    model, guide, x, y = _regression()
    guide.setup(x)
    start = {k: v.clone() for k, v in guide.median().items()}
    _fit(model, guide, x, y)  # the default: fused, flat storage bound and released
    fitted = {k: v.clone() for k, v in guide.median().items()}
    assert max(float((fitted[k] - start[k]).abs().max()) for k in start) > 1e-3
    store = pyro.get_param_store()
    store.save(tmp_path / "params.pt")
    pyro.clear_param_store()
    store.load(tmp_path / "params.pt")
    # what a Pyro user does next: the same model and guide built again, run once
    model2, guide2, _, _ = _regression()
    guide2(x, y=y)
    for k, v in guide2.median().items():
        assert torch.equal(v, fitted[k]), k
