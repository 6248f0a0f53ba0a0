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
from typing import Any

import numpy as np
import torch
from torch import nn

from pyrobayes.options import Option, Task
from pyrobayes.pfn.bar import BarCriterion, BarDistribution
from pyrobayes.ppd import CategoricalPPD

__all__ = ["PFN", "PFNConfig", "Task", "InputMode", "standardise_split"]


# 2 relabellings: +0.0005 +- 0.0003 nats/point over 4 and twice as fast, on the 104 prior
# data sets of benchmarks/bench_classifier_pfn.py (RESULTS.md); 1 costs +0.0010 +- 0.0005
DEFAULT_CLASS_PERMUTATIONS = 2


class InputMode(Option):
    """How a PFN reads its inputs.

    * ``"box"``: exactly ``num_features`` inputs, standardised by the moments of the uniform
      box ``[x_low, x_high]`` the prior draws from; targets by the fixed ``y_loc/y_scale``
      (the 1-D checkpoints).
    * ``"tabular"``: 1..``num_features`` inputs; every dataset's features and targets are
      standardised by its own training split (:func:`standardise_split`), standardised
      features are clipped to ``[x_low, x_high]``, then zero-padded to ``num_features``
      and multiplied by :math:`\\sqrt{D/d}` so the squared norm of a token's input does not
      depend on how many features ``d`` a dataset uses.

    Example::

        >>> from pyrobayes.pfn.model import InputMode, PFNConfig
        >>> InputMode.parse("tabular")
        <InputMode.TABULAR: 'tabular'>
        >>> PFNConfig(borders=(-1.0, 0.0, 1.0)).input_mode   # the default
        'box'
    """

    BOX = "box"
    TABULAR = "tabular"


def standardise_split(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor
]:
    """Standardise a batch of datasets by each one's training split.

    Shapes ``x_* [B, n|m, d]``, ``y_* [B, n|m]``. Features and targets get
    :math:`(v - \\bar v_{\\text{train}}) / s_{\\text{train}}` (population std). Where the
    std is undefined or zero (``n < 2``, a constant column) the scale is 1 and, for
    ``n = 0``, the location 0, so constant columns become exactly zero.

    Returns ``(x_train, y_train, x_query, y_query, y_loc [B], y_scale [B])``.

    Example::

        >>> import torch
        >>> from pyrobayes.pfn.model import standardise_split
        >>> xt = torch.tensor([[[1.0], [3.0]]])          # one dataset, 2 points, 1 feature
        >>> yt = torch.tensor([[10.0, 20.0]])
        >>> xt2, yt2, xq2, yq2, y_loc, y_scale = standardise_split(xt, yt, torch.tensor([[[2.0]]]))
        >>> xt2.flatten(), yt2, xq2.flatten(), yq2
        (tensor([-1.,  1.]), tensor([[-1.,  1.]]), tensor([0.]), None)
        >>> y_loc, y_scale
        (tensor([15.]), tensor([5.]))
    """
    n = x_train.shape[1]
    if n == 0:
        zeros = y_train.new_zeros(y_train.shape[0])
        return x_train, y_train, x_query, y_query, zeros, zeros + 1
    x_loc = x_train.mean(1, keepdim=True)
    x_sd = x_train.std(1, unbiased=False, keepdim=True)
    x_sd = torch.where(x_sd > eps * (1 + x_loc.abs()), x_sd, torch.ones_like(x_sd))
    y_loc = y_train.mean(1)
    y_sd = y_train.std(1, unbiased=False)
    y_sd = torch.where(y_sd > eps * (1 + y_loc.abs()), y_sd, torch.ones_like(y_sd))
    loc, sd = y_loc.unsqueeze(1), y_sd.unsqueeze(1)
    return (
        (x_train - x_loc) / x_sd,
        (y_train - loc) / sd,
        (x_query - x_loc) / x_sd,
        None if y_query is None else (y_query - loc) / sd,
        y_loc,
        y_sd,
    )


