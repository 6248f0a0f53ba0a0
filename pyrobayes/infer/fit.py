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
    >>> from pyrobayes.infer import FitConfig
    >>> cfg = FitConfig(epochs=3, batch_size=32, lr_schedule="cosine", progress=False)
    >>> len(fit(model, guide, (x, y), cfg, epochs=1))   # keywords override the config
    1
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
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
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from pyrobayes import distributed as dist_
from pyrobayes.convert import is_converted
from pyrobayes.guides.local_reparam import LocalReparameterization
from pyrobayes.infer.fast_elbo import supports_fused
from pyrobayes.infer.fit_checkpoint import (
    CHECKPOINT_FORMAT,
    check_data_fingerprint,
    check_state_dict,
    data_fingerprint,
    load_fit_checkpoint,
    rename_prefix,
    save_fit_checkpoint,
)
from pyrobayes.infer.predictive import check_guide
from pyrobayes.infer.steppers import FusedStepper, SVIStepper, TorchStepper
from pyrobayes.infer.twin import check_input_features
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


class LossKind(Option):
    """The ELBO :func:`fit` optimises: ``"trace_elbo"`` (Monte Carlo KL) or
    ``"meanfield"`` (analytic KL where known).

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
    """The loader of a fit (validated, unsharded; :func:`_shard` shards it)."""
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
        return _TensorBatches(TensorDataset(*data), batch_size, shuffle, gen)
    raise TypeError("data must be a tuple of tensors (inputs..., targets) or a torch DataLoader")


class _TensorBatches:
    """Minibatches of in-memory tensors by indexing, in exactly the order (and with exactly
    the random draws) of ``DataLoader(TensorDataset(*tensors), batch_size, shuffle,
    generator=generator)``, without its per-example ``__getitem__`` and ``torch.stack``
    collation (a large share of an epoch of a small network).

    Per pass, as ``DataLoader`` does: one ``int64`` draw for the (unused) worker base seed
    when the pass starts, then at the first batch a ``randperm`` from ``generator`` (or,
    with ``generator=None``, from a fresh generator seeded by a draw from the global RNG),
    and one more ``randperm`` once the pass is exhausted (``RandomSampler``'s trailing
    partial permutation, empty here).
    The data were validated up front (:func:`_make_loader`), so batches need no check."""

    def __init__(self, dataset: TensorDataset, batch_size: int, shuffle: bool, generator):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.generator = generator
        self.sampler = None  # no set_epoch: the unsharded order is the generator's

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # base seed
        return self._batches()

    def _batches(self):
        tensors, n, bs = self.dataset.tensors, len(self.dataset), self.batch_size
        if not self.shuffle:
            for start in range(0, n, bs):
                yield tuple(t[start : start + bs] for t in tensors)
            return
        gen = self.generator
        if gen is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen)
        for idx in order.split(bs):
            yield tuple(t[idx] for t in tensors)
        # RandomSampler draws one more (empty) permutation when it is exhausted
        torch.randperm(n, generator=gen)


def _shard(data, loader: DataLoader, cfg: FitConfig) -> DataLoader:
    """Under torch.distributed, this rank's shard of the data (a ``DistributedSampler``)."""
    if not dist_.is_distributed():
        return loader
    sampler = getattr(data, "sampler", None)
    if isinstance(data, DataLoader) and type(sampler) not in (SequentialSampler, RandomSampler):
        if not isinstance(data.dataset, IterableDataset) and data.batch_size is not None:
            # a subset or weighted sampler would be dropped silently, and N with it
            raise ValueError(
                f"under torch.distributed fit shards the DataLoader's whole dataset with a "
                f"DistributedSampler, which would replace its {type(sampler).__name__}: pass "
                "the points to train on as the dataset (torch.utils.data.Subset(dataset, "
                "indices)) with shuffle=True or False instead of a sampler"
            )
    source = data if isinstance(data, DataLoader) else loader.dataset.tensors
    return dist_.shard_loader(
        source, cfg.batch_size, cfg.shuffle, cfg.seed, lambda d: TensorDataset(*d)
    )


