"""One optimisation step of :func:`pyrobayes.fit`, over one loss chosen once
(``make_stepper``).

* :class:`FusedStepper`: the fused mean-field ELBO (:mod:`pyrobayes.infer.fast_elbo`, the
  one fast path) with a torch optimiser; Pyro's traces take over where its setup check
  finds the model is not what it computes.
* :class:`TorchStepper`: Pyro's ELBO (``Trace_ELBO``/``TraceMeanField_ELBO``, the
  definition) for the gradients, one torch optimiser for the update.
* :class:`SVIStepper`: Pyro's ELBO with a Pyro optimiser (the update ``SVI.step`` makes).

Every stepper skips the update when the loss is not finite, so the parameters stay at
their last finite values for the error ``fit`` raises (nothing is copied per step). The
torch steppers scale every parameter group's learning rate by ``lr_factor`` (a
learning-rate schedule): :math:`\\eta_t = \\eta_0 \\cdot f(t)`. Under
``torch.distributed`` their ``sync`` hook (:class:`pyrobayes.distributed.GradSync`)
broadcasts the parameters from rank 0 once they exist and averages gradients and loss
across ranks before every update. ``local_reparam=True``: every stepper evaluates
``F.linear`` on Normal guide draws by local reparameterisation (the fused ELBO registers
its own draws; Pyro's traces run under
:class:`~pyrobayes.guides.LocalReparameterization`).

Example::

    >>> import torch
    >>> from pyrobayes import to_bayesian, Gaussian
    >>> from pyrobayes.infer.steppers import FusedStepper
    >>> model, guide = to_bayesian(torch.nn.Linear(1, 1), likelihood=Gaussian(0.1))
    >>> stepper = FusedStepper(model, guide, lambda ps: torch.optim.Adam(ps, lr=0.01), {"beta": 1.0})
    >>> x = torch.randn(8, 1)
    >>> loss = stepper.step(x, y=x[:, 0])
    >>> loss > 0
    True
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import torch_item, zero_grads
from pyro.poutine.messenger import Messenger

from pyrobayes import distributed as dist_
from pyrobayes._pyro_compat import setup_prototype
from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.infer.fast_check import warn_fallback
from pyrobayes.infer.fast_elbo import FusedMeanFieldELBO, supports_fused
from pyrobayes.infer.predictive import check_guide
from pyrobayes.options import Option

__all__ = [
    "SVIStepper",
    "TorchStepper",
    "FusedStepper",
    "LossKind",
    "default_optimiser",
]


class LossKind(Option):
    """The ELBO :func:`~pyrobayes.infer.fit` optimises: ``"trace_elbo"`` (Monte Carlo KL)
    or ``"meanfield"`` (analytic KL where known).

    Example::

        >>> from pyrobayes.infer.fit import LossKind
        >>> LossKind("meanfield") is LossKind.MEANFIELD, LossKind.TRACE_ELBO == "trace_elbo"
        (True, True)
        >>> LossKind.parse("elbo", "loss")
        Traceback (most recent call last):
            ...
        ValueError: unknown loss 'elbo'; valid: trace_elbo, meanfield
    """

    TRACE_ELBO = "trace_elbo"
    MEANFIELD = "meanfield"


def _lrt(on: bool):
    return LocalReparameterization() if on else contextlib.nullcontext()


class SVIStepper:
    """Pyro's ELBO with a Pyro optimiser: ``SVI.step``'s update (the guide's and model's
    parameters that the traces touched, one Pyro optimiser per parameter), skipped when
    the loss is not finite.

    Example (the optimiser state holds one entry per guide parameter: a MOPED guide's flat
    loc and scale)::

        >>> import pyro, torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.steppers import SVIStepper
        >>> model, guide = to_bayesian(torch.nn.Linear(1, 1), likelihood=Gaussian(0.1), name="lin")
        >>> adam = pyro.optim.Adam({"lr": 0.01})
        >>> stepper = SVIStepper(model, guide, pyro.infer.Trace_ELBO(), adam)
        >>> x = torch.randn(8, 1)
        >>> stepper.step(x, y=x[:, 0]) > 0, stepper.supports_lr_factor
        (True, False)
        >>> sorted(stepper.get_state())  # the guide's two flat tensors
        ['MOPEDNormal.lin.loc', 'MOPEDNormal.lin.scale']
    """

    supports_lr_factor = False

    def __init__(self, model, guide, elbo, optim, local_reparam: bool = False):
        self.model, self.guide, self.elbo, self.optim = model, guide, elbo, optim
        self.local_reparam = local_reparam
        self.lr_factor = 1.0

    def step(self, *args, **kwargs) -> float:
        with poutine.trace(param_only=True) as capture, _lrt(self.local_reparam):
            loss = torch_item(self.elbo.loss_and_grads(self.model, self.guide, *args, **kwargs))
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        if math.isfinite(loss):
            self.optim(params)
        zero_grads(params)
        return loss

    def get_state(self) -> dict:
        return self.optim.get_state()

    def set_state(self, state: dict) -> None:
        self.optim.set_state(state)


class TorchStepper:
    r"""``elbo.loss_and_grads`` plus one torch optimiser over every trainable parameter
    of the guide and the model (PyroModules keep their parameters as ordinary
    ``nn.Parameter``\ s, so this is the same objective SVI optimises).

    Example (a learning-rate factor of 0 freezes the parameters, 1 moves them)::

        >>> import pyro, torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.steppers import TorchStepper
        >>> model, guide = to_bayesian(torch.nn.Linear(1, 1), likelihood=Gaussian(0.1))
        >>> sgd = lambda params: torch.optim.SGD(params, lr=0.1)
        >>> stepper = TorchStepper(model, guide, model, guide, pyro.infer.Trace_ELBO(), sgd)
        >>> x = torch.randn(8, 1)
        >>> stepper.lr_factor = 0.0
        >>> _ = stepper.step(x, y=x[:, 0])
        >>> before = [p.detach().clone() for p in stepper.params]
        >>> _ = stepper.step(x, y=x[:, 0])
        >>> len(before), all(torch.equal(a, b) for a, b in zip(before, stepper.params))
        (2, True)
        >>> stepper.lr_factor = 1.0
        >>> _ = stepper.step(x, y=x[:, 0])
        >>> all(torch.equal(a, b) for a, b in zip(before, stepper.params))
        False
    """

    supports_lr_factor = True

    def __init__(
        self, scaled_model, scaled_guide, model, guide, elbo, make_optim, local_reparam=False
    ):
        self.scaled_model, self.scaled_guide = scaled_model, scaled_guide
        self.local_reparam = local_reparam
        self.model, self.guide, self.elbo = model, guide, elbo
        self.make_optim, self.opt, self._pending = make_optim, None, None
        self.lr_factor = 1.0
        self._base_lrs: list[float] = []
        self.sync = None  # a GradSync under torch.distributed
        self.params: list = []

    def _module_params(self) -> list:
        """Every trainable parameter of the guide and the model, each once."""
        params = {
            id(p): p for m in (self.guide, self.model) for p in m.parameters() if p.requires_grad
        }
        return list(params.values())

    def _build(self, *args, **kwargs) -> None:
        if getattr(self.guide, "prototype_trace", "absent") is None:
            setup_prototype(self.guide, *args, **kwargs)
        self.params = self._module_params()
        if self.sync is not None:
            # guides create their parameters lazily (and may draw them): rank 0's win
            self.sync.after_build(self.params, (self.guide, self.model))
        self.opt = self.make_optim(self.params)
        if self._pending is not None:
            self.opt.load_state_dict(self._pending)
            self._pending = None
        # the schedule scales the learning rates the optimiser was built (or resumed) with
        self._base_lrs = [g.get("initial_lr", g["lr"]) for g in self.opt.param_groups]
        for g, lr in zip(self.opt.param_groups, self._base_lrs):
            g["initial_lr"] = lr

    def _update(self, loss: float) -> float:
        if self.sync is not None:
            # the mean loss decides for every rank, so all skip or all step
            loss = self.sync.reduce(self.params, loss)
        if math.isfinite(loss):
            for g, lr in zip(self.opt.param_groups, self._base_lrs):
                g["lr"] = lr * self.lr_factor
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def step(self, *args, **kwargs) -> float:
        if self.opt is None:
            self._build(*args, **kwargs)
        with _lrt(self.local_reparam):
            loss = self.elbo.loss_and_grads(self.scaled_model, self.scaled_guide, *args, **kwargs)
        return self._update(float(loss))

    def get_state(self) -> dict:
        return self.opt.state_dict() if self.opt is not None else {}

    def set_state(self, state: dict) -> None:
        if self.opt is None:
            self._pending = state or None
        else:
            self.opt.load_state_dict(state)


class FusedStepper(TorchStepper):
    """The fused mean-field ELBO (same estimator as ``Trace_ELBO``) with a torch optimiser
    built by ``make_optim``, used as given over the guide's and model's parameters (a
    :class:`~pyrobayes.guides.MOPEDNormal`'s weights are its two flat tensors, so an
    element-wise optimiser such as Adam makes one update over two tensors).

    Before its first step it checks on that batch that the fused ELBO is the model's own
    (:meth:`FusedMeanFieldELBO.verify`, one Pyro trace; this also puts the guide's
    parameters in Pyro's param store). Where it is not (a ``BayesianModel`` subclass whose
    ``forward`` adds a factor or a sample site), ``fallback()`` (``fit`` passes a
    :class:`TorchStepper` over Pyro's ``Trace_ELBO``) takes every step, with one
    :class:`~pyrobayes.infer.fast_check.FastPathFallbackWarning` naming the difference;
    without a fallback that is a ``ValueError``.

    Example (a batch whose loss overflows to ``inf`` leaves the parameters untouched)::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.steppers import FusedStepper
        >>> model, guide = to_bayesian(torch.nn.Linear(1, 1), likelihood=Gaussian(0.1))
        >>> adam = lambda params: torch.optim.Adam(params, lr=0.01)
        >>> stepper = FusedStepper(model, guide, adam, {"beta": 1.0})
        >>> x = torch.randn(8, 1)
        >>> _ = stepper.step(x, y=x[:, 0])
        >>> before = [p.detach().clone() for p in stepper.params]
        >>> stepper.step(torch.full((8, 1), 1e30), y=x[:, 0])
        inf
        >>> all(torch.equal(a, b) for a, b in zip(before, stepper.params))
        True
    """

    def __init__(self, model, guide, make_optim, weight, fallback=None, local_reparam=False):
        super().__init__(model, guide, model, guide, None, make_optim)
        self.fused = FusedMeanFieldELBO(model, guide)
        self.fused.local_reparam = local_reparam
        self.weight = weight
        self._make_fallback = fallback
        self.fallback: TorchStepper | None = None  # Pyro's traces, when the check failed
        self._verified = False

    def _verify(self, *args, **kwargs) -> None:
        """The setup check (:meth:`FusedMeanFieldELBO.verify`, on the first batch): on a
        mismatch, Pyro's traces (``fallback()``, a :class:`TorchStepper`) take over, with a
        warning saying why; without a fallback it is a ``ValueError``."""
        self._verified = True
        if getattr(self.guide, "prototype_trace", "absent") is None:
            setup_prototype(self.guide, *args, **kwargs)
        reason = self.fused.verify(*args, **kwargs)
        if reason is None:
            return
        if self._make_fallback is None:
            raise ValueError(
                f"the fused ELBO does not compute this model's objective: {reason}. "
                "Fit with fused=False (Pyro's traces) instead"
            )
        warn_fallback(reason, "Pyro's Trace_ELBO")
        self.fallback = self._make_fallback()
        self.fallback.sync = self.sync
        if self._pending is not None:
            self.fallback.set_state(self._pending)
            self._pending = None

    def get_state(self) -> dict:
        if self.fallback is not None:
            return self.fallback.get_state()
        return super().get_state()

    def set_state(self, state: dict) -> None:
        if self.fallback is not None:
            self.fallback.set_state(state)
        else:
            super().set_state(state)

    def step(self, *args, **kwargs) -> float:
        if not self._verified:
            self._verify(*args, **kwargs)
        if self.fallback is not None:
            self.fallback.lr_factor = self.lr_factor
            loss = self.fallback.step(*args, **kwargs)
            self.params = self.fallback.params
            return loss
        if self.opt is None:
            self._build(*args, **kwargs)
        self.fused.beta = self.weight["beta"]
        loss = self.fused.loss(*args, **kwargs)
        loss.backward()
        return self._update(float(loss.detach()))


def default_optimiser(lr: float) -> Callable[[list], torch.optim.Optimizer]:
    """``fit``'s optimiser when none is given (``optim=None``): ``torch.optim.Adam(lr)``
    over all parameters at once, as ONE fused kernel (``fused=True``) where every parameter
    allows it (floating point on CPU or CUDA), else the multi-tensor ``foreach`` update
    (torch picks neither by default on the CPU).

    Example::

        >>> import torch
        >>> opt = default_optimiser(0.1)([torch.nn.Parameter(torch.zeros(3))])
        >>> type(opt).__name__, opt.defaults["fused"], opt.defaults["lr"]
        ('Adam', True, 0.1)
    """

    def build(params):
        if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
            return torch.optim.Adam(params, lr=lr, fused=True)
        return torch.optim.Adam(params, lr=lr, foreach=True)

    return build


class ScaleLatents(Messenger):
    """Multiply the log-density of every non-observed sample site by ``weight`` (``fit``'s
    KL weight on Pyro's traces; the fused ELBO multiplies its ``log p - log q`` by it)."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]


def make_stepper(model, guide, cfg, weight: dict):
    """The one loss of a fit, chosen once from ``cfg`` (a
    :class:`~pyrobayes.infer.FitConfig`): the fused ELBO where it applies (single-particle
    ``Trace_ELBO``, a torch optimiser, a ``BayesianModel`` under an ``AutoNormal``-family
    guide; ``fused=False`` refuses it, ``fused=True`` requires it), else Pyro's ELBO with
    the torch optimiser, or with a Pyro optimiser :class:`SVIStepper`. ``weight["beta"]``
    is the KL weight, read at every step."""
    loss_kind, optim, num_particles = LossKind(cfg.loss), cfg.optim, cfg.num_particles
    elbo_cls = Trace_ELBO if loss_kind is LossKind.TRACE_ELBO else TraceMeanField_ELBO
    elbo = elbo_cls(num_particles=num_particles, vectorize_particles=cfg.vectorize_particles)

    def scaled_model(*a, **k):
        with ScaleLatents(weight["beta"]):
            return model(*a, **k)

    def scaled_guide(*a, **k):
        with ScaleLatents(weight["beta"]):
            return guide(*a, **k)

    is_pyro = isinstance(optim, pyro.optim.PyroOptim)
    make_optim = optim or default_optimiser(cfg.lr)
    can_fuse = (
        loss_kind is LossKind.TRACE_ELBO
        and num_particles == 1
        and not is_pyro
        and supports_fused(model, guide)
    )
    if cfg.fused and not can_fuse:
        raise ValueError(
            "fused=True needs loss='trace_elbo', num_particles=1, a torch optimiser, "
            "a BayesianModel and an AutoNormal-family guide"
        )
    lrt = cfg.local_reparam
    if is_pyro:
        return SVIStepper(scaled_model, scaled_guide, elbo, optim, local_reparam=lrt)
    traced = functools.partial(
        TorchStepper, scaled_model, scaled_guide, model, guide, elbo, make_optim, lrt
    )
    if not can_fuse or cfg.fused is False:
        return traced()
    # Pyro's traces take over where the fused ELBO is not this model's; fused=True refuses
    return FusedStepper(
        model,
        guide,
        make_optim,
        weight,
        fallback=None if cfg.fused else traced,
        local_reparam=lrt,
    )


def checked_stepper(model, guide, cfg, weight: dict, distributed: bool, lr_factor):
    """``make_stepper``, with gradient sync under torch.distributed; checks options
    and that the guide is one for this model."""
    check_guide(model, guide)
    stepper = make_stepper(model, guide, cfg, weight)
    if distributed:
        if isinstance(stepper, SVIStepper):
            raise ValueError(
                "a Pyro optimiser cannot average gradients across ranks under "
                "torch.distributed; pass a torch optimiser (optim=None or a callable)"
            )
        stepper.sync = dist_.GradSync()
    if lr_factor is not None and not stepper.supports_lr_factor:
        raise ValueError(
            "lr_schedule needs a torch optimiser; with a Pyro optimiser pass a "
            "pyro.optim.PyroLRScheduler (e.g. pyro.optim.CosineAnnealingLR) as optim instead"
        )
    return stepper
