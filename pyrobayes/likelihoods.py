"""Observation models: how a network's output explains the targets.

Each likelihood observes the targets under
``pyro.plate("data", size=dataset_size, subsample=...)``, so with a minibatch of ``B``
out of ``N`` points Pyro scales the log-likelihood by ``N/B`` and the minibatch ELBO is
an unbiased estimate of the full-data ELBO,

.. math::

    \\mathcal L = \\frac{N}{B} \\sum_{i \\in \\text{batch}} \\mathbb E_q \\log p(y_i \\mid x_i, w)
                 - \\mathrm{KL}(q(w) \\,\\|\\, p(w)),

with the KL counted once per step (never divided by the batch count).

Each likelihood also turns network outputs for ``S`` weight draws into the PPD.

Example::

    >>> import torch
    >>> from pyrobayes.likelihoods import Gaussian
    >>> ppd = Gaussian(scale=0.1).ppd(torch.zeros(20, 5, 1))   # 20 draws, 5 points
    >>> ppd.batch_shape
    torch.Size([5])
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from pyrobayes.options import Option
from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, as_class_indices

__all__ = [
    "Likelihood",
    "Gaussian",
    "Categorical",
    "LikelihoodKind",
    "get_likelihood",
    "data_size",
    "current_data_size",
]

# The N of the plate while a training loop runs. A context variable, not an attribute on the
# model: state left on the model after ``fit`` would silently temper the likelihood for
# anyone who later traces it on a subset (NUTS, Predictive, a hand-written SVI loop).
_DATA_SIZE: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "pyrobayes_data_size", default=None
)


@contextlib.contextmanager
def data_size(n: int | None) -> Iterator[None]:
    """Within the block, likelihood plates take ``n`` as the data set size ``N`` (so a
    minibatch of ``B`` points is scaled by ``N/B``); outside it they see only the batch.

    ``fit`` enters this around its loop; a distributed loop would pass the *global* ``N``.

    >>> import torch
    >>> from pyrobayes.likelihoods import Gaussian, data_size
    >>> import pyro
    >>> lik = Gaussian(1.0)
    >>> with data_size(40):
    ...     tr = pyro.poutine.trace(lik).get_trace(torch.zeros(10), torch.zeros(10))
    >>> tr.nodes["obs"]["scale"]
    4.0
    """
    if n is not None and int(n) < 1:
        raise ValueError(f"data size must be >= 1, got {n}")
    token = _DATA_SIZE.set(None if n is None else int(n))
    try:
        yield
    finally:
        _DATA_SIZE.reset(token)


def current_data_size() -> int | None:
    """The ``N`` set by the innermost :func:`data_size` block, or ``None``."""
    return _DATA_SIZE.get()


class LikelihoodKind(Option):
    GAUSSIAN = "gaussian"
    CATEGORICAL = "categorical"


class Likelihood(PyroModule):
    """Base class. ``dataset_size`` is a fixed ``N`` for the plate chosen by the user;
    ``None`` (the default) means the ``N`` of an enclosing :func:`data_size` block (``fit``
    opens one from the data it is given) and otherwise "the batch is the whole data set"."""

    def __init__(self, dataset_size: int | None = None):
        super().__init__()
        self.dataset_size = dataset_size

    def plate_size(self, batch_size: int) -> int:
        """The plate's ``N`` for a batch of ``batch_size`` points."""
        return self.dataset_size or current_data_size() or batch_size

    def _plate(self, batch_size: int, device: torch.device):
        size = self.plate_size(batch_size)
        if size < batch_size:
            raise ValueError(f"batch of {batch_size} points is larger than dataset_size={size}")
        subsample = None if size == batch_size else torch.arange(batch_size, device=device)
        return pyro.plate("data", size=size, subsample=subsample, device=device)

    def ppd(self, outputs: torch.Tensor):
        """Network outputs for ``S`` draws, shape ``[S, N, ...]``, to the PPD."""
        raise NotImplementedError

    def log_prob(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-point log-likelihood ``log p(y_i | f(x_i))`` (no plate scaling), shape ``[B]``."""
        raise NotImplementedError


class Gaussian(Likelihood):
    """:math:`y \\sim \\mathcal N(f(x), \\sigma^2)`, with ``sigma`` fixed or learned (as a
    point estimate, type-II maximum likelihood)."""

    def __init__(
        self, scale: float = 0.1, learn_scale: bool = False, dataset_size: int | None = None
    ):
        super().__init__(dataset_size)
        if not (float(scale) > 0):
            raise ValueError(f"Gaussian noise scale must be positive, got {scale!r}")
        self.learn_scale = learn_scale
        if learn_scale:
            self.scale = PyroParam(torch.tensor(float(scale)), constraint=constraints.positive)
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    @staticmethod
    def _squeeze(f: torch.Tensor) -> torch.Tensor:
        return f.squeeze(-1) if f.dim() > 1 and f.shape[-1] == 1 else f

    def forward(self, outputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        loc = self._squeeze(outputs)
        if y is not None:
            y = self._squeeze(y).to(loc.dtype)
            if y.shape != loc.shape:
                raise ValueError(
                    f"targets have shape {tuple(y.shape)} but the network predicts {tuple(loc.shape)}"
                )
        with self._plate(loc.shape[0], loc.device):
            pyro.sample("obs", dist.Normal(loc, self.scale).to_event(loc.dim() - 1), obs=y)
        return loc

    def log_prob(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loc = self._squeeze(outputs)
        lp = dist.Normal(loc, self.scale).log_prob(self._squeeze(y).to(loc.dtype))
        return lp.reshape(lp.shape[0], -1).sum(-1)

    def ppd(self, outputs: torch.Tensor) -> NormalMixturePPD:
        loc = self._squeeze(outputs)
        return NormalMixturePPD(loc, self.scale.detach().to(loc.dtype))


class Categorical(Likelihood):
    """:math:`y \\sim \\mathrm{Categorical}(\\mathrm{softmax}(f(x)))` from logits."""

    def forward(self, outputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            y = self._labels(outputs, y)
        with self._plate(outputs.shape[0], outputs.device):
            pyro.sample("obs", dist.Categorical(logits=outputs).to_event(outputs.dim() - 2), obs=y)
        return outputs

    @staticmethod
    def _labels(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Class indices checked against the logits (shape, dtype, range, one-hot)."""
        if outputs.shape[-1] < 2:
            raise ValueError(
                f"a categorical likelihood needs one logit per class, but the network outputs "
                f"shape {tuple(outputs.shape)} ({outputs.shape[-1]} output); for regression "
                "pass likelihood=Gaussian(...)"
            )
        y = as_class_indices(y, outputs.shape[-1], logits_shape=outputs.shape)
        if y.shape != outputs.shape[:-1]:
            raise ValueError(
                f"labels have shape {tuple(y.shape)} but logits have {tuple(outputs.shape)}"
            )
        return y

    def log_prob(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = self._labels(outputs, y)
        lp = -torch.nn.functional.cross_entropy(
            outputs.flatten(0, -2), y.flatten(), reduction="none"
        )
        return lp.reshape(outputs.shape[0], -1).sum(-1)

    def ppd(self, outputs: torch.Tensor) -> CategoricalPPD:
        return CategoricalPPD.from_logits(outputs)


def get_likelihood(spec: str | Likelihood, **kwargs) -> Likelihood:
    """A likelihood from its name (``"gaussian"``, ``"categorical"``) or as is."""
    if isinstance(spec, Likelihood):
        return spec
    kind = LikelihoodKind.parse(spec, "likelihood")
    return Gaussian(**kwargs) if kind is LikelihoodKind.GAUSSIAN else Categorical(**kwargs)
