"""``fit``: the SVI loop (Pyro ``SVI`` + ``Trace_ELBO``) with the chores done properly.

Progress bar, per-epoch history, callbacks and early stopping, a KL weight (constant or a
schedule), checkpoint and resume, and a clear error naming the step and the site when the
loss stops being finite.

The KL weight :math:`\\beta` is an effect handler that scales every *latent* site of the
model and of the guide, leaving the observed likelihood alone:

.. math::

    \\mathcal L_\\beta = \\mathbb E_q[\\log p(y\\mid w)] - \\beta\\,\\mathrm{KL}(q\\,\\|\\,p).

Example::

    >>> import torch
    >>> from pyrobayes import to_bayesian, Gaussian, fit
    >>> net = torch.nn.Linear(1, 1)
    >>> model, guide = to_bayesian(net, prior="normal", likelihood=Gaussian(0.1))
    >>> x = torch.randn(64, 1); y = 2 * x[:, 0]
    >>> history = fit(model, guide, (x, y), epochs=2, batch_size=32, progress=False)
    >>> len(history)
    2
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from torch.utils.data import DataLoader, TensorDataset

from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.infer.fast_elbo import FusedMeanFieldELBO, supports_fused

__all__ = [
    "fit",
    "History",
    "EarlyStopping",
    "LossKind",
    "CHECKPOINT_FORMAT",
    "load_fit_checkpoint",
]

CHECKPOINT_FORMAT = "pyrobayes-fit-checkpoint"
CHECKPOINT_VERSION = 1


class LossKind(str, Enum):
    TRACE_ELBO = "trace_elbo"
    MEANFIELD = "meanfield"


@dataclass
class History:
    """Per-epoch records: ``{"epoch", "loss" (negative ELBO per data point), "kl_weight",
    "seconds"}`` plus whatever callbacks add."""

    records: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records]


class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``monitor`` is a key of the epoch record (``"loss"`` by default, or one a previous
    callback wrote, e.g. a validation NLL)."""

    def __init__(self, patience: int = 5, min_delta: float = 0.0, monitor: str = "loss"):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.min_delta, self.monitor = patience, min_delta, monitor
        self.best, self.bad = math.inf, 0

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.monitor not in record:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, not in the epoch record {sorted(record)}"
            )
        value = record[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


class _ScaleLatents(Messenger):
    """Multiply the log-density of every non-observed sample site by ``weight``."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]


def _check_finite(name: str, t: torch.Tensor) -> None:
    if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")


def _make_loader(data, batch_size: int, shuffle: bool, seed: int | None) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and all(torch.is_tensor(t) for t in data):
        if len(data) < 2:
            raise ValueError("data must be (inputs..., targets)")
        lengths = {len(t) for t in data}
        if len(lengths) != 1:
            raise ValueError(f"inputs and targets have different lengths: {[len(t) for t in data]}")
        for i, t in enumerate(data):
            _check_finite("targets" if i == len(data) - 1 else f"input {i}", t)
        if lengths == {0}:
            raise ValueError("data is empty")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return DataLoader(
            TensorDataset(*data), batch_size=batch_size, shuffle=shuffle, generator=gen
        )
    raise TypeError("data must be a tuple of tensors (inputs..., targets) or a torch DataLoader")


def _split_batch(batch, device) -> tuple[tuple, dict, torch.Tensor]:
    """``(*inputs, y)`` tuples, or dicts with a ``labels``/``label`` key (Hugging Face)."""
    if isinstance(batch, Mapping):
        batch = dict(batch)
        key = "labels" if "labels" in batch else "label" if "label" in batch else None
        if key is None:
            raise ValueError(f"dict batches need a 'labels' key; got keys {sorted(batch)}")
        y = batch.pop(key).to(device)
        return (), {k: v.to(device) for k, v in batch.items()}, y
    *xs, y = batch
    return tuple(x.to(device) for x in xs), {}, y.to(device)


def _kl_weight_at(kl_weight, epoch: int, epochs: int) -> float:
    w = kl_weight(epoch, epochs) if callable(kl_weight) else kl_weight
    if not (0 <= float(w) < math.inf):
        raise ValueError(f"KL weight must be finite and >= 0, got {w!r}")
    return float(w)


def _diagnose(model, guide, xs, kw, y) -> str:
    """Name the first site (or parameter) whose value or log-density is not finite."""
    for name, value in pyro.get_param_store().items():
        if not torch.isfinite(value).all():
            return f"parameter {name!r}"
    try:
        guide_tr = pyro.poutine.trace(guide).get_trace(*xs, y=y, **kw)
        model_tr = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_tr)).get_trace(
            *xs, y=y, **kw
        )
    except Exception as exc:  # the failing site may raise itself
        return f"a site that raised {type(exc).__name__}: {exc}"
    for label, tr in (("guide", guide_tr), ("model", model_tr)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            if not torch.isfinite(site["value"]).all():
                return f"{label} site {name!r} (value)"
            if not torch.isfinite(site["fn"].log_prob(site["value"])).all():
                return f"{label} site {name!r} (log-density)"
    return "no single site (the ELBO estimate itself overflowed)"


class _SVIStepper:
    """Pyro's own SVI with a Pyro optimiser."""

    def __init__(self, model, guide, elbo, optim):
        self.optim = optim
        self.svi = SVI(model, guide, optim, elbo)

    def step(self, *args, **kwargs) -> float:
        return self.svi.step(*args, **kwargs)

    def get_state(self) -> dict:
        return self.optim.get_state()

    def set_state(self, state: dict) -> None:
        self.optim.set_state(state)


class _TorchStepper:
    r"""``elbo.loss_and_grads`` plus one torch optimiser over every trainable parameter
    of the guide and the model (PyroModules keep their parameters as ordinary
    ``nn.Parameter``\ s, so this is the same objective SVI optimises)."""

    def __init__(self, scaled_model, scaled_guide, model, guide, elbo, make_optim):
        self.scaled_model, self.scaled_guide = scaled_model, scaled_guide
        self.model, self.guide, self.elbo = model, guide, elbo
        self.make_optim, self.opt, self._pending = make_optim, None, None

    def _build(self, *args, **kwargs) -> None:
        if getattr(self.guide, "prototype_trace", "absent") is None:
            self.guide._setup_prototype(*args, **kwargs)
        params = {
            id(p): p for m in (self.guide, self.model) for p in m.parameters() if p.requires_grad
        }
        self.opt = self.make_optim(list(params.values()))
        if self._pending is not None:
            self.opt.load_state_dict(self._pending)
            self._pending = None

    def step(self, *args, **kwargs) -> float:
        if self.opt is None:
            self._build(*args, **kwargs)
        loss = self.elbo.loss_and_grads(self.scaled_model, self.scaled_guide, *args, **kwargs)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss)

    def get_state(self) -> dict:
        return self.opt.state_dict() if self.opt is not None else {}

    def set_state(self, state: dict) -> None:
        if self.opt is None:
            self._pending = state or None
        else:
            self.opt.load_state_dict(state)


