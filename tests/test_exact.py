"""SVI against closed-form answers: Bayesian linear regression with a conjugate prior.

Model: y = w·x + b + eps, eps ~ N(0, sigma^2) with sigma known, prior (w, b) ~ N(0, s^2 I).
With features phi = [x, 1] the exact posterior is N(mu, Lambda^-1),
Lambda = phi^T phi / sigma^2 + I / s^2, mu = Lambda^-1 phi^T y / sigma^2.
The optimum of a mean-field Normal guide is known exactly too: means mu and variances
1 / diag(Lambda) (KL(q||p) for a Gaussian p).
"""

import math

import pyro
import pytest
import torch
from torch import nn

from pyrobayes import Gaussian, PosteriorPredictive, fit, normal_ppd, sample_posterior, to_bayesian

SIGMA, S_PRIOR, N = 0.3, 1.0, 30


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 2, generator=g)
    y = 0.8 * x[:, 0] - 0.4 * x[:, 1] + 0.3 + SIGMA * torch.randn(N, generator=g)
    xq = torch.randn(200, 2, generator=g)
    yq = 0.8 * xq[:, 0] - 0.4 * xq[:, 1] + 0.3 + SIGMA * torch.randn(200, generator=g)
    return x.double(), y.double(), xq.double(), yq.double()


def exact(x, y):
    phi = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    lam = phi.T @ phi / SIGMA**2 + torch.eye(3, dtype=x.dtype) / S_PRIOR**2
    cov = torch.linalg.inv(lam)
    mu = cov @ phi.T @ y / SIGMA**2
    return mu, cov, lam


@pytest.mark.parametrize("local_reparam", [False, True])
def test_svi_matches_exact_meanfield_posterior_and_ppd(local_reparam):
    x, y, xq, yq = data()
    mu, cov, lam = exact(x, y)
    net = nn.Linear(2, 1).double()
    with torch.no_grad():  # MOPED starts from the least-squares (MLE) weights
        phi = torch.cat([x, torch.ones(N, 1, dtype=x.dtype)], 1)
        mle = torch.linalg.lstsq(phi, y[:, None]).solution[:, 0]
        net.weight.copy_(mle[:2][None])
        net.bias.copy_(mle[2:])
    model, guide = to_bayesian(
        net,
        delta=0.1,
        prior="normal",
        prior_kwargs={"scale": S_PRIOR},
        likelihood=Gaussian(SIGMA),
        name=f"blr{int(local_reparam)}",
    )
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.9985})
    fit(
        model,
        guide,
        (x, y),
        epochs=2500,
        batch_size=N,
        optim=optim,
        progress=False,
        seed=0,
        local_reparam=local_reparam,
    )

    loc_w, scale_w = guide.loc_and_scale(f"blr{int(local_reparam)}.net.weight")
    loc_b, scale_b = guide.loc_and_scale(f"blr{int(local_reparam)}.net.bias")
    loc = torch.cat([loc_w.flatten(), loc_b]).detach()
    scale = torch.cat([scale_w.flatten(), scale_b]).detach()
    mf_std = lam.diagonal().rsqrt()
    # Posterior stds are ~0.055; SVI's end-of-run jitter (lr ~5e-4) is far below 10% of that.
    assert torch.allclose(loc, mu, atol=0.1 * float(mf_std.min()))
    assert torch.allclose(scale, mf_std, rtol=0.1)

    # PPD: mixture over 4000 draws vs the exact Gaussian PPD on held-out points.
    ppd = PosteriorPredictive(model, guide, num_samples=4000, chunk_size=1000)(xq)
    phq = torch.cat([xq, torch.ones(len(xq), 1, dtype=xq.dtype)], 1)
    exact_ppd = normal_ppd(phq @ mu, (SIGMA**2 + ((phq @ cov) * phq).sum(1)).sqrt())
    nll_svi = -float(ppd.log_prob(yq).mean())
    nll_exact = -float(exact_ppd.log_prob(yq).mean())
    assert math.isfinite(nll_svi)
    assert abs(nll_svi - nll_exact) < 0.02
    assert torch.allclose(ppd.mean, exact_ppd.mean, atol=0.02)


def test_predictive_matches_a_loop_over_draws():
    """The vectorised predictive equals evaluating the net once per draw."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 4))
    model, guide = to_bayesian(net, delta=0.3, name="loop")
    x = torch.randn(5, 3)
    guide.setup(x)
    pp = PosteriorPredictive(model, guide, num_samples=6, chunk_size=4)
    pyro.set_rng_seed(3)
    out = pp.outputs(x)
    pyro.set_rng_seed(3)
    chunks = [sample_posterior(guide, n) for n in (4, 2)]  # the same draws, chunk by chunk
    expected = []
    for draws in chunks:
        for i in range(len(next(iter(draws.values())))):
            cond = {k: v[i] for k, v in draws.items()}
            with torch.no_grad():
                expected.append(pyro.poutine.condition(model, data=cond)(x))
    assert torch.allclose(out, torch.stack(expected), atol=1e-5)
    ppd = pp(x)
    assert ppd.probs.shape == (5, 4) and torch.allclose(ppd.probs.sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        pp(torch.full((2, 3), float("nan")))