def _data_size(loader, explicit: int | None, model, distributed: bool) -> int:
    """``N`` of the likelihood plate: ``data_size=`` when given; else the tensors' length;
    under torch.distributed the size of the whole data set, also on a rank that only sees
    its shard (its ``DistributedSampler`` draws from ``loader.dataset``, the global data);
    else the points one epoch of the user's ``DataLoader`` visits (:func:`_epoch_points`)."""
    if explicit is not None:
        return explicit
    if isinstance(loader, _TensorBatches) or distributed:
        n = len(loader.dataset)
    else:
        n = _epoch_points(loader)
    if n is None:
        fixed = getattr(getattr(model, "likelihood", None), "dataset_size", None)
        if fixed:
            return int(fixed)  # the user's own N on the likelihood: the plate takes it anyway
        raise ValueError(
            f"fit cannot know how many points one epoch of this DataLoader visits "
            f"({_unknown_size_reason(loader)}): pass data_size=N, the number of training "
            "points; N scales the likelihood of each batch by N/B, so a wrong N gives a "
            "too narrow or too wide posterior"
        )
    if n == 0:
        raise ValueError("data is empty")
    return n


def _epoch_points(loader: DataLoader) -> int | None:
    """The points one epoch draws, ``len(sampler)`` (not ``len(dataset)``: a
    ``SubsetRandomSampler`` visits a part); in a fixed order (``SequentialSampler``)
    ``drop_last`` never visits the tail, which is left out. A random order draws every
    batch from all ``len(sampler)`` points, so ``drop_last`` changes nothing there.
    ``None`` when it cannot be known before the first epoch."""
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        return None
    try:
        n = len(loader.sampler)
    except TypeError:
        return None
    if loader.drop_last and isinstance(loader.sampler, SequentialSampler):
        if 0 < n < loader.batch_size:
            raise ValueError(
                f"the DataLoader yielded no batches: drop_last=True with "
                f"batch_size={loader.batch_size} drops all {n} points"
            )
        n -= n % loader.batch_size
    return n


def _unknown_size_reason(loader: DataLoader) -> str:
    if isinstance(loader.dataset, IterableDataset):
        return "an IterableDataset"
    if loader.batch_sampler is not None and loader.batch_size is None:
        return "a custom batch_sampler"
    if loader.batch_size is None:
        return "automatic batching disabled (batch_size=None)"
    return f"its {type(loader.sampler).__name__} has no length"


def _split_batch(batch, device) -> tuple[tuple, dict, torch.Tensor]:
    """``(*inputs, y)`` tuples, or dicts with a ``labels``/``label`` key (Hugging Face)."""
    if isinstance(batch, Mapping):
        batch = dict(batch)
        key = "labels" if "labels" in batch else "label" if "label" in batch else None
        if key is None:
            raise ValueError(f"dict batches need a 'labels' key; got keys {sorted(batch)}")
        y = _on_device(f"dict batch field {key!r}", batch.pop(key), device)
        kw = {k: _on_device(f"dict batch field {k!r}", v, device) for k, v in batch.items()}
        return (), kw, y
    *xs, y = batch
    xs = tuple(_on_device(f"batch input {i}", x, device) for i, x in enumerate(xs))
    return xs, {}, _on_device("batch targets", y, device)


def _on_device(name: str, value, device) -> torch.Tensor:
    """A batch entry on ``device``. Every entry but the labels reaches the model as an
    input, and a non-tensor (a tokenizer's ``text`` list) would fail deep inside the net or
    the NaN check: refuse it here, by name."""
    if not torch.is_tensor(value):
        raise TypeError(
            f"{name} is a {type(value).__name__}, not a tensor: fit passes every batch entry "
            "but the labels to the model as an input; remove it from the batch (e.g. "
            "dataset.remove_columns([...]) or a collate_fn that drops it)"
        )
    return value.to(device)


@contextlib.contextmanager
def _naming_input_shapes(model, xs: tuple):
    """A wrong feature/channel count fails in torch as ``mat1 and mat2 shapes cannot be
    multiplied``; turn it into the predictive's error naming both shapes. Checked only
    after a failure, so a working step pays nothing."""
    try:
        yield
    except RuntimeError as exc:
        if any(is_converted(m) for m in model.modules()):
            try:
                check_input_features(model, *xs)
            except ValueError as clear:
                raise clear from exc
        raise


