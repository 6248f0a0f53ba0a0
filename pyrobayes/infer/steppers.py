"""One optimisation step of the SVI loop, three ways (used by :func:`pyrobayes.fit`).

* :class:`SVIStepper`: Pyro's own ``SVI`` with a Pyro optimiser.
* :class:`TorchStepper`: Pyro's ELBO for the gradients, one torch optimiser for the update.
* :class:`FusedStepper`: the fused mean-field ELBO (:mod:`pyrobayes.infer.fast_elbo`)
  with a torch optimiser.

The torch steppers skip the update when the loss is not finite, so the parameters stay
at their last finite values for the error ``fit`` raises. They also scale every parameter
group's learning rate by ``lr_factor`` (a learning-rate schedule):
:math:`\\eta_t = \\eta_0 \\cdot f(t)`. Under ``torch.distributed`` their ``sync`` hook
(:class:`pyrobayes.distributed.GradSync`) broadcasts the parameters from rank 0 once they
exist and averages gradients and loss across ranks before every update.

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

import torch
from pyro.infer import SVI

from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.infer.fast_check import warn_fallback
from pyrobayes.infer.fast_elbo import FusedMeanFieldELBO
from pyrobayes.infer.flat_guide import flat_optim_state, site_optim_state

__all__ = ["SVIStepper", "TorchStepper", "FusedStepper"]


class SVIStepper:
    """Pyro's own SVI with a Pyro optimiser.

    Example (the optimiser state holds one entry per guide parameter)::

        >>> import pyro, torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.steppers import SVIStepper
        >>> model, guide = to_bayesian(torch.nn.Linear(1, 1), likelihood=Gaussian(0.1), name="lin")
        >>> adam = pyro.optim.Adam({"lr": 0.01})
        >>> stepper = SVIStepper(model, guide, pyro.infer.Trace_ELBO(), adam)
        >>> x = torch.randn(8, 1)
        >>> stepper.step(x, y=x[:, 0]) > 0, stepper.supports_lr_factor
        (True, False)
        >>> sorted(k.split(".", 1)[1] for k in stepper.get_state())
        ['locs.lin.net.bias', 'locs.lin.net.weight', 'scales.lin.net.bias', 'scales.lin.net.weight']
    """

    supports_lr_factor = False

    def __init__(self, model, guide, elbo, optim):
        self.optim = optim
        self.svi = SVI(model, guide, optim, elbo)
        self.lr_factor = 1.0

    def step(self, *args, **kwargs) -> float:
        return self.svi.step(*args, **kwargs)

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
        (4, True)
        >>> stepper.lr_factor = 1.0
        >>> _ = stepper.step(x, y=x[:, 0])
        >>> all(torch.equal(a, b) for a, b in zip(before, stepper.params))
        False
    """

    supports_lr_factor = True

    def __init__(self, scaled_model, scaled_guide, model, guide, elbo, make_optim):
        self.scaled_model, self.scaled_guide = scaled_model, scaled_guide
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

    def _collect_params(self) -> list:
        return self._module_params()

    def _state_in(self, state: dict) -> dict:
        """An optimiser state as saved (:meth:`get_state`) -> this optimiser's own."""
        return state

    def _state_out(self, state: dict) -> dict:
        return state

    def _build(self, *args, **kwargs) -> None:
        if getattr(self.guide, "prototype_trace", "absent") is None:
            self.guide._setup_prototype(*args, **kwargs)
        self.params = self._collect_params()
        if self.sync is not None:
            # guides create their parameters lazily (and may draw them): rank 0's win
            self.sync.after_build(self.params, (self.guide, self.model))
        self.opt = self.make_optim(self.params)
        if self._pending is not None:
            self.opt.load_state_dict(self._state_in(self._pending))
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
        loss = self.elbo.loss_and_grads(self.scaled_model, self.scaled_guide, *args, **kwargs)
        return self._update(float(loss))

    def get_state(self) -> dict:
        return self._state_out(self.opt.state_dict()) if self.opt is not None else {}

    def set_state(self, state: dict) -> None:
        if self.opt is None:
            self._pending = state or None
        else:
            self.opt.load_state_dict(self._state_in(state))


