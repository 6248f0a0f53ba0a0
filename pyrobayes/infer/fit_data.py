"""The data side of :func:`~pyrobayes.infer.fit`: the loader (tensors batched by indexing,
or the user's ``DataLoader``; sharded under ``torch.distributed``), the data-set size ``N``
of the likelihood plate, batch splitting and checks.

Example (tensor data are checked once and batched by indexing)::

    >>> import torch
    >>> from pyrobayes.infer.fit_data import make_loader, epoch_data_size
    >>> loader = make_loader((torch.randn(10, 2), torch.randn(10)), 4, shuffle=False, seed=0)
    >>> [len(y) for _, y in loader], epoch_data_size(loader, None, None, False)
    ([4, 4, 2], 10)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from pyrobayes import distributed as dist_
from pyrobayes.convert import is_converted
from pyrobayes.infer.twin import check_input_features

__all__ = ["make_loader", "epoch_data_size"]


def _check_finite(name: str, t: torch.Tensor) -> None:
    if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")


def make_loader(data, batch_size: int, shuffle: bool, seed: int | None) -> DataLoader:
    """The loader of a fit (validated, unsharded; :func:`shard` shards it): a user's
    ``DataLoader`` as given, tensors checked for NaN/inf once and batched by indexing
    (:class:`TensorBatches`).

    Example::

        >>> import torch
        >>> loader = make_loader((torch.randn(10, 2), torch.randn(10)), 4, False, seed=0)
        >>> [len(y) for _, y in loader]
        [4, 4, 2]
        >>> make_loader((torch.randn(3, 2), torch.tensor([0.0, float("nan"), 1.0])), 4, False, 0)
        Traceback (most recent call last):
            ...
        ValueError: targets contains 1 NaN/inf value(s)
    """
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
        return TensorBatches(TensorDataset(*data), batch_size, shuffle, gen)
    raise TypeError("data must be a tuple of tensors (inputs..., targets) or a torch DataLoader")


class TensorBatches:
    """Minibatches of in-memory tensors by indexing, in exactly the order (and with exactly
    the random draws) of ``DataLoader(TensorDataset(*tensors), batch_size, shuffle,
    generator=generator)``, without its per-example ``__getitem__`` and ``torch.stack``
    collation (a large share of an epoch of a small network).

    Per pass, as ``DataLoader`` does: one ``int64`` draw for the (unused) worker base seed
    when the pass starts, then at the first batch a ``randperm`` from ``generator`` (or,
    with ``generator=None``, from a fresh generator seeded by a draw from the global RNG),
    and one more ``randperm`` once the pass is exhausted (``RandomSampler``'s trailing
    partial permutation, empty here).
    The data were validated up front (:func:`make_loader`), so batches need no check."""

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


def shard(data, loader: DataLoader, cfg) -> DataLoader:
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


def epoch_data_size(loader, explicit: int | None, model, distributed: bool) -> int:
    """``N`` of the likelihood plate: ``data_size=`` when given; else the tensors' length;
    under torch.distributed the size of the whole data set, also on a rank that only sees
    its shard (its ``DistributedSampler`` draws from ``loader.dataset``, the global data);
    else the points one epoch of the user's ``DataLoader`` visits (:func:`_epoch_points`).

    Example (a sampler over 30 of 100 rows: one epoch visits 30 points)::

        >>> import torch
        >>> from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset
        >>> data = TensorDataset(torch.randn(100, 2), torch.randn(100))
        >>> loader = DataLoader(data, batch_size=8, sampler=SubsetRandomSampler(range(30)))
        >>> epoch_data_size(loader, None, None, False), epoch_data_size(loader, 7, None, False)
        (30, 7)
    """
    if explicit is not None:
        return explicit
    if isinstance(loader, TensorBatches) or distributed:
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


def split_batch(batch, device) -> tuple[tuple, dict, torch.Tensor]:
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
def naming_input_shapes(model, xs: tuple):
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


def check_batch(xs: tuple, kw: dict, y: torch.Tensor, epoch: int, step: int) -> None:
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


def len_or_none(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
