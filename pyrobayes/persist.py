"""Save and load a fitted ``(model, guide)`` pair: one safetensors file, no pickle.

Pyro's param store is not a reliable carrier for a pyrobayes fit: the default fused
``fit`` trains the guide's tensors directly (the store stays empty), and a guide that
was never called ignores a loaded store. A file written when MOPED guides kept one
parameter per weight site loads too (``pyrobayes.guides._moped_legacy``). :func:`save` writes the model's and guide's
state dicts (variational parameters, deterministic weights, buffers, a learned noise
scale) into one ``.safetensors`` file whose JSON header carries a format tag, the
guide's class and the converted model's name; :func:`load` reads it back into a freshly
converted model and guide of the same architecture, so

.. math::

    \\text{PPD}_{\\text{loaded}}(y \\mid x) = \\text{PPD}_{\\text{saved}}(y \\mid x)

draw for draw under the same seed. Writes are atomic (temporary file, then rename).

Example::

    >>> import os, tempfile, torch
    >>> from pyrobayes import to_bayesian, Gaussian, save, load
    >>> def make():
    ...     torch.manual_seed(0)
    ...     net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    ...     return to_bayesian(net, likelihood=Gaussian(0.1))
    >>> model, guide = make()
    >>> guide.setup(torch.zeros(2, 1))
    >>> path = os.path.join(tempfile.mkdtemp(), "fit.safetensors")
    >>> save(path, model, guide)
    >>> model2, guide2 = make()
    >>> load(path, model2, guide2, torch.zeros(2, 1))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrobayes._pyro_compat import pyro_name, setup_prototype
from pyrobayes.guides._moped_legacy import flat_guide_state

__all__ = ["save", "load", "FORMAT_TAG", "FORMAT_VERSION"]

FORMAT_TAG = "pyrobayes.fitted"
FORMAT_VERSION = "1"


def _model_name(model: nn.Module) -> str:
    return str(pyro_name(model)) if isinstance(model, PyroModule) else ""


def _rename(key: str, old: str, new: str) -> str:
    if not old or old == new:
        return key
    return ".".join(new if part == old else part for part in key.split("."))


def _legacy_sites(state: dict, own: dict, model: nn.Module) -> dict:
    """Keys of a file saved before the likelihood's sites carried the model's name
    (``locs.noise_scale`` for today's ``locs.<model>.likelihood.noise_scale``) mapped onto
    this guide's names; keys this guide has are left alone."""
    keywords = getattr(getattr(model, "likelihood", None), "latent_keywords", {})
    if not keywords:
        return state
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        for site, old in keywords.items():
            for suffix in ("", "_unconstrained"):
                new = f"{head}.{site}{suffix}"
                if key not in own and rest == old + suffix and new in own:
                    key = new
        out[key] = value
    return out


def save(path: str | os.PathLike, model: nn.Module, guide: nn.Module) -> None:
    """Write a fitted ``(model, guide)`` to ``path`` (safetensors + JSON header, atomic).

    The guide must have been set up (called, fitted, or ``guide.setup(*inputs)``).

    Example::

        >>> import os, tempfile, torch
        >>> from safetensors import safe_open
        >>> from pyrobayes import to_bayesian, save
        >>> model, guide = to_bayesian(torch.nn.Linear(2, 1), likelihood="gaussian", name="lin")
        >>> guide.setup(torch.zeros(3, 2))
        >>> path = os.path.join(tempfile.mkdtemp(), "fit.safetensors")
        >>> save(path, model, guide)
        >>> with safe_open(path, framework="pt") as f:
        ...     meta, keys = f.metadata(), sorted(f.keys())
        >>> meta["format"], meta["guide"], meta["model_name"]
        ('pyrobayes.fitted', 'MOPEDNormal', 'lin')
        >>> keys[:2]                               # the guide's variational parameters ...
        ['guide/loc_unconstrained', 'guide/scale_unconstrained']
        >>> keys[-1]                               # ... and the model's buffers
        'model/net.weight_pretrained'
    """
    from safetensors.torch import save_file

    if getattr(guide, "prototype_trace", None) is None:
        raise ValueError("the guide has no parameters yet: fit it (or call guide.setup(x)) first")
    tensors = {}
    for prefix, module in (("model", model), ("guide", guide)):
        for k, v in module.state_dict().items():
            # contiguous private copies: safetensors refuses shared or strided storage
            tensors[f"{prefix}/{k}"] = v.detach().to("cpu").contiguous().clone()
    meta = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "guide": type(guide).__name__,
        "model_name": _model_name(model),
        "dtypes": json.dumps(sorted({str(t.dtype) for t in tensors.values()})),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written file


def load(path: str | os.PathLike, model: nn.Module, guide: nn.Module, *inputs, **kwargs) -> None:
    """Load a pair written by :func:`save` into a freshly converted ``model`` and ``guide``
    of the same architecture (in place). ``inputs``/``kwargs`` are example network inputs,
    needed to set up a guide that has not been called yet (Pyro builds guides lazily).

    Raises ``ValueError`` for a file that is not a pyrobayes fit, a different guide class,
    or parameters that do not match the model's sites.

    Example::

        >>> import os, tempfile, torch
        >>> from pyrobayes import to_bayesian, save, load
        >>> x = torch.zeros(3, 2)
        >>> model, guide = to_bayesian(torch.nn.Linear(2, 1), likelihood="gaussian", name="lin")
        >>> guide.setup(x)
        >>> path = os.path.join(tempfile.mkdtemp(), "fit.safetensors")
        >>> save(path, model, guide)
        >>> model2, guide2 = to_bayesian(torch.nn.Linear(2, 1), likelihood="gaussian", name="lin")
        >>> guide2.setup(x)
        >>> def same(a, b):
        ...     return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
        >>> same(guide, guide2)                    # a fresh network: other weights
        False
        >>> load(path, model2, guide2)
        >>> same(guide, guide2), same(model, model2)
        (True, True)
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved fit at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a pyrobayes saved fit (not safetensors: {exc})") from None
    if meta.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a pyrobayes saved fit (format tag {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {meta.get('version')}, expected {FORMAT_VERSION}"
        )
    if meta.get("guide") != type(guide).__name__:
        raise ValueError(
            f"{path} holds a {meta.get('guide')} guide, but a {type(guide).__name__} was given"
        )
    if getattr(guide, "prototype_trace", None) is None:
        if not inputs and not kwargs:
            raise ValueError(
                "the guide has not been set up: pass example network inputs, "
                "load(path, model, guide, x)"
            )
        setup_prototype(guide, *inputs, **kwargs)
    old, new = meta.get("model_name", ""), _model_name(model)
    device = next(iter(model.buffers()), torch.empty(0)).device
    for prefix, module in (("model", model), ("guide", guide)):
        state = {
            _rename(k[len(prefix) + 1 :], old, new): v.to(device)
            for k, v in tensors.items()
            if k.startswith(prefix + "/")
        }
        own = module.state_dict()
        if prefix == "guide":
            state = _legacy_sites(state, own, model)
            state, _ = flat_guide_state(module, state)  # a per-site MOPED guide's file
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        bad = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
        if missing or extra or bad:
            raise ValueError(
                f"{path} does not match this {prefix}: missing {missing[:3]}, "
                f"unexpected {extra[:3]}, wrong shape {bad[:3]} (same network and guide?)"
            )
        module.load_state_dict(state)
    # Stale param-store entries of the same names would override the loaded values the
    # next time the guide is called inside Pyro (PyroModule reads the store first).
    store = pyro.get_param_store()
    prefix = pyro_name(guide) if isinstance(guide, PyroModule) else None
    if prefix:
        for name, _ in list(guide.named_pyro_params()):
            full = f"{prefix}.{name}"
            if full in store:
                del store[full]