@dataclass(frozen=True)
class PFNConfig:
    """Architecture, data normalisation and training-domain description of a PFN.

    Stored as JSON beside every checkpoint. ``x_low``/``x_high`` is the box the prior
    draws inputs from (inputs are mapped to zero mean, unit variance of that uniform
    box); ``y_loc``/``y_scale`` standardise targets before the ``y`` embedding;
    ``borders`` are the bar borders in raw target units (regression only), or in
    training-split-standardised units for ``input_mode="tabular"``. ``input_mode`` (see
    :class:`InputMode`) is ``"box"`` for fixed-dimension PFNs; with ``"tabular"``,
    ``num_features`` is the maximum number of features.

    Example::

        >>> from pyrobayes.pfn.model import PFNConfig
        >>> cfg = PFNConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, borders=(-1.0, 0.0, 1.0))
        >>> cfg.num_outputs                              # bars between the borders
        2
        >>> PFNConfig.from_dict(cfg.to_dict()) == cfg   # JSON round trip
        True
        >>> PFNConfig(d_model=10, n_heads=4, borders=(-1.0, 0.0, 1.0))
        Traceback (most recent call last):
        ...
        ValueError: d_model (10) must be divisible by n_heads (4)
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
    input_mode: str = "box"

    def __post_init__(self) -> None:
        Task.parse(self.task)
        InputMode.parse(self.input_mode)
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


def _pfn_attention(attn: nn.MultiheadAttention, h: torch.Tensor, n: int) -> torch.Tensor:
    """Attention over the PFN sequence ``h = [train (n) | queries]``: every token attends to
    all training tokens, and a query additionally to itself (so ``n = 0``, the prior
    predictive, still has a non-empty softmax) and to no other query.

    Equal to ``attn(h, h, h, attn_mask=M)`` with that pattern as the mask ``M``
    (``tests/test_pfn_model.py`` pins it), without the ``(n + m)^2`` masked scores: the
    training rows go through one unmasked fused attention, and the queries score the ``n``
    training keys plus their own key (``m (n + 1)`` scores). On one CPU thread torch's masked
    softmax was 41% of a prediction (``benchmarks/bench_pfn_attention.py`` times both).
    """
    B, L, E = h.shape
    H = attn.num_heads
    q, k, v = (
        nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        .view(B, L, 3, H, E // H)
        .permute(2, 0, 3, 1, 4)
    )  # each [B, H, L, E/H]
    p = attn.dropout if attn.training else 0.0
    kt, vt = k[:, :, :n], v[:, :, :n]
    train = nn.functional.scaled_dot_product_attention(q[:, :, :n], kt, vt, dropout_p=p)
    qq = q[:, :, n:] * (E // H) ** -0.5
    scores = torch.cat([qq @ kt.transpose(-1, -2), (qq * k[:, :, n:]).sum(-1, keepdim=True)], -1)
    w = nn.functional.dropout(torch.softmax(scores, -1), p, attn.training)
    query = w[..., :n] @ vt + w[..., n:] * v[:, :, n:]
    out = torch.cat([train, query], 2).transpose(1, 2).reshape(B, L, E)
    return attn.out_proj(out)


def _pfn_encoder(encoder: nn.TransformerEncoder, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """``encoder`` (pre-norm layers, then its final norm) with :func:`_pfn_attention`."""
    h = tokens
    for layer in encoder.layers:
        h = h + layer.dropout1(_pfn_attention(layer.self_attn, layer.norm1(h), n))
        ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h)))))
        h = h + layer.dropout2(ff)
    return encoder.norm(h)


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
        self.input_mode = InputMode.parse(c.input_mode)
        # tabular classification: datasets have 2..num_classes classes, told to the network
        self.tabular_classes = (
            self.input_mode is InputMode.TABULAR and self.task is Task.CLASSIFICATION
        )
        self.x_encoder = nn.Linear(c.num_features, c.d_model)
        if self.tabular_classes:
            # the PPD over C classes depends on C (unseen classes share the mass the seen
            # ones leave), so every token carries an embedding of its dataset's C
            self.class_count_encoder = nn.Embedding(c.num_classes + 1, c.d_model)
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

    def _encode_inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mode is InputMode.BOX:
            return (x - self.x_loc) / self.x_scale
        d, dmax = x.shape[-1], self.config.num_features
        if not 1 <= d <= dmax:
            raise ValueError(f"this PFN takes 1..{dmax} features, got {d}")
        x = x.clamp(self.config.x_low[0], self.config.x_high[0])
        # zero-pad to the maximum width; sqrt(D/d) keeps E|x|^2 = D whatever d is
        return nn.functional.pad(x, (0, dmax - d)) * (dmax / d) ** 0.5

    def _class_counts(
        self, num_classes: int | torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        """``[B]`` class counts of a tabular classifier's datasets (default the maximum)."""
        kmax = self.config.num_classes
        if num_classes is None:
            num_classes = kmax
        counts = torch.as_tensor(num_classes, device=device).long().expand(batch)
        if bool(((counts < 2) | (counts > kmax)).any()):
            raise ValueError(f"this PFN takes 2..{kmax} classes, got {counts.unique().tolist()}")
        return counts

    def forward(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_query: torch.Tensor,
        num_classes: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, m, K]`` of the predictive at each query.

        ``"box"`` PFNs take raw data; ``"tabular"`` PFNs take data already standardised by
        :func:`standardise_split` (as :meth:`predict` and training do), ``d <= num_features``.
        A tabular classifier also takes each dataset's class count ``num_classes`` (an int
        or ``[B]``; default ``config.num_classes``): the logits of classes ``>= C`` are
        ``-inf``, so the softmax is over the dataset's ``C`` classes.
        """
        if num_classes is not None and not self.tabular_classes:
            raise ValueError("num_classes is an input of tabular classification PFNs only")
        c = self.config
        n = x_train.shape[1]
        xt = self._encode_inputs(x_train)
        xq = self._encode_inputs(x_query)
        if self.task is Task.REGRESSION:
            ey = self.y_encoder(((y_train - c.y_loc) / c.y_scale).unsqueeze(-1))
        else:
            ey = self.y_encoder(y_train.long())
        tokens = torch.cat([self.x_encoder(xt) + ey, self.x_encoder(xq)], dim=1)
        if self.tabular_classes:
            counts = self._class_counts(num_classes, tokens.shape[0], tokens.device)
            tokens = tokens + self.class_count_encoder(counts).unsqueeze(1)
        h = _pfn_encoder(self.encoder, tokens, n)
        logits = self.decoder(h[:, n:])
        if self.tabular_classes:
            absent = torch.arange(c.num_classes, device=logits.device) >= counts[:, None]
            logits = logits.masked_fill(absent.unsqueeze(1), float("-inf"))
        return logits

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
            if d != 1 and self.input_mode is InputMode.BOX:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} but this PFN expects [n, {d}] inputs"
                )
            t = t.unsqueeze(-1)
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape [n] or [n, d], got {tuple(t.shape)}")
        if self.input_mode is InputMode.TABULAR:
            if not 1 <= t.shape[1] <= d:
                raise ValueError(
                    f"{name} has {t.shape[1]} features but this PFN was trained on 1..{d} features"
                )
        elif t.shape[1] != d:
            raise ValueError(f"{name} has {t.shape[1]} features but this PFN was trained on {d}")
        t = t.to(device=self.device, dtype=self.x_encoder.weight.dtype)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return t

    def _dataset(
        self, x_train: Any, y_train: Any, x_query: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``predict``'s inputs as checked tensors on the module's device."""
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
        elif yt.is_floating_point() and not torch.equal(yt, yt.round()):
            raise ValueError("classification y_train must hold integer labels")
        return xt, yt, xq

    @torch.no_grad()
    def predict(
        self,
        x_train: torch.Tensor | np.ndarray,
        y_train: torch.Tensor | np.ndarray,
        x_query: torch.Tensor | np.ndarray,
        *,
        strict: bool = False,
        num_classes: int | None = None,
        class_permutations: int = DEFAULT_CLASS_PERMUTATIONS,
    ) -> BarDistribution | CategoricalPPD:
        """Posterior predictive at ``x_query`` given the training set, in one forward pass.

        Args:
            x_train: ``[n]`` or ``[n, d]`` (``n = 0`` gives the prior predictive).
            y_train: ``[n]`` targets (class labels for classification).
            x_query: ``[m]`` or ``[m, d]``.
            strict: raise instead of warning when inputs leave the training box or
                targets leave the range of targets the PFN was trained on.
            num_classes: a tabular classifier's class count ``C`` (labels ``0..C-1``;
                default ``max(y_train) + 1``, at least 2): pass it when a class may be
                missing from the training rows.
            class_permutations: a tabular classifier averages its probabilities over this
                many relabellings of the (canonically ordered) training labels, the first
                the identity (:meth:`_predict_tabular_classes`).

        A ``"tabular"`` PFN standardises features and targets by the training split itself
        (raw-unit data just work), drops features that are constant on the training split
        (so zero-padding columns change nothing), and returns the bar PPD in raw target
        units: its borders are :math:`\\mu_y + s_y b_k`, so the log-density includes the
        Jacobian :math:`-\\log s_y`. A tabular classifier standardises the features only
        and is equivariant to relabelling the classes by construction: permuting the class
        ids of ``y_train`` permutes the returned probabilities the same way (the network
        sees identical inputs; only the final renormalisation's float rounding differs).

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
        xt, yt, xq = self._dataset(x_train, y_train, x_query)
        if self.tabular_classes:
            return self._predict_tabular_classes(xt, yt.long(), xq, num_classes, class_permutations)
        if self.task is Task.CLASSIFICATION and ((yt < 0) | (yt >= c.num_classes)).any():
            raise ValueError(f"labels must lie in [0, {c.num_classes - 1}]")
        if self.input_mode is InputMode.TABULAR:
            return self._predict_tabular(xt, yt, xq, strict)
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
        if self.task is Task.REGRESSION:
            self._check_targets(yt, strict, "y_train")
        return self.distribution(self._forward_eval(xt, yt, xq))

    def _forward_eval(self, xt: torch.Tensor, yt: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            return self(xt.unsqueeze(0), yt.unsqueeze(0), xq.unsqueeze(0))[0]
        finally:
            self.train(was_training)

    def _check_targets(self, y: torch.Tensor, strict: bool, what: str) -> None:
        """Warn (or raise) when targets leave the bar borders' range: the prior put
        (almost) no mass there, so the PPD is an extrapolation that silently shrinks
        towards the trained range (e.g. predictive means near 4.5 for targets near 100)."""
        lo, hi = self.config.borders[0], self.config.borders[-1]
        if y.numel() and (float(y.min()) < lo or float(y.max()) > hi):
            msg = (
                f"{what} spans [{float(y.min()):.4g}, {float(y.max()):.4g}], outside the range "
                f"[{lo:.4g}, {hi:.4g}] of targets this PFN was trained on; its predictions are not "
                "the prior's PPD there (rescale the targets, or use a PFN that standardises them)"
            )
            if strict:
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=3)

    @staticmethod
    def _informative_columns(
        xt: torch.Tensor, xq: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop the columns constant on the training rows: they carry no information (and
        are what zero-padding looks like); keep one if all are."""
        if xq.shape[1] != xt.shape[1]:
            raise ValueError(f"x_query has {xq.shape[1]} features but x_train has {xt.shape[1]}")
        if xt.shape[0] < 2:
            return xt, xq
        sd = xt.std(0, unbiased=False)
        keep = sd > 1e-8 * (1 + xt.mean(0).abs())
        if not keep.any():
            keep[0] = True
        return xt[:, keep], xq[:, keep]

    def _predict_tabular(
        self, xt: torch.Tensor, yt: torch.Tensor, xq: torch.Tensor, strict: bool
    ) -> BarDistribution:
        xt, xq = self._informative_columns(xt, xq)
        xs, ys, qs, _, y_loc, y_scale = standardise_split(
            xt.unsqueeze(0), yt.unsqueeze(0), xq.unsqueeze(0)
        )
        self._check_targets(ys[0], strict, "y_train (standardised by its own mean and std)")
        logits = self._forward_eval(xs[0], ys[0], qs[0])
        borders = self.criterion.borders.to(logits.dtype)
        return BarDistribution(y_loc[0] + y_scale[0] * borders, logits)

    def _predict_tabular_classes(
        self,
        xt: torch.Tensor,
        yt: torch.Tensor,
        xq: torch.Tensor,
        num_classes: int | None,
        permutations: int,
    ) -> CategoricalPPD:
        """A tabular classifier's PPD, exactly equivariant to relabelling the classes.

        The labels are first put in a canonical order that relabelling cannot change:
        classes sorted by training count (descending), then by the mean over their rows of
        a fixed projection :math:`u^\\top x` of the standardised features; the network
        sees the canonical labels, so relabelling ``y_train`` by :math:`\\sigma` gives it
        identical inputs and the output, mapped back, is permuted by :math:`\\sigma`. The
        classes absent from the training rows are exchangeable under the prior (their exact
        PPD probabilities are equal), so they get their mean. Exactness needs no ties
        between two *present* classes in (count, projected mean), which has probability 0
        for continuous features. On top, the probabilities are averaged over
        ``permutations`` fixed relabellings of the canonical labels (a cheap ensemble that
        reduces the network's own dependence on label order; fixed, so still exact).
        """
        kmax = self.config.num_classes
        seen_max = int(yt.max()) + 1 if yt.numel() else 0
        C = int(num_classes) if num_classes is not None else max(2, seen_max)
        if not 2 <= C <= kmax:
            raise ValueError(f"this PFN was trained on 2..{kmax} classes, got num_classes={C}")
        if yt.numel() and (int(yt.min()) < 0 or seen_max > C):
            raise ValueError(f"labels must lie in [0, {C - 1}] (num_classes={C})")
        if permutations < 1:
            raise ValueError(f"class_permutations must be >= 1, got {permutations}")
        xt, xq = self._informative_columns(xt, xq)
        xs, _, qs, *_ = standardise_split(xt.unsqueeze(0), yt.unsqueeze(0).float(), xq.unsqueeze(0))
        xs, qs = xs[0], qs[0]
        rank, seen = self._canonical_ranks(xs, yt, C)
        gen = torch.Generator().manual_seed(0)
        perms = torch.stack(
            [torch.arange(C)] + [torch.randperm(C, generator=gen) for _ in range(permutations - 1)]
        ).to(self.device)  # [P, C]: canonical class c is shown as perms[p, c]
        P = perms.shape[0]
        y_in = perms[:, rank[yt]]  # [P, n]
        was_training = self.training
        self.eval()
        try:
            logits = self(xs.expand(P, -1, -1), y_in, qs.expand(P, -1, -1), C)
        finally:
            self.train(was_training)
        probs = torch.softmax(logits.float(), -1)[..., :C]  # [P, m, C]
        canon = probs.gather(-1, perms[:, None, :].expand_as(probs)).mean(0)  # [m, C]
        n_seen = int(seen.sum())
        if n_seen < C:
            canon[:, n_seen:] = canon[:, n_seen:].mean(-1, keepdim=True)
        return CategoricalPPD(canon[:, rank].unsqueeze(0))

    def _canonical_ranks(
        self, xs: torch.Tensor, yt: torch.Tensor, C: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rank [C]`` (class -> canonical position; present classes first) and ``seen [C]``."""
        counts = torch.bincount(yt, minlength=C)
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(self.config.num_features, generator=gen)[: xs.shape[1]].to(xs)
        proj = torch.zeros(C, dtype=xs.dtype, device=xs.device)
        if yt.numel():
            proj = proj.index_add(0, yt, xs @ u) / counts.clamp(min=1).to(xs.dtype)
        # lexicographic (count desc, projection desc) by stable sorts, last key first
        order = torch.sort(-proj, stable=True).indices
        order = order[torch.sort(-counts[order], stable=True).indices]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(C, device=order.device)
        return rank, counts > 0