class FusedStepper(TorchStepper):
    """The fused mean-field ELBO (same estimator as ``Trace_ELBO``) with a torch optimiser.

    With ``fit``'s default optimiser (``Adam``/``AdamW`` built with ``foreach=True``, an
    element-wise update) the guide's locs and raw scales are first moved into two flat
    tensors (:mod:`pyrobayes.infer.flat_guide`; every site parameter becomes a view), and
    the optimiser updates those: no per-step concatenation of the parameters, no split
    of their gradients, one update over two tensors. :meth:`get_state` still returns the
    state per site parameter, as without the flat storage, so checkpoints keep that layout.
    A site parameter replaced between steps (``guide.to(...)``, a new ``PyroParam``) is
    noticed before the next step, and the flat storage is rebuilt around it; ``fit`` calls
    :meth:`release` when it ends.

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

    def __init__(self, model, guide, make_optim, weight, fallback=None):
        # flat storage changes what "one parameter" is: only for element-wise updates
        self._flat_ok = _default_adam_keywords(make_optim) is not None
        super().__init__(model, guide, model, guide, None, _prefer_fused_adam(make_optim))
        self.fused = FusedMeanFieldELBO(model, guide)
        self.weight = weight
        self._flat = None
        self._layout: list | None = None  # per site-list parameter: where it lives
        self._make_fallback = fallback
        self.fallback: TorchStepper | None = None  # Pyro's traces, when the check failed
        self._verified = False

    def _verify(self, *args, **kwargs) -> None:
        """The setup check (:meth:`FusedMeanFieldELBO.verify`, on the first batch): on a
        mismatch, Pyro's traces (``fallback()``, a :class:`TorchStepper`) take over, with a
        warning saying why; without a fallback it is a ``ValueError``."""
        self._verified = True
        if getattr(self.guide, "prototype_trace", "absent") is None:
            self.guide._setup_prototype(*args, **kwargs)
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

    def _fallback_step(self, *args, **kwargs) -> float:
        fb = self.fallback
        fb.lr_factor = self.lr_factor
        # fit leaves local reparameterisation to the fused ELBO when it picks this stepper
        with LocalReparameterization() if self.fused.local_reparam else contextlib.nullcontext():
            loss = fb.step(*args, **kwargs)
        self.params = fb.params
        return loss

    def get_state(self) -> dict:
        if self.fallback is not None:
            return self.fallback.get_state()
        return super().get_state()

    def set_state(self, state: dict) -> None:
        if self.fallback is not None:
            self.fallback.set_state(state)
        else:
            super().set_state(state)

    def _collect_params(self) -> list:
        params = self._module_params()
        self._flat = self.fused.bind_flat() if self._flat_ok else None
        if self._flat is None:
            self._layout = None
            return params
        where = {}
        for k, group in enumerate(self._flat.site_tensors()):
            for t, (*_, a, b, shape) in zip(group, self._flat.sites):
                where[id(t)] = ("flat", k, a, b, tuple(shape))
        others = [p for p in params if id(p) not in where]
        index = {id(p): 2 + j for j, p in enumerate(others)}
        self._layout = [where.get(id(p)) or ("param", index[id(p)]) for p in params]
        return [*self._flat.flat, *others]

    def _state_in(self, state: dict) -> dict:
        if self._layout is None:
            return state
        return flat_optim_state(state, self._layout, len(self.params))

    def _state_out(self, state: dict) -> dict:
        if self._layout is None:
            return state
        return site_optim_state(state, self._layout, self._flat.numel)

    def release(self) -> None:
        """Give the guide's site parameters their own storage back (values unchanged), so
        that after a fit they share no memory, as before (``safetensors``' ``save_file``,
        for one, refuses tensors that share storage). A later step binds again."""
        if self._flat is not None:
            self._flat.unbind()

    def step(self, *args, **kwargs) -> float:
        if not self._verified:
            self._verify(*args, **kwargs)
        if self.fallback is not None:
            return self._fallback_step(*args, **kwargs)
        if self.opt is None:
            self._build(*args, **kwargs)
        elif self._flat is not None and not self._flat.is_bound():
            # a site parameter was replaced: rebuild the flat storage, keep the state
            self._pending, self.opt = self.get_state(), None
            self._build(*args, **kwargs)
        self.fused.beta = self.weight["beta"]
        loss = self.fused.loss(*args, **kwargs)
        loss.backward()
        return self._update(float(loss.detach()))


def _default_adam_keywords(make_optim) -> dict | None:
    """The keywords of ``fit``'s default optimiser factory (``functools.partial`` of
    ``Adam``/``AdamW`` with ``foreach=True``), or ``None`` for any other factory."""
    kw = getattr(make_optim, "keywords", None) or {}
    if (
        isinstance(make_optim, functools.partial)
        and make_optim.func in (torch.optim.Adam, torch.optim.AdamW)
        and not make_optim.args
        and kw.get("foreach")
        and "fused" not in kw
    ):
        return kw
    return None


def _prefer_fused_adam(make_optim):
    """``Adam(foreach=True)`` (``fit``'s default) built as ``Adam(fused=True)`` where every
    parameter allows it: the same update rule in one kernel per step instead of a dozen
    passes over the guide's locs and scales (the largest cost of the step after the
    matrix products). Any other optimiser factory is used as given."""
    kw = _default_adam_keywords(make_optim)
    if kw is None:
        return make_optim

    def build(params):
        if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
            return make_optim.func(params, **{**kw, "foreach": None, "fused": True})
        return make_optim(params)

    return build
