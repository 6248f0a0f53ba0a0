"""Data-parallel training on PyTorch's own distributed engine (``torch.distributed``).

:func:`pyrobayes.fit` and :func:`pyrobayes.pfn.train_pfn` run unchanged under
``torchrun --nproc_per_node=K script.py``: when a process group is initialised (by the
user, or here from torchrun's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` variables, backend
``nccl`` for a CUDA model and ``gloo`` otherwise) each of the ``K`` ranks trains on its
shard of every global batch and the gradients are averaged across ranks.

Why averaging gives the single-process step. On rank ``r`` with local batch ``B_r``
(``|B_r| = b`` on every rank: ``DistributedSampler`` pads to equal shards) the ELBO
estimate is the *full-data* one, prior/KL once and the likelihood scaled by the **global**
``N``:

.. math::

    \\hat{\\mathcal L}_r = \\frac{N}{b}\\sum_{i\\in B_r}\\log p(y_i\\mid w_r)
        + \\beta\\,[\\log p(w_r) - \\log q(w_r)],

so the mean over ranks, :math:`\\frac1K\\sum_r \\hat{\\mathcal L}_r`, is the estimate
for the union batch of ``Kb`` points (likelihood scaled by ``N/(Kb)``) with the KL term
counted once, averaged over ``K`` independent draws :math:`w_r`; its gradient is the
average of the ranks' gradients (one flat all-reduce, :func:`all_reduce_grads`).

Example (a process group of one, so it runs anywhere)::

    >>> import torch, torch.distributed as dist
    >>> from pyrobayes import distributed as D
    >>> dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    >>> p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.full((3,), 2.0)
    >>> D.all_reduce_grads([p], loss=1.5)
    1.5
    >>> p.grad
    tensor([2., 2., 2.])
    >>> D.world_size(), D.rank(), D.is_main()
    (1, 0, True)
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
)

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "local_device",
    "maybe_init",
    "all_reduce_grads",
    "all_reduce_mean",
    "any_rank",
    "broadcast_tensors",
    "shard_loader",
    "rank_seed",
    "GradSync",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR")


def is_distributed() -> bool:
    """A process group of more than one rank is running.

    Example::

        >>> from pyrobayes import distributed as D
        >>> D.is_distributed()  # a plain process: no group
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default process group (0 without a group).

    Example::

        >>> from pyrobayes import distributed as D
        >>> D.rank()
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks in the default process group (1 without a group).

    Example::

        >>> from pyrobayes import distributed as D
        >>> D.world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the rank that writes checkpoints, history and bars.

    Example::

        >>> from pyrobayes import distributed as D
        >>> D.is_main()
        True
    """
    return rank() == 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (torchrun sets ``LOCAL_RANK``), else CPU:
    where a script run under torchrun should put its model.

    Example::

        >>> import torch
        >>> from pyrobayes import distributed as D
        >>> D.local_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
        True
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def maybe_init(device: torch.device | str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables when
    they are set and no group exists yet (``nccl`` for a CUDA ``device``, else ``gloo``).
    Returns whether a group of more than one rank is running afterwards.

    Example (no torchrun variables set, so nothing is initialised)::

        >>> import os
        >>> from pyrobayes import distributed as D
        >>> saved = {v: os.environ.pop(v) for v in ("RANK", "WORLD_SIZE") if v in os.environ}
        >>> D.maybe_init("cpu"), D.world_size()
        (False, 1)
        >>> os.environ.update(saved)
    """
    if not dist.is_available():
        return False
    if not dist.is_initialized() and all(v in os.environ for v in _TORCHRUN_VARS):
        if int(os.environ["WORLD_SIZE"]) > 1:
            dev = torch.device(device) if device is not None else torch.device("cpu")
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev.index if dev.index is not None else local_device())
            dist.init_process_group(backend)
    return is_distributed()


