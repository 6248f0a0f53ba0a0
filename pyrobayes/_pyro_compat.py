"""Every private Pyro hook pyrobayes relies on, one small function each.

Pyro (pinned ``pyro-ppl>=1.9,<1.10``) has no public API for these; gathering them here
means a Pyro upgrade that renames or changes one breaks exactly one named test in
``tests/test_pyro_compat.py`` instead of failing somewhere deep in SVI.

Example::

    >>> import torch
    >>> from pyrobayes import to_pyro
    >>> bnn = to_pyro(torch.nn.Linear(2, 1), name="compat")
    >>> pyro_name(bnn)
    'compat'
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pyro.nn import PyroModule

__all__ = [
    "needs_setup",
    "setup_prototype",
    "unpack_latent",
    "loc_and_scale",
    "event_dims",
    "unconstrained_shapes",
    "init_scale",
    "pyro_name",
    "set_pyro_name",
    "param_constraint",
    "UNCONSTRAINED_SUFFIX",
    "rnn_flat_weights_follow_samples",
    "pyro_module_class",
    "is_subsample",
]

#: ``PyroModule`` stores a ``PyroParam`` ``x`` as the raw parameter ``x_unconstrained``, and
#: ``AutoNormal`` draws a site ``s`` at an auxiliary site ``s_unconstrained``.
UNCONSTRAINED_SUFFIX = "_unconstrained"


def needs_setup(guide: Any) -> bool:
    """Whether ``guide`` is an autoguide that builds its parameters lazily
    (``AutoGuide._setup_prototype``) and has not built them yet (no ``prototype_trace``);
    ``False`` for a plain callable guide, which has nothing to set up."""
    return getattr(guide, "prototype_trace", None) is None and hasattr(guide, "_setup_prototype")


def setup_prototype(guide: Any, *args, **kwargs) -> None:
    """Build an autoguide's parameters now: ``AutoGuide._setup_prototype`` (Pyro builds them
    lazily on the first call and sets ``guide.prototype_trace``)."""
    guide._setup_prototype(*args, **kwargs)


def unpack_latent(guide: Any, latent: torch.Tensor) -> Iterator[tuple[dict, torch.Tensor]]:
    """``AutoContinuous._unpack_latent``: split a flat latent vector ``[..., D]`` into
    ``(site, value)`` pairs in the guide's site order (values in the unconstrained space,
    shaped ``[..., *site_shape]``)."""
    return guide._unpack_latent(latent)


def loc_and_scale(guide: Any, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``AutoNormal._get_loc_and_scale``: the current (unconstrained) mean and std of one
    site, with the guide's constraints applied to the scale."""
    return guide._get_loc_and_scale(site)


def event_dims(guide: Any) -> dict[str, int]:
    """``AutoNormal._event_dims``: ``{site: event dim}``, filled by ``_setup_prototype``."""
    return guide._event_dims


def unconstrained_shapes(guide: Any) -> dict[str, torch.Size]:
    """``AutoContinuous._unconstrained_shapes``: ``{site: unconstrained shape}`` in the order
    of the flat latent vector, filled by ``_setup_prototype``."""
    return guide._unconstrained_shapes


def init_scale(guide: Any) -> float:
    """``AutoLowRankMultivariateNormal._init_scale``: the ``init_scale`` argument, used for
    sites without a MOPED value."""
    return guide._init_scale


def pyro_name(module: PyroModule) -> str:
    """``PyroModule._pyro_name``: the module's full Pyro name prefix (``"net.0"``)."""
    return module._pyro_name


def set_pyro_name(module: PyroModule, name: str) -> None:
    """Rename a root ``PyroModule`` and all its submodules: ``_pyro_set_supermodule`` with
    the module's own ``_pyro_context`` (the public constructor argument exists only at
    construction; ``to_pyro_module_`` modules are already built)."""
    module._pyro_set_supermodule(name, module._pyro_context)


def param_constraint(module: PyroModule, attr: str):
    """``PyroModule._pyro_params[attr][0]``: the constraint of a ``PyroParam`` attribute,
    whose raw tensor lives in ``module._parameters[attr + "_unconstrained"]``."""
    return module._pyro_params[attr][0]


