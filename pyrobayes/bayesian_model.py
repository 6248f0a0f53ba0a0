"""The Pyro model: a converted network plus a likelihood (TyXe's split of network,
prior, likelihood and guide), and the one-call ``to_bayesian``.

Example::

    >>> import torch
    >>> from pyrobayes import to_bayesian, Gaussian
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    >>> model, guide = to_bayesian(net, delta=0.05, likelihood=Gaussian(0.1))
    >>> out = model(torch.randn(8, 1))       # one draw of the weights from the prior
    >>> out.shape
    torch.Size([8])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from pyro.nn import PyroModule
from torch import nn

from pyrobayes._pyro_compat import pyro_name
from pyrobayes.convert import check_input_dtype, to_pyro
from pyrobayes.guides.moped import moped_guide
from pyrobayes.likelihoods import Likelihood, get_likelihood
from pyrobayes.priors import Prior

__all__ = ["BayesianModel", "to_bayesian", "default_output"]


def default_output(out: Any) -> torch.Tensor:
    """Hugging Face outputs carry ``.logits``; tuples put the prediction first.

    Example::

        >>> import torch
        >>> from types import SimpleNamespace
        >>> from pyrobayes.bayesian_model import default_output
        >>> t = torch.ones(2)
        >>> default_output(SimpleNamespace(logits=t)) is t   # a Hugging Face output
        True
        >>> default_output((t, "hidden states")) is t       # a tuple
        True
        >>> default_output(t) is t                          # a plain tensor
        True
    """
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class BayesianModel(PyroModule):
    """``model(*inputs, y=None, **kwargs)``: run the converted ``net`` (drawing its weights)
    and observe ``y`` under the likelihood. Returns the network output.

    Args:
        net: a network converted by :func:`~pyrobayes.convert.to_pyro`.
        likelihood: a :class:`~pyrobayes.likelihoods.Likelihood` (or its name). Its own
            sites (e.g. a latent noise std) are named after this model
            (``"<name>.likelihood.noise_scale"``); a likelihood another model already
            holds is copied, so each model's sites keep its own name.
        output_fn: maps the network's raw output to the likelihood's input
            (default: ``.logits`` of Hugging Face outputs, first item of tuples).

    Example::

        >>> import pyro
        >>> import torch
        >>> from pyrobayes.convert import to_pyro
        >>> from pyrobayes.bayesian_model import BayesianModel
        >>> bnn = to_pyro(torch.nn.Linear(2, 3), prior="normal", name="clf")
        >>> model = BayesianModel(bnn, "categorical")
        >>> x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
        >>> tr = pyro.poutine.trace(model).get_trace(x, y=y)
        >>> [n for n, s in tr.nodes.items() if s["type"] == "sample"]   # weights, then y
        ['clf.net.weight', 'clf.net.bias', 'data', 'obs']
        >>> tr.nodes["obs"]["is_observed"], tr.nodes["obs"]["value"].tolist()
        (True, [0, 1, 2, 0])
    """

    def __init__(
        self,
        net: PyroModule,
        likelihood: Likelihood | str = "gaussian",
        output_fn: Callable[[Any], torch.Tensor] | None = None,
    ):
        if not hasattr(net, "_pyrobayes_sites"):
            raise ValueError("BayesianModel needs a network converted by pyrobayes.to_pyro")
        super().__init__(name=pyro_name(net))
        self.net = net
        likelihood = get_likelihood(likelihood)
        if pyro_name(likelihood) not in ("", f"{pyro_name(self)}.likelihood"):
            # assigning would rename its sites under this model, also for the model that
            # holds it: both would then share one site name in Pyro's param store
            likelihood = copy.deepcopy(likelihood)
        self.likelihood = likelihood  # PyroModule names it "<name>.likelihood"
        self.output_fn = output_fn or default_output

    def forward(self, *inputs, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        check_input_dtype(self.net, *inputs, **kwargs)
        out = self.output_fn(self.net(*inputs, **kwargs))
        return self.likelihood(out, y)

    @property
    def device(self) -> torch.device:
        for t in self.net.buffers():
            return t.device
        return torch.device("cpu")


def to_bayesian(
    net: nn.Module,
    delta: float = 0.05,
    freeze: bool = False,
    prior: str | Prior = "pretrained",
    likelihood: Likelihood | str = "categorical",
    guide: str = "normal",
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    include_types: type | tuple[type, ...] | None = None,
    include_frozen: bool = False,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    name: str | None = None,
    prior_kwargs: dict | None = None,
    **guide_kwargs,
) -> tuple[BayesianModel, PyroModule]:
    """One call from a pretrained network to a model and its MOPED guide, ready for
    :func:`~pyrobayes.infer.fit`.

    Args:
        net: the pretrained network (left untouched).
        delta: MOPED's relative scale, :math:`q(w)=\\mathcal N(w, (\\delta|w|)^2)`.
        freeze: keep the guide's means at the pretrained weights (only scales learn).
        prior: weight prior (default: MOPED's empirical-Bayes prior centred at ``net``'s
            weights; pass ``prior_kwargs`` for its options, e.g. ``{"scale": 0.1}``).
        likelihood: ``"categorical"`` (logits), ``"gaussian"`` or a Likelihood object.
        guide: ``"normal"`` (mean field) or ``"lowrank"`` (pass ``rank=``).
        include, exclude, include_types, include_frozen: which parameters become Bayesian
            (see :func:`to_pyro`).

    Example::

        >>> import pyro
        >>> import torch
        >>> from pyrobayes.bayesian_model import to_bayesian
        >>> pyro.clear_param_store()             # a fresh guide, not one from an earlier run
        >>> net = torch.nn.Linear(2, 3)
        >>> model, guide = to_bayesian(net, delta=0.1, name="clf")
        >>> x = torch.randn(4, 2)
        >>> model(x).shape                       # 4 points, 3 class logits
        torch.Size([4, 3])
        >>> _ = guide(x)                         # builds the guide's parameters
        >>> post = guide.median(x)               # MOPED: centred at the pretrained weights
        >>> torch.allclose(post["clf.net.weight"], net.weight)
        True
    """
    bnn = to_pyro(
        net,
        prior=prior,
        include=include,
        exclude=exclude,
        include_types=include_types,
        include_frozen=include_frozen,
        name=name,
        **(prior_kwargs or {}),
    )
    model = BayesianModel(bnn, likelihood, output_fn=output_fn)
    if guide == "normal":
        guide_kwargs.setdefault("freeze_loc", freeze)
    elif freeze:
        raise ValueError("freeze=True is only available for the mean-field ('normal') guide")
    return model, moped_guide(model, guide, delta=delta, **guide_kwargs)