def _check_batch(xs: tuple, kw: dict, y: torch.Tensor, epoch: int, step: int) -> None:
    """NaN/inf in a batch would turn every parameter NaN in one step: refuse it first."""
    named = [(f"input {i}", x) for i, x in enumerate(xs)]
    named += [(f"input {k!r}", v) for k, v in kw.items()] + [("targets", y)]
    for name, t in named:
        try:
            _check_finite(name, t)
        except ValueError as exc:
            raise ValueError(
                f"epoch {epoch}, batch {step}: {exc}; the guide was not updated with it"
            ) from None


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


def _snapshot(model, guide, stepper) -> dict:
    """A copy of everything a step changes (for the Pyro-SVI path, which updates inside
    ``svi.step`` and cannot skip a non-finite update the way the torch steppers do)."""
    return {
        "model": copy.deepcopy(model.state_dict()),
        "guide": copy.deepcopy(guide.state_dict()),
        "optim": copy.deepcopy(stepper.get_state()),
    }


def _restore(model, guide, stepper, snap: dict | None) -> None:
    if snap is None:
        return
    model.load_state_dict(snap["model"])
    # a guide whose parameters the failing (first) step created has no finite state to keep
    guide.load_state_dict(snap["guide"], strict=bool(snap["guide"]))
    stepper.set_state(snap["optim"])


def _pyro_name(model) -> str | None:
    return getattr(model, "_pyro_name", None)


def _ensure_guide_params(model, guide, loader, device) -> None:
    """The guide's parameters must exist before saved values can be loaded into them."""
    first = next(iter(loader), None)
    if first is None:
        raise ValueError("the DataLoader yields no batches; nothing to resume with")
    xs, kw, y = _split_batch(first, device)
    with _naming_input_shapes(model, xs):
        if hasattr(guide, "setup"):
            guide.setup(*xs, y=y, **kw)
        else:
            guide(*xs, y=y, **kw)


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


def _fingerprint(loader, n: int) -> dict:
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
    fields = _batch_fields(*_split_batch(batch, "cpu"))
    return data_fingerprint(n, fields, whole=False, dataset_length=length)


def _resume(
    path: Path, model, guide, stepper, loader, device, history: History, fingerprint: dict
) -> int:
    """Load a checkpoint into ``model``, ``guide``, the optimiser and the RNGs; the epoch."""
    state = load_fit_checkpoint(path)
    check_data_fingerprint(path, state.get("data"), fingerprint)
    _ensure_guide_params(model, guide, loader, device)
    saved_name, name = state.get("pyro_name"), _pyro_name(model)
    hint = ""
    if saved_name and name and saved_name != name:
        # the same architecture converted under another auto-generated name: map the names
        state["model"] = rename_prefix(state["model"], saved_name, name)
        state["guide"] = rename_prefix(state["guide"], saved_name, name)
        hint = f" (checkpoint model {saved_name!r} mapped onto {name!r})"
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


def _save(
    path: Path, epoch: int, model, guide, stepper, loader, history: History, fingerprint: dict
) -> None:
    gen = loader.generator if isinstance(loader.generator, torch.Generator) else None
    save_fit_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "pyro_name": _pyro_name(model),
            "data": fingerprint,
            "model": model.state_dict(),
            "guide": guide.state_dict(),
            "optim": stepper.get_state(),
            "history": history.records,
            "rng": torch.get_rng_state(),
            "loader_rng": gen.get_state() if gen is not None else None,
        },
    )


