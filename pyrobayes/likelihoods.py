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
import math
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from pyrobayes._pyro_compat import pyro_name
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
    """The ``N`` set by the innermost :func:`data_size` block, or ``None``.

    Example::

        >>> from pyrobayes.likelihoods import current_data_size, data_size
        >>> with data_size(100):
        ...     with data_size(7):
        ...         inner = current_data_size()
        ...     outer = current_data_size()
        >>> inner, outer, current_data_size()
        (7, 100, None)
    """
    return _DATA_SIZE.get()


class LikelihoodKind(Option):
    """The likelihood names :func:`get_likelihood` accepts.

    Example::

        >>> from pyrobayes.likelihoods import LikelihoodKind
        >>> LikelihoodKind.parse("categorical")
        <LikelihoodKind.CATEGORICAL: 'categorical'>
        >>> LikelihoodKind.parse("poisson")
        Traceback (most recent call last):
        ...
        ValueError: unknown likelihood kind 'poisson'; valid: gaussian, categorical
    """

    GAUSSIAN = "gaussian"
    CATEGORICAL = "categorical"


class Likelihood(PyroModule):
    """Base class. ``dataset_size`` is a fixed ``N`` for the plate chosen by the user;
    ``None`` (the default) means the ``N`` of an enclosing :func:`data_size` block (``fit``
    opens one from the data it is given) and otherwise "the batch is the whole data set".

    Example::

        >>> from pyrobayes.likelihoods import Gaussian, data_size
        >>> Gaussian(dataset_size=50).plate_size(10)   # fixed N
        50
        >>> lik = Gaussian()
        >>> lik.plate_size(10)                          # the batch is the data set
        10
        >>> with data_size(30):
        ...     lik.plate_size(10)                      # N from the enclosing fit
        30
    """

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

    def site_name(self, local: str) -> str:
        """The Pyro name of this likelihood's own sample site ``local``: prefixed by the
        likelihood's Pyro name, as Pyro names a ``PyroParam`` of a submodule. Inside a
        :class:`~pyrobayes.bayesian_model.BayesianModel` that is ``"<model name>.likelihood"``, so
        two models' sites (and their guides' entries in Pyro's param store) never share
        a name; a likelihood that no model holds uses ``local`` itself.

        Example::

            >>> import torch
            >>> from pyrobayes import BayesianModel, Gaussian, to_pyro
            >>> lik = Gaussian()
            >>> lik.site_name("noise_scale")
            'noise_scale'
            >>> model = BayesianModel(to_pyro(torch.nn.Linear(1, 1), name="reg"), lik)
            >>> model.likelihood.site_name("noise_scale")
            'reg.likelihood.noise_scale'
        """
        prefix = pyro_name(self)
        return f"{prefix}.{local}" if prefix else local

    @property
    def latent_keywords(self) -> dict[str, str]:
        """``{latent site name: keyword}``: the likelihood's own latent sample sites (e.g.
        a noise scale with a prior; the network's weight sites are not among them), each
        with the keyword of :meth:`ppd` / :meth:`log_prob` that takes its draws. The
        keyword is also the site's name when no model holds the likelihood."""
        return {}

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Names of the likelihood's own latent sample sites (the keys of
        :attr:`latent_keywords`)."""
        return tuple(self.latent_keywords)

    def sample_latents(self, num_draws: int) -> dict[str, torch.Tensor]:
        """``{site: Tensor[num_draws]}`` drawn from the priors of :attr:`latent_sites`."""
        return {}

    def latent_prior_on(self, site: str, device: torch.device, dtype: torch.dtype):
        """The prior of the latent site ``site`` (one of :attr:`latent_sites`) with its
        tensors on ``device``/``dtype``; a ``KeyError`` for any other name."""
        raise KeyError(f"{type(self).__name__} has no latent site {site!r}")

    def ppd_from_draws(self, outputs: torch.Tensor, draws: dict[str, torch.Tensor]):
        """The PPD of per-draw ``outputs`` given the matching posterior (or prior) draws of
        the likelihood's latent sites; ignores weight sites in ``draws``."""
        missing = [s for s in self.latent_sites if s not in draws]
        if missing:
            raise ValueError(f"draws lack the likelihood's latent site(s) {missing}")
        keywords = self.latent_keywords
        return self.ppd(outputs, **{keywords.get(s, s): draws[s] for s in self.latent_sites})

    def log_prob(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-point log-likelihood ``log p(y_i | f(x_i))`` (no plate scaling), shape ``[B]``."""
        raise NotImplementedError

    def log_prob_sum(self, outputs: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """``log_prob(outputs, y, **kwargs).sum()``: the batch's total log-likelihood, the
        term an ELBO or a potential energy needs (subclasses compute it in fewer steps).

        Example::

            >>> import torch
            >>> from pyrobayes.likelihoods import Categorical
            >>> logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
            >>> lik = Categorical()
            >>> torch.allclose(lik.log_prob_sum(logits, y), lik.log_prob(logits, y).sum())
            True
        """
        return self.log_prob(outputs, y, **kwargs).sum()


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(
    loc: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, total: bool = False
) -> torch.Tensor:
    r"""The one Gaussian log density of pyrobayes' fast paths (the fused ELBO, the NUTS
    potential, :meth:`Gaussian.log_prob`), element-wise

    .. math::

        \log \mathcal N(y; f, \sigma^2) = -\frac{(y - f)^2}{2\sigma^2} - \log\sigma
            - \tfrac12\log 2\pi,

    which is ``pyro.distributions.Normal(loc, sigma).log_prob(y)`` (what
    :meth:`Gaussian.forward` observes under Pyro) without building a validated
    distribution; ``total=True``: its sum, with the squared errors as ONE summed
    ``mse_loss`` (one kernel, one backward node) when ``sigma`` is one number.
    ``y`` must broadcast to ``loc``'s shape.

    Example::

        >>> import pyro.distributions as dist
        >>> f, y, s = torch.randn(5), torch.randn(5), torch.tensor(0.3)
        >>> torch.allclose(normal_log_prob(f, y, s), dist.Normal(f, s).log_prob(y))
        True
        >>> torch.allclose(normal_log_prob(f, y, s, total=True), dist.Normal(f, s).log_prob(y).sum())
        True
    """
    y = y.to(loc.dtype).expand_as(loc)
    if total and sigma.numel() == 1:
        sigma = sigma.reshape(())
        sq = torch.nn.functional.mse_loss(loc, y, reduction="sum")
        return -0.5 * sq / sigma.square() - loc.numel() * (sigma.log() + _HALF_LOG_2PI)
    sq = torch.nn.functional.mse_loss(loc, y, reduction="none")
    lp = -0.5 * sq / sigma.square() - sigma.log() - _HALF_LOG_2PI
    return lp.sum() if total else lp


class Gaussian(Likelihood):
    """:math:`y \\sim \\mathcal N(f(x), \\sigma^2)`, with ``sigma`` fixed, learned (as a
    point estimate, type-II maximum likelihood) or latent with a prior.

    Args:
        scale: the fixed (or initial learned) noise std.
        learn_scale: learn ``sigma`` as a parameter.
        noise_prior: a ``pyro.distributions`` distribution over positive reals (a
            ``torch.distributions`` one is converted to its Pyro class); makes ``sigma`` a
            latent site :attr:`noise_site` drawn once per model execution before the data
            plate, so NUTS samples it, an autoguide fits it and a PFN trained on this
            model's prior integrates it out. ``scale`` is then unused.
        dataset_size: the plate's ``N``.

    With a latent noise, :meth:`ppd` needs the per-draw scales (``noise_scale=``). The
    site is named after the model that holds the likelihood (:meth:`site_name`):
    ``"<model name>.likelihood.noise_scale"``.

    Example::

        >>> import pyro.distributions as dist
        >>> lik = Gaussian(noise_prior=dist.LogNormal(-1.6, 0.8))
        >>> lik.ppd(torch.zeros(3, 4, 1), noise_scale=torch.tensor([0.1, 0.2, 0.3])).batch_shape
        torch.Size([4])
    """

    # the noise site's own name (before the model's prefix) and the keyword of ppd/log_prob
    NOISE_SITE = "noise_scale"

    def __init__(
        self,
        scale: float = 0.1,
        learn_scale: bool = False,
        dataset_size: int | None = None,
        noise_prior: torch.distributions.Distribution | None = None,
    ):
        super().__init__(dataset_size)
        if not (float(scale) > 0):
            raise ValueError(f"Gaussian noise scale must be positive, got {scale!r}")
        if noise_prior is not None:
            if learn_scale:
                raise ValueError("Gaussian: give either learn_scale=True or noise_prior, not both")
            noise_prior = _positive_scalar_prior(noise_prior, "noise_prior")
        self.noise_prior = noise_prior
        self.learn_scale = learn_scale
        if learn_scale:
            self.scale = PyroParam(torch.tensor(float(scale)), constraint=constraints.positive)
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    @property
    def latent_noise(self) -> bool:
        """Whether the noise std is a latent site (:attr:`noise_site`)."""
        return self.noise_prior is not None

    @property
    def noise_site(self) -> str:
        """The name of the latent noise std's sample site, ``"<model>.likelihood.noise_scale"``
        (the one name every consumer looks the noise up by: guides' ``init_values``,
        posterior and NUTS draws, a PFN prior's latents)."""
        return self.site_name(self.NOISE_SITE)

    @property
    def latent_keywords(self) -> dict[str, str]:
        return {self.noise_site: self.NOISE_SITE} if self.latent_noise else {}

    def sample_latents(self, num_draws: int) -> dict[str, torch.Tensor]:
        if not self.latent_noise:
            return {}
        return {self.noise_site: self.noise_prior.sample((num_draws,))}

    @staticmethod
    def _squeeze(f: torch.Tensor) -> torch.Tensor:
        return f.squeeze(-1) if f.dim() > 1 and f.shape[-1] == 1 else f

    def noise_prior_on(self, device: torch.device, dtype: torch.dtype):
        """The noise prior with its tensors on ``device``/``dtype`` (distributions do not
        follow ``.to()``; the model and the fused ELBO move it lazily)."""
        return _prior_on(self.noise_prior, device, dtype)

    def latent_prior_on(self, site: str, device: torch.device, dtype: torch.dtype):
        if self.latent_noise and site == self.noise_site:
            return self.noise_prior_on(device, dtype)
        return super().latent_prior_on(site, device, dtype)

    def forward(self, outputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        loc = self._squeeze(outputs)
        if y is not None:
            y = self._squeeze(y).to(loc.dtype)
            if y.shape != loc.shape:
                raise ValueError(
                    f"targets have shape {tuple(y.shape)} but the network predicts {tuple(loc.shape)}"
                )
        if self.latent_noise:
            # one sigma per model execution, outside the data plate (it is shared by all points)
            sigma = pyro.sample(self.noise_site, self.noise_prior_on(loc.device, loc.dtype))
        else:  # in the outputs' dtype (a float32 buffer would keep a float64 model's
            sigma = self.scale.to(loc.dtype)  # Normal in float32: Normal keeps mixed dtypes)
        with self._plate(loc.shape[0], loc.device):
            pyro.sample("obs", dist.Normal(loc, sigma).to_event(loc.dim() - 1), obs=y)
        return loc

    def _draw_scale(self, loc: torch.Tensor, noise_scale) -> torch.Tensor:
        """The noise std as a tensor broadcastable to ``loc`` (``[S, ...]``)."""
        if noise_scale is None:
            if self.latent_noise:
                raise ValueError(
                    "this Gaussian has a latent noise scale: pass the per-draw values as "
                    f"noise_scale= (the {self.noise_site!r} site of the posterior draws)"
                )
            return self.scale.detach().to(loc.dtype)
        s = torch.as_tensor(noise_scale, dtype=loc.dtype, device=loc.device)
        if s.dim() == 1 and loc.dim() >= 1 and s.shape[0] == loc.shape[0]:
            s = s.reshape(s.shape[0], *([1] * (loc.dim() - 1)))
        return s

    def _sigma(self, loc: torch.Tensor, noise_scale) -> torch.Tensor:
        """The noise std a log density uses: the latent draw ``noise_scale`` (required for a
        latent noise), else the fixed or learned scale (not detached: a learned scale,
        type-II ML, gets its gradient through here)."""
        if noise_scale is None:
            if self.latent_noise:
                self._draw_scale(loc, None)  # raises: a latent noise needs its draw
            return self.scale.to(loc.dtype)
        return torch.as_tensor(noise_scale, dtype=loc.dtype, device=loc.device)

    def log_prob(
        self, outputs: torch.Tensor, y: torch.Tensor, noise_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-point log-likelihood; ``noise_scale`` (a scalar) is required for a latent noise."""
        loc = self._squeeze(outputs)
        lp = normal_log_prob(loc, self._squeeze(y), self._sigma(loc, noise_scale))
        return lp.reshape(lp.shape[0], -1).sum(-1)

    def log_prob_sum(
        self, outputs: torch.Tensor, y: torch.Tensor, noise_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The batch's total log-likelihood (fused ELBO, NUTS potential): one summed
        squared error, ``normal_log_prob`` with ``total=True``."""
        loc = self._squeeze(outputs)
        return normal_log_prob(loc, self._squeeze(y), self._sigma(loc, noise_scale), total=True)

    def ppd(
        self, outputs: torch.Tensor, noise_scale: torch.Tensor | None = None
    ) -> NormalMixturePPD:
        """Mixture over the ``S`` draws ``outputs [S, N, ...]``; ``noise_scale`` (``[S]`` or a
        scalar) overrides the fixed scale and is required when the noise is latent."""
        loc = self._squeeze(outputs)
        return NormalMixturePPD(loc, self._draw_scale(loc, noise_scale))


def _prior_on(p: dist.TorchDistribution, device: torch.device, dtype: torch.dtype):
    """A LogNormal or HalfNormal prior with its tensors on ``device``/``dtype``; others as is."""
    if isinstance(p, dist.LogNormal):
        return dist.LogNormal(p.loc.to(device, dtype), p.scale.to(device, dtype))
    if isinstance(p, dist.HalfNormal):
        return dist.HalfNormal(p.scale.to(device, dtype))
    return p


def _positive_scalar_prior(prior, what: str) -> dist.TorchDistribution:
    """``prior`` as a Pyro distribution over one positive scalar, else a clear error."""
    prior = _as_pyro_distribution(prior, what)
    if prior.batch_shape != torch.Size() or prior.event_shape != torch.Size():
        raise ValueError(f"{what} must be a scalar distribution (empty batch/event shape)")
    support = prior.support
    if not (
        support is constraints.positive
        or isinstance(support, constraints.greater_than | constraints.interval)
        and float(getattr(support, "lower_bound", -1.0)) >= 0
    ):
        raise ValueError(f"{what} must have positive support, got {support}")
    return prior


def _as_pyro_distribution(prior, what: str = "noise_prior") -> dist.TorchDistribution:
    """``prior`` as a Pyro distribution: Pyro's sample statements need its extra interface
    (``event_dim``, ``expand_by``, ...), which a plain ``torch.distributions`` object lacks
    (``fit`` would fail deep in a trace). A torch distribution is rebuilt as the Pyro class
    of the same name from its parameters; one that cannot be is refused."""
    if isinstance(prior, dist.TorchDistribution):
        return prior
    if not isinstance(prior, torch.distributions.Distribution):
        raise TypeError(
            f"{what} must be a pyro.distributions distribution, got {type(prior).__name__}"
        )
    cls = getattr(dist, type(prior).__name__, None)
    if isinstance(cls, type) and issubclass(cls, type(prior)):
        try:
            return cls(**{k: getattr(prior, k) for k in prior.arg_constraints})
        except (TypeError, ValueError, AttributeError, NotImplementedError):
            pass
    raise TypeError(
        f"{what} is a torch.distributions.{type(prior).__name__}, which cannot be "
        "converted to a Pyro distribution: use pyro.distributions (e.g. "
        "pyro.distributions.LogNormal(loc, scale)) instead"
    )


class Categorical(Likelihood):
    """:math:`y \\sim \\mathrm{Categorical}(\\mathrm{softmax}(\\tau f(x)))` from logits
    :math:`f(x)`, with :math:`\\tau = 1`, or, given ``logit_scale_prior``, a latent logit
    scale :math:`\\tau \\sim` that prior drawn once per model execution (site
    :attr:`scale_site`, ``"<model>.likelihood.logit_scale"``).

    The latent :math:`\\tau` is the classifier's counterpart of a Gaussian's latent noise
    std: how sharply the labels follow the network. With a fixed weight prior the logits'
    magnitude, and so the confidence of the posterior predictive, is set by the prior
    alone; a separable data set then gets the same soft predictions as a noisy one. With
    :math:`\\tau` latent its posterior grows where the training labels are predictable and
    shrinks where they are not (a hierarchical prior on the output layer's scale:
    :math:`\\tau (W h + b)`).

    Args:
        dataset_size: the plate's ``N`` (see :class:`Likelihood`).
        logit_scale_prior: a ``pyro.distributions`` distribution over positive reals, e.g.
            ``LogNormal(0, 1)``; ``None``: :math:`\\tau = 1`.

    Example::

        >>> import torch
        >>> import pyro.distributions as dist
        >>> from pyrobayes.likelihoods import Categorical
        >>> lik = Categorical()
        >>> logits = torch.zeros(1, 3)                 # one point, uniform over 3 classes
        >>> lik.log_prob(logits, torch.tensor([2])).exp()
        tensor([0.3333])
        >>> ppd = lik.ppd(torch.zeros(4, 5, 3))       # 4 draws, 5 points, 3 classes
        >>> ppd.probs.shape
        torch.Size([5, 3])
        >>> tau = Categorical(logit_scale_prior=dist.LogNormal(0.0, 1.0))
        >>> tau.latent_sites
        ('logit_scale',)
        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> lp = tau.log_prob(logits, torch.tensor([0]), logit_scale=torch.tensor(0.5))
        >>> round(float(lp.exp()), 4)                  # softmax([1, 0])[0]: the logits halved
        0.7311
    """

    # the scale site's own name (before the model's prefix) and the keyword of ppd/log_prob
    SCALE_SITE = "logit_scale"

    def __init__(
        self,
        dataset_size: int | None = None,
        logit_scale_prior: torch.distributions.Distribution | None = None,
    ):
        super().__init__(dataset_size)
        self.logit_scale_prior = (
            None
            if logit_scale_prior is None
            else _positive_scalar_prior(logit_scale_prior, "logit_scale_prior")
        )

    @property
    def latent_scale(self) -> bool:
        """Whether the logit scale :math:`\\tau` is a latent site (:attr:`scale_site`)."""
        return self.logit_scale_prior is not None

    @property
    def scale_site(self) -> str:
        """The name of the latent logit scale's sample site."""
        return self.site_name(self.SCALE_SITE)

    @property
    def latent_keywords(self) -> dict[str, str]:
        return {self.scale_site: self.SCALE_SITE} if self.latent_scale else {}

    def sample_latents(self, num_draws: int) -> dict[str, torch.Tensor]:
        if not self.latent_scale:
            return {}
        return {self.scale_site: self.logit_scale_prior.sample((num_draws,))}

    def scale_prior_on(self, device: torch.device, dtype: torch.dtype):
        """The logit scale's prior with its tensors on ``device``/``dtype``."""
        return _prior_on(self.logit_scale_prior, device, dtype)

    def latent_prior_on(self, site: str, device: torch.device, dtype: torch.dtype):
        if self.latent_scale and site == self.scale_site:
            return self.scale_prior_on(device, dtype)
        return super().latent_prior_on(site, device, dtype)

    def forward(self, outputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            y = self._labels(outputs, y)
        logits = outputs
        if self.latent_scale:
            # one tau per model execution, outside the data plate (shared by all points)
            tau = pyro.sample(self.scale_site, self.scale_prior_on(outputs.device, outputs.dtype))
            logits = outputs * tau
        with self._plate(outputs.shape[0], outputs.device):
            pyro.sample("obs", dist.Categorical(logits=logits).to_event(outputs.dim() - 2), obs=y)
        return outputs

    def _scaled(self, outputs: torch.Tensor, logit_scale, per_draw: bool) -> torch.Tensor:
        """``outputs`` times the draw(s) ``logit_scale`` (required for a latent scale):
        a scalar, or with ``per_draw`` one value per leading draw of ``outputs [S, ...]``."""
        if logit_scale is None:
            if self.latent_scale:
                raise ValueError(
                    "this Categorical has a latent logit scale: pass its draws as "
                    f"logit_scale= (the {self.scale_site!r} site of the posterior draws)"
                )
            return outputs
        tau = torch.as_tensor(logit_scale, dtype=outputs.dtype, device=outputs.device)
        if per_draw and tau.dim() == 1 and tau.shape[0] == outputs.shape[0]:
            tau = tau.reshape(-1, *([1] * (outputs.dim() - 1)))
        return outputs * tau

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

    def log_prob(
        self, outputs: torch.Tensor, y: torch.Tensor, logit_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-point log-likelihood; ``logit_scale`` (a scalar) is required for a latent scale."""
        y = self._labels(outputs, y)
        logits = self._scaled(outputs, logit_scale, per_draw=False)
        lp = -torch.nn.functional.cross_entropy(
            logits.flatten(0, -2), y.flatten(), reduction="none"
        )
        return lp.reshape(outputs.shape[0], -1).sum(-1)

    def log_prob_sum(
        self, outputs: torch.Tensor, y: torch.Tensor, logit_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        # one summed cross-entropy instead of per-point terms reshaped and summed twice:
        # this runs once per SVI step and per NUTS gradient
        y = self._labels(outputs, y)
        logits = self._scaled(outputs, logit_scale, per_draw=False)
        return -torch.nn.functional.cross_entropy(
            logits.flatten(0, -2), y.flatten(), reduction="sum"
        )

    def ppd(self, outputs: torch.Tensor, logit_scale: torch.Tensor | None = None) -> CategoricalPPD:
        """Mixture over the ``S`` draws ``outputs [S, N, C]``; ``logit_scale`` (``[S]`` or a
        scalar) is required when the scale is latent."""
        return CategoricalPPD.from_logits(self._scaled(outputs, logit_scale, per_draw=True))


def get_likelihood(spec: str | Likelihood, **kwargs) -> Likelihood:
    """A likelihood from its name (``"gaussian"``, ``"categorical"``) or as is; ``kwargs``
    go to the constructor.

    Example::

        >>> from pyrobayes.likelihoods import get_likelihood
        >>> lik = get_likelihood("gaussian", scale=0.5)
        >>> type(lik).__name__, float(lik.scale)
        ('Gaussian', 0.5)
        >>> get_likelihood(lik) is lik
        True
    """
    if isinstance(spec, Likelihood):
        return spec
    kind = LikelihoodKind.parse(spec, "likelihood")
    return Gaussian(**kwargs) if kind is LikelihoodKind.GAUSSIAN else Categorical(**kwargs)
