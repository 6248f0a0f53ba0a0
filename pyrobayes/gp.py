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

import math
from dataclasses import dataclass

import numpy as np
import torch

from pyrobayes.ppd import NormalMixturePPD, normal_ppd

__all__ = [
    "rbf_kernel",
    "exact_gp_ppd",
    "gp_log_marginal",
    "ARDGP",
    "fit_ard_gp",
    "SparseARDGP",
    "fit_sparse_ard_gp",
]


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


def gp_log_marginal(
    x: torch.Tensor,
    y: torch.Tensor,
    lengthscales: torch.Tensor | float,
    outputscale: float,
    noise_std: float,
) -> float:
    """Exact log marginal likelihood of a zero-mean GP with an ARD RBF kernel,

    .. math::

        \\log p(y \\mid X) = -\\tfrac12 y^\\top K_y^{-1} y - \\tfrac12 \\log|K_y|
        - \\tfrac n2 \\log 2\\pi,\\qquad
        K_y = \\sigma_f^2 \\exp\\Big(-\\tfrac12 \\sum_j (x_j - x'_j)^2/\\ell_j^2\\Big)
        + \\sigma_n^2 I,

    in float64 by a Cholesky factor (``lengthscales`` one per feature, or one number).

    Example::

        >>> lml = gp_log_marginal(torch.zeros(1, 2), torch.zeros(1), torch.ones(2), 1.0, 0.0 + 1.0)
        >>> round(lml, 4)  # N(0 | 0, 2): -0.5 log(2 pi 2)
        -1.2655
    """
    xt = _as_points(x, "x").to(torch.float64)
    yt = torch.as_tensor(y).to(torch.float64).reshape(-1)
    ls = torch.as_tensor(lengthscales, dtype=torch.float64).reshape(-1)
    z = xt / ls
    k = rbf_kernel(z, z, 1.0, float(outputscale)) + float(noise_std) ** 2 * torch.eye(
        len(yt), dtype=torch.float64
    )
    chol = torch.linalg.cholesky(k)
    alpha = torch.cholesky_solve(yt.unsqueeze(-1), chol).squeeze(-1)
    n = len(yt)
    return float(
        -0.5 * (yt * alpha).sum()
        - torch.log(torch.diagonal(chol)).sum()
        - 0.5 * n * math.log(2 * math.pi)
    )


