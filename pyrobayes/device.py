"""Device names from the command line, checked before any work starts (the core's ``pfn
train`` and the applications' commands share it)."""

from __future__ import annotations

__all__ = ["check_device"]


def check_device(value: str | None, allow_auto: bool = False) -> str | None:
    """``value`` of a ``--device`` flag if torch can run on that device here (``cpu``,
    ``cuda``, ``cuda:N``, ``mps``; ``auto`` where ``allow_auto``; ``None`` = the default);
    otherwise a ``ValueError`` naming the device, which the ``pyrobayes`` command prints as one
    ``error:`` line with exit code 2 before any work starts (not a traceback from deep
    inside torch).

    Example::

        >>> check_device("cpu")
        'cpu'
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: --device 'gpu' is not a device torch knows; use cpu, cuda, cuda:N or mps
    """
    import torch

    if value is None or (allow_auto and value == "auto"):
        return value
    valid = "cpu, cuda, cuda:N" + (", mps or auto" if allow_auto else " or mps")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {value!r} is not a device torch knows; use {valid}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else "no GPU visible"
        raise ValueError(
            f"--device {value!r}: torch sees no CUDA device (torch {torch.__version__}, "
            f"{build}); use --device cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {value!r}: torch sees only {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {value!r}: torch sees no MPS device; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {value!r} is not supported here; use {valid}")
    return value
