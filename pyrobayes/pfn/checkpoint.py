"""PFN checkpoints: safetensors weights + a JSON config, never pickle.

A checkpoint ``NAME`` is two files: ``NAME.safetensors`` (the state dict, bar borders
included as the criterion's buffer) and ``NAME.json``::

    {"format": "pyrobayes-pfn", "kind": "weights", "version": 1,
     "weights": "NAME.safetensors", "sha256": "...", "config": {...PFNConfig...},
     "training": {...free-form metadata...}}

Loading checks the format tag, the config, the weights' checksum and that the tensor
names and shapes match the config exactly, so a foreign or corrupted file fails with a
message naming the problem instead of loading garbage. Training state for resuming
(optimizer moments, step, RNG) lives in ``NAME.state.safetensors`` / ``NAME.state.json``.

Example::

    >>> import tempfile, torch
    >>> from pyrobayes.pfn import PFN, PFNConfig, save_checkpoint, load_checkpoint
    >>> pfn = PFN(PFNConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, borders=(-1.0, 0.0, 1.0)))
    >>> path = save_checkpoint(pfn, tempfile.mkdtemp() + "/tiny")
    >>> load_checkpoint(path).config == pfn.config
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pyrobayes.pfn.model import PFN, PFNConfig

__all__ = ["save_checkpoint", "load_checkpoint", "FORMAT", "checkpoint_paths"]

FORMAT = "pyrobayes-pfn"
VERSION = 1


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights.safetensors, config.json)`` for a checkpoint path given with or without suffix.

    Example::

        >>> from pyrobayes.pfn.checkpoint import checkpoint_paths
        >>> [p.name for p in checkpoint_paths("runs/tiny")]
        ['tiny.safetensors', 'tiny.json']
        >>> checkpoint_paths("runs/tiny.json") == checkpoint_paths("runs/tiny.safetensors")
        True
    """
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def save_checkpoint(
    model: PFN, path: str | os.PathLike, training: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as ``PATH.safetensors`` + ``PATH.json``; returns the weights path.

    Args:
        model: the PFN.
        path: checkpoint path, with or without ``.safetensors``/``.json`` suffix.
        training: JSON-serialisable metadata (steps, final loss, command...).

    Example::

        >>> import json, tempfile
        >>> from pyrobayes.pfn import PFN, PFNConfig
        >>> from pyrobayes.pfn.checkpoint import save_checkpoint
        >>> pfn = PFN(PFNConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32,
        ...                     borders=(-2.0, 0.0, 2.0)))
        >>> weights = save_checkpoint(pfn, tempfile.mkdtemp() + "/tiny", training={"steps": 0})
        >>> sorted(p.name for p in weights.parent.iterdir())
        ['tiny.json', 'tiny.safetensors']
        >>> meta = json.loads(weights.with_suffix(".json").read_text())
        >>> meta["format"], meta["kind"], meta["config"]["d_model"], meta["training"]
        ('pyrobayes-pfn', 'weights', 16, {'steps': 0})
    """
    weights, meta = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; checkpoints ship as package data
    os.replace(tmp, weights)
    _atomic_write_json(
        meta,
        {
            "format": FORMAT,
            "kind": "weights",
            "version": VERSION,
            "weights": weights.name,
            "sha256": _sha256(weights),
            "config": model.config.to_dict(),
            "training": training or {},
        },
    )
    return weights


def read_checkpoint_json(path: str | os.PathLike) -> dict[str, Any]:
    """The validated JSON half of a checkpoint (format tag checked)."""
    _, meta = checkpoint_paths(path)
    if not meta.exists():
        raise FileNotFoundError(
            f"PFN checkpoint config {meta} not found (a checkpoint is NAME.safetensors + NAME.json)"
        )
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{meta} is not valid JSON ({err}); not a pyrobayes PFN checkpoint"
        ) from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(
            f"{meta} is not a pyrobayes PFN checkpoint (missing format tag {FORMAT!r})"
        )
    if info.get("kind") != "weights":
        raise ValueError(f"{meta} has kind {info.get('kind')!r}, expected 'weights'")
    if info.get("version") != VERSION:
        raise ValueError(
            f"{meta} has checkpoint version {info.get('version')!r}; this pyrobayes reads {VERSION}"
        )
    return info


def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None) -> PFN:
    """Load a PFN saved by :func:`save_checkpoint` (validated, no unpickling).

    Args:
        path: checkpoint path with or without suffix.
        device: where to put the model (default CPU).

    Returns:
        The PFN in eval mode; ``pfn.checkpoint_info`` holds the JSON metadata.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: foreign format, bad config, checksum mismatch, corrupted
            safetensors, or tensors that do not match the config.

    Example::

        >>> import tempfile, torch
        >>> from pyrobayes.pfn import PFN, PFNConfig
        >>> from pyrobayes.pfn.checkpoint import load_checkpoint, save_checkpoint
        >>> pfn = PFN(PFNConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32,
        ...                     borders=(-2.0, 0.0, 2.0))).eval()
        >>> path = save_checkpoint(pfn, tempfile.mkdtemp() + "/tiny", training={"steps": 0})
        >>> loaded = load_checkpoint(path)
        >>> loaded.training, loaded.checkpoint_info["training"]
        (False, {'steps': 0})
        >>> x, y, xq = torch.rand(5), torch.rand(5) - 0.5, torch.rand(3)
        >>> torch.equal(loaded.predict(x, y, xq).mean, pfn.predict(x, y, xq).mean)
        True
        >>> _ = path.write_bytes(path.read_bytes()[:-4] + b"oops")   # corrupt the weights
        >>> load_checkpoint(path)
        Traceback (most recent call last):
        ...
        ValueError: ...tiny.safetensors does not match the checksum in ...tiny.json: ...
    """
    info = read_checkpoint_json(path)
    weights, meta = checkpoint_paths(path)
    if not weights.exists():
        raise FileNotFoundError(f"PFN checkpoint weights {weights} not found")
    config = PFNConfig.from_dict(info.get("config"))
    digest = info.get("sha256")
    if digest is not None and digest != _sha256(weights):
        raise ValueError(
            f"{weights} does not match the checksum in {meta}: the file is corrupted or was replaced"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file: {err}") from err
    model = PFN(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(
                f"{weights}: tensor {k} has shape {tuple(v.shape)}, config implies {tuple(expected[k].shape)}"
            )
        if not torch.isfinite(v).all():
            raise ValueError(f"{weights}: tensor {k} contains NaN or infinite values")
    model.load_state_dict(state, strict=True)
    model.checkpoint_info = info
    if device is not None:
        model.to(device)
    return model.eval()


def save_training_state(
    path: str | os.PathLike, optimizer: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    """Optimizer tensors + JSON (step, RNG, history) for :func:`train_pfn` resume."""
    weights, meta = checkpoint_paths(path)
    st = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, s in st["state"].items():
        for key, val in s.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(val).detach().to("cpu").contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    sw = weights.with_name(weights.stem + ".state.safetensors")
    tmp = sw.with_name(sw.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, sw)
    _atomic_write_json(
        meta.with_name(meta.stem + ".state.json"),
        {
            "format": FORMAT,
            "kind": "training-state",
            "version": VERSION,
            "param_groups": st["param_groups"],
            **info,
        },
    )


def load_training_state(
    path: str | os.PathLike, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore optimizer moments and the CPU RNG; return the JSON info (``step``, ...)."""
    weights, meta = checkpoint_paths(path)
    sj = meta.with_name(meta.stem + ".state.json")
    sw = weights.with_name(weights.stem + ".state.safetensors")
    if not sj.exists() or not sw.exists():
        raise FileNotFoundError(f"no training state to resume from ({sj.name} / {sw.name} missing)")
    info = json.loads(sj.read_text())
    if info.get("format") != FORMAT or info.get("kind") != "training-state":
        raise ValueError(f"{sj} is not a pyrobayes PFN training state")
    try:
        tensors = load_file(str(sw))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{sw} is not a readable safetensors file: {err}") from err
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    return info