def rank_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed (NumPy's limit, which ``pyro.set_rng_seed`` also seeds) from ``seed`` and integer keys (rank, step, epoch): distinct keys give
    unrelated streams (a splitmix64 hash, not ``seed + rank``, which would make rank 1 of
    seed 0 replay rank 0 of seed 1).

    Example::

        >>> from pyrobayes import distributed as D
        >>> D.rank_seed(0, 1), D.rank_seed(1, 0)  # seed + rank would give 1 twice
        (2298633409, 2898558517)
        >>> D.rank_seed(0, 0, 1) < 2**32
        True
    """
    x = seed & 0xFFFFFFFFFFFFFFFF
    for k in keys:
        x = (x ^ (k + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0xFFFFFFFF


def all_reduce_grads(params: Sequence[torch.Tensor], loss: float | None = None) -> float | None:
    """Average the gradients of ``params`` over all ranks with ONE all-reduce of a flat
    buffer (a missing gradient counts as zero); the loss rides along in the same buffer
    and its mean is returned, so every rank takes the same skip-or-step decision.

    Payload per call: ``(sum of numel + 1) * itemsize`` bytes (see :func:`payload_bytes`).

    Example (no group: the gradients stay, a missing one becomes zeros)::

        >>> import torch
        >>> from pyrobayes import distributed as D
        >>> a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
        >>> a.grad = torch.tensor([3.0, -1.0])
        >>> D.all_reduce_grads([a, b], loss=0.25)
        0.25
        >>> a.grad, b.grad
        (tensor([ 3., -1.]), tensor([0.]))
    """
    k = world_size()
    if not params:
        return loss
    ref = params[0]
    dtype = torch.promote_types(ref.dtype, torch.float32)
    grads = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
        for p in params
    ]
    extra = [torch.tensor([0.0 if loss is None else loss], dtype=dtype, device=ref.device)]
    flat = torch.cat(grads + extra)
    if k > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= k
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset : offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n
    return None if loss is None else float(flat[-1])


def payload_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes :func:`all_reduce_grads` hands to one all-reduce for ``params``."""
    params = list(params)
    if not params:
        return 0
    dtype = torch.promote_types(params[0].dtype, torch.float32)
    return (sum(p.numel() for p in params) + 1) * torch.empty((), dtype=dtype).element_size()


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of a number over all ranks (the number itself without a group).

    Example::

        >>> from pyrobayes import distributed as D
        >>> D.all_reduce_mean(2.5)
        2.5
    """
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world_size()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when it is true on at least one (a consistent stop decision).

    Example::

        >>> from pyrobayes import distributed as D
        >>> D.any_rank(True), D.any_rank(False)
        (True, False)
    """
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (in place, without autograd) with rank ``src``'s values.

    Example (no group: this rank is the source, nothing changes)::

        >>> import torch
        >>> from pyrobayes import distributed as D
        >>> t = torch.tensor([1.0, 2.0])
        >>> D.broadcast_tensors([t])
        >>> t
        tensor([1., 2.])
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def shard_loader(
    data, batch_size: int, shuffle: bool, seed: int | None, make_dataset
) -> DataLoader:
    """A loader over this rank's shard of ``data`` (tuple of tensors or a map-style
    ``DataLoader``), through a ``DistributedSampler`` (equal shards; the last one padded
    with repeats, so every rank takes the same number of steps). A user ``DataLoader`` is
    rebuilt around its dataset keeping ``batch_size``, ``collate_fn``, workers, pinning
    and ``drop_last``; it shuffles when the original used a ``RandomSampler``.

    Example (one rank holds the whole data set, in order without shuffling)::

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from pyrobayes import distributed as D
        >>> loader = D.shard_loader((torch.arange(10.0),), batch_size=4, shuffle=False,
        ...                         seed=0, make_dataset=lambda d: TensorDataset(*d))
        >>> [batch[0].tolist() for batch in loader]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
    """
    sampler_seed = 0 if seed is None else int(seed)
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise ValueError(
                "fit cannot shard an IterableDataset across ranks under torch.distributed: "
                "pass a map-style dataset (with __len__/__getitem__), or shard the stream "
                "yourself and call fit on each rank's part with dataset_size set on the likelihood"
            )
        if data.batch_size is None:
            raise ValueError(
                "fit cannot shard a DataLoader built with a custom batch_sampler under "
                "torch.distributed; pass batch_size= and a sampler-free DataLoader"
            )
        sampler = DistributedSampler(
            data.dataset,
            num_replicas=world_size(),
            rank=rank(),
            shuffle=isinstance(data.sampler, RandomSampler),
            seed=sampler_seed,
        )
        return DataLoader(
            data.dataset,
            batch_size=data.batch_size,
            sampler=sampler,
            collate_fn=data.collate_fn,
            num_workers=data.num_workers,
            pin_memory=data.pin_memory,
            drop_last=data.drop_last,
            worker_init_fn=data.worker_init_fn,
            persistent_workers=data.persistent_workers if data.num_workers > 0 else False,
        )
    dataset = make_dataset(data)
    sampler = DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=sampler_seed
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


class GradSync:
    """The hook the torch steppers call: broadcast the freshly built parameters from rank
    0, then average gradients (and the loss) across ranks before every update.

    Example (one process: the payload is counted, gradients and loss pass through)::

        >>> import torch
        >>> from pyrobayes.distributed import GradSync
        >>> p = torch.nn.Parameter(torch.zeros(3)); p.grad = torch.ones(3)
        >>> sync = GradSync()
        >>> sync.after_build([p], [])
        >>> sync.bytes_per_step  # (3 gradients + 1 loss) * 4 bytes
        16
        >>> sync.reduce([p], 0.5), p.grad
        (0.5, tensor([1., 1., 1.]))
    """

    def __init__(self) -> None:
        self.bytes_per_step = 0

    def after_build(self, params: Sequence[torch.Tensor], modules: Sequence[torch.nn.Module]):
        tensors = {id(p): p for p in params}
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.is_floating_point():
                    tensors.setdefault(id(t), t)
        broadcast_tensors(tensors.values())
        self.bytes_per_step = payload_bytes(params)

    def reduce(self, params: Sequence[torch.Tensor], loss: float) -> float:
        out = all_reduce_grads(params, loss if math.isfinite(loss) else math.nan)
        return float(out)


def warn_once(msg: str) -> None:
    if is_main():
        warnings.warn(msg, stacklevel=3)