def _make_stepper(model, guide, cfg: FitConfig, weight: dict):
    loss_kind, optim, num_particles = LossKind(cfg.loss), cfg.optim, cfg.num_particles
    elbo_cls = Trace_ELBO if loss_kind is LossKind.TRACE_ELBO else TraceMeanField_ELBO
    elbo = elbo_cls(num_particles=num_particles, vectorize_particles=cfg.vectorize_particles)

    def scaled_model(*a, **k):
        with _ScaleLatents(weight["beta"]):
            return model(*a, **k)

    def scaled_guide(*a, **k):
        with _ScaleLatents(weight["beta"]):
            return guide(*a, **k)

    # foreach: one fused update over all tensors (torch only picks it by default on GPUs)
    make_optim = optim or functools.partial(torch.optim.Adam, lr=cfg.lr, foreach=True)
    is_pyro = isinstance(optim, pyro.optim.PyroOptim)
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
    if is_pyro:
        return SVIStepper(scaled_model, scaled_guide, elbo, optim)
    if can_fuse and cfg.fused is not False:
        # Pyro's traces take over where the fused ELBO is not this model's; fused=True refuses
        traced = functools.partial(TorchStepper, scaled_model, scaled_guide, model, guide, elbo)
        fallback = None if cfg.fused else functools.partial(traced, make_optim)
        stepper = FusedStepper(model, guide, make_optim, weight, fallback=fallback)
        stepper.fused.local_reparam = cfg.local_reparam
        return stepper
    return TorchStepper(scaled_model, scaled_guide, model, guide, elbo, make_optim)


@contextlib.contextmanager
def _closing(bar, stepper):
    """Close the progress bar and give a fused stepper's flat guide storage back (each site
    parameter its own storage again), whether the epochs end or raise."""
    try:
        yield
    finally:
        bar.close()
        if isinstance(stepper, FusedStepper):
            stepper.release()


def _run_step(stepper, model, guide, xs, kw, y, *, epoch, step, validate, lrt) -> float:
    """One step; on a non-finite loss restore the last finite state and raise."""
    snap = _snapshot(model, guide, stepper) if isinstance(stepper, SVIStepper) else None
    cause = None
    try:
        with pyro.validation_enabled(validate), lrt(), _naming_input_shapes(model, xs):
            value = stepper.step(*xs, y=y, **kw)
    except ValueError as exc:
        # Pyro's argument validation is how a NaN parameter usually surfaces.
        if "invalid values" not in str(exc):
            raise
        value, cause = math.nan, exc
    if math.isfinite(value):
        return value
    where = _diagnose(model, guide, xs, kw, y)
    _restore(model, guide, stepper, snap)  # torch steppers skipped the update themselves
    raise FloatingPointError(
        f"ELBO loss became {value} at epoch {epoch}, step {step}: first non-finite {where}. "
        "The guide, model and optimiser keep their last finite state. "
        "Try a smaller learning rate, a smaller MOPED delta or a larger min_scale."
    ) from cause