@dataclass(frozen=True)
class ARDGP:
    """A zero-mean GP with an ARD RBF kernel, its hyperparameters fitted to
    ``(x_train, y_train)`` by :func:`fit_ard_gp`.

    Attributes:
        lengthscales: ``[d]`` one :math:`\\ell_j` per feature (large = the feature hardly matters).
        outputscale: :math:`\\sigma_f^2` (a variance).
        noise_std: :math:`\\sigma_n`.
        log_marginal: :math:`\\log p(y \\mid X)` at these hyperparameters.

    Example (hyperparameters given by hand; :func:`fit_ard_gp` fits them)::

        >>> x = torch.linspace(-1, 1, 5)[:, None]
        >>> gp = ARDGP(x, torch.zeros(5), torch.tensor([0.5]), 1.0, 0.1, float("nan"))
        >>> ppd = gp.predict(torch.zeros(1, 1))  # at a training input with y = 0
        >>> abs(float(ppd.mean)) < 1e-6, float(ppd.stddev) < 0.2
        (True, True)
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    lengthscales: torch.Tensor
    outputscale: float
    noise_std: float
    log_marginal: float

    def predict(self, x_query: torch.Tensor | np.ndarray) -> NormalMixturePPD:
        """The exact posterior predictive at ``x_query`` (``normal_ppd``, noise included):
        ARD RBF with lengthscales :math:`\\ell_j` is the isotropic RBF with
        :math:`\\ell = 1` on :math:`x_j / \\ell_j`, so :func:`exact_gp_ppd` does the maths.

        Example::

            >>> x = torch.tensor([[0.0, 0.0], [1.0, 5.0]])
            >>> gp = ARDGP(x, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 100.0]), 1.0, 0.1, 0.0)
            >>> # 9 units away in feature 2 (lengthscale 100) is still next to the first point
            >>> gp.predict(torch.tensor([[0.0, 9.0]])).mean.round(decimals=2)
            tensor([0.9600])
        """
        xq = _as_points(x_query, "x_query")
        ls = self.lengthscales.to(device=xq.device, dtype=xq.dtype)
        return exact_gp_ppd(
            self.x_train.to(xq.device) / self.lengthscales.to(xq.device),
            self.y_train,
            xq / ls,
            1.0,
            self.outputscale,
            self.noise_std,
        )


def fit_ard_gp(
    x_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    steps: int = 200,
    lr: float = 0.05,
    init_noise_std: float = 0.3,
    progress: bool = False,
) -> ARDGP:
    """Fit an exact GP (zero mean, ARD RBF kernel) by maximising the log marginal
    likelihood over lengthscales, outputscale and noise, with GPyTorch and Adam in float64.

    Meant for standardised data (unit-scale features and targets): every lengthscale and
    the outputscale start at 1, the noise at ``init_noise_std``. The fit is exact
    (Cholesky, GPyTorch's ``max_cholesky_size`` raised above ``n``), so the returned
    ``log_marginal`` equals :func:`gp_log_marginal` at the fitted values.

    Args:
        x_train: ``[n]`` or ``[n, d]``; y_train: ``[n]``.
        steps, lr: Adam steps and step size on the (softplus-constrained) hyperparameters.
        init_noise_std: starting noise standard deviation.
        progress: a progress bar over the steps (:func:`pyrobayes.progress.progress_bar`).

    Example::

        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x = torch.randn(40, 2)
        >>> gp = fit_ard_gp(x, torch.sin(2 * x[:, 0]) + 0.05 * torch.randn(40), steps=100)
        >>> bool(gp.lengthscales[1] > gp.lengthscales[0])  # feature 1 is irrelevant
        True
    """
    import gpytorch

    from pyrobayes.progress import progress_bar

    xt = _as_points(x_train, "x_train").to(torch.float64)
    yt = torch.as_tensor(y_train).to(torch.float64).reshape(-1)
    if xt.shape[0] != yt.shape[0] or xt.shape[0] < 2:
        raise ValueError(
            f"fit_ard_gp needs at least 2 points with as many targets, got x {tuple(xt.shape)}, y {tuple(yt.shape)}"
        )
    if not torch.isfinite(yt).all():
        raise ValueError("y_train contains NaN or infinite values")
    if steps < 1 or not lr > 0 or not init_noise_std > 0:
        raise ValueError(
            f"need steps >= 1, lr > 0, init_noise_std > 0; got {steps}, {lr}, {init_noise_std}"
        )
    d = xt.shape[1]

    class _GP(gpytorch.models.ExactGP):
        def __init__(self, likelihood):
            super().__init__(xt, yt, likelihood)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(ard_num_dims=d)
            )

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    model = _GP(likelihood).double()
    model.covar_module.base_kernel.lengthscale = torch.ones(1, d, dtype=torch.float64)
    model.covar_module.outputscale = torch.tensor(1.0, dtype=torch.float64)
    likelihood.noise = torch.tensor(init_noise_std**2, dtype=torch.float64)
    model.train()
    likelihood.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = xt.shape[0]
    # exact Cholesky throughout: GPyTorch switches to conjugate gradients above 800 points
    with gpytorch.settings.max_cholesky_size(max(n + 1, 800)):
        for _ in progress_bar(range(steps), enabled=progress, desc="GP marginal likelihood"):
            opt.zero_grad()
            loss = -mll(model(xt), yt)
            loss.backward()
            opt.step()
        with torch.no_grad():
            lml = float(mll(model(xt), yt)) * n  # GPyTorch divides by n
    ls = model.covar_module.base_kernel.lengthscale.detach().reshape(-1).clone()
    return ARDGP(
        x_train=xt,
        y_train=yt,
        lengthscales=ls,
        outputscale=float(model.covar_module.outputscale.detach()),
        noise_std=float(likelihood.noise.detach().sqrt()),
        log_marginal=lml,
    )


@dataclass(frozen=True)
class SparseARDGP:
    """A sparse GP with an ARD RBF kernel and ``M`` inducing inputs, fitted by
    :func:`fit_sparse_ard_gp` (Pyro's :class:`pyro.contrib.gp.models.SparseGPRegression`,
    Titsias' variational free energy). ``model`` is the fitted Pyro module;
    ``lengthscales``, ``outputscale`` (a variance), ``noise_std`` its hyperparameters,
    ``num_inducing`` = ``M``, ``elbo`` the VFE bound on :math:`\\log p(y \\mid X)` at the end.

    Example::

        >>> x = torch.linspace(-2, 2, 60)[:, None]
        >>> gp = fit_sparse_ard_gp(x, torch.sin(x[:, 0]), num_inducing=8, steps=50)
        >>> gp.predict(x[:3]).batch_shape, gp.num_inducing
        (torch.Size([3]), 8)
    """

    model: torch.nn.Module
    lengthscales: torch.Tensor
    outputscale: float
    noise_std: float
    num_inducing: int
    elbo: float

    def predict(self, x_query: torch.Tensor | np.ndarray, chunk: int = 4096) -> NormalMixturePPD:
        """The approximate posterior predictive of a noisy target at ``x_query``
        (``normal_ppd``: the VFE predictive mean and variance plus the noise), in chunks of
        ``chunk`` rows (memory ``chunk x M``), in ``x_query``'s dtype."""
        xq = _as_points(x_query, "x_query")
        dtype = next(self.model.parameters()).dtype
        import pyro

        means, variances = [], []
        # the fitted parameters live in the module, not in Pyro's global param store
        with torch.no_grad(), pyro.settings.context(module_local_params=True):
            for part in torch.split(xq.to(dtype), chunk):
                mean, var = self.model(part, full_cov=False, noiseless=False)
                means.append(mean)
                variances.append(var)
        std = torch.cat(variances).clamp_min(1e-30).sqrt()
        return normal_ppd(torch.cat(means).to(xq.dtype), std.to(xq.dtype))


def fit_sparse_ard_gp(
    x_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    num_inducing: int = 512,
    steps: int = 300,
    lr: float = 0.05,
    init_noise_std: float = 0.3,
    seed: int = 0,
    progress: bool = False,
) -> SparseARDGP:
    """Fit a sparse GP (zero mean, ARD RBF kernel, ``num_inducing`` inducing inputs) by
    maximising Titsias' variational free energy with Adam in float64, through Pyro's
    :class:`~pyro.contrib.gp.models.SparseGPRegression` (``approx="VFE"``):

    .. math::

        \\log p(y) \\ge \\log \\mathcal N\\big(y \\mid 0, Q_{nn} + \\sigma_n^2 I\\big)
        - \\frac{1}{2\\sigma_n^2} \\operatorname{tr}(K_{nn} - Q_{nn}),\\qquad
        Q_{nn} = K_{nu} K_{uu}^{-1} K_{un},

    at :math:`O(n M^2)` time and :math:`O(n M)` memory per step instead of the exact
    GP's :math:`O(n^3)` and :math:`O(n^2)`. The inducing inputs start at ``M`` training
    rows drawn without replacement from ``seed`` and are learnt with the lengthscales,
    outputscale and noise (all starting as in :func:`fit_ard_gp`). With ``M >= n`` every
    training row is an inducing input and the bound is the exact marginal likelihood.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(300, 2, generator=g)
        >>> y = torch.sin(2 * x[:, 0]) + 0.05 * torch.randn(300, generator=g)
        >>> gp = fit_sparse_ard_gp(x, y, num_inducing=32, steps=150)
        >>> bool(gp.lengthscales[1] > gp.lengthscales[0])  # feature 1 is irrelevant
        True
    """
    import pyro

    xt = _as_points(x_train, "x_train").to(torch.float64)
    yt = torch.as_tensor(y_train).to(torch.float64).reshape(-1)
    if xt.shape[0] != yt.shape[0] or xt.shape[0] < 2:
        raise ValueError(
            f"fit_sparse_ard_gp needs at least 2 points with as many targets, got x "
            f"{tuple(xt.shape)}, y {tuple(yt.shape)}"
        )
    if not torch.isfinite(yt).all():
        raise ValueError("y_train contains NaN or infinite values")
    if num_inducing < 1 or steps < 1 or not lr > 0 or not init_noise_std > 0:
        raise ValueError(
            "need num_inducing >= 1, steps >= 1, lr > 0, init_noise_std > 0; got "
            f"{num_inducing}, {steps}, {lr}, {init_noise_std}"
        )
    # parameters local to this module: Pyro's global param store would hand a second fit
    # the first one's inducing inputs and lengthscales (same names), whatever their shape
    with pyro.settings.context(module_local_params=True):
        return _fit_sgpr(xt, yt, num_inducing, steps, lr, init_noise_std, seed, progress)


def _fit_sgpr(xt, yt, num_inducing, steps, lr, init_noise_std, seed, progress) -> SparseARDGP:
    import pyro
    import pyro.contrib.gp as pgp

    from pyrobayes.progress import progress_bar

    n, d = xt.shape
    m = min(int(num_inducing), n)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m]
    kernel = pgp.kernels.RBF(
        input_dim=d,
        variance=torch.tensor(1.0, dtype=torch.float64),
        lengthscale=torch.ones(d, dtype=torch.float64),
    )
    model = pgp.models.SparseGPRegression(
        xt,
        yt,
        kernel,
        Xu=xt[rows].clone(),
        noise=torch.tensor(init_noise_std**2, dtype=torch.float64),
        approx="VFE",
        jitter=1e-6,
    ).double()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = pyro.infer.Trace_ELBO().differentiable_loss
    for _ in progress_bar(range(steps), enabled=progress, desc="sparse GP (VFE)"):
        opt.zero_grad()
        loss = loss_fn(model.model, model.guide)
        loss.backward()
        opt.step()
    with torch.no_grad():
        elbo = -float(loss_fn(model.model, model.guide))
    return SparseARDGP(
        model=model,
        lengthscales=kernel.lengthscale.detach().reshape(-1).clone(),
        outputscale=float(kernel.variance.detach()),
        noise_std=float(model.noise.detach().sqrt()),
        num_inducing=m,
        elbo=elbo,
    )
