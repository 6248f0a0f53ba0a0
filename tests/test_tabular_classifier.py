"""The tabular classification prior (:func:`pyrobayes.models.tabular_classifier_model`):
class balance and logits distribution against exact answers, and one model object giving
SVI and NUTS valid runs."""

import math

import pyro
import pytest
import torch
from scipy import stats

import pyrobayes
from pyrobayes.infer import forward_draws, sample_prior
from pyrobayes.infer.nuts.sampler import nuts_ppd
from pyrobayes.likelihoods import Categorical
from pyrobayes.models import tabular_classifier_model
from pyrobayes.models.tabular import TABULAR_CLASSIFICATION
from pyrobayes.pfn import TabularBNNPrior
from pyrobayes.ppd import CategoricalPPD


def _prior_logits(d: int, num_classes: int, num_sets: int, n: int, seed: int = 0):
    """``num_sets`` prior data sets of ``n`` rows: features, weight draws and logits."""
    torch.manual_seed(seed)
    model = tabular_classifier_model(d, num_classes)
    x = TabularBNNPrior(max_features=d).sample_features(num_sets, n, d)
    draws = sample_prior(model, num_sets)
    return model, x, draws, forward_draws(model, draws, x, inputs_batched=True)


def test_model_shape_sites_and_errors():
    model = tabular_classifier_model(4, 6, name="c")
    assert isinstance(model.likelihood, Categorical)
    assert pyrobayes.tabular_classifier_model is tabular_classifier_model
    tr = pyro.poutine.trace(model).get_trace(torch.zeros(7, 4), y=torch.arange(7) % 6)
    w = tr.nodes["c.net.4.weight"]
    assert tuple(w["value"].shape) == (6, 50)
    s = TABULAR_CLASSIFICATION["weight_scale"]
    # fan-in priors: s/sqrt(d) on the first layer, s/sqrt(50) on the others, N(0, 1) biases
    assert float(tr.nodes["c.net.0.weight"]["fn"].stddev.unique()) == pytest.approx(s / 2)
    assert float(w["fn"].stddev.unique()) == pytest.approx(s / math.sqrt(50))
    assert float(tr.nodes["c.net.4.bias"]["fn"].stddev.unique()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="d >= 1"):
        tabular_classifier_model(0, 3)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        tabular_classifier_model(3, 1)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_class_balance_is_exactly_uniform_in_expectation(num_classes):
    # the C logits are exchangeable, so E[freq of class k] = 1/C exactly; single data sets
    # are imbalanced (the output biases): their frequencies vary more than multinomial noise
    n, sets = 100, 600
    *_, logits = _prior_logits(3, num_classes, sets, n, seed=1)
    torch.manual_seed(2)
    y = torch.distributions.Categorical(logits=logits).sample()  # [sets, n]
    freq = torch.nn.functional.one_hot(y, num_classes).float().mean(1)  # [sets, C]
    se = freq.std(0) / math.sqrt(sets)
    assert ((freq.mean(0) - 1 / num_classes).abs() < 4 * se).all(), (freq.mean(0), se)
    # E[softmax] = 1/C as well (labels' expected frequencies before the draw)
    probs = logits.softmax(-1).mean(1)
    assert ((probs.mean(0) - 1 / num_classes).abs() < 4 * probs.std(0) / math.sqrt(sets)).all()
    multinomial_var = (1 / num_classes) * (1 - 1 / num_classes) / n
    assert float(freq.var(0).mean()) > 5 * multinomial_var


def test_logits_given_last_hidden_layer_are_iid_normal_with_the_fan_in_variance():
    # given h = the last hidden layer, logit_k = w_k . h + b_k with w_k ~ N(0, s^2/H I),
    # b_k ~ N(0, 1) independent: logit_k ~ N(0, s^2 |h|^2 / H + 1), i.i.d. over k
    d, num_classes, sets = 3, 4, 4000
    model, x, draws, logits = _prior_logits(d, num_classes, sets, 1, seed=3)
    prefix = model._pyro_name + ".net."
    h = x[:, 0]  # [sets, d]
    for layer in (0, 2):
        w, b = draws[f"{prefix}{layer}.weight"], draws[f"{prefix}{layer}.bias"]
        h = torch.tanh(torch.einsum("sij,sj->si", w, h) + b)
    s, width = TABULAR_CLASSIFICATION["weight_scale"], h.shape[-1]
    sd = (s**2 * h.pow(2).sum(-1) / width + 1.0).sqrt()
    z = logits[:, 0] / sd[:, None]  # [sets, C], should be i.i.d. N(0, 1)
    flat = z.flatten().double()
    assert abs(float(flat.mean())) < 4 / math.sqrt(flat.numel())
    # var of the sample variance of N(0,1) draws: 2/(N-1)
    assert abs(float(flat.var()) - 1) < 4 * math.sqrt(2 / (flat.numel() - 1))
    assert stats.kstest(flat.numpy(), "norm").pvalue > 1e-3
    corr = torch.corrcoef(z.T.double())
    off = corr[~torch.eye(num_classes, dtype=torch.bool)]
    assert float(off.abs().max()) < 4 / math.sqrt(sets)


def _tiny_data(d: int = 2, num_classes: int = 3, n: int = 24):
    torch.manual_seed(4)
    x = torch.randn(n, d)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.7).long()  # 3 classes, learnable
    return x, y % num_classes


def test_svi_fits_the_classifier_and_predicts_a_categorical_ppd():
    from pyrobayes.guides import MOPEDNormal
    from pyrobayes.infer import PosteriorPredictive

    pyro.clear_param_store()
    x, y = _tiny_data()
    model = tabular_classifier_model(2, 3)
    guide = MOPEDNormal(model, delta=0.1)
    hist = pyrobayes.fit(model, guide, (x, y), epochs=150, lr=1e-2, progress=False, seed=0)
    assert math.isfinite(hist.losses[-1]) and hist.losses[-1] < hist.losses[0]
    ppd = PosteriorPredictive(model, guide, num_samples=16)(x)
    assert isinstance(ppd, CategoricalPPD)
    probs = ppd.probs.mean(0) if ppd.probs.dim() == 3 else ppd.probs
    assert probs.shape == (24, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(24))
    # better than the label frequencies on the training rows (it learned something)
    nll = -probs.gather(1, y[:, None]).log().mean()
    freq = torch.bincount(y, minlength=3).float() / len(y)
    assert float(nll) < float(-(freq[y]).log().mean())


@pytest.mark.filterwarnings("ignore:NUTS reference NOT converged")  # 40 draws: a smoke run
def test_nuts_runs_on_the_same_model_object():
    x, y = _tiny_data()
    model = tabular_classifier_model(2, 3)
    ppd, info = nuts_ppd(
        model,
        x,
        y,
        x[:5],
        num_warmup=40,
        num_samples=40,
        num_chains=2,
        progress=False,
        seed=0,
        return_mcmc=True,
    )
    assert isinstance(ppd, CategoricalPPD)
    probs = ppd.probs.mean(0) if ppd.probs.dim() == 3 else ppd.probs
    assert probs.shape == (5, 3) and bool(torch.isfinite(probs).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    assert info.num_chains == 2 and math.isfinite(info.max_r_hat)
