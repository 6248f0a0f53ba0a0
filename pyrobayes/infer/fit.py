"""``fit``: stochastic variational inference as a short loop over ONE loss, chosen once
(``make_stepper``): the fused single-particle
``Trace_ELBO`` (:mod:`pyrobayes.infer.fast_elbo`, the default where it applies) or Pyro's
own ELBO on traces (``Trace_ELBO``/``TraceMeanField_ELBO``), with the chores done properly.
The data side (loader, ``N``, batch checks) is :mod:`pyrobayes.infer.fit_data`,
checkpoints :mod:`pyrobayes.infer.fit_checkpoint`.

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
    >>> from pyrobayes.infer import FitConfig
    >>> cfg = FitConfig(epochs=3, batch_size=32, lr_schedule="cosine", progress=False)
    >>> len(fit(model, guide, (x, y), cfg, epochs=1))   # keywords override the config
    1
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from torch.utils.data import DataLoader

from pyrobayes import distributed as dist_
from pyrobayes.infer.fit_checkpoint import (
    CHECKPOINT_FORMAT,
    load_fit_checkpoint,
    loader_fingerprint,
    resume_fit,
    save_fit,
)
from pyrobayes.infer.fit_data import (
    TensorBatches,
    check_batch,
    epoch_data_size,
    len_or_none,
    make_loader,
    naming_input_shapes,
    shard,
    split_batch,
)
from pyrobayes.infer.steppers import LossKind, checked_stepper
from pyrobayes.likelihoods import data_size
from pyrobayes.options import Option
from pyrobayes.progress import progress_bar

__all__ = [
    "fit",
    "History",
    "EarlyStopping",
    "LossKind",
    "LRSchedule",
    "FitConfig",
    "CHECKPOINT_FORMAT",
    "load_fit_checkpoint",
]


class LRSchedule(Option):
    r"""Learning-rate factor :math:`f(t)` over the ``T`` steps of a fit: ``constant`` (1),
    ``cosine`` (:math:`\tfrac12(1+\cos \pi t/T)`), ``step`` (:math:`\gamma^{\lfloor e/s
    \rfloor}` at epoch ``e``, options ``step_size`` (epochs, default ``epochs // 3``) and
    ``gamma`` (default 0.1)).

    Example::

        >>> from pyrobayes.infer.fit import LRSchedule
        >>> [s.value for s in LRSchedule]
        ['constant', 'cosine', 'step']
        >>> LRSchedule.parse("linear", "lr_schedule")
        Traceback (most recent call last):
            ...
        ValueError: unknown lr_schedule 'linear'; valid: constant, cosine, step
    """

    CONSTANT = "constant"
    COSINE = "cosine"
    STEP = "step"


@dataclass
class History:
    """Per-epoch records: ``{"epoch", "loss" (negative ELBO per data point), "kl_weight",
    "seconds"}`` plus whatever callbacks add.

    Example::

        >>> from pyrobayes.infer.fit import History
        >>> h = History([{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.5}])
        >>> len(h), h[-1]["epoch"], h.losses, h.stopped_early
        (2, 2, [3.0, 2.5], False)
    """

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
    callback wrote, e.g. a validation NLL).

    Example (patience 2: the second epoch in a row without a new best stops)::

        >>> from pyrobayes.infer.fit import EarlyStopping
        >>> stop = EarlyStopping(patience=2)
        >>> [stop({"loss": v}) for v in (3.0, 2.0, 2.5, 2.1)]
        [False, False, False, True]
        >>> EarlyStopping(monitor="val_nll")({"loss": 1.0})
        Traceback (most recent call last):
            ...
        KeyError: "EarlyStopping monitors 'val_nll', not in the epoch record ['loss']"
    """

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


def _kl_weight_at(kl_weight, epoch: int, epochs: int) -> float:
    w = kl_weight(epoch, epochs) if callable(kl_weight) else kl_weight
    if not (0 <= float(w) < math.inf):
        raise ValueError(f"KL weight must be finite and >= 0, got {w!r}")
    return float(w)


def _lr_factor_fn(
    schedule, options: Mapping[str, Any] | None, epochs: int, steps_per_epoch: int | None
) -> Callable[[int, int], float] | None:
    """``f(step, total_steps) -> factor`` for a schedule name or callable; ``None``: constant."""
    options = dict(options or {})
    if callable(schedule):
        if options:
            raise ValueError("lr_schedule_options only apply to a named schedule")
        return schedule
    kind = LRSchedule.parse(schedule, "lr_schedule", also=["a callable"])
    allowed = {"step_size", "gamma"} if kind is LRSchedule.STEP else set()
    if set(options) - allowed:
        raise ValueError(
            f"lr_schedule {kind.value!r} takes options {sorted(allowed)}, got {sorted(options)}"
        )
    if kind is LRSchedule.CONSTANT:
        return None
    if steps_per_epoch is None:
        raise ValueError("a learning-rate schedule needs a DataLoader with a length")
    if kind is LRSchedule.COSINE:
        return lambda t, total: 0.5 * (1 + math.cos(math.pi * min(t, total) / max(total, 1)))
    step_size = int(options.get("step_size", max(epochs // 3, 1)))
    gamma = float(options.get("gamma", 0.1))
    if step_size < 1 or not gamma > 0:
        raise ValueError(f"step schedule needs step_size >= 1 and gamma > 0, got {options}")
    return lambda t, total: gamma ** ((t // steps_per_epoch) // step_size)


def _diagnose(model, guide, xs, kw, y) -> str:
    """Name the first site (or parameter) whose value or log-density is not finite."""
    if getattr(guide, "flat_sites", None):  # a MOPED guide's flat tensors: name the site
        for site, (loc, raw) in guide.site_views(*guide.flat_storage()).items():
            if not (torch.isfinite(loc).all() and torch.isfinite(raw).all()):
                return f"guide parameter of site {site!r}"
    for name, value in pyro.get_param_store().items():
        if not torch.isfinite(value).all():
            return f"parameter {name!r}"
    for m in (guide, model):
        for name, value in m.named_parameters():
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


def _run_step(stepper, model, guide, xs, kw, y, *, epoch, step, validate) -> float:
    """One step; on a non-finite loss raise, naming the first non-finite site (every
    stepper skipped that update, so the state is the last finite one)."""
    cause = None
    try:
        with pyro.validation_enabled(validate), naming_input_shapes(model, xs):
            value = stepper.step(*xs, y=y, **kw)
    except ValueError as exc:
        # Pyro's argument validation is how a NaN parameter usually surfaces.
        if "invalid values" not in str(exc):
            raise
        value, cause = math.nan, exc
    if math.isfinite(value):
        return value
    raise FloatingPointError(
        f"ELBO loss became {value} at epoch {epoch}, step {step}: first non-finite "
        f"{_diagnose(model, guide, xs, kw, y)}. The guide, model and optimiser keep their "
        "last finite state. Try a smaller learning rate, a smaller MOPED delta or a "
        "larger min_scale."
    ) from cause


@dataclass(frozen=True)
class FitConfig:
    """Every option of :func:`fit` (``fit(model, guide, data, config=cfg)`` or the same
    names as keywords; keywords given with a config override its fields).

    Attributes:
        epochs, batch_size, lr: loop length, batch size for tensor data, Adam step size.
        optim: a Pyro optimiser (then Pyro's ELBO with ``SVI.step``'s update; a
            ``pyro.optim.PyroLRScheduler`` is stepped once per epoch), or a callable that
            builds a ``torch.optim.Optimizer`` from a parameter list, used as given over
            the guide's and model's parameters. ``None`` (default):
            ``default_optimiser``, ``Adam(lr)`` over all
            parameters at once as one fused kernel (a MOPED guide's locs and scales
            are two flat tensors, so that is one update over two tensors).
        loss: ``"trace_elbo"`` (Monte Carlo KL) or ``"meanfield"`` (analytic KL where known).
        num_particles, vectorize_particles: ELBO samples per step.
        kl_weight: :math:`\\beta`, a number or ``f(epoch, epochs) -> float`` (annealing).
        lr_schedule: learning rate :math:`\\eta_t = \\eta_0 f(t, T)` over the ``T`` steps
            of the whole fit (:class:`LRSchedule`: ``"constant"``, ``"cosine"``, ``"step"``)
            or a callable ``f(step, total_steps) -> factor``; torch optimisers only.
        lr_schedule_options: ``{"step_size": epochs, "gamma": factor}`` for ``"step"``.
        callbacks: called with each epoch's record (they may add keys); returning ``True``
            stops training (see :class:`EarlyStopping`).
        checkpoint: JSON file (plus ``<checkpoint>.safetensors``) written atomically after
            every epoch; with ``resume=True`` and an existing file, training continues from
            it (at most one epoch is lost), also into a model converted under another name.
        shuffle: reshuffle tensor data every epoch.
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
        progress: show progress (a tqdm bar in terminals, a few plain lines in logs).
        data_size: the data set size ``N`` of the likelihood plate (each batch of ``B``
            points counts ``N/B`` times). ``None``: what one epoch visits, i.e. the
            tensors' length, or for a ``DataLoader`` ``len(sampler)`` (a
            ``SubsetRandomSampler`` over 100 rows: 100; with ``drop_last`` in a fixed order
            the tail it never visits is left out); under torch.distributed the length of
            the whole dataset. Required where that cannot be known before the first step
            (an ``IterableDataset``, a custom ``batch_sampler``), unless the likelihood
            has its own ``dataset_size``.
        train_mode: ``True``: the net in train mode during the fit (dropout active,
            BatchNorm normalising by the batch and updating its running statistics);
            ``False``: in eval mode throughout (dropout off, BatchNorm statistics frozen).
            Either way each module's own mode, as the user left it, is restored when
            ``fit`` returns or raises.

    Example (string options are checked when the config is built)::

        >>> import dataclasses
        >>> from pyrobayes.infer import FitConfig
        >>> cfg = FitConfig(epochs=5, lr=0.01, progress=False)
        >>> dataclasses.replace(cfg, epochs=2).epochs, cfg.batch_size
        (2, 64)
        >>> FitConfig(loss="elbo")
        Traceback (most recent call last):
            ...
        ValueError: unknown loss 'elbo'; valid: trace_elbo, meanfield
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optim: Any = None
    loss: str | LossKind = "trace_elbo"
    num_particles: int = 1
    vectorize_particles: bool = False
    kl_weight: float | Callable[[int, int], float] = 1.0
    lr_schedule: str | LRSchedule | Callable[[int, int], float] = "constant"
    lr_schedule_options: Mapping[str, Any] | None = None
    callbacks: Sequence[Callable[[dict[str, Any]], bool | None]] = ()
    checkpoint: str | os.PathLike | None = None
    resume: bool = False
    shuffle: bool = True
    seed: int | None = 0
    device: torch.device | str | None = None
    validate: bool = False
    fused: bool | None = None
    local_reparam: bool = False
    progress: bool = True
    data_size: int | None = None
    train_mode: bool = True

    def __post_init__(self):
        n = self.data_size
        if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
            raise ValueError(f"data_size must be a positive integer, got {n!r}")
        if not isinstance(self.train_mode, bool):
            raise TypeError(f"train_mode must be True or False, got {self.train_mode!r}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles}")
        LossKind.parse(self.loss, "loss")
        object.__setattr__(self, "callbacks", tuple(self.callbacks))


def _config(config: FitConfig | None, options: dict[str, Any]) -> FitConfig:
    valid = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(f"fit() got unknown option(s) {unknown}; valid: {sorted(valid)}")
    return dataclasses.replace(config, **options) if config is not None else FitConfig(**options)


def _train_epoch(loader, stepper, model, guide, cfg: FitConfig, epoch: int, lr, beta) -> dict:
    """One pass over ``loader``; ``lr``: ``(factor fn or None, steps per epoch, total
    steps)`` of the learning-rate schedule; ``beta``: the KL weight. The epoch's record."""
    lr_factor, steps_per_epoch, total_steps = lr
    total, seen, steps, t0 = 0.0, 0, 0, time.perf_counter()
    prevalidated = isinstance(loader, TensorBatches)  # checked once in make_loader
    for step, batch in enumerate(loader):
        xs, kw, y = split_batch(batch, cfg.device)
        if not prevalidated:
            check_batch(xs, kw, y, epoch, step)
        if lr_factor is not None:
            stepper.lr_factor = float(lr_factor(epoch * steps_per_epoch + step, total_steps))
        total += _run_step(
            stepper, model, guide, xs, kw, y, epoch=epoch, step=step, validate=cfg.validate
        )
        seen += len(y)
        steps += 1
    if steps == 0:
        raise ValueError(f"the DataLoader yielded no batches in epoch {epoch}")
    # each step's loss is a full-data estimate: average the steps, per point
    record = {
        "epoch": epoch + 1,
        "loss": total / steps / (cfg.data_size or seen),
        "kl_weight": beta,
        "seconds": time.perf_counter() - t0,
    }
    if lr_factor is not None:
        record["lr_factor"] = stepper.lr_factor
    return record


def fit(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: DataLoader | Sequence[torch.Tensor],
    config: FitConfig | None = None,
    **options: Any,
) -> History:
    """Fit ``guide`` to the posterior of ``model`` by stochastic variational inference.

    Args:
        model, guide: a :class:`~pyrobayes.bayesian_model.BayesianModel` and its guide.
        data: ``(inputs..., targets)`` tensors (batched here) or a ``DataLoader`` yielding
            such tuples or dicts with a ``labels`` key (every entry a tensor: each one but
            the labels is passed to the model). The data set size ``N`` sets the
            likelihood plate inside the loop only (:func:`pyrobayes.likelihoods.data_size`),
            so each minibatch ELBO is unbiased for the full data and the model is left
            unchanged for NUTS, ``Predictive`` or tracing afterwards.
        config: a :class:`FitConfig`; ``**options``: its fields as keywords (``epochs=``,
            ``lr=``, ``lr_schedule=``, ``checkpoint=``, ...; they override ``config``).

    ``N`` is the number of points one epoch visits: the tensors' length, or
    ``len(sampler)`` of a ``DataLoader`` (a ``SubsetRandomSampler`` over 100 of 1000 rows
    gives 100, not 1000; in a fixed order ``drop_last`` leaves the unvisited tail out). Where
    it cannot be known before the first step (an ``IterableDataset``, a custom
    ``batch_sampler``) pass ``data_size=N``; ``data_size=`` also overrides it anywhere.

    The net trains in train mode (``train_mode=True``: dropout on, BatchNorm batch
    statistics, its running statistics updated) or, with ``train_mode=False``, in eval mode
    throughout (dropout off, BatchNorm running statistics frozen and used). Either way every
    module is back in the mode it had when ``fit`` was called once it returns or raises: a
    net the user put in ``eval()`` is in ``eval()`` afterwards.

    A checkpoint records the data it was written for (``N``, shapes, dtypes, a hash of
    tensor data; of another dataset its length and the shapes per point):
    ``resume=True`` on other data raises, naming what differs.

    Under ``torchrun`` (or any initialised ``torch.distributed`` group; ``fit`` initialises
    one from torchrun's environment variables itself) every rank passes the same full
    data; each trains on its ``DistributedSampler`` shard with the likelihood scaled by
    the global ``N``, the KL counted once per rank's full-data estimate, and gradients and
    loss averaged across ranks (:mod:`pyrobayes.distributed`), so a step equals the
    single-process step on the union batch up to the Monte-Carlo draws, which are
    independent per rank (seeded by ``(seed, rank, epoch)``). Only rank 0 writes the
    checkpoint and shows progress; every rank returns the same history. Resume works with
    any number of ranks (the checkpoint holds no per-rank state): with the same number it
    reproduces the uninterrupted run, with another it continues from the same parameters
    and optimiser state with the new ranks' shards and draws.

    Raises:
        ValueError: bad options; NaN/inf in a batch (naming epoch, batch and input) before
            any update; a loader with no batches; an ``N`` that cannot be known without
            ``data_size=``; inputs whose feature or channel count does not fit the first
            layer (naming both shapes); a checkpoint that does not fit the model or was
            written for other data.
        TypeError: a batch entry that is not a tensor (e.g. a tokenizer's ``text`` list),
            naming it.
        FloatingPointError: the loss became NaN/inf; the message names epoch, step and
            site, and the guide, model and optimiser are left at their last finite state.

    Example (Bayesian linear regression on ``y = 2x + 1``: the posterior centres on the
    true weights)::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian, fit
        >>> from pyrobayes.infer import EarlyStopping
        >>> _ = torch.manual_seed(0)
        >>> model, guide = to_bayesian(torch.nn.Linear(1, 1), likelihood=Gaussian(0.1))
        >>> x = torch.randn(64, 1); y = 2 * x[:, 0] + 1
        >>> history = fit(model, guide, (x, y), epochs=150, lr=0.05, progress=False)
        >>> history.losses[-1] < history.losses[0]
        True
        >>> {k.split(".")[-1]: round(v.item(), 1) for k, v in guide.median().items()}
        {'weight': 2.0, 'bias': 1.0}
        >>> stop = EarlyStopping(patience=3)
        >>> history = fit(model, guide, (x, y), epochs=100, callbacks=[stop], progress=False)
        >>> history.stopped_early, len(history) < 100
        (True, True)
    """
    cfg = _config(config, options)
    modes = [(m, m.training) for m in model.modules()]
    try:
        return _fit(model, guide, data, cfg)
    finally:
        # each module's own mode back (not model.train(mode): a user may keep parts in eval)
        for m, training in modes:
            m.training = training


def _fit(model, guide, data, cfg: FitConfig) -> History:
    """:func:`fit` after its options are read (which restores the modules' modes)."""
    if cfg.device is None:
        device = next((t.device for t in model.buffers()), torch.device("cpu"))
        cfg = dataclasses.replace(cfg, device=device)
    distributed = dist_.maybe_init(cfg.device)
    if cfg.seed is not None:
        pyro.set_rng_seed(cfg.seed)
    base_seed = _base_seed(cfg.seed, cfg.device) if distributed else None
    loader = shard(data, make_loader(data, cfg.batch_size, cfg.shuffle, cfg.seed), cfg)
    # N: the points one epoch visits (the global N under torch.distributed)
    cfg = dataclasses.replace(
        cfg, data_size=epoch_data_size(loader, cfg.data_size, model, distributed)
    )
    steps = len_or_none(loader)
    lr_factor = _lr_factor_fn(cfg.lr_schedule, cfg.lr_schedule_options, cfg.epochs, steps)
    lr = (lr_factor, steps, cfg.epochs * (steps or 0))
    model.train(cfg.train_mode)
    weight = {"beta": 1.0}
    stepper = checked_stepper(model, guide, cfg, weight, distributed, lr_factor)
    history, start = History(), 0
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    fingerprint = loader_fingerprint(loader, cfg.data_size) if ckpt is not None else None
    if ckpt is not None and cfg.resume and ckpt.exists():
        start = resume_fit(ckpt, model, guide, stepper, loader, cfg.device, history, fingerprint)
    main = dist_.is_main()  # only rank 0 shows progress and writes checkpoints
    bar = progress_bar(
        range(start, cfg.epochs), enabled=cfg.progress and main, desc="SVI", unit="epoch"
    )
    try:
        with data_size(cfg.data_size):
            for epoch in bar:
                weight["beta"] = _kl_weight_at(cfg.kl_weight, epoch, cfg.epochs)
                if distributed:
                    _distributed_epoch(loader, base_seed, epoch)
                record = _train_epoch(loader, stepper, model, guide, cfg, epoch, lr, weight["beta"])
                if isinstance(cfg.optim, pyro.optim.PyroLRScheduler):
                    cfg.optim.step()
                stop = _end_epoch(record, cfg, distributed)
                history.records.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}")
                if ckpt is not None and main:
                    save_fit(ckpt, epoch + 1, model, guide, stepper, loader, history, fingerprint)
                if stop:
                    history.stopped_early = True
                    break
    finally:
        bar.close()
    return history


def _end_epoch(record: dict, cfg: FitConfig, distributed: bool) -> bool:
    """Run the callbacks on the epoch's record; whether to stop (all ranks together)."""
    stop = False
    for cb in cfg.callbacks:
        stop = bool(cb(record)) or stop
    if distributed:
        record["world_size"] = dist_.world_size()
        stop = dist_.any_rank(stop, cfg.device)
    return stop


def _base_seed(seed: int | None, device) -> int:
    """The seed every rank derives its own streams from: ``seed``, or rank 0's initial
    torch seed when ``seed=None`` (ranks started alike would otherwise draw alike)."""
    if seed is not None:
        return int(seed)
    t = torch.tensor([torch.initial_seed() & 0x7FFFFFFFFFFFFFFF], device=device)
    dist_.broadcast_tensors([t])
    return int(t)


def _distributed_epoch(loader: DataLoader, base_seed: int, epoch: int) -> None:
    """Per epoch on each rank: the shard order of ``DistributedSampler(seed, epoch)`` and
    Monte-Carlo draws seeded by ``(seed, rank, epoch)``. Independent draws per rank make
    the averaged gradient a ``K``-draw estimate (lower variance); seeding by epoch makes a
    resumed run independent of the RNG state of the rank that wrote the checkpoint."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    pyro.set_rng_seed(dist_.rank_seed(base_seed, dist_.rank(), epoch))