def is_subsample(site: dict) -> bool:
    """Whether a trace's sample site is a plate's index draw (Pyro's private
    ``_Subsample`` distribution), not a site of the model."""
    return type(site["fn"]).__name__ == "_Subsample"


def rnn_flat_weights_follow_samples() -> bool:
    """Whether Pyro still replaces ``RNNBase._flat_weights`` on ``PyroModule[RNNBase]`` by a
    descriptor that re-reads every weight attribute (pyro#2390): it is what makes sampled
    LSTM/GRU/RNN weights reach the fused kernel (see :func:`pyrobayes.convert.to_pyro`)."""
    import pyro.nn.module as pm

    desc = PyroModule[torch.nn.RNNBase].__dict__.get("_flat_weights")
    return (
        desc is not None
        and type(desc).__name__ == "_FlatWeightsDescriptor"
        and hasattr(pm, "_FlatWeightsDescriptor")
    )


def pyro_module_class(cls: type) -> type:
    """``PyroModule[cls]``, also for the classes Pyro's class factory
    (``_PyroModuleMeta.__getitem__``) cannot convert:

    * a class whose metaclass is not ``type`` (any class deriving from ``abc.ABC``, e.g.
      peft's LoRA layers and ``LoraModel``): Pyro's ``class result(cls, *pyro_bases)``
      raises ``TypeError: metaclass conflict``, so the class is built the same way with a
      metaclass derived from both;
    * a class with its own ``__getattr__`` that raises ``KeyError``/``IndexError`` for a
      missing name (peft's ``ModulesToSaveWrapper`` looks into ``_modules``):
      ``to_pyro_module_`` deletes and re-adds each submodule and torch's ``add_module``
      calls ``hasattr`` in between, which only tolerates ``AttributeError``; the Pyro
      class turns such a lookup error into an ``AttributeError``.

    The class is stored in Pyro's class cache (``_PyroModuleMeta._pyro_mixin_cache``), so
    ``to_pyro_module_`` and unpickling (``_PyroModuleMeta._New``) find it.
    """
    from pyro.nn.module import _PyroModuleMeta

    if issubclass(cls, PyroModule):
        return cls
    cache = _PyroModuleMeta._pyro_mixin_cache
    own_getattr = cls.__getattr__ is not torch.nn.Module.__getattr__
    if cls in cache or (issubclass(_PyroModuleMeta, type(cls)) and not own_getattr):
        return PyroModule[cls]
    bases = [pyro_module_class(b) for b in cls.__bases__ if issubclass(b, torch.nn.Module)]
    meta = _derived_metaclass([type(cls), _PyroModuleMeta, *map(type, bases)])

    def __reduce__(self):  # as Pyro's own: unpickle into PyroModule[cls]
        state = getattr(self, "__getstate__", self.__dict__.copy)()
        return _PyroModuleMeta._New, (cls,), state

    def __getattr__(self, name: str):
        try:
            return super(result, self).__getattr__(name)
        except LookupError as err:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r} ({err!r})"
            ) from err

    namespace: dict[str, Any] = {"__reduce__": __reduce__}
    if own_getattr:
        namespace["__getattr__"] = __getattr__
    result = meta("Pyro" + cls.__name__, (cls, *bases), namespace)
    cache[cls] = result
    return result


_METACLASSES: dict[tuple[type, ...], type] = {}


def _derived_metaclass(metas: list[type]) -> type:
    """The one metaclass deriving from every metaclass in ``metas`` (made once per set)."""
    leaves: list[type] = []
    for m in metas:
        if m not in leaves and not any(o is not m and issubclass(o, m) for o in metas):
            leaves.append(m)
    if len(leaves) == 1:
        return leaves[0]
    key = tuple(leaves)
    if key not in _METACLASSES:
        _METACLASSES[key] = type("Pyro" + "".join(m.__name__ for m in leaves), key, {})
    return _METACLASSES[key]
