"""Plain multilayer perceptrons and the default regression BNN.

Example::

    >>> from pyrobayes.models.mlp import MLP, default_regression_model
    >>> MLP(64, (256, 256), 10, activation="relu")
    MLP(64 -> 256 -> 256 -> 10, relu)
    >>> model = default_regression_model()   # 1-50-50-1 tanh BNN, noise 0.1
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyrobayes.options import Option

__all__ = ["MLP", "Activation", "default_regression_model", "DEFAULT_REGRESSION"]


class Activation(Option):
    """Hidden-layer nonlinearity of :class:`MLP`.

    Example::

        >>> from pyrobayes.models.mlp import MLP, Activation
        >>> Activation.parse("gelu")
        <Activation.GELU: 'gelu'>
        >>> MLP(2, (3,), 1, activation=Activation.RELU)[1]
        ReLU()
    """

    TANH = "tanh"
    RELU = "relu"
    GELU = "gelu"


_ACT = {Activation.TANH: nn.Tanh, Activation.RELU: nn.ReLU, Activation.GELU: nn.GELU}


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear`` (a plain ``nn.Sequential``, so ``to_pyro`` and
    ``state_dict`` keys stay the obvious ``"0.weight"``, ``"2.weight"``, ...).

    Example::

        >>> import torch
        >>> from pyrobayes.models.mlp import MLP
        >>> net = MLP(3, (4,), 2, activation="relu")
        >>> net
        MLP(3 -> 4 -> 2, relu)
        >>> [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
        [('0.weight', (4, 3)), ('0.bias', (4,)), ('2.weight', (2, 4)), ('2.bias', (2,))]
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (50, 50),
        out_features: int = 1,
        activation: str | Activation = "tanh",
    ):
        act = Activation.parse(activation)
        sizes = [in_features, *hidden, out_features]
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_ACT[act]())
        super().__init__(*layers)
        self.sizes, self.activation = tuple(sizes), act

    def __repr__(self) -> str:
        return f"MLP({' -> '.join(map(str, self.sizes))}, {self.activation.value})"


# The prior the shipped "bnn-1d" PFN was trained on; change it only together with that checkpoint.
DEFAULT_REGRESSION = {
    "hidden": (50, 50),
    "activation": "tanh",
    "weight_scale": 1.0,
    "bias_scale": 1.0,
    "noise": 0.1,
}


def default_regression_model(
    net: nn.Module | None = None, device: torch.device | str | None = None, name: str | None = None
):
    """The default 1-D regression BNN: a 1-50-50-1 tanh MLP with fan-in priors
    :math:`W \\sim \\mathcal N(0, 1/\\text{fan\\_in})`, :math:`b \\sim \\mathcal N(0, 1)` and
    Gaussian noise :math:`\\sigma = 0.1`.

    ``net`` (default: a fresh MLP) supplies the initial weights, e.g. a pretrained MLP of
    the same shape, which a MOPED guide then starts from.

    Example::

        >>> import pyro
        >>> import torch
        >>> from pyrobayes.models.mlp import default_regression_model
        >>> model = default_regression_model(name="reg")
        >>> tr = pyro.poutine.trace(model).get_trace(torch.zeros(3, 1))
        >>> tr.nodes["reg.net.0.weight"]["fn"].stddev.shape   # 1 -> 50
        torch.Size([50, 1])
        >>> round(float(tr.nodes["reg.net.2.weight"]["fn"].stddev[0, 0]), 4)   # 1/sqrt(50)
        0.1414
        >>> round(float(model.likelihood.scale), 4)
        0.1
    """
    from pyrobayes.bayesian_model import BayesianModel
    from pyrobayes.convert import to_pyro
    from pyrobayes.likelihoods import Gaussian
    from pyrobayes.priors import LayerwiseNormalPrior

    cfg = DEFAULT_REGRESSION
    net = net if net is not None else MLP(1, cfg["hidden"], 1, cfg["activation"])
    if device is not None:
        net = net.to(device)
    prior = LayerwiseNormalPrior(scale=cfg["weight_scale"], bias_scale=cfg["bias_scale"])
    return BayesianModel(to_pyro(net, prior=prior, name=name), Gaussian(scale=cfg["noise"]))