@dataclass(frozen=True)
class FitConfig:
    """Every option of :func:`fit` (``fit(model, guide, data, config=cfg)`` or the same
    names as keywords; keywords given with a config override its fields).

    Attributes:
        epochs, batch_size, lr: loop length, batch size for tensor data, Adam step size.
        optim: a Pyro optimiser (then Pyro's ``SVI`` runs the loop; a
            ``pyro.optim.PyroLRScheduler`` is stepped once per epoch), or a callable that
            builds a ``torch.optim.Optimizer`` from a parameter list (default: ``Adam(lr)``
            over all guide and model parameters at once: one fused update instead of
            Pyro's one optimiser per parameter, which dominates the step time of small nets).
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


def _checked_stepper(model, guide, cfg: FitConfig, weight: dict, distributed: bool, lr_factor):
    """The stepper for ``cfg``, with gradient sync under torch.distributed; checks options
    and that the guide is one for this model."""
    check_guide(model, guide)
    stepper = _make_stepper(model, guide, cfg, weight)
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


def _train_epoch(
    loader, stepper, model, guide, cfg: FitConfig, device, epoch: int, lr_factor, schedule, lrt
) -> tuple[float, int, int]:
    """One pass over ``loader``; ``schedule`` is (steps per epoch, total steps) for the LR factor.

    Returns (summed loss, examples seen, steps taken).
    """
    steps_per_epoch, total_steps = schedule
    total, seen, steps = 0.0, 0, 0
    prevalidated = isinstance(loader, _TensorBatches)  # checked once in _make_loader
    for step, batch in enumerate(loader):
        xs, kw, y = _split_batch(batch, device)
        if not prevalidated:
            _check_batch(xs, kw, y, epoch, step)
        if lr_factor is not None:
            stepper.lr_factor = float(lr_factor(epoch * steps_per_epoch + step, total_steps))
        total += _run_step(
            stepper, model, guide, xs, kw, y,
            epoch=epoch, step=step, validate=cfg.validate, lrt=lrt,
        )  # fmt: skip
        seen += len(y)
        steps += 1
    if steps == 0:
        raise ValueError(f"the DataLoader yielded no batches in epoch {epoch}")
    return total, seen, steps


def fit(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: DataLoader | Sequence[torch.Tensor],
    config: FitConfig | None = None,
    **options: Any,
) -> History:
    """Fit ``guide`` to the posterior of ``model`` by stochastic variational inference.

    Args:
        model, guide: a :class:`~pyrobayes.model.BayesianModel` and its guide.
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
    device = cfg.device
    if device is None:
        device = next((t.device for t in model.buffers()), torch.device("cpu"))
    distributed = dist_.maybe_init(device)
    if cfg.seed is not None:
        pyro.set_rng_seed(cfg.seed)
    base_seed = _base_seed(cfg.seed, device) if distributed else None
    loader = _shard(data, _make_loader(data, cfg.batch_size, cfg.shuffle, cfg.seed), cfg)
    n_data = _data_size(loader, cfg.data_size, model, distributed)
    steps_per_epoch = _len_or_none(loader)
    lr_factor = _lr_factor_fn(cfg.lr_schedule, cfg.lr_schedule_options, cfg.epochs, steps_per_epoch)
    model.train(cfg.train_mode)
    weight = {"beta": 1.0}
    stepper = _checked_stepper(model, guide, cfg, weight, distributed, lr_factor)
    # The fused step registers its own draws; Pyro's traced paths use the messenger.
    pyro_lrt = cfg.local_reparam and not isinstance(stepper, FusedStepper)

    def lrt():
        return LocalReparameterization() if pyro_lrt else contextlib.nullcontext()

    history, start_epoch = History(), 0
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    fingerprint = _fingerprint(loader, n_data) if ckpt is not None else None
    if ckpt is not None and cfg.resume and ckpt.exists():
        start_epoch = _resume(ckpt, model, guide, stepper, loader, device, history, fingerprint)

    epochs = cfg.epochs
    total_steps = epochs * (steps_per_epoch or 0)
    main = dist_.is_main()  # only rank 0 shows progress and writes checkpoints
    bar = progress_bar(
        range(start_epoch, epochs), enabled=cfg.progress and main, desc="SVI", unit="epoch"
    )
    # the global N on every rank; the bar closed, the guide released, also on an error
    with data_size(n_data), _closing(bar, stepper):
        for epoch in bar:
            weight["beta"] = _kl_weight_at(cfg.kl_weight, epoch, epochs)
            if distributed:
                _distributed_epoch(loader, base_seed, epoch)
            t0 = time.perf_counter()
            total, seen, steps = _train_epoch(
                loader,
                stepper,
                model,
                guide,
                cfg,
                device,
                epoch,
                lr_factor,
                (steps_per_epoch, total_steps),
                lrt,
            )
            if isinstance(cfg.optim, pyro.optim.PyroLRScheduler):
                cfg.optim.step()
            record = _epoch_record(epoch, total, steps, n_data or seen, weight, t0)
            if lr_factor is not None:
                record["lr_factor"] = stepper.lr_factor
            stop = False
            for cb in cfg.callbacks:
                stop = bool(cb(record)) or stop
            if distributed:
                record["world_size"] = dist_.world_size()
                stop = dist_.any_rank(stop, device)  # all ranks stop together
            history.records.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
            if ckpt is not None and main:
                _save(ckpt, epoch + 1, model, guide, stepper, loader, history, fingerprint)
            if stop:
                history.stopped_early = True
                break
    return history


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


def _epoch_record(epoch: int, total: float, steps: int, n: int, weight: dict, t0: float) -> dict:
    # SVI returns the full-data loss estimate per step; average the steps, per point.
    return {
        "epoch": epoch + 1,
        "loss": total / steps / n,
        "kl_weight": weight["beta"],
        "seconds": time.perf_counter() - t0,
    }


def _len_or_none(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
