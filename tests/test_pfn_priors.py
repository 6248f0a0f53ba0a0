"""Dataset priors: the GP prior's covariance and the batched BNN prior."""

import pytest
import torch

from pyrobayes.gp import rbf_kernel
from pyrobayes.pfn import BNNPrior, GPPrior


def test_gp_prior_draws_have_the_kernel_covariance():
    torch.manual_seed(0)
    prior = GPPrior(lengthscale=0.5, outputscale=1.0, noise_std=0.1)
    x, y = prior.sample(4000, 8)
    assert x.shape == (4000, 8, 1) and y.shape == (4000, 8)
    assert x.min() >= -2 and x.max() <= 2
    # E[y_i y_j | x] = k(x_i, x_j) + noise^2 [i = j]; averaged residuals must vanish.
    k = rbf_kernel(x.double(), x.double(), 0.5, 1.0) + 0.01 * torch.eye(8, dtype=torch.float64)
    resid = y.double().unsqueeze(-1) * y.double().unsqueeze(-2) - k
    off = ~torch.eye(8, dtype=torch.bool)
    # per-entry variance <= 2, ~4000 independent datasets: s.e. ~ 0.02 (diag), < 0.01 (off-diag mean)
    assert abs(resid[:, ~off].mean()) < 0.05
    assert abs(resid[:, off].mean()) < 0.03
    # a mis-specified kernel would be detected: lengthscale 1.0 differs by ~0.1 on average
    k_wrong = rbf_kernel(x.double(), x.double(), 1.0, 1.0)
    assert (
        abs((y.double().unsqueeze(-1) * y.double().unsqueeze(-2) - k_wrong)[:, off].mean()) > 0.05
    )


def test_gp_prior_reference_ppd_and_description():
    prior = GPPrior(lengthscale=0.3, outputscale=2.0, noise_std=0.2, x_low=0.0, x_high=1.0)
    d = prior.describe()
    assert d["kind"] == "gp" and d["lengthscale"] == 0.3 and d["x_low"] == [0.0]
    ppd = prior.ppd(torch.zeros(0), torch.zeros(0), torch.zeros(2))
    torch.testing.assert_close(ppd.variance, torch.full((2,), 2.04))
    with pytest.raises(ValueError, match="x_high must exceed"):
        GPPrior(x_low=1.0, x_high=0.0)


def test_bnn_prior_batched_draws_match_the_model_prior():
    from pyrobayes.infer import forward_draws, sample_prior
    from pyrobayes.models.mlp import default_regression_model

    torch.manual_seed(0)
    prior = BNNPrior()
    assert prior.task == "regression" and prior.noise_std == pytest.approx(0.1)
    assert prior.describe()["kind"] == "bnn"
    x, y = prior.sample(3000, 6)
    assert x.shape == (3000, 6, 1) and y.shape == (3000, 6) and torch.isfinite(y).all()
    # Each dataset is one network: its points are strongly correlated (the biases
    # dominate), unlike independent noise.
    corr = torch.corrcoef(y[:, :2].T)[0, 1]
    assert corr > 0.5
    # Marginal variance at random x equals that of f(x) from the prior, plus noise^2.
    model = default_regression_model()
    xs = torch.rand(3000, 6, 1) * 4 - 2
    f = forward_draws(model, sample_prior(model, 3000), xs, inputs_batched=True).reshape(3000, 6)
    var_ref = f.var() + 0.01
    assert (
        abs(y.var() / var_ref - 1) < 0.1
    )  # relative s.e. of a variance from ~3000 sets ~ 0.03-0.05


def test_bnn_prior_with_categorical_likelihood_gives_labels():
    from pyrobayes.bayesian_model import BayesianModel
    from pyrobayes.convert import to_pyro
    from pyrobayes.likelihoods import Categorical
    from pyrobayes.models.mlp import MLP

    torch.manual_seed(0)
    model = BayesianModel(to_pyro(MLP(2, (8,), 3), prior="normal"), Categorical())
    prior = BNNPrior(model, x_low=(-1.0, 0.0), x_high=(1.0, 2.0), num_features=2)
    assert prior.task == "classification"
    x, y = prior.sample(16, 30)
    assert x.shape == (16, 30, 2) and y.shape == (16, 30)
    assert set(y.unique().tolist()) <= {0.0, 1.0, 2.0} and len(y.unique()) > 1
    assert (x[..., 1] >= 0).all() and (x[..., 1] <= 2).all()
