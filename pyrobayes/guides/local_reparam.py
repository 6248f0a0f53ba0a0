"""Local reparameterisation (Kingma, Salimans & Welling, 2015) as an effect handler.

Under a mean-field Normal posterior :math:`w_{ij} \\sim \\mathcal N(\\mu_{ij}, \\sigma_{ij}^2)`
the pre-activations of a linear layer are Gaussian too,

.. math::

    b_{nj} = \\sum_i x_{ni} w_{ij} \\sim \\mathcal N\\Big(\\sum_i x_{ni}\\mu_{ij},\\;
             \\sum_i x_{ni}^2 \\sigma_{ij}^2\\Big),

so instead of one weight sample shared by the whole minibatch, each data point gets its own
draw of the pre-activation. The ELBO is unchanged in expectation; the gradient variance
drops because the noise is no longer correlated across the batch.

:class:`LocalReparameterization` is a Pyro ``Messenger``: it notes every latent site that a
Normal guide draws (the value tensor and its loc and scale), and, while active, a torch
function mode evaluates every ``F.linear`` whose weight *is* such a draw by the formula
above. Everything else, including the ELBO's :math:`\\log q(w) - \\log p(w)` terms on the
drawn weights, runs as usual.

Example::

    >>> import pyro, torch
    >>> from pyrobayes import to_bayesian, Gaussian
    >>> from pyrobayes.guides import LocalReparameterization
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    >>> model, guide = to_bayesian(net, likelihood=Gaussian(0.1))
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    >>> with LocalReparameterization():
    ...     loss = svi.step(torch.randn(8, 3), y=torch.randn(8))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import Delta, Normal
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent
from torch.overrides import TorchFunctionMode

__all__ = ["LocalReparameterization"]


class _LinearLRT(TorchFunctionMode):
    def __init__(self, registry: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.registry = registry

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2:
            entry = self.registry.get(id(args[1]))
            if entry is not None and entry[0] is args[1]:
                _, loc, scale = entry
                x = args[0]
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                mean = F.linear(x, loc, bias)
                var = F.linear(x * x, scale * scale)
                return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)
        return func(*args, **kwargs)


class LocalReparameterization(Messenger):
    """Evaluate linear layers whose weights a Normal guide draws by local reparameterisation.

    Use it around SVI steps (``with LocalReparameterization(): svi.step(...)``) or pass
    ``local_reparam=True`` to :func:`~pyrobayes.infer.fit`. Only 2-D weights of
    ``F.linear`` calls (``nn.Linear``, attention projections built on it) are affected.

    Example (the same input twice: one shared weight draw gives equal rows, local
    reparameterisation gives each row its own pre-activation noise)::

        >>> import pyro, torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.guides import LocalReparameterization
        >>> nn = torch.nn
        >>> net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
        >>> model, guide = to_bayesian(net, likelihood=Gaussian(0.1))
        >>> x = torch.ones(2, 3)
        >>> def forward(x):
        ...     draw = pyro.poutine.trace(guide).get_trace(x)
        ...     return pyro.poutine.replay(model.net, trace=draw)(x)
        >>> out = forward(x); bool(out[0] == out[1])
        True
        >>> with LocalReparameterization():
        ...     out = forward(x)
        >>> bool(out[0] == out[1])
        False
    """

    def __init__(self):
        super().__init__()
        self._registry: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._mode: _LinearLRT | None = None

    def register(self, value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Declare ``value`` a draw from ``Normal(loc, scale)`` (used by the fused ELBO).

        The first declaration wins: SVI runs the guide before replaying its draws into the
        model, whose sample site sees the same tensor under the *prior*."""
        entry = self._registry.get(id(value))
        if value.dim() == 2 and (entry is None or entry[0] is not value):
            self._registry[id(value)] = (value, loc, scale)

    def __enter__(self):
        out = super().__enter__()
        self._mode = _LinearLRT(self._registry)
        self._mode.__enter__()
        return out

    def __exit__(self, *exc):
        try:
            self._mode.__exit__(*exc)
        finally:
            self._registry.clear()
            self._mode = None
        return super().__exit__(*exc)

    def _postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        fn = msg["fn"]
        while isinstance(fn, Independent):
            fn = fn.base_dist
        # AutoNormal draws each weight at an auxiliary "<site>_unconstrained" Normal site and
        # passes the very same tensor on (identity transform for real-valued weights).
        if isinstance(fn, (Normal, torch.distributions.Normal)):
            self.register(msg["value"], fn.loc, fn.scale)
        elif isinstance(fn, Delta) and id(fn.v) in self._registry:
            # ... then re-emits it at the weight's own site through a Delta (a new view).
            _, loc, scale = self._registry[id(fn.v)]
            self.register(msg["value"], loc, scale)
