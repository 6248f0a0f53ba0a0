"""Priors over datasets that a PFN is trained on.

A prior is any object with ``num_features``, ``x_low``, ``x_high``, ``task``,
``describe() -> dict`` and ``sample(batch_size, seq_len) -> (x [B, L, d], y [B, L])``
drawing ``B`` independent datasets of ``L`` points each (randomness from torch's global
RNG, so ``torch.manual_seed`` makes training reproducible).

* :class:`GPPrior`: :math:`f \\sim \\mathcal{GP}(0, k_{\\mathrm{RBF}})`,
  :math:`y = f(x) + \\varepsilon`, :math:`x \\sim U(\\text{box})`; its exact PPD is
  :func:`pyrobayes.gp.exact_gp_ppd`.
* :class:`BNNPrior`: :math:`\\theta \\sim p(\\theta)` from a pyrobayes
  :class:`~pyrobayes.model.BayesianModel`'s weight priors, :math:`y \\sim p(y \\mid
  f_\\theta(x))` from its likelihood — all ``B`` networks evaluated in one batched call.

Example::

    >>> from pyrobayes.pfn import GPPrior
    >>> x, y = GPPrior().sample(4, 30)
    >>> x.shape, y.shape
    (torch.Size([4, 30, 1]), torch.Size([4, 30]))
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pyrobayes.gp import exact_gp_ppd, rbf_kernel
from pyrobayes.ppd import NormalMixturePPD

__all__ = ["DatasetPrior", "GPPrior", "BNNPrior"]


class DatasetPrior(Protocol):
    """What :func:`~pyrobayes.pfn.train.train_pfn` needs from a prior."""

    num_features: int
    x_low: tuple[float, ...]
    x_high: tuple[float, ...]
    task: str

    def sample(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def describe(self) -> dict[str, Any]: ...


def _box(
    x_low: float | tuple[float, ...], x_high: float | tuple[float, ...], d: int
) -> tuple[tuple, tuple]:
    low = tuple(float(v) for v in x_low) if isinstance(x_low, tuple | list) else (float(x_low),) * d
    high = (
        tuple(float(v) for v in x_high)
        if isinstance(x_high, tuple | list)
        else (float(x_high),) * d
    )
    if len(low) != d or len(high) != d:
        raise ValueError(
            f"x_low/x_high need {d} entries (num_features), got {len(low)}/{len(high)}"
        )
    if any(h <= lo for lo, h in zip(low, high)):
        raise ValueError(f"x_high must exceed x_low in every feature, got {low} .. {high}")
    return low, high


def _uniform_box(low: tuple, high: tuple, shape: tuple[int, ...], device=None) -> torch.Tensor:
    lo = torch.tensor(low, device=device)
    hi = torch.tensor(high, device=device)
    return lo + (hi - lo) * torch.rand(*shape, len(low), device=device)


class GPPrior:
    """RBF Gaussian-process prior over 1-D (or d-D) regression datasets.

    Args:
        lengthscale: RBF lengthscale :math:`\\ell`.
        outputscale: kernel variance :math:`\\sigma_f^2`.
        noise_std: observation noise std :math:`\\sigma_n`.
        x_low, x_high: the box inputs are drawn uniformly from (scalars or per-feature).
        num_features: input dimension ``d``.
        device: where datasets are drawn (default CPU).

    Example::

        >>> prior = GPPrior(lengthscale=0.5, noise_std=0.1)
        >>> x, y = prior.sample(2, 10)
        >>> ppd = prior.ppd(x[0, :5], y[0, :5], x[0, 5:])  # the exact reference PPD
    """

    task = "regression"

    def __init__(
        self,
        lengthscale: float = 0.5,
        outputscale: float = 1.0,
        noise_std: float = 0.1,
        x_low: float | tuple[float, ...] = -2.0,
        x_high: float | tuple[float, ...] = 2.0,
        num_features: int = 1,
        device: torch.device | str | None = None,
    ):
        if lengthscale <= 0 or outputscale <= 0 or noise_std < 0:
            raise ValueError("GPPrior needs lengthscale > 0, outputscale > 0 and noise_std >= 0")
        self.lengthscale, self.outputscale, self.noise_std = (
            float(lengthscale),
            float(outputscale),
            float(noise_std),
        )
        self.num_features = int(num_features)
        self.x_low, self.x_high = _box(x_low, x_high, self.num_features)
        self.device = device

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "gp",
            "kernel": "rbf",
            "lengthscale": self.lengthscale,
            "outputscale": self.outputscale,
            "noise_std": self.noise_std,
            "x_low": list(self.x_low),
            "x_high": list(self.x_high),
        }

    @torch.no_grad()
    def sample(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` datasets of ``seq_len`` noisy GP observations."""
        x = _uniform_box(self.x_low, self.x_high, (batch_size, seq_len), self.device)
        # float64 Cholesky: K + s^2 I can have condition numbers ~1e4-1e6.
        x64 = x.to(torch.float64)
        k = rbf_kernel(x64, x64, self.lengthscale, self.outputscale)
        jitter = max(self.noise_std**2, 1e-8)
        k = k + jitter * torch.eye(seq_len, dtype=torch.float64, device=x.device)
        chol = torch.linalg.cholesky(k)
        z = torch.randn(batch_size, seq_len, 1, dtype=torch.float64, device=x.device)
        y = (chol @ z).squeeze(-1)
        return x, y.to(x.dtype)

    def ppd(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_query: torch.Tensor
    ) -> NormalMixturePPD:
        """Exact GP posterior predictive of this prior (the PFN's target)."""
        return exact_gp_ppd(
            x_train, y_train, x_query, self.lengthscale, self.outputscale, self.noise_std
        )


