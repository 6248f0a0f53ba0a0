"""Checkpoints of the SVI loop: safetensors for the tensors, JSON for everything else.

A checkpoint at ``path`` is two files: ``path`` (JSON: format tag, version, epoch,
history, optimiser hyper-parameters and structure, the model's Pyro name) and
``path.safetensors`` (model and guide state dicts, optimiser state tensors, RNG states).
Loading never unpickles, so a checkpoint cannot execute code.

Both files are written to temporaries and moved into place with ``os.replace``; the tensor
file first, the JSON last. The JSON records a random token that the tensor file repeats in
its metadata, so a crash between the two moves is detected as a mismatched pair instead of
silently mixing two epochs.

Example::

    >>> import tempfile, torch, os
    >>> from pyrobayes.infer.fit_checkpoint import save_fit_checkpoint, load_fit_checkpoint
    >>> d = tempfile.mkdtemp()
    >>> save_fit_checkpoint(os.path.join(d, "fit.json"), {"epoch": 1, "model": {"w": torch.ones(2)}})
    >>> load_fit_checkpoint(os.path.join(d, "fit.json"))["model"]["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pyro.nn import PyroModule
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from pyrobayes._pyro_compat import pyro_name
from pyrobayes.guides._moped_legacy import (
    flat_guide_state,
    flat_optim_state,
    per_model_optim_state,
)
from pyrobayes.infer.fit_data import naming_input_shapes, split_batch

if TYPE_CHECKING:
    from pyrobayes.infer.fit import History

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_fit_checkpoint",
    "load_fit_checkpoint",
    "tensor_path",
    "check_state_dict",
    "rename_prefix",
    "data_fingerprint",
    "check_data_fingerprint",
]

CHECKPOINT_FORMAT = "pyrobayes-fit-checkpoint"
CHECKPOINT_VERSION = 2


def tensor_path(path: str | os.PathLike) -> Path:
    """The safetensors file that goes with the JSON checkpoint ``path``.

    Example::

        >>> from pyrobayes.infer.fit_checkpoint import tensor_path
        >>> tensor_path("runs/fit.json").as_posix()
        'runs/fit.json.safetensors'
    """
    path = Path(path)
    return path.with_name(path.name + ".safetensors")


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON tree of ``obj`` with each tensor moved into ``tensors`` under a path key."""
    if torch.is_tensor(obj):
        # a copy: safetensors refuses tensors that share storage (e.g. tied weights)
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # keys may be ints (torch optimiser state): keep them typed
        return {"__dict__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {key!r} in a fit checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"unknown entry {sorted(obj)} in the checkpoint")
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_fit_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts/lists of tensors and JSON values) atomically.

    Example (the tensors go to the safetensors file, the rest to the JSON)::

        >>> import json, os, tempfile, torch
        >>> from safetensors.torch import load_file
        >>> from pyrobayes.infer.fit_checkpoint import save_fit_checkpoint, tensor_path
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "fit.json")
        >>> save_fit_checkpoint(path, {"epoch": 3, "guide": {"loc": torch.zeros(2)}})
        >>> json.load(open(path))["format"], list(load_file(tensor_path(path)))
        ('pyrobayes-fit-checkpoint', ['/guide/loc'])
        >>> tmp.cleanup()
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    token = secrets.token_hex(8)
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "token": token}
    meta = {k: str(v) for k, v in header.items()}
    _atomic_write(tensor_path(path), lambda p: save_file(tensors, str(p), metadata=meta))
    text = json.dumps({**header, "state": tree})
    _atomic_write(path, lambda p: p.write_text(text))  # the commit point


