"""Weight priors: small objects that build a correctly shaped distribution per parameter.

A :class:`Prior` is called as ``prior(name, pretrained, module)`` where ``pretrained`` is the
parameter's pretrained value (used for shape, dtype, device and, for
:class:`PretrainedNormalPrior`, as the centre) and ``module`` is the layer that owns it. It
returns a Pyro distribution whose *event* shape is the parameter's shape
(``.expand(shape).to_event(dim)``), so each parameter is one sample site.

Example::

    >>> import torch
    >>> from pyrobayes.priors import get_prior
    >>> layer = torch.nn.Linear(4, 3)
    >>> d = get_prior("layerwise")("weight", layer.weight.detach(), layer)
    >>> d.event_shape, float(d.base_dist.scale.max())
    (torch.Size([3, 4]), 0.5)
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import constraints

from pyrobayes.options import Option

__all__ = [
    "Prior",
    "PriorKind",
    "NormalPrior",
    "LayerwiseNormalPrior",
    "PretrainedNormalPrior",
    "ScaleMixturePrior",
    "ScaleMixture",
    "get_prior",
    "fan_in",
]


class PriorKind(Option):
    """The prior names :func:`get_prior` accepts.

    Example::

        >>> from pyrobayes.priors import PriorKind
        >>> PriorKind.parse("layerwise")
        <PriorKind.LAYERWISE: 'layerwise'>
        >>> [k.value for k in PriorKind]
        ['normal', 'layerwise', 'pretrained', 'scale_mixture']
    """

    NORMAL = "normal"
    LAYERWISE = "layerwise"
    PRETRAINED = "pretrained"
    SCALE_MIXTURE = "scale_mixture"


def _check_positive(**kw: float) -> None:
    for k, v in kw.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"prior {k} must be a positive finite number, got {v!r}")


def fan_in(name: str, param: torch.Tensor, module: nn.Module | None) -> int:
    """Number of inputs feeding one output unit of ``param``.

    ``nn.Linear``/``nn.Conv*`` store weights as ``[out, in, *kernel]``; Hugging Face's
    ``Conv1D`` (GPT-2) stores ``[in, out]``, so its fan-in is the first dimension.

    Example::

        >>> import torch
        >>> from pyrobayes.priors import fan_in
        >>> conv = torch.nn.Conv2d(3, 8, 5)
        >>> fan_in("weight", conv.weight, conv)    # 3 channels x 5 x 5 kernel
        75
        >>> fan_in("bias", conv.bias, conv)
        1
    """
    if param.dim() < 2:
        return 1
    if module is not None and type(module).__name__ == "Conv1D":
        return int(param.shape[0])
    return int(math.prod(param.shape[1:]))


def _is_bias_like(param: torch.Tensor) -> bool:
    return param.dim() < 2


class Prior:
    """Base class: ``prior(name, pretrained, module) -> Distribution`` with event = param shape.

    Example::

        >>> import pyro.distributions as dist
        >>> import torch
        >>> from pyrobayes.priors import Prior
        >>> class LaplacePrior(Prior):
        ...     def __init__(self, scale=1.0):
        ...         self.scale = scale
        ...     def __call__(self, name, pretrained, module=None):
        ...         zero = torch.zeros_like(pretrained)
        ...         return dist.Laplace(zero, self.scale).to_event(pretrained.dim())
        >>> prior = LaplacePrior(0.5)
        >>> prior
        LaplacePrior(scale=0.5)
        >>> prior("weight", torch.zeros(4, 3)).event_shape
        torch.Size([4, 3])
    """

    def __call__(self, name: str, pretrained: torch.Tensor, module: nn.Module | None = None):
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _normal(loc: torch.Tensor, scale: torch.Tensor, like: torch.Tensor):
    return dist.Normal(loc, scale).expand(like.shape).to_event(like.dim())


class NormalPrior(Prior):
    """iid :math:`w \\sim \\mathcal N(0, s^2)` for every entry.

    Example::

        >>> import torch
        >>> from pyrobayes.priors import NormalPrior
        >>> d = NormalPrior(0.5)("weight", torch.ones(4, 3))
        >>> d.event_shape, d.mean.unique(), d.stddev.unique()
        (torch.Size([4, 3]), tensor([0.]), tensor([0.5000]))
    """

    def __init__(self, scale: float = 1.0):
        _check_positive(scale=scale)
        self.scale = float(scale)

    def __call__(self, name, pretrained, module=None):
        zero = pretrained.new_zeros(())
        return _normal(zero, zero + self.scale, pretrained)


class LayerwiseNormalPrior(Prior):
    """Fan-in scaled Normal: weights :math:`\\mathcal N(0, s^2/\\text{fan\\_in})`, 1-D
    parameters (biases, norms) :math:`\\mathcal N(0, b^2)` with ``b = bias_scale``.

    Example::

        >>> import torch
        >>> from pyrobayes.priors import LayerwiseNormalPrior
        >>> prior = LayerwiseNormalPrior(scale=2.0, bias_scale=0.3)
        >>> layer = torch.nn.Linear(4, 3)          # fan-in 4
        >>> prior("weight", layer.weight, layer).stddev.unique()   # 2 / sqrt(4)
        tensor([1.])
        >>> prior("bias", layer.bias, layer).stddev.unique()
        tensor([0.3000])
    """

    def __init__(self, scale: float = 1.0, bias_scale: float = 1.0):
        _check_positive(scale=scale, bias_scale=bias_scale)
        self.scale, self.bias_scale = float(scale), float(bias_scale)

    def __call__(self, name, pretrained, module=None):
        zero = pretrained.new_zeros(())
        if _is_bias_like(pretrained):
            std = self.bias_scale
        else:
            std = self.scale / math.sqrt(fan_in(name, pretrained, module))
        return _normal(zero, zero + std, pretrained)


class PretrainedNormalPrior(Prior):
    """MOPED's empirical-Bayes prior :math:`\\mathcal N(w_\\text{pre}, s^2)`, centred at the
    pretrained weights, so the KL term pulls towards the pretrained net, not towards 0.

    Example::

        >>> import torch
        >>> from pyrobayes.priors import PretrainedNormalPrior
        >>> d = PretrainedNormalPrior(0.1)("bias", torch.tensor([1.0, -2.0]))
        >>> d.mean, d.stddev
        (tensor([ 1., -2.]), tensor([0.1000, 0.1000]))
    """

    def __init__(self, scale: float = 1.0):
        _check_positive(scale=scale)
        self.scale = float(scale)

    def __call__(self, name, pretrained, module=None):
        return _normal(pretrained, pretrained.new_tensor(self.scale), pretrained)


class ScaleMixture(TorchDistribution):
    """Blundell et al. (2015) scale mixture, elementwise:
    :math:`p(w) = \\pi\\,\\mathcal N(w;0,\\sigma_1^2) + (1-\\pi)\\,\\mathcal N(w;0,\\sigma_2^2)`.

    Example::

        >>> import math
        >>> import torch
        >>> from pyrobayes.priors import ScaleMixture
        >>> d = ScaleMixture(0.5, 1.0, 0.1)
        >>> d.variance                             # 0.5 * 1 + 0.5 * 0.01
        tensor(0.5050)
        >>> exact = math.log(0.5 * (1 / 1.0 + 1 / 0.1) / math.sqrt(2 * math.pi))
        >>> round(float(d.log_prob(torch.tensor(0.0))), 4), round(exact, 4)
        (0.7858, 0.7858)
    """

    arg_constraints = {
        "pi": constraints.unit_interval,
        "sigma1": constraints.positive,
        "sigma2": constraints.positive,
    }
    support = constraints.real
    has_rsample = False

    def __init__(self, pi, sigma1, sigma2, validate_args=None):
        self.pi, self.sigma1, self.sigma2 = torch.broadcast_tensors(
            torch.as_tensor(pi), torch.as_tensor(sigma1), torch.as_tensor(sigma2)
        )
        super().__init__(batch_shape=self.pi.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return ScaleMixture(
            self.pi.expand(shape), self.sigma1.expand(shape), self.sigma2.expand(shape)
        )

    def log_prob(self, value):
        lp1 = dist.Normal(0.0, self.sigma1).log_prob(value) + torch.log(self.pi)
        lp2 = dist.Normal(0.0, self.sigma2).log_prob(value) + torch.log1p(-self.pi)
        return torch.logsumexp(torch.stack([lp1, lp2]), dim=0)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            first = torch.rand(shape, device=self.pi.device, dtype=self.pi.dtype) < self.pi.expand(
                shape
            )
            sigma = torch.where(first, self.sigma1.expand(shape), self.sigma2.expand(shape))
            return sigma * torch.randn(shape, device=self.pi.device, dtype=self.pi.dtype)

    @property
    def mean(self):
        return torch.zeros_like(self.pi)

    @property
    def variance(self):
        return self.pi * self.sigma1**2 + (1 - self.pi) * self.sigma2**2


class ScaleMixturePrior(Prior):
    """Blundell's two-Normal scale mixture (one wide, one narrow component).

    Example::

        >>> import torch
        >>> from pyrobayes.priors import ScaleMixturePrior
        >>> d = ScaleMixturePrior(pi=0.5, sigma1=1.0, sigma2=0.1)("weight", torch.zeros(2, 3))
        >>> d.event_shape, d.variance.unique()
        (torch.Size([2, 3]), tensor([0.5050]))
    """

    def __init__(self, pi: float = 0.5, sigma1: float = 1.0, sigma2: float = math.exp(-6)):
        _check_positive(sigma1=sigma1, sigma2=sigma2)
        if not 0.0 < pi < 1.0:
            raise ValueError(f"scale mixture weight pi must be in (0, 1), got {pi!r}")
        self.pi, self.sigma1, self.sigma2 = float(pi), float(sigma1), float(sigma2)

    def __call__(self, name, pretrained, module=None):
        z = pretrained.new_zeros(())
        return (
            ScaleMixture(z + self.pi, z + self.sigma1, z + self.sigma2)
            .expand(pretrained.shape)
            .to_event(pretrained.dim())
        )


_FACTORY = {
    PriorKind.NORMAL: NormalPrior,
    PriorKind.LAYERWISE: LayerwiseNormalPrior,
    PriorKind.PRETRAINED: PretrainedNormalPrior,
    PriorKind.SCALE_MIXTURE: ScaleMixturePrior,
}


def get_prior(spec: str | Prior | None = "normal", **kwargs) -> Prior:
    """The one factory: a :class:`Prior` from a name (``"normal"``, ``"layerwise"``,
    ``"pretrained"``, ``"scale_mixture"``) and its keyword options, or a Prior as is.

    Example::

        >>> from pyrobayes.priors import NormalPrior, get_prior
        >>> get_prior("layerwise", scale=2.0)
        LayerwiseNormalPrior(scale=2.0, bias_scale=1.0)
        >>> p = NormalPrior(0.3)
        >>> get_prior(p) is p
        True
        >>> get_prior("cauchy")
        Traceback (most recent call last):
        ...
        ValueError: unknown prior 'cauchy'; valid: normal, layerwise, pretrained, scale_mixture
    """
    if spec is None:
        spec = PriorKind.NORMAL
    if isinstance(spec, Prior):
        if kwargs:
            raise ValueError("prior options were given together with a Prior object")
        return spec
    kind = PriorKind.parse(spec, "prior")
    return _FACTORY[kind](**kwargs)