class _FusedStepper(_TorchStepper):
    """The fused mean-field ELBO (same estimator as ``Trace_ELBO``) with a torch optimiser."""

    def __init__(self, model, guide, make_optim, weight):
        super().__init__(model, guide, model, guide, None, make_optim)
        self.fused = FusedMeanFieldELBO(model, guide)
        self.weight = weight

    def step(self, *args, **kwargs) -> float:
        if self.opt is None:
            self._build(*args, **kwargs)
        self.fused.beta = self.weight["beta"]
        loss = self.fused.loss(*args, **kwargs)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def load_fit_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`fit` without executing any code."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable pyrobayes fit checkpoint: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyrobayes fit checkpoint (format tag missing)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    return state


def fit(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: DataLoader | Sequence[torch.Tensor],
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optim: pyro.optim.PyroOptim | None = None,
    loss: str | LossKind = "trace_elbo",
    num_particles: int = 1,
    vectorize_particles: bool = False,
    kl_weight: float | Callable[[int, int], float] = 1.0,
    callbacks: Iterable[Callable[[dict[str, Any]], bool | None]] = (),
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    shuffle: bool = True,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    validate: bool = False,
    fused: bool | None = None,
    local_reparam: bool = False,
    progress: bool = True,
) -> History:
    """Fit ``guide`` to the posterior of ``model`` by stochastic variational inference.

    Args:
        model, guide: a :class:`~pyrobayes.model.BayesianModel` and its guide.
        data: ``(inputs..., targets)`` tensors (batched here) or a ``DataLoader`` yielding
            such tuples or dicts with a ``labels`` key. The data set size ``N`` sets the
            likelihood plate, so each minibatch ELBO is unbiased for the full data.
        epochs, batch_size, lr: loop length, batch size for tensor data, Adam step size.
        optim: a Pyro optimiser (then Pyro's ``SVI`` runs the loop), or a callable that
            builds a ``torch.optim.Optimizer`` from a parameter list (default: ``Adam(lr)``
            over all guide and model parameters at once: one fused update instead of
            Pyro's one optimiser per parameter, which dominates the step time of small nets).
        loss: ``"trace_elbo"`` (Monte Carlo KL) or ``"meanfield"`` (analytic KL where known).
        num_particles: ELBO samples per step.
        kl_weight: :math:`\\beta`, a number or ``f(epoch, epochs) -> float`` (annealing).
        callbacks: called with each epoch's record (they may add keys); returning ``True``
            stops training (see :class:`EarlyStopping`).
        checkpoint: file written atomically after every epoch; with ``resume=True`` and an
            existing file, training continues from it (at most one epoch is lost).
        seed: seeds Pyro and the batch order (``None``: leave global RNG alone).
        device: where data batches go (default: the model's device).
        validate: keep Pyro's distribution-argument validation on inside the loop (the
            data are validated once up front; per-step validation costs ~30% of a step).
        fused: use the fused single-particle ``Trace_ELBO`` step
            (:mod:`pyrobayes.infer.fast_elbo`; the same estimator without Pyro's per-site
            trace bookkeeping). ``None``: whenever it applies (``trace_elbo``, one particle,
            a torch optimiser, a mean-field autoguide); ``False``: always Pyro's traces.
        local_reparam: evaluate linear layers by local reparameterisation
            (:class:`~pyrobayes.guides.LocalReparameterization`): the same ELBO in
            expectation with lower-variance gradients.
        progress: show a tqdm bar.

    Raises:
        FloatingPointError: the loss became NaN/inf; the message names epoch, step and site.
    """
    from tqdm.auto import tqdm

    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    try:
        loss_kind = LossKind(loss)
    except ValueError:
        raise ValueError(
            f"unknown loss {loss!r}; valid: {', '.join(k.value for k in LossKind)}"
        ) from None
    if seed is not None:
        pyro.set_rng_seed(seed)
    loader = _make_loader(data, batch_size, shuffle, seed)
    try:
        n_data = len(loader.dataset)
    except TypeError:
        n_data = None
    if n_data == 0:
        raise ValueError("data is empty")
    if device is None:
        device = next((t.device for t in model.buffers()), torch.device("cpu"))
    model.train()
    if hasattr(model, "likelihood"):
        model.likelihood.dataset_size = n_data
    elbo_cls = Trace_ELBO if loss_kind is LossKind.TRACE_ELBO else TraceMeanField_ELBO
    elbo = elbo_cls(num_particles=num_particles, vectorize_particles=vectorize_particles)
    weight = {"beta": 1.0}

    def scaled_model(*a, **k):
        with _ScaleLatents(weight["beta"]):
            return model(*a, **k)

    def scaled_guide(*a, **k):
        with _ScaleLatents(weight["beta"]):
            return guide(*a, **k)

    # foreach: one fused update over all tensors (torch only picks it by default on GPUs)
    make_optim = optim or functools.partial(torch.optim.Adam, lr=lr, foreach=True)
    can_fuse = (
        loss_kind is LossKind.TRACE_ELBO
        and num_particles == 1
        and not isinstance(optim, pyro.optim.PyroOptim)
        and supports_fused(model, guide)
    )
    if fused and not can_fuse:
        raise ValueError(
            "fused=True needs loss='trace_elbo', num_particles=1, a torch optimiser, "
            "a BayesianModel and an AutoNormal-family guide"
        )
    if isinstance(optim, pyro.optim.PyroOptim):
        stepper = _SVIStepper(scaled_model, scaled_guide, elbo, optim)
    elif can_fuse and fused is not False:
        stepper = _FusedStepper(model, guide, make_optim, weight)
        stepper.fused.local_reparam = local_reparam
    else:
        stepper = _TorchStepper(scaled_model, scaled_guide, model, guide, elbo, make_optim)

    # The fused step registers its own draws; Pyro's traced paths use the messenger.
    pyro_lrt = local_reparam and not isinstance(stepper, _FusedStepper)

    def lrt_context():
        return LocalReparameterization() if pyro_lrt else contextlib.nullcontext()

    history, start_epoch = History(), 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.exists():
        state = load_fit_checkpoint(ckpt)
        first = next(iter(loader))
        xs, kw, y = _split_batch(first, device)
        # the guide's parameters must exist before their saved values can be loaded
        if hasattr(guide, "setup"):
            guide.setup(*xs, y=y, **kw)
        else:
            guide(*xs, y=y, **kw)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
        stepper.set_state(state["optim"])
        history.records = list(state["history"])
        start_epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"])
        if isinstance(loader.generator, torch.Generator) and state.get("loader_rng") is not None:
            loader.generator.set_state(state["loader_rng"])

    callbacks = list(callbacks)
    bar = tqdm(range(start_epoch, epochs), disable=not progress, desc="SVI", unit="epoch")
    for epoch in bar:
        weight["beta"] = _kl_weight_at(kl_weight, epoch, epochs)
        t0, total, seen = time.perf_counter(), 0.0, 0
        for step, batch in enumerate(loader):
            xs, kw, y = _split_batch(batch, device)
            cause = None
            try:
                with pyro.validation_enabled(validate), lrt_context():
                    value = stepper.step(*xs, y=y, **kw)
            except ValueError as exc:
                # Pyro's argument validation is how a NaN parameter usually surfaces.
                if "invalid values" not in str(exc):
                    raise
                value, cause = math.nan, exc
            if not math.isfinite(value):
                where = _diagnose(model, guide, xs, kw, y)
                raise FloatingPointError(
                    f"ELBO loss became {value} at epoch {epoch}, step {step}: first non-finite {where}. "
                    "Try a smaller learning rate, a smaller MOPED delta or a larger min_scale."
                ) from cause
            total += value
            seen += len(y)
        # SVI returns the full-data loss estimate per step; average the steps, per point.
        steps = max(step + 1, 1)
        record = {
            "epoch": epoch + 1,
            "loss": total / steps / (n_data or seen),
            "kl_weight": weight["beta"],
            "seconds": time.perf_counter() - t0,
        }
        stop = False
        for cb in callbacks:
            stop = bool(cb(record)) or stop
        history.records.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4g}")
        if ckpt is not None:
            _save_checkpoint(
                ckpt,
                {
                    "format": CHECKPOINT_FORMAT,
                    "version": CHECKPOINT_VERSION,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "guide": guide.state_dict(),
                    "optim": stepper.get_state(),
                    "history": history.records,
                    "rng": torch.get_rng_state(),
                    "loader_rng": loader.generator.get_state()
                    if isinstance(loader.generator, torch.Generator)
                    else None,
                },
            )
        if stop:
            history.stopped_early = True
            break
    bar.close()
    return history
