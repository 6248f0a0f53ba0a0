"""Input validation, MC dropout and the shared twin-forward primitive of the predictive."""

import pytest
import torch
from torch import nn

from pyrobayes import Gaussian, PosteriorPredictive, to_bayesian
from pyrobayes.infer import fit, forward_draws, sample_prior
from pyrobayes.likelihoods import Categorical
from pyrobayes.ppd import CategoricalPPD


def _clf(seed=0, n_in=3, n_out=4):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out))
    return to_bayesian(net)


@pytest.mark.parametrize("fused", [False, True])
def test_fractional_labels_rejected_in_fit(fused):
    model, guide = _clf()
    x, y = torch.randn(10, 3), torch.full((10,), 1.7)
    with pytest.raises(ValueError, match="integer class labels"):
        fit(model, guide, (x, y), epochs=1, batch_size=10, fused=fused, progress=False)


def test_fractional_labels_rejected_by_likelihood_and_ppd():
    logits = torch.randn(5, 4)
    with pytest.raises(ValueError, match="integer class labels"):
        Categorical().log_prob(logits[None], torch.full((1, 5), 1.7))
    ppd = CategoricalPPD.from_logits(logits[None])
    with pytest.raises(ValueError, match="integer class labels"):
        ppd.log_prob(torch.tensor([1.7] * 5))
    # whole-number floats are labels stored as float: accepted, same answer as ints
    ints = torch.tensor([0, 1, 2, 3, 1])
    assert torch.equal(ppd.log_prob(ints.float()), ppd.log_prob(ints))


def test_one_hot_labels_rejected():
    model, guide = _clf()
    x = torch.randn(10, 3)
    y = nn.functional.one_hot(torch.randint(0, 4, (10,)), 4).float()
    with pytest.raises(ValueError, match=r"one-hot, pass class indices \(argmax\)"):
        fit(model, guide, (x, y), epochs=1, batch_size=10, fused=False, progress=False)
    with pytest.raises(ValueError, match=r"one-hot, pass class indices \(argmax\)"):
        Categorical().log_prob(torch.randn(10, 4), y)


def test_regression_net_with_default_categorical_hints_gaussian():
    torch.manual_seed(0)
    model, guide = to_bayesian(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)))
    x, y = torch.randn(10, 3), torch.randn(10)
    for fused in (False, True):
        with pytest.raises(ValueError, match=r"likelihood=Gaussian"):
            fit(model, guide, (x, y), epochs=1, batch_size=10, fused=fused, progress=False)
    # multi-output net, real-valued targets: the hint names Gaussian too
    model, guide = _clf()
    with pytest.raises(ValueError, match=r"likelihood=Gaussian"):
        fit(model, guide, (x, torch.randn(10)), epochs=1, fused=False, progress=False)


@pytest.mark.parametrize("bad", [2.5, 0, -3, True, "4"])
def test_bad_num_samples(bad):
    model, guide = _clf()
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        PosteriorPredictive(model, guide, num_samples=bad)
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        sample_prior(model, bad)


def test_wrong_feature_count_is_named():
    model, guide = _clf()
    fit(model, guide, (torch.randn(10, 3), torch.randint(0, 4, (10,))), epochs=1, progress=False)
    pred = PosteriorPredictive(model, guide, num_samples=4)
    with pytest.raises(ValueError, match=r"expects 3 features, got x of shape \(10, 5\)"):
        pred(torch.randn(10, 5))


def test_mc_dropout_active_only_when_asked_and_batchnorm_stays_eval():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1)
    )
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
        net[1].running_var.fill_(2.0)
    # only the last layer is Bayesian, with a tiny prior width, so draws barely differ
    # through the weights; dropout masks are what would make them differ
    model, guide = to_bayesian(net, likelihood=Gaussian(0.1), include="4", delta=1e-6)
    guide(torch.randn(4, 3))
    x = torch.randn(6, 3)
    draws = sample_prior(model, 8)
    # pin every draw to the same weights: any spread then comes from dropout alone
    same = {k: v[:1].expand_as(v).clone() for k, v in draws.items()}
    off = forward_draws(model, same, x)
    on = forward_draws(model, same, x, mc_dropout=True)
    assert torch.allclose(off, off[:1].expand_as(off))
    assert (on - on[:1]).abs().amax() > 1e-3
    twin = model.net._pyrobayes_twin
    assert not twin[1].training and not twin[3].training  # restored, BatchNorm never trained
    # BatchNorm in train mode would update its running stats during the draws
    bn_before = twin[1].running_mean.clone()
    PosteriorPredictive(model, guide, num_samples=5, mc_dropout=True)(x)
    assert torch.equal(twin[1].running_mean, bn_before)
    outs = PosteriorPredictive(model, guide, num_samples=5, mc_dropout=True).outputs(x)
    assert outs.std(0).amax() > 1e-3


def test_one_twin_primitive_shared():
    from pyrobayes.infer.predictive import fixed_tensors as fixed_from_predictive
    from pyrobayes.infer.twin import fixed_tensors

    assert fixed_from_predictive is fixed_tensors
    model, _ = _clf()
    draws = sample_prior(model, 3)
    x = torch.randn(5, 3)
    stacked = forward_draws(model, draws, x)
    for s in range(3):  # one draw (no leading dimension) through the same entry point
        one = forward_draws(model, {site: d[s] for site, d in draws.items()}, x)
        assert torch.allclose(one, stacked[s], atol=1e-6)
