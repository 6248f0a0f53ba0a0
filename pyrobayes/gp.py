"""Exact Gaussian-process maths: the RBF kernel and the posterior predictive.

This is the reference PPD for the GP prior the PFN is trained on. With the RBF kernel

.. math::

    k(x, x') = \\sigma_f^2 \\exp\\Big(-\\frac{\\lVert x - x' \\rVert^2}{2 \\ell^2}\\Big)

(``outputscale`` = :math:`\\sigma_f^2`, a variance, as in GPyTorch) and Gaussian
observation noise :math:`\\sigma_n^2`, the posterior predictive of a *noisy* target
at a query :math:`x_*` given :math:`D = (X, y)` is

.. math::

    y_* \\mid D \\sim \\mathcal N\\big(k_*^\\top (K + \\sigma_n^2 I)^{-1} y,\\;
    k_{**} - k_*^\\top (K + \\sigma_n^2 I)^{-1} k_* + \\sigma_n^2\\big),

computed with a Cholesky factor in float64. With no training points it is the prior
predictive :math:`\\mathcal N(0, \\sigma_f^2 + \\sigma_n^2)`.

Example::

    >>> import torch
    >>> from pyrobayes.gp import exact_gp_ppd
    >>> ppd = exact_gp_ppd(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0, 0.5]),
    ...                    lengthscale=0.5, outputscale=1.0, noise_std=0.1)
    >>> round(float(ppd.mean[0]), 4)
    0.9901
"""

from __future__ import annotations

import numpy as np
import torch

from pyrobayes.ppd import NormalMixturePPD, normal_ppd

__all__ = ["rbf_kernel", "exact_gp_ppd"]


def _as_points(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Shape ``[n]`` or ``[n, d]`` -> ``[n, d]`` (a 1-D input is n scalar points)."""
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [n] or [n, d], got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def rbf_kernel(
    x1: torch.Tensor, x2: torch.Tensor, lengthscale: float = 0.5, outputscale: float = 1.0
) -> torch.Tensor:
    """RBF covariance matrix :math:`\\sigma_f^2 \\exp(-\\lVert x_1 - x_2 \\rVert^2 / 2\\ell^2)`.

    Args:
        x1: points, shape ``[..., n, d]``.
        x2: points, shape ``[..., m, d]``.
        lengthscale: :math:`\\ell > 0`.
        outputscale: :math:`\\sigma_f^2 > 0` (a variance).

    Returns:
        ``[..., n, m]`` covariance matrix.

    Example::

        >>> rbf_kernel(torch.zeros(1, 1), torch.ones(1, 1), lengthscale=1.0)
        tensor([[0.6065]])
    """
    if lengthscale <= 0 or outputscale <= 0:
        raise ValueError(
            f"lengthscale and outputscale must be positive, got {lengthscale}, {outputscale}"
        )
    # Squared distances by explicit differences (not the |a|^2+|b|^2-2ab trick) so that
    # the diagonal is exactly zero and the kernel exactly symmetric.
    sq = (x1.unsqueeze(-2) - x2.unsqueeze(-3)).pow(2).sum(-1)
    return outputscale * torch.exp(-0.5 * sq / lengthscale**2)


def exact_gp_ppd(
    x_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    x_query: torch.Tensor | np.ndarray,
    lengthscale: float = 0.5,
    outputscale: float = 1.0,
    noise_std: float = 0.1,
) -> NormalMixturePPD:
    """Exact GP posterior predictive (observation noise included) at ``x_query``.

    Args:
        x_train: ``[n]`` or ``[n, d]`` training inputs (``n`` may be 0).
        y_train: ``[n]`` training targets.
        x_query: ``[m]`` or ``[m, d]`` query inputs.
        lengthscale, outputscale, noise_std: kernel hyper-parameters (see module doc).

    Returns:
        ``normal_ppd(mean, std)`` with batch shape ``[m]``, in the dtype of ``x_query``
        (float64 maths inside), on ``x_query``'s device.

    Example::

        >>> ppd = exact_gp_ppd(torch.zeros(0), torch.zeros(0), torch.zeros(3))
        >>> ppd.variance  # prior predictive: outputscale + noise_std**2
        tensor([1.0100, 1.0100, 1.0100])
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be non-negative, got {noise_std}")
    xq = _as_points(x_query, "x_query")
    out_dtype, device = xq.dtype, xq.device
    xq = xq.to(torch.float64)
    xt = _as_points(x_train, "x_train").to(device=device, dtype=torch.float64)
    yt = torch.as_tensor(y_train).to(device=device, dtype=torch.float64).reshape(-1)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x_train has {xt.shape[0]} points but y_train has {yt.shape[0]}")
    if xt.shape[0] > 0 and xt.shape[1] != xq.shape[1]:
        raise ValueError(f"x_train has {xt.shape[1]} features but x_query has {xq.shape[1]}")
    if not torch.isfinite(yt).all():
        raise ValueError("y_train contains NaN or infinite values")

    prior_var = torch.full((xq.shape[0],), float(outputscale), dtype=torch.float64, device=device)
    if xt.shape[0] == 0:
        mean = torch.zeros_like(prior_var)
        var = prior_var
    else:
        k = rbf_kernel(xt, xt, lengthscale, outputscale)
        k = k + (noise_std**2) * torch.eye(xt.shape[0], dtype=torch.float64, device=device)
        chol = torch.linalg.cholesky(k)
        k_star = rbf_kernel(xt, xq, lengthscale, outputscale)  # [n, m]
        alpha = torch.cholesky_solve(yt.unsqueeze(-1), chol)  # (K + s^2 I)^-1 y
        mean = (k_star * alpha).sum(0)
        v = torch.linalg.solve_triangular(chol, k_star, upper=False)
        var = (prior_var - v.pow(2).sum(0)).clamp_min(0.0)
    std = (var + noise_std**2).clamp_min(1e-30).sqrt()
    return normal_ppd(mean.to(out_dtype), std.to(out_dtype))