def load_fit_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`pyrobayes.fit` without executing any code.

    Example (a round trip, and a JSON file that is no checkpoint)::

        >>> import os, tempfile, torch
        >>> from pyrobayes.infer.fit_checkpoint import save_fit_checkpoint, load_fit_checkpoint
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "fit.json")
        >>> save_fit_checkpoint(path, {"epoch": 3, "history": [1.5], "w": torch.ones(2)})
        >>> load_fit_checkpoint(path)
        {'epoch': 3, 'history': [1.5], 'w': tensor([1., 1.])}
        >>> with open(path, "w") as f:
        ...     _ = f.write("{}")
        >>> load_fit_checkpoint(path)
        Traceback (most recent call last):
            ...
        ValueError: ... is not a pyrobayes fit checkpoint (format tag missing)
        >>> tmp.cleanup()
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path} is not a readable pyrobayes fit checkpoint (not JSON: {exc})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyrobayes fit checkpoint (format tag missing)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {meta.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    tpath = tensor_path(path)
    if not tpath.exists():
        raise ValueError(f"checkpoint {path} has no tensor file {tpath.name}")
    try:
        from safetensors import safe_open

        with safe_open(str(tpath), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(tpath))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{tpath} is not a readable safetensors file: {exc}") from None
    if header.get("token") != meta.get("token"):
        raise ValueError(f"{path} and {tpath.name} belong to different saves (interrupted write?)")
    return _decode(meta["state"], tensors)


def rename_prefix(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """Replace the dotted name component ``old`` by ``new`` in every key (the model's
    auto-generated Pyro name appears inside the guide's parameter names).

    Example (whole components only: ``bnn10`` is left alone)::

        >>> import torch
        >>> from pyrobayes.infer.fit_checkpoint import rename_prefix
        >>> state = {"locs.bnn1.net.weight": torch.zeros(1), "locs.bnn10.net.bias": torch.zeros(1)}
        >>> sorted(rename_prefix(state, "bnn1", "net"))
        ['locs.bnn10.net.bias', 'locs.net.net.weight']
    """
    if old == new:
        return state

    def fix(key: str) -> str:
        parts = key.split(".")
        return ".".join(new if p == old else p for p in parts)

    return {fix(k): v for k, v in state.items()}


def check_state_dict(
    what: str, module: torch.nn.Module, state: dict[str, torch.Tensor], hint: str = ""
) -> None:
    """Raise a ``ValueError`` naming missing, unexpected and wrongly shaped entries.

    Example::

        >>> import torch
        >>> from pyrobayes.infer.fit_checkpoint import check_state_dict
        >>> lin = torch.nn.Linear(2, 1)
        >>> check_state_dict("guide", lin, lin.state_dict())  # matches: no error
        >>> check_state_dict("guide", lin, {"weight": torch.zeros(1, 3), "scale": torch.ones(1)})
        Traceback (most recent call last):
            ...
        ValueError: the checkpoint's guide does not match this guide:
          missing from the checkpoint: bias
          unexpected in the checkpoint: scale
          wrong shape: weight: checkpoint (1, 3) vs (1, 2)
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"the checkpoint's {what} does not match this {what}{hint}:"]
    if missing:
        lines.append("  missing from the checkpoint: " + ", ".join(missing))
    if unexpected:
        lines.append("  unexpected in the checkpoint: " + ", ".join(unexpected))
    if shapes:
        lines.append("  wrong shape: " + "; ".join(shapes))
    raise ValueError("\n".join(lines))


# Above this many bytes per tensor only every k-th row is hashed (k chosen to stay below):
# hashing stays a fraction of a second on any data set.
_HASH_BYTES = 1 << 25


def _digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (all rows, or evenly strided rows of a large tensor)."""
    t = t.detach()
    rows = t.shape[0] if t.dim() else 1
    row_bytes = max(t.numel() // max(rows, 1), 1) * t.element_size()
    stride = max(1, -(-rows * row_bytes // _HASH_BYTES))
    part = t[::stride] if stride > 1 else t
    h = hashlib.sha256(f"{stride}:".encode())
    h.update(part.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return h.hexdigest()


def data_fingerprint(
    n: int,
    fields: Sequence[tuple[str, torch.Tensor]],
    whole: bool,
    dataset_length: int | None = None,
) -> dict[str, Any]:
    """What a fit checkpoint remembers of its data, to refuse resuming on other data.

    ``fields``: ``(name, tensor)`` pairs; ``whole=True``: they are the whole data (shape,
    dtype and a hash of the content are kept), ``False``: one batch of a user ``DataLoader``
    (the shape per point and the dtype). ``n``: the data size ``N`` of the fit.

    Example::

        >>> import torch
        >>> from pyrobayes.infer.fit_checkpoint import data_fingerprint
        >>> fp = data_fingerprint(3, [("targets", torch.zeros(3))], whole=True)
        >>> fp["N"], fp["fields"]["targets"]["shape"], len(fp["fields"]["targets"]["sha256"])
        (3, [3], 64)
    """
    out: dict[str, Any] = {}
    for name, t in fields:
        shape = list(t.shape) if whole else list(t.shape[1:])
        entry = {"shape": shape, "dtype": str(t.dtype).removeprefix("torch.")}
        entry["sha256"] = _digest(t) if whole else None
        out[name] = entry
    return {"N": int(n), "dataset_length": dataset_length, "whole": whole, "fields": out}


def _field_differences(saved: dict, now: dict, per_point: bool) -> list[str]:
    shape = "shape per point" if per_point else "shape"
    lines = []
    for name in sorted(set(saved) | set(now), key=str):
        if name not in now or name not in saved:
            where = "the checkpoint" if name in saved else "the data now"
            lines.append(f"{name}: only in {where}")
            continue
        a, b = saved[name], now[name]
        if list(a["shape"]) != list(b["shape"]):
            lines.append(f"{name}: {shape} checkpoint {tuple(a['shape'])}, now {tuple(b['shape'])}")
        if a["dtype"] != b["dtype"]:
            lines.append(f"{name}: dtype checkpoint {a['dtype']}, now {b['dtype']}")
        if list(a["shape"]) == list(b["shape"]) and a.get("sha256") != b.get("sha256"):
            lines.append(f"{name}: content differs")
    return lines


def check_data_fingerprint(path: str | os.PathLike, saved: dict | None, now: dict) -> None:
    """Refuse to resume a fit on data other than the checkpoint's, naming what differs; a
    checkpoint from before fingerprints (``saved=None``) resumes with a warning.

    Example::

        >>> import torch
        >>> from pyrobayes.infer.fit_checkpoint import check_data_fingerprint, data_fingerprint
        >>> old = data_fingerprint(4, [("targets", torch.zeros(4))], whole=True)
        >>> check_data_fingerprint("fit.json", old, old)  # the same data: no error
        >>> new = data_fingerprint(4, [("targets", torch.ones(4))], whole=True)
        >>> check_data_fingerprint("fit.json", old, new)
        Traceback (most recent call last):
            ...
        ValueError: the checkpoint fit.json was written for different data (resume=True continues a fit only on its own data; pass resume=False or another checkpoint path to start afresh):
          targets: content differs
    """
    if saved is None:
        warnings.warn(
            f"the checkpoint {path} has no data fingerprint (written by an older pyrobayes): "
            "cannot check that it was written for the same data",
            stacklevel=3,
        )
        return
    lines = []
    if saved["N"] != now["N"]:
        lines.append(f"N: checkpoint {saved['N']}, now {now['N']}")
    if saved.get("dataset_length") != now.get("dataset_length"):
        lines.append(
            f"dataset length: checkpoint {saved.get('dataset_length')}, "
            f"now {now.get('dataset_length')}"
        )
    if saved.get("whole") != now.get("whole"):
        lines.append("kind: tensors in one place vs batches of a DataLoader")
    else:
        lines += _field_differences(saved["fields"], now["fields"], not now.get("whole"))
    if lines:
        raise ValueError(
            f"the checkpoint {path} was written for different data (resume=True continues a "
            "fit only on its own data; pass resume=False or another checkpoint path to start "
            "afresh):\n  " + "\n  ".join(lines)
        )


def _ensure_guide_params(model, guide, loader, device) -> None:
    """The guide's parameters must exist before saved values can be loaded into them."""
    first = next(iter(loader), None)
    if first is None:
        raise ValueError("the DataLoader yields no batches; nothing to resume with")
    xs, kw, y = split_batch(first, device)
    with naming_input_shapes(model, xs):
        if hasattr(guide, "setup"):
            guide.setup(*xs, y=y, **kw)
        else:
            guide(*xs, y=y, **kw)


def resume_fit(
    path: Path, model, guide, stepper, loader, device, history: History, fingerprint: dict
) -> int:
    """Load a checkpoint into ``model``, ``guide``, the optimiser and the RNGs; the epoch."""
    state = load_fit_checkpoint(path)
    check_data_fingerprint(path, state.get("data"), fingerprint)
    _ensure_guide_params(model, guide, loader, device)
    saved_name, name = state.get("pyro_name"), _model_name(model)
    hint = ""
    if saved_name and name and saved_name != name:
        # the same architecture converted under another auto-generated name: map the names
        state["model"] = rename_prefix(state["model"], saved_name, name)
        state["guide"] = rename_prefix(state["guide"], saved_name, name)
        if "param_groups" not in state["optim"]:  # a Pyro optimiser's: keyed by store names
            state["optim"] = rename_prefix(state["optim"], saved_name, name)
        hint = f" (checkpoint model {saved_name!r} mapped onto {name!r})"
    # a MOPED guide saved per site (before its flat storage): its weights and optimiser
    # state mapped onto the flat layout
    state["guide"], old_params = flat_guide_state(guide, state["guide"])
    if old_params is not None and state["optim"]:
        state["optim"] = flat_optim_state(guide, old_params, state["optim"])
    # a low-rank guide's Pyro optimiser state under the shared names of before its per-model
    # names (MOPEDLowRank.loc -> MOPEDLowRank.<model>.loc)
    state["optim"] = per_model_optim_state(guide, state["optim"])
    check_state_dict("model", model, state["model"], hint)
    check_state_dict("guide", guide, state["guide"], hint)
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    stepper.set_state(state["optim"])
    history.records = list(state["history"])
    torch.set_rng_state(state["rng"])
    if isinstance(loader.generator, torch.Generator) and state.get("loader_rng") is not None:
        loader.generator.set_state(state["loader_rng"])
    return int(state["epoch"])


def save_fit(
    path: Path, epoch: int, model, guide, stepper, loader, history: History, fingerprint: dict
) -> None:
    gen = loader.generator if isinstance(loader.generator, torch.Generator) else None
    save_fit_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "pyro_name": _model_name(model),
            "data": fingerprint,
            "model": model.state_dict(),
            "guide": guide.state_dict(),
            "optim": stepper.get_state(),
            "history": history.records,
            "rng": torch.get_rng_state(),
            "loader_rng": gen.get_state() if gen is not None else None,
        },
    )


def _batch_fields(xs: tuple, kw: dict, y) -> list[tuple[str, torch.Tensor]]:
    """A batch's tensors under the names the errors of a fit use."""
    fields = [(f"input {i}", x) for i, x in enumerate(xs)]
    return fields + [(f"input {k!r}", v) for k, v in kw.items()] + [("targets", y)]


def _peek(loader):
    """The first batch of ``loader`` without moving any random stream a fit draws from
    (the global RNG, the loader's and its sampler's generators)."""
    gens = {getattr(loader, "generator", None), getattr(loader.sampler, "generator", None)}
    states = [(g, g.get_state()) for g in gens if isinstance(g, torch.Generator)]
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(loader), None)
    for g, state in states:
        g.set_state(state)
    return batch


def loader_fingerprint(loader, n: int) -> dict:
    """The data a checkpoint is written for: tensors held whole (tensor data or a
    ``TensorDataset``) are hashed; of another dataset, its length and one batch's shapes
    per point and dtypes are kept (its content is too costly to read for a check)."""
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, TensorDataset):
        *xs, y = dataset.tensors
        return data_fingerprint(n, _batch_fields(tuple(xs), {}, y), whole=True)
    try:
        length = len(dataset)
    except TypeError:
        length = None
    batch = _peek(loader)
    if batch is None:
        raise ValueError("the DataLoader yields no batches")
    fields = _batch_fields(*split_batch(batch, "cpu"))
    return data_fingerprint(n, fields, whole=False, dataset_length=length)


def _model_name(model) -> str | None:
    """The model's Pyro name (the prefix of its sites), ``None`` for a plain module."""
    return pyro_name(model) if isinstance(model, PyroModule) else None