class BNNPrior:
    """Datasets whose functions are drawn from a pyrobayes model's weight priors.

    Args:
        model: a :class:`~pyrobayes.model.BayesianModel` (the object SVI fits); default
            :func:`pyrobayes.models.mlp.default_regression_model` (1-50-50-1 tanh MLP,
            fan-in Normal weights, N(0, 1) biases, Gaussian noise std 0.1).
        x_low, x_high: input box (scalars or per-feature).
        num_features: input dimension ``d`` (must match the network).

    Each call draws ``B`` weight sets with ``sample_prior`` and evaluates all ``B``
    networks at their own inputs in one ``forward_draws(..., inputs_batched=True)``
    call; targets are then drawn from the model's likelihood (Gaussian noise, or a
    label from the softmax for a Categorical likelihood).

    Example::

        >>> prior = BNNPrior()
        >>> x, y = prior.sample(8, 20)
    """

    def __init__(
        self,
        model=None,
        x_low: float | tuple[float, ...] = -2.0,
        x_high: float | tuple[float, ...] = 2.0,
        num_features: int = 1,
    ):
        if model is None:
            from pyrobayes.models.mlp import default_regression_model

            model = default_regression_model()
        self.model = model
        self.num_features = int(num_features)
        self.x_low, self.x_high = _box(x_low, x_high, self.num_features)
        lik = model.likelihood
        kind = type(lik).__name__.lower()
        if "gaussian" in kind:
            self.task = "regression"
        elif "categorical" in kind:
            self.task = "classification"
        else:
            raise ValueError(
                f"BNNPrior supports Gaussian or Categorical likelihoods, got {type(lik).__name__}"
            )

    @property
    def noise_std(self) -> float:
        scale = self.model.likelihood.scale
        return float(scale() if callable(scale) else scale)

    def describe(self) -> dict[str, Any]:
        net = self.model.net
        d: dict[str, Any] = {
            "kind": "bnn",
            "network": type(net).__name__,
            "architecture": repr(net).replace("\n", " "),
            "likelihood": type(self.model.likelihood).__name__,
            "x_low": list(self.x_low),
            "x_high": list(self.x_high),
        }
        if self.task == "regression":
            d["noise_std"] = self.noise_std
        return d

    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    @torch.no_grad()
    def sample(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` datasets, each from its own prior network draw."""
        from pyrobayes.infer import forward_draws, sample_prior

        x = _uniform_box(self.x_low, self.x_high, (batch_size, seq_len), self._device())
        draws = sample_prior(self.model, batch_size)
        out = forward_draws(self.model, draws, x, inputs_batched=True)
        if self.task == "regression":
            f = out.reshape(batch_size, seq_len)
            y = f + self.noise_std * torch.randn_like(f)
        else:
            y = torch.distributions.Categorical(logits=out).sample().to(x.dtype)
        return x, y
