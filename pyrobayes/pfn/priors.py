"""Priors over datasets that a PFN is trained on.

A prior is any object with ``num_features``, ``x_low``, ``x_high``, ``task``,
``describe() -> dict`` and ``sample(batch_size, seq_len) -> (x [B, L, d], y [B, L])``
drawing ``B`` independent datasets of ``L`` points each (randomness from torch's global
RNG, so ``torch.manual_seed`` makes training reproducible).

* :class:`GPPrior`: :math:`f \\sim \\mathcal{GP}(0, k_{\\mathrm{RBF}})`,
  :math:`y = f(x) + \\varepsilon`, :math:`x \\sim U(\\text{box})`; its exact PPD is
  :func:`pyrobayes.gp.exact_gp_ppd`.
* :class:`TabularBNNPrior` / :class:`TabularBNNClassifierPrior`: synthetic tabular
  features of a varying width, targets or labels from the tabular BNNs of
  :mod:`pyrobayes.models.tabular`.
* :class:`BNNPrior`: :math:`\\theta \\sim p(\\theta)` from a pyrobayes
  :class:`~pyrobayes.bayesian_model.BayesianModel`'s weight priors, :math:`y \\sim p(y \\mid
  f_\\theta(x))` from its likelihood — all ``B`` networks evaluated in one batched call.

Example::

    >>> from pyrobayes.pfn import GPPrior
    >>> x, y = GPPrior().sample(4, 30)
    >>> x.shape, y.shape
    (torch.Size([4, 30, 1]), torch.Size([4, 30]))
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Protocol

import torch

from pyrobayes.gp import exact_gp_ppd, rbf_kernel
from pyrobayes.ppd import NormalMixturePPD

__all__ = [
    "DatasetPrior",
    "GPPrior",
    "BNNPrior",
    "TabularBNNPrior",
    "TabularBNNClassifierPrior",
    "FeatureKind",
]


class DatasetPrior(Protocol):
    """What :func:`~pyrobayes.pfn.train.train_pfn` needs from a prior: the input box,
    the task and ``sample(B, L) -> (x [B, L, d], y [B, L])``.

    Example::

        >>> import torch
        >>> from pyrobayes.pfn.train import TrainConfig, make_config
        >>> class LinePrior:                     # y = a x + noise, a ~ N(0, 1)
        ...     num_features, x_low, x_high, task = 1, (-1.0,), (1.0,), "regression"
        ...     def sample(self, batch_size, seq_len):
        ...         x = torch.rand(batch_size, seq_len, 1) * 2 - 1
        ...         a = torch.randn(batch_size, 1)
        ...         return x, a * x[..., 0] + 0.1 * torch.randn(batch_size, seq_len)
        ...     def describe(self):
        ...         return {"kind": "line"}
        >>> cfg = make_config(LinePrior(), TrainConfig(seq_len=20, max_train=10, num_bars=8,
        ...                                            border_samples=400))
        >>> cfg.prior, cfg.num_outputs, cfg.x_low
        ({'kind': 'line'}, 8, (-1.0,))
    """

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
        model: a :class:`~pyrobayes.bayesian_model.BayesianModel` (the object SVI fits); default
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


class FeatureKind(str, Enum):
    """Marginal types of the synthetic tabular features.

    Example::

        >>> from pyrobayes.pfn.priors import FeatureKind, TabularBNNPrior
        >>> FeatureKind("student_t")
        <FeatureKind.STUDENT_T: 'student_t'>
        >>> TabularBNNPrior().describe()["feature_kinds"]
        ['gaussian', 'lognormal', 'uniform', 'student_t', 'binary', 'ordinal']
    """

    GAUSSIAN = "gaussian"
    LOGNORMAL = "lognormal"
    UNIFORM = "uniform"
    STUDENT_T = "student_t"
    BINARY = "binary"
    ORDINAL = "ordinal"


class TabularBNNPrior:
    """Tabular regression datasets from :func:`~pyrobayes.models.tabular.tabular_regression_model`.

    Per batch a feature count :math:`d \\sim U\\{d_{\\min}..d_{\\max}\\}`; per dataset:

    * features from a Gaussian copula: :math:`z = \\varepsilon A^\\top` with
      :math:`A = I + \\rho G` row-normalised (:math:`G` standard normal, :math:`\\rho \\sim
      U(0, \\text{max\\_corr})`), then each column independently becomes one of
      :class:`FeatureKind` (Gaussian; log-normal :math:`e^{s z}`, :math:`s \\sim U(0.5, 1.5)`;
      uniform :math:`\\Phi(z)`; Student-t with 3 degrees of freedom; binary
      :math:`1[z > c]`, :math:`c \\sim N(0, 0.7^2)`; ordinal :math:`\\lfloor k\\Phi(z)\\rfloor`,
      :math:`k \\sim U\\{3..7\\}`) with equal probability, and every column is standardised
      over the dataset (the network's inputs look like standardised real features);
    * :math:`\\theta \\sim p(\\theta)` and :math:`\\sigma \\sim p(\\sigma)` of the tabular model
      (the noise prior of ``noise_prior``), :math:`y = f_\\theta(x) + \\sigma\\varepsilon`.

    ``sample`` returns ``x [B, L, d]`` (``d`` varies between calls) and ``y [B, L]``;
    ``last_noise`` holds the ``[B]`` noise draws of the last call. Training (and
    :meth:`PFN.predict <pyrobayes.pfn.PFN.predict>`) then standardise each dataset by its
    training split.

    Example::

        >>> prior = TabularBNNPrior(max_features=4)
        >>> x, y = prior.sample(3, 20)
        >>> x.shape[0], x.shape[1], 1 <= x.shape[2] <= 4
        (3, 20, True)
    """

    task = "regression"

    def __init__(
        self,
        max_features: int = 10,
        min_features: int = 1,
        max_corr: float = 1.0,
        noise_prior: torch.distributions.Distribution | None = None,
        x_clip: float = 6.0,
    ):
        from pyrobayes.models.tabular import tabular_noise_prior

        if not 1 <= int(min_features) <= int(max_features):
            raise ValueError(
                f"need 1 <= min_features <= max_features, got {min_features}, {max_features}"
            )
        if max_corr < 0 or x_clip <= 0:
            raise ValueError("max_corr must be >= 0 and x_clip > 0")
        self.max_features, self.min_features = int(max_features), int(min_features)
        self.num_features = self.max_features
        self.max_corr = float(max_corr)
        self.noise_prior = noise_prior if noise_prior is not None else tabular_noise_prior()
        # standardised features are clipped to this box in the PFN
        self.x_low, self.x_high = _box(-float(x_clip), float(x_clip), self.num_features)
        self._models: dict[int, Any] = {}
        self.last_noise: torch.Tensor | None = None

    def model(self, d: int):
        """The tabular model for ``d`` features (built once per ``d``)."""
        if d not in self._models:
            from pyrobayes.models.tabular import tabular_regression_model

            # building initialises (unused) weights; keep that off the global RNG stream so
            # a resumed training draws exactly the datasets an uninterrupted one would
            with torch.random.fork_rng(devices=[]):
                self._models[d] = tabular_regression_model(d, noise_prior=self.noise_prior)
        return self._models[d]

    def describe(self) -> dict[str, Any]:
        from pyrobayes.models.tabular import TABULAR_REGRESSION as cfg

        return {
            "kind": "bnn-tabular",
            "model": (
                "tabular_regression_model: d-50-50-1 tanh, "
                f"W ~ N(0, {cfg['weight_scale']}^2/fan_in), b ~ N(0, {cfg['bias_scale']:g})"
            ),
            "noise_prior": describe_scalar_prior(self.noise_prior),
            "min_features": self.min_features,
            "max_features": self.max_features,
            "max_corr": self.max_corr,
            "feature_kinds": [k.value for k in FeatureKind],
            "x_low": list(self.x_low),
            "x_high": list(self.x_high),
        }

    @torch.no_grad()
    def sample_features(
        self, batch_size: int, seq_len: int, d: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``[B, L, d]`` standardised synthetic features (see the class docstring), drawn
        on ``device`` (default CPU)."""
        B, L, dev = batch_size, seq_len, device
        g = torch.randn(B, d, d, device=dev)
        rho = self.max_corr * torch.rand(B, 1, 1, device=dev)
        a = torch.eye(d, device=dev) + rho * g
        a = a / a.norm(dim=-1, keepdim=True)
        z = torch.randn(B, L, d, device=dev) @ a.transpose(1, 2)
        normal = torch.distributions.Normal(0.0, 1.0)
        kinds = torch.randint(len(FeatureKind), (B, 1, d), device=dev)
        s = 0.5 + torch.rand(B, 1, d, device=dev)
        chi2 = torch.distributions.Chi2(torch.full((), 3.0, device=dev)).sample((B, L, d))
        cut = 0.7 * torch.randn(B, 1, d, device=dev)
        levels = torch.randint(3, 8, (B, 1, d), device=dev).to(z.dtype)
        u = normal.cdf(z).clamp(1e-6, 1 - 1e-6)
        options = torch.stack(
            [
                z,
                torch.exp(s * z),
                u,
                z / (chi2 / 3.0).sqrt(),
                (z > cut).to(z.dtype),
                torch.floor(levels * u).clamp(max=levels - 1),
            ]
        )
        x = torch.gather(options, 0, kinds.expand(B, L, d).unsqueeze(0)).squeeze(0)
        sd = x.std(1, unbiased=False, keepdim=True)
        sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd))
        return (x - x.mean(1, keepdim=True)) / sd

    @torch.no_grad()
    def sample(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` datasets of ``seq_len`` points sharing one random ``d``."""
        d = int(torch.randint(self.min_features, self.max_features + 1, ()).item())
        x, y, _ = self.sample_with_latents(batch_size, seq_len, d)
        return x, y

    @torch.no_grad()
    def sample_with_latents(
        self, batch_size: int, seq_len: int, d: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``batch_size`` datasets with ``d`` features, and the latents that generated them.

        Returns ``x [B, L, d]``, ``y [B, L]`` and ``{site: Tensor[B, ...]}``: every weight
        site of :meth:`model` and its noise site ``model(d).likelihood.noise_site``
        (``[B]``). Each dataset's latents are an
        exact draw from its posterior given the dataset (the joint of latents and data
        factorises either way), which is why a reference MCMC may start there.

        Example::

            >>> prior = TabularBNNPrior()
            >>> x, y, latents = prior.sample_with_latents(2, 30, d=3)
            >>> noise_site = prior.model(3).likelihood.noise_site
            >>> x.shape, y.shape, latents[noise_site].shape
            (torch.Size([2, 30, 3]), torch.Size([2, 30]), torch.Size([2]))
        """
        from pyrobayes.infer import forward_draws, sample_prior

        if not 1 <= int(d) <= self.max_features:
            raise ValueError(f"d must be in 1..{self.max_features}, got {d}")
        x = self.sample_features(batch_size, seq_len, d)
        model = self.model(d)
        draws = sample_prior(model, batch_size)
        f = forward_draws(model, draws, x, inputs_batched=True).reshape(batch_size, seq_len)
        sigma = self.noise_prior.sample((batch_size,)).to(f.dtype)
        self.last_noise = sigma
        y = f + sigma.unsqueeze(1) * torch.randn_like(f)
        return x, y, {**draws, model.likelihood.noise_site: sigma}


# What earlier versions wrote for a prior that has not changed since: until Dec 2026 the
# bnn-tabular prior described its weights as "N(0, 1/fan_in)" while drawing them from
# N(0, 1.8^2/fan_in) all along (the string was stale, the prior was not). Checkpoints carry
# the old string; a resumed training compares descriptions through this map.
LEGACY_MODEL_DESCRIPTIONS = {
    "tabular_regression_model: d-50-50-1 tanh, W ~ N(0, 1/fan_in), b ~ N(0, 1)": (
        "tabular_regression_model: d-50-50-1 tanh, W ~ N(0, 1.8^2/fan_in), b ~ N(0, 1)"
    ),
}


def same_prior(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ``describe()`` dicts name the same prior, reading a stale legacy
    ``"model"`` string (:data:`LEGACY_MODEL_DESCRIPTIONS`) as the description it stood for.

    Example::

        >>> new = TabularBNNPrior().describe()
        >>> old = {**new, "model": next(iter(LEGACY_MODEL_DESCRIPTIONS))}
        >>> same_prior(old, new), same_prior({**new, "max_features": 5}, new)
        (True, False)
    """

    def canonical(d: dict[str, Any]) -> str:
        model = d.get("model")
        d = {**d, "model": LEGACY_MODEL_DESCRIPTIONS.get(model, model)} if model else d
        return json.dumps(d, sort_keys=True, default=str)

    return canonical(a) == canonical(b)


def describe_scalar_prior(p: torch.distributions.Distribution) -> str:
    """E.g. ``"LogNormal(loc=0, scale=1)"``: a scalar prior as a checkpoint records it."""
    args = ", ".join(f"{k}={float(getattr(p, k)):.6g}" for k in ("loc", "scale") if hasattr(p, k))
    return f"{type(p).__name__}({args})"


class TabularBNNClassifierPrior:
    """Tabular classification datasets from
    :func:`~pyrobayes.models.tabular.tabular_classifier_model`.

    Per batch a feature count :math:`d \\sim U\\{d_{\\min}..d_{\\max}\\}` (features as in
    :class:`TabularBNNPrior`); per dataset a class count :math:`C \\sim
    U\\{C_{\\min}..C_{\\max}\\}`, weights :math:`\\theta \\sim p(\\theta)` of the
    ``d``-50-50-:math:`C_{\\max}` classifier of which the first ``C`` logits are kept (the
    output rows are i.i.d. a priori, so they are exactly a ``d``-50-50-``C`` classifier's
    logits), labels :math:`y \\sim \\mathrm{softmax}(f_\\theta(x)_{1..C})`, then relabelled
    by a uniformly random permutation of ``0..C-1`` per dataset, so label order carries no
    meaning whatever the model (for this exchangeable prior the relabelled data have the
    same law).

    ``sample`` returns ``x [B, L, d]`` and float labels ``y [B, L]``; ``last_num_classes``
    holds the ``[B]`` class counts of the last call (training gives them to the PFN).
    With ``device`` set (e.g. ``"cuda"``, where training runs) datasets are drawn there:
    each call draws one seed from torch's global CPU RNG and seeds a forked RNG with it, so
    the datasets depend on the CPU RNG only and a resumed training (which restores that
    state) replays them exactly.

    Example::

        >>> import torch
        >>> from pyrobayes.pfn.priors import TabularBNNClassifierPrior
        >>> prior = TabularBNNClassifierPrior(max_features=5, max_classes=4)
        >>> x, y = prior.sample(6, 30)
        >>> x.shape[:2], bool((y < prior.last_num_classes[:, None]).all())
        (torch.Size([6, 30]), True)
        >>> prior.task, prior.describe()["max_classes"]
        ('classification', 4)
    """

    task = "classification"

    def __init__(
        self,
        max_features: int = 30,
        min_features: int = 1,
        max_classes: int = 10,
        min_classes: int = 2,
        max_corr: float = 1.0,
        x_clip: float = 6.0,
        device: torch.device | str | None = None,
        logit_scale_prior: torch.distributions.Distribution | str | None = "default",
    ):
        if not 2 <= int(min_classes) <= int(max_classes):
            raise ValueError(
                f"need 2 <= min_classes <= max_classes, got {min_classes}, {max_classes}"
            )
        # the features (and their checks) are the regression prior's
        self._features = TabularBNNPrior(max_features, min_features, max_corr, x_clip=x_clip)
        self.max_features, self.min_features = int(max_features), int(min_features)
        self.num_features = self.max_features
        self.max_classes, self.min_classes = int(max_classes), int(min_classes)
        self.max_corr = float(max_corr)
        self.x_low, self.x_high = self._features.x_low, self._features.x_high
        self._models: dict[tuple[int, int], Any] = {}
        self.last_num_classes: torch.Tensor | None = None
        self.device = torch.device(device) if device is not None else None
        from pyrobayes.models.tabular import logit_scale_prior_from

        self.logit_scale_prior = logit_scale_prior_from(logit_scale_prior)

    def model(self, d: int, num_classes: int | None = None):
        """The tabular classifier for ``d`` features and ``num_classes`` (default the
        maximum) classes, built once per pair."""
        key = (int(d), int(num_classes or self.max_classes))
        if key not in self._models:
            from pyrobayes.models.tabular import tabular_classifier_model

            # off the global RNG stream, so a resumed training draws the same datasets
            with torch.random.fork_rng(devices=[]):
                self._models[key] = tabular_classifier_model(
                    *key, device=self.device, logit_scale_prior=self.logit_scale_prior
                )
        return self._models[key]

    def _logit_scales(self, model, batch_size: int) -> dict[str, torch.Tensor]:
        """``{scale site: tau [B]}`` per data set from the logit scale's prior, or ``{}``."""
        lik = model.likelihood
        if not lik.latent_scale:
            return {}
        tau = lik.scale_prior_on(self.device or torch.device("cpu"), torch.float32)
        return {lik.scale_site: tau.sample((batch_size,))}

    @staticmethod
    def _scaled(logits: torch.Tensor, scales: dict[str, torch.Tensor]) -> torch.Tensor:
        """``logits [B, L, C]`` times each data set's logit scale (if latent)."""
        for tau in scales.values():
            logits = logits * tau.to(logits.dtype)[:, None, None]
        return logits

    def describe(self) -> dict[str, Any]:
        from pyrobayes.models.tabular import TABULAR_CLASSIFICATION as cfg

        tau = self.logit_scale_prior
        out = {
            "kind": "bnn-tabular-classifier",
            "model": (
                "tabular_classifier_model: d-50-50-C tanh, "
                f"W ~ N(0, {cfg['weight_scale']}^2/fan_in), b ~ N(0, 1), "
                + ("y ~ softmax" if tau is None else "y ~ softmax(tau * logits)")
            ),
            "min_features": self.min_features,
            "max_features": self.max_features,
            "min_classes": self.min_classes,
            "max_classes": self.max_classes,
            "relabelled": "uniform permutation of 0..C-1 per dataset",
            "max_corr": self.max_corr,
            "feature_kinds": [k.value for k in FeatureKind],
            "x_low": list(self.x_low),
            "x_high": list(self.x_high),
        }
        if tau is not None:
            out["logit_scale_prior"] = describe_scalar_prior(tau)
        return out

    @torch.no_grad()
    def sample(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` datasets of ``seq_len`` rows sharing one random ``d``, each with
        its own class count (``last_num_classes``)."""
        if self.device is None:
            return self._sample(batch_size, seq_len)
        seed = int(torch.randint(2**62, ()).item())
        cuda = self.device.type == "cuda"
        index = (
            (self.device.index if self.device.index is not None else torch.cuda.current_device())
            if cuda
            else None
        )
        with torch.random.fork_rng(devices=[index] if cuda else []):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            return self._sample(batch_size, seq_len)

    def _sample(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        from pyrobayes.infer import forward_draws, sample_prior

        B, dev = batch_size, self.device
        d = int(torch.randint(self.min_features, self.max_features + 1, ()).item())
        x = self._features.sample_features(B, seq_len, d, device=dev)
        model = self.model(d)
        logits = forward_draws(model, sample_prior(model, B), x, inputs_batched=True)
        logits = self._scaled(logits, self._logit_scales(model, B))
        counts = torch.randint(self.min_classes, self.max_classes + 1, (B,), device=dev)
        absent = torch.arange(self.max_classes, device=dev) >= counts[:, None]  # [B, Cmax]
        logits = logits.masked_fill(absent[:, None, :], float("-inf"))
        y = torch.distributions.Categorical(logits=logits).sample()  # [B, L]
        # per dataset a random permutation of 0..C-1: sorting keys with the absent classes
        # last puts a uniform permutation of the present ones first
        perm = torch.rand(B, self.max_classes, device=dev).masked_fill(absent, 2.0).argsort(-1)
        y = perm.gather(1, y)
        self.last_num_classes = counts
        return x, y.to(x.dtype)

    @torch.no_grad()
    def sample_with_latents(
        self, batch_size: int, seq_len: int, d: int, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``batch_size`` datasets with ``d`` features and ``num_classes`` classes from
        ``model(d, num_classes)``, and the weights that generated them (no relabelling:
        it would have to permute the output rows too, and the prior is exchangeable).

        Example::

            >>> prior = TabularBNNClassifierPrior()
            >>> x, y, latents = prior.sample_with_latents(2, 30, d=3, num_classes=4)
            >>> x.shape, y.shape, int(y.max()) < 4
            (torch.Size([2, 30, 3]), torch.Size([2, 30]), True)
        """
        from pyrobayes.infer import forward_draws, sample_prior

        if not 1 <= int(d) <= self.max_features:
            raise ValueError(f"d must be in 1..{self.max_features}, got {d}")
        if not 2 <= int(num_classes) <= self.max_classes:
            raise ValueError(f"num_classes must be in 2..{self.max_classes}, got {num_classes}")
        x = self._features.sample_features(batch_size, seq_len, d, device=self.device)
        model = self.model(d, num_classes)
        draws = sample_prior(model, batch_size)
        logits = forward_draws(model, draws, x, inputs_batched=True)
        scales = self._logit_scales(model, batch_size)
        logits = self._scaled(logits, scales)
        draws = {**draws, **scales}
        y = torch.distributions.Categorical(logits=logits).sample()
        self.last_num_classes = torch.full((batch_size,), int(num_classes), device=x.device)
        return x, y.to(x.dtype), draws
