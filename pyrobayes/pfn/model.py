"""The PFN transformer (Müller et al., ICLR 2022) and its frozen configuration.

A dataset :math:`D = \\{(x_i, y_i)\\}_{i=1}^n` and queries :math:`x_{*1..m}` become one
token sequence without positional encodings: training tokens are
:math:`\\mathrm{emb}_x(x_i) + \\mathrm{emb}_y(y_i)`, query tokens :math:`\\mathrm{emb}_x(x_{*j})`.
The attention mask lets training tokens attend to training tokens and each query attend
to the training tokens and to itself only, so a query's prediction is independent of
the other queries and the whole map is invariant to the order of the training points.
The head outputs the logits of a :class:`~pyrobayes.pfn.bar.BarDistribution`
(regression) or a softmax over classes (classification), approximating the posterior
predictive :math:`p(y_* \\mid x_*, D)` of the prior the network was trained on.

Example::

    >>> import torch
    >>> from pyrobayes.pfn import PFN, PFNConfig
    >>> cfg = PFNConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, borders=tuple(torch.linspace(-3, 3, 21).tolist()))
    >>> ppd = PFN(cfg).predict(torch.rand(5), torch.randn(5), torch.rand(3))
    >>> ppd.batch_shape
    torch.Size([3])
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn

from pyrobayes.pfn.bar import BarCriterion, BarDistribution
from pyrobayes.ppd import CategoricalPPD

__all__ = ["PFN", "PFNConfig", "Task"]


class Task(str, Enum):
    """What the PFN predicts."""

    REGRESSION = "regression"
    CLASSIFICATION = "classification"

    @classmethod
    def parse(cls, value: str | Task) -> Task:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown task {value!r}; choose one of {[t.value for t in cls]}"
            ) from None


@dataclass(frozen=True)
class PFNConfig:
    """Architecture, data normalisation and training-domain description of a PFN.

    Stored as JSON beside every checkpoint. ``x_low``/``x_high`` is the box the prior
    draws inputs from (inputs are mapped to zero mean, unit variance of that uniform
    box); ``y_loc``/``y_scale`` standardise targets before the ``y`` embedding;
    ``borders`` are the bar borders in raw target units (regression only).
    """

    num_features: int = 1
    task: str = "regression"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    dropout: float = 0.0
    max_train: int = 50
    x_low: tuple[float, ...] = (-2.0,)
    x_high: tuple[float, ...] = (2.0,)
    y_loc: float = 0.0
    y_scale: float = 1.0
    borders: tuple[float, ...] = ()
    num_classes: int = 0
    prior: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Task.parse(self.task)
        for name in ("num_features", "d_model", "n_layers", "n_heads", "d_ff", "max_train"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"PFNConfig.{name} must be a positive integer, got {getattr(self, name)}"
                )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if len(self.x_low) != self.num_features or len(self.x_high) != self.num_features:
            raise ValueError(
                f"x_low/x_high need {self.num_features} entries (num_features), got {len(self.x_low)}/{len(self.x_high)}"
            )
        if any(h <= lo for lo, h in zip(self.x_low, self.x_high)):
            raise ValueError(
                f"x_high must exceed x_low in every feature, got {self.x_low} .. {self.x_high}"
            )
        if not self.y_scale > 0:
            raise ValueError(f"y_scale must be positive, got {self.y_scale}")
        if self.task == Task.REGRESSION.value:
            b = self.borders
            if len(b) < 3 or any(b1 <= b0 for b0, b1 in zip(b[:-1], b[1:])):
                raise ValueError(
                    "a regression PFNConfig needs at least 3 strictly increasing borders"
                )
        elif self.num_classes < 2:
            raise ValueError(
                f"a classification PFNConfig needs num_classes >= 2, got {self.num_classes}"
            )

    @property
    def num_outputs(self) -> int:
        return len(self.borders) - 1 if self.task == Task.REGRESSION.value else self.num_classes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["x_low"], d["x_high"], d["borders"] = (
            list(self.x_low),
            list(self.x_high),
            list(self.borders),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PFNConfig:
        """Build from a JSON dict, rejecting unknown or mistyped keys by name."""
        if not isinstance(d, dict):
            raise ValueError(f"PFN config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PFN config keys {sorted(unknown)}; known: {sorted(known)}")
        kw = dict(d)
        for key in ("x_low", "x_high", "borders"):
            if key in kw:
                if not isinstance(kw[key], list | tuple):
                    raise ValueError(f"PFN config '{key}' must be a list of numbers")
                kw[key] = tuple(float(v) for v in kw[key])
        try:
            return cls(**kw)
        except TypeError as err:
            raise ValueError(f"invalid PFN config: {err}") from err


def _queries_attend_to_training_only(
    n_train: int, n_query: int, device: torch.device
) -> torch.Tensor:
    """Boolean attention mask (True = blocked) of the PFN sequence [train | queries].

    Every token sees all training tokens; a query additionally sees itself (so that
    ``n_train = 0``, the prior predictive, still has a non-empty softmax) and no other
    query.
    """
    size = n_train + n_query
    blocked = torch.ones(size, size, dtype=torch.bool, device=device)
    blocked[:, :n_train] = False
    q = torch.arange(n_train, size, device=device)
    blocked[q, q] = False
    return blocked


class PFN(nn.Module):
    """Prior-data fitted network: a set-transformer approximating a prior's PPD.

    Args:
        config: a :class:`PFNConfig`.

    ``forward(x_train [B, n, d], y_train [B, n], x_query [B, m, d]) -> logits [B, m, K]``
    works on raw (unnormalised) data; :meth:`predict` takes one dataset in any common
    format and returns the PPD.

    Example::

        >>> import torch
        >>> cfg = PFNConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, borders=(-1.0, 0.0, 1.0, 2.0))
        >>> PFN(cfg)(torch.zeros(2, 4, 1), torch.zeros(2, 4), torch.zeros(2, 3, 1)).shape
        torch.Size([2, 3, 3])
    """

    def __init__(self, config: PFNConfig):
        super().__init__()
        self.config = config
        c = config
        self.task = Task.parse(c.task)
        self.x_encoder = nn.Linear(c.num_features, c.d_model)
        if self.task is Task.REGRESSION:
            self.y_encoder: nn.Module = nn.Linear(1, c.d_model)
            self.criterion: nn.Module = BarCriterion(torch.tensor(c.borders))
        else:
            self.y_encoder = nn.Embedding(c.num_classes, c.d_model)
            self.criterion = nn.CrossEntropyLoss(reduction="none")
        layer = nn.TransformerEncoderLayer(
            c.d_model,
            c.n_heads,
            c.d_ff,
            dropout=c.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, c.n_layers, norm=nn.LayerNorm(c.d_model), enable_nested_tensor=False
        )
        self.decoder = nn.Sequential(
            nn.Linear(c.d_model, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, c.num_outputs)
        )
        low, high = torch.tensor(c.x_low), torch.tensor(c.x_high)
        # Standardise x by the moments of the uniform box the prior draws from.
        self.register_buffer("x_loc", 0.5 * (low + high), persistent=False)
        self.register_buffer("x_scale", (high - low) / 12**0.5, persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_query: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, m, K]`` of the predictive at each query (raw data in)."""
        c = self.config
        n, m = x_train.shape[1], x_query.shape[1]
        xt = (x_train - self.x_loc) / self.x_scale
        xq = (x_query - self.x_loc) / self.x_scale
        if self.task is Task.REGRESSION:
            ey = self.y_encoder(((y_train - c.y_loc) / c.y_scale).unsqueeze(-1))
        else:
            ey = self.y_encoder(y_train.long())
        tokens = torch.cat([self.x_encoder(xt) + ey, self.x_encoder(xq)], dim=1)
        mask = _queries_attend_to_training_only(n, m, tokens.device)
        h = self.encoder(tokens, mask=mask)
        return self.decoder(h[:, n:])

    def loss(self, logits: torch.Tensor, y_query: torch.Tensor) -> torch.Tensor:
        """Per-query negative log predictive density (nats), shape ``y_query.shape``."""
        if self.task is Task.REGRESSION:
            return self.criterion(logits, y_query)
        return self.criterion(logits.flatten(0, -2), y_query.long().flatten()).view(y_query.shape)

    def distribution(self, logits: torch.Tensor) -> BarDistribution | CategoricalPPD:
        """The PPD for ``logits`` of shape ``[*batch, K]``."""
        if self.task is Task.REGRESSION:
            return self.criterion.distribution(logits)
        return CategoricalPPD(torch.softmax(logits, dim=-1).unsqueeze(0))

    def _points(self, x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
        t = torch.as_tensor(x)
        d = self.config.num_features
        if t.dim() == 1:
            # [n] means n scalar inputs for 1-D models; a single point otherwise is ambiguous.
            if d != 1:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} but this PFN expects [n, {d}] inputs"
                )
            t = t.unsqueeze(-1)
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape [n] or [n, d], got {tuple(t.shape)}")
        if t.shape[1] != d:
            raise ValueError(f"{name} has {t.shape[1]} features but this PFN was trained on {d}")
        t = t.to(device=self.device, dtype=self.x_encoder.weight.dtype)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return t

    @torch.no_grad()
    def predict(
        self,
        x_train: torch.Tensor | np.ndarray,
        y_train: torch.Tensor | np.ndarray,
        x_query: torch.Tensor | np.ndarray,
        *,
        strict: bool = False,
    ) -> BarDistribution | CategoricalPPD:
        """Posterior predictive at ``x_query`` given the training set, in one forward pass.

        Args:
            x_train: ``[n]`` or ``[n, d]`` (``n = 0`` gives the prior predictive).
            y_train: ``[n]`` targets (class labels for classification).
            x_query: ``[m]`` or ``[m, d]``.
            strict: raise instead of warning when inputs leave the training box.

        Returns:
            :class:`BarDistribution` (regression) or a one-draw :class:`CategoricalPPD`,
            batch shape ``[m]``, on the module's device.

        Raises:
            ValueError: wrong feature dimension, NaNs, mismatched lengths, or more
                training points than the PFN was trained with.

        Example::

            >>> from pyrobayes.pfn import pretrained
            >>> pfn = pretrained("gp-1d")
            >>> ppd = pfn.predict([-1.0, 0.0, 1.0], [0.5, 0.0, -0.5], torch.linspace(-2, 2, 5))
            >>> lo, hi = ppd.interval(0.9)
        """
        c = self.config
        xt = self._points(np.asarray(x_train) if isinstance(x_train, list) else x_train, "x_train")
        xq = self._points(np.asarray(x_query) if isinstance(x_query, list) else x_query, "x_query")
        yt = torch.as_tensor(np.asarray(y_train) if isinstance(y_train, list) else y_train).to(
            self.device
        )
        yt = yt.reshape(-1) if yt.dim() == 2 and yt.shape[-1] == 1 else yt
        if yt.dim() != 1 or yt.shape[0] != xt.shape[0]:
            raise ValueError(
                f"y_train must have shape [{xt.shape[0]}] to match x_train, got {tuple(yt.shape)}"
            )
        if xt.shape[0] > c.max_train:
            raise ValueError(
                f"{xt.shape[0]} training points given but this PFN was trained with at most {c.max_train}"
            )
        if xq.shape[0] == 0:
            raise ValueError("x_query is empty")
        if self.task is Task.REGRESSION:
            yt = yt.to(self.x_encoder.weight.dtype)
            if not torch.isfinite(yt).all():
                raise ValueError("y_train contains NaN or infinite values")
        else:
            if yt.is_floating_point() and not torch.equal(yt, yt.round()):
                raise ValueError("classification y_train must hold integer labels")
            if ((yt < 0) | (yt >= c.num_classes)).any():
                raise ValueError(f"labels must lie in [0, {c.num_classes - 1}]")
        low = torch.tensor(c.x_low, device=self.device)
        high = torch.tensor(c.x_high, device=self.device)
        for name, t in (("x_train", xt), ("x_query", xq)):
            if ((t < low) | (t > high)).any():
                msg = (
                    f"{name} has points outside the box [{list(c.x_low)}, {list(c.x_high)}] this PFN was "
                    "trained on; its predictions there are extrapolations of the prior, not the prior's PPD"
                )
                if strict:
                    raise ValueError(msg)
                warnings.warn(msg, stacklevel=2)
        was_training = self.training
        self.eval()
        try:
            logits = self(xt.unsqueeze(0), yt.unsqueeze(0), xq.unsqueeze(0))[0]
        finally:
            self.train(was_training)
        return self.distribution(logits)
