"""Recurrent layers (nn.LSTM / nn.GRU / nn.RNN) as Bayesian layers.

Pyro replaces ``RNNBase._flat_weights`` by a descriptor that re-reads every weight
attribute, so sampled weights reach the fused RNN kernel; the twin path (functional_call)
cannot be vmapped over draws (no batching rule for aten::lstm), hence ``map_draws(loop=True)``.
"""

import pyro
import pytest
import torch
from torch import nn
from torch.func import functional_call

from pyrobayes import BayesianModel, Gaussian, bayesian_sites, to_bayesian, to_pyro
from pyrobayes.convert import map_draws, twin_needs_loop
from pyrobayes.infer import PosteriorPredictive, fit, forward_draws, sample_prior
from pyrobayes.infer.predictive import fixed_tensors


class SeqReg(nn.Module):
    def __init__(self, cell=nn.LSTM):
        super().__init__()
        self.rnn = cell(2, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _twin_outputs(model, draws, x):
    """Per-draw outputs through the twin, with the loop fallback (what forward_draws must
    call for recurrent nets)."""
    net = model.net
    twin, fixed = net._pyrobayes_twin, fixed_tensors(net)
    stacked = {paths[0]: draws[s] for s, paths in bayesian_sites(model).items()}

    def one(params, xs):
        return functional_call(twin, {**fixed, **params}, (xs,))

    with torch.no_grad():
        return map_draws(one, (0, None), loop=twin_needs_loop(model))(stacked, x)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_weights_are_sampled_and_reach_the_kernel(cell):
    torch.manual_seed(0)
    # Only the recurrent layer is Bayesian: any output change between calls comes from it.
    model = BayesianModel(
        to_pyro(SeqReg(cell), include="rnn", name=f"r{cell.__name__}"), Gaussian(0.1)
    )
    assert {p.split(".")[-1] for p in bayesian_sites(model)} >= {"weight_ih_l0", "weight_hh_l0"}
    x = torch.randn(4, 5, 2)
    a, b = model(x), model(x)
    assert a.shape == (4,)
    assert (a - b).abs().max() > 1e-3
    # Conditioning on fixed weights makes the Pyro path deterministic and equal to the twin.
    draws = sample_prior(model, 3)
    out = _twin_outputs(model, draws, x)
    assert out.shape == (3, 4)
    assert (out[0] - out[1]).abs().max() > 1e-3
    for i in range(3):
        cond = {s: v[i] for s, v in draws.items()}
        with torch.no_grad():
            y = pyro.poutine.condition(model, cond)(x)
        torch.testing.assert_close(y, out[i], rtol=1e-5, atol=1e-5)


def test_map_draws_loop_matches_vmap_for_feedforward():
    w, x = torch.randn(5, 3, 2), torch.randn(4, 3)
    f = lambda w, x: torch.tanh(x @ w)  # noqa: E731
    torch.testing.assert_close(
        map_draws(f, (0, None))(w, x), map_draws(f, (0, None), loop=True)(w, x)
    )
    assert not twin_needs_loop(to_pyro(nn.Linear(2, 1), name="ff"))


def test_lstm_regressor_fit_end_to_end():
    torch.manual_seed(0)
    x = torch.randn(64, 6, 2)
    y = x[:, :, 0].sum(1) * 0.5
    model, guide = to_bayesian(SeqReg(), delta=0.05, likelihood=Gaussian(0.1), name="lstmfit")
    hist = fit(model, guide, (x, y), epochs=8, batch_size=16, lr=1e-2, progress=False)
    # The negative ELBO per point must drop from the pretrained (random) start.
    assert hist.losses[-1] < hist.losses[0]
    out = _twin_outputs(model, PosteriorPredictive(model, guide, num_samples=5).draws(x), x)
    assert out.shape == (5, 64)
    assert out.std(0).mean() > 0


def test_posterior_predictive_on_lstm():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 2)
    model, guide = to_bayesian(SeqReg(), delta=0.05, likelihood=Gaussian(0.1), name="lstmpp")
    guide.setup(x)
    ppd = PosteriorPredictive(model, guide, num_samples=4, chunk_size=2)(x)
    assert ppd.mean.shape == (8,)
    assert forward_draws(model, sample_prior(model, 3), x).shape == (3, 8)
