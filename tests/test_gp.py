"""Exact GP posterior predictive against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from pyrobayes.gp import exact_gp_ppd, rbf_kernel
from pyrobayes.ppd import NormalMixturePPD


def test_rbf_kernel_values():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    k = rbf_kernel(x, x, lengthscale=0.5, outputscale=2.0)
    # 2 * exp(-1 / (2 * 0.25)) = 2 * exp(-2)
    expected = torch.tensor([[2.0, 2 * math.exp(-2)], [2 * math.exp(-2), 2.0]], dtype=torch.float64)
    torch.testing.assert_close(k, expected)


def test_one_training_point_by_hand():
    # K = 1, K + s^2 = 1.01; at x*=0: mean = 1/1.01, var = 1 - 1/1.01 + 0.01;
    # at x*=0.5 (ell=0.5): k* = exp(-0.5), mean = e^-0.5/1.01, var = 1 - e^-1/1.01 + 0.01.
    ppd = exact_gp_ppd(
        torch.tensor([0.0], dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64),
        torch.tensor([0.0, 0.5], dtype=torch.float64),
        lengthscale=0.5,
        outputscale=1.0,
        noise_std=0.1,
    )
    assert isinstance(ppd, NormalMixturePPD)
    mean = torch.tensor([1 / 1.01, math.exp(-0.5) / 1.01], dtype=torch.float64)
    var = torch.tensor([1 - 1 / 1.01 + 0.01, 1 - math.exp(-1) / 1.01 + 0.01], dtype=torch.float64)
    torch.testing.assert_close(ppd.mean, mean)
    torch.testing.assert_close(ppd.variance, var)


def test_prior_predictive_with_no_training_points():
    ppd = exact_gp_ppd(
        torch.zeros(0), torch.zeros(0), torch.linspace(-2, 2, 4), outputscale=2.0, noise_std=0.3
    )
    torch.testing.assert_close(ppd.mean, torch.zeros(4))
    torch.testing.assert_close(ppd.variance, torch.full((4,), 2.09))


def test_matches_direct_matrix_inverse_2d_inputs():
    rng = np.random.default_rng(0)
    xt, yt, xq = rng.uniform(-2, 2, (7, 2)), rng.normal(size=7), rng.uniform(-2, 2, (5, 2))
    ell, sf2, sn = 0.7, 1.3, 0.2

    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sf2 * np.exp(-d2 / (2 * ell**2))

    inv = np.linalg.inv(k(xt, xt) + sn**2 * np.eye(7))
    mean = k(xq, xt) @ inv @ yt
    var = sf2 - np.einsum("ij,jk,ik->i", k(xq, xt), inv, k(xq, xt)) + sn**2
    ppd = exact_gp_ppd(xt, yt, xq, ell, sf2, sn)
    np.testing.assert_allclose(ppd.mean.numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ppd.variance.numpy(), var, rtol=1e-10, atol=1e-12)
    # log density of a Normal with those moments
    y = rng.normal(size=5)
    lp = -0.5 * np.log(2 * np.pi * var) - 0.5 * (y - mean) ** 2 / var
    np.testing.assert_allclose(ppd.log_prob(torch.as_tensor(y)).numpy(), lp, rtol=1e-10)


def test_dtype_follows_query():
    ppd = exact_gp_ppd(torch.zeros(3), torch.ones(3), torch.zeros(2, dtype=torch.float32))
    assert ppd.mean.dtype == torch.float32


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(3), torch.zeros(2), torch.zeros(1)), "y_train has 2"),
        ((torch.zeros(3), torch.tensor([0.0, float("nan"), 0.0]), torch.zeros(1)), "NaN"),
        ((torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 1)), "features"),
        ((torch.zeros(3), torch.zeros(3), torch.zeros(1, 1, 1)), "shape"),
    ],
)
def test_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        exact_gp_ppd(*args)
