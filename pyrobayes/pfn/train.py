"""Training a PFN on a prior over datasets, and the ``pyrobayes pfn train`` command.

Each step draws ``batch_size`` datasets of ``seq_len`` points from the prior, one
random split ``n ~ U{min_train, ..., max_train}`` for the whole batch (the first ``n``
points are the training set, the rest are queries), and minimises the prior-data NLL

.. math::

    \\ell(\\phi) = \\mathbb{E}_{D \\sim p(D)}\\big[-\\log q_\\phi(y_* \\mid x_*, D_{1:n})\\big],

which equals the expected KL from the true PPD to :math:`q_\\phi` plus a constant
(Müller et al. 2022, Cor. 1.1). AdamW, linear warmup then cosine decay, gradient-norm
clipping, periodic checkpoints (weights + optimizer/RNG state) and exact resume.

Under ``torchrun`` (a ``torch.distributed`` group, initialised here from torchrun's
environment when none exists) the PFN is wrapped in ``DistributedDataParallel``: every
rank draws its own ``batch_size`` datasets per step (``batch_size`` is per rank; the
global batch is ``K * batch_size``) from seeds ``(seed, step, rank)``, the split ``n``
from ``(seed, step)`` (the same on every rank), DDP averages the gradients, the logged
loss is the mean over ranks and only rank 0 writes checkpoints. Seeding by step makes a
resumed run draw exactly what the uninterrupted one would have. ``precision="bf16"``
runs the forward pass under bf16 autocast on CUDA; ``compile=True`` runs it through
``torch.compile``.

Example::

    >>> from pyrobayes.pfn import GPPrior, TrainConfig, train_pfn
    >>> result = train_pfn(GPPrior(), TrainConfig(steps=5, batch_size=4, seq_len=20, max_train=10,
    ...                    d_model=16, n_layers=1, n_heads=2, d_ff=32, num_bars=20, progress=False))
    >>> ppd = result.model.predict([0.0], [1.0], [0.5])
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pyrobayes import distributed as dist_
from pyrobayes.device import check_device
from pyrobayes.models.tabular import logit_scale_prior_from, noise_prior_from
from pyrobayes.pfn.bar import borders_from_samples
from pyrobayes.pfn.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from pyrobayes.pfn.model import PFN, InputMode, PFNConfig, Task, standardise_split
from pyrobayes.pfn.priors import (
    BNNPrior,
    DatasetPrior,
    GPPrior,
    TabularBNNClassifierPrior,
    TabularBNNPrior,
    same_prior,
)

__all__ = ["TrainConfig", "TrainResult", "Precision", "train_pfn", "add_arguments", "run"]

logger = logging.getLogger(__name__)


SIZE_SAMPLING = ("uniform", "log_uniform")


class Precision(str, Enum):
    """Arithmetic of the forward pass: ``fp32``, or ``bf16`` autocast (CUDA only; the
    weights, optimiser state and loss reduction stay fp32).

    Example::

        >>> from pyrobayes.pfn.train import Precision, TrainConfig
        >>> Precision("bf16")
        <Precision.BF16: 'bf16'>
        >>> TrainConfig(precision="fp16")
        Traceback (most recent call last):
        ...
        ValueError: unknown precision 'fp16'; valid: fp32, bf16
    """

    FP32 = "fp32"
    BF16 = "bf16"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and architecture settings of :func:`train_pfn`.

    ``seq_len`` points per dataset, of which ``n ~ U{min_train..max_train}`` are
    training points (``seq_len > max_train`` so there is always at least one query).
    With ``size_sampling="log_uniform"``, ``n`` is log-uniform on ``min_train..max_train``
    (attention costs grow with :math:`n^2`, so most steps are cheap and a few are large);
    with ``num_queries`` set, each step's datasets have ``n + num_queries`` points
    (``seq_len`` is then unused) and, with ``tokens_per_step`` set, the batch shrinks to
    ``min(batch_size, tokens_per_step // (n + num_queries))`` datasets (at least 1).
    ``warmup_steps=None`` means 5% of ``steps``. ``time_limit`` (seconds) stops early
    with a checkpoint. ``out=None`` trains without writing checkpoints. ``precision``:
    :class:`Precision` (``"bf16"`` on CUDA only); ``compile``: ``torch.compile`` the forward
    pass. Under torch.distributed ``batch_size`` is per rank. ``init_from``: a checkpoint
    (path, or a shipped name) whose weights start a new training on ``prior``, which may
    differ from the one it was trained on (fine-tuning, :func:`init_from_checkpoint`).

    Example::

        >>> from pyrobayes.pfn.train import TrainConfig
        >>> cfg = TrainConfig(steps=100, max_train=20, seq_len=30)
        >>> cfg.batch_size, cfg.warmup_steps, cfg.precision     # defaults
        (64, None, 'fp32')
        >>> TrainConfig(max_train=30, seq_len=30)             # no room for a query
        Traceback (most recent call last):
        ...
        ValueError: need 0 <= min_train <= max_train < seq_len, got 0, 30, 30
    """

    steps: int = 10_000
    batch_size: int = 64
    seq_len: int = 75
    min_train: int = 0
    max_train: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int | None = None
    clip: float = 1.0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    num_bars: int = 1000
    border_samples: int = 200_000
    seed: int = 0
    progress: bool = True
    log_every: int = 100
    checkpoint_every: int = 500
    out: str | None = None
    resume: bool = False
    time_limit: float | None = None
    device: str | None = None
    size_sampling: str = "uniform"
    num_queries: int | None = None
    tokens_per_step: int | None = None
    precision: str = "fp32"
    compile: bool = False
    init_from: str | None = None

    def __post_init__(self) -> None:
        try:
            Precision(self.precision)
        except ValueError:
            valid = ", ".join(p.value for p in Precision)
            raise ValueError(f"unknown precision {self.precision!r}; valid: {valid}") from None
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.size_sampling not in SIZE_SAMPLING:
            raise ValueError(
                f"unknown size_sampling {self.size_sampling!r}; choose one of {list(SIZE_SAMPLING)}"
            )
        if self.num_queries is not None and self.num_queries < 1:
            raise ValueError(f"num_queries must be positive, got {self.num_queries}")
        if self.tokens_per_step is not None and self.tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be positive, got {self.tokens_per_step}")
        seq_len = self.max_train + 1 if self.num_queries is not None else self.seq_len
        if not 0 <= self.min_train <= self.max_train < seq_len:
            raise ValueError(
                f"need 0 <= min_train <= max_train < seq_len, got {self.min_train}, {self.max_train}, {self.seq_len}"
            )
        if self.lr <= 0 or self.clip <= 0:
            raise ValueError("lr and clip must be positive")


@dataclass
class TrainResult:
    """What :func:`train_pfn` returns: the model and its loss curve (one entry per
    ``log_every`` steps: ``step``, mean ``loss`` over the window, ``lr``, ``seconds``).

    Example::

        >>> from pyrobayes.pfn import PFN, PFNConfig
        >>> from pyrobayes.pfn.train import TrainResult
        >>> pfn = PFN(PFNConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32,
        ...                     borders=(-1.0, 0.0, 1.0)))
        >>> TrainResult(pfn, history=[{"step": 100, "loss": 1.2}, {"step": 200, "loss": 0.9}]
        ...             ).final_loss
        0.9
        >>> TrainResult(pfn).final_loss                        # nothing logged yet
        nan
    """

    model: PFN
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


def make_config(prior: DatasetPrior, config: TrainConfig) -> PFNConfig:
    """The :class:`PFNConfig` for ``prior``: borders and y-normalisation from prior samples."""
    task = Task.parse(prior.task)
    tabular = isinstance(prior, TabularBNNPrior | TabularBNNClassifierPrior)
    ys = []
    if tabular and task is Task.CLASSIFICATION:
        pass  # no borders: the head is one logit per class, up to prior.max_classes
    elif tabular:
        # borders for what the PFN predicts: query targets standardised by a training split
        # of the sizes training uses
        total = 0
        while total < config.border_samples:
            n = _sample_train_size(config)
            m = config.num_queries or (config.seq_len - n)
            x, y = prior.sample(64, n + m)
            *_, yq, _, _ = standardise_split(x[:, :n], y[:, :n], x[:, n:], y[:, n:])
            ys.append(yq.reshape(-1).to("cpu", torch.float64))
            total += yq.numel()
    else:
        n_sets = max(1, math.ceil(config.border_samples / config.seq_len))
        for start in range(0, n_sets, 512):  # chunks keep the BNN's batched forward small
            _, y = prior.sample(min(512, n_sets - start), config.seq_len)
            ys.append(y.reshape(-1).to("cpu", torch.float64))
    y = torch.cat(ys) if ys else torch.zeros(0)
    common = dict(
        num_features=prior.num_features,
        task=task.value,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_ff=config.d_ff,
        max_train=config.max_train,
        x_low=tuple(prior.x_low),
        x_high=tuple(prior.x_high),
        prior=prior.describe(),
        input_mode=(InputMode.TABULAR if tabular else InputMode.BOX).value,
    )
    if task is Task.REGRESSION and tabular:
        borders = borders_from_samples(y, config.num_bars)
        return PFNConfig(**common, borders=tuple(float(b) for b in borders))
    if task is Task.REGRESSION:
        borders = borders_from_samples(y, config.num_bars)
        return PFNConfig(
            **common,
            y_loc=float(y.mean()),
            y_scale=float(y.std()),
            borders=tuple(float(b) for b in borders),
        )
    if tabular:
        return PFNConfig(**common, num_classes=prior.max_classes)
    return PFNConfig(**common, num_classes=int(y.max().item()) + 1)


def init_from_checkpoint(source: str, prior: DatasetPrior, config: TrainConfig) -> PFN:
    """A new PFN for ``prior`` holding the weights of the checkpoint ``source`` (a path, or
    a name of :func:`~pyrobayes.pfn.pretrained`): fine-tuning a PFN on a changed prior
    (e.g. the classifier prior with a latent logit scale) costs a fraction of a training
    from scratch. Its config is the source's with ``prior`` recorded as the one it is now
    trained on (a regression PFN keeps the source's bar borders); the architecture, task,
    features and classes must match ``config`` and ``prior``, else a ``ValueError`` naming
    what differs.
    """
    from pyrobayes.pfn.pretrained import PretrainedName, pretrained

    known = {n.value for n in PretrainedName}
    src = pretrained(source) if source in known else load_checkpoint(source)
    want = make_config_shape(prior, config)
    have = {k: getattr(src.config, k) for k in want}
    diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    if diff:
        raise ValueError(
            f"--init-from {source}: its architecture differs from this training's "
            + ", ".join(f"{k} {a} (wanted {b})" for k, (a, b) in diff.items())
        )
    if src.config.max_train < config.max_train:
        raise ValueError(
            f"--init-from {source}: built for max_train={src.config.max_train} < {config.max_train}"
        )
    cfg = dataclasses.replace(src.config, prior=prior.describe())
    model = PFN(cfg)
    model.load_state_dict(src.state_dict())
    return model


def make_config_shape(prior: DatasetPrior, config: TrainConfig) -> dict:
    """The fields of :func:`make_config` that fix the weights' shapes and meaning."""
    task = Task.parse(prior.task)
    shape = {
        "num_features": prior.num_features,
        "task": task.value,
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "d_ff": config.d_ff,
    }
    if task is Task.CLASSIFICATION and hasattr(prior, "max_classes"):
        shape["num_classes"] = prior.max_classes
    return shape


def _sample_train_size(config: TrainConfig, generator: torch.Generator | None = None) -> int:
    """``n`` for one step (torch's global RNG unless ``generator``, so resume replays it
    exactly; under torch.distributed a generator shared by all ranks)."""
    lo, hi = config.min_train, config.max_train
    if config.size_sampling == "log_uniform":
        u = float(torch.rand((), generator=generator).item())
        n = int(math.exp(math.log(lo + 1) + u * (math.log(hi + 1) - math.log(lo + 1)))) - 1
        return min(hi, max(lo, n))
    return int(torch.randint(lo, hi + 1, (), generator=generator).item())


def _lr_factor(step: int, config: TrainConfig) -> float:
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, config.steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _setup(prior: DatasetPrior, config: TrainConfig, model: PFN | None):
    """Device, distributed group, model, optimiser and (when resuming) saved state."""
    device = torch.device(config.device) if config.device else None
    distributed = dist_.maybe_init(
        device if device is not None else (model.device if model else None)
    )
    if distributed and device is not None and device.type == "cuda" and device.index is None:
        device = dist_.local_device()  # one GPU per rank
    torch.manual_seed(config.seed)
    start_step, history, seconds = 0, [], 0.0
    out = Path(config.out) if config.out else None
    resume_from = out is not None and config.resume and checkpoint_paths(out)[1].exists()
    if config.resume and out is None:
        raise ValueError("resume=True needs an out path to resume from")
    if resume_from:
        model = load_checkpoint(out)
        if not same_prior(model.config.prior, prior.describe()):
            raise ValueError(
                f"cannot resume {out}: it was trained on prior {model.config.prior}, "
                f"not {prior.describe()}"
            )
    elif model is None and config.init_from:
        model = init_from_checkpoint(config.init_from, prior, config)
    elif model is None:
        model = PFN(make_config(prior, config))
    if model.config.max_train < config.max_train:
        raise ValueError(
            f"model was built for max_train={model.config.max_train} < {config.max_train}"
        )
    device = device if device is not None else model.device
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    forward = _forward(model, device, distributed, config)
    if resume_from:
        info = load_training_state(out, opt)
        start_step, history, seconds = (
            int(info["step"]),
            list(info["history"]),
            float(info["seconds"]),
        )
    return model, device, distributed, out, opt, forward, start_step, history, seconds


def _train_step(
    step: int,
    prior: DatasetPrior,
    config: TrainConfig,
    model: PFN,
    opt: torch.optim.Optimizer,
    forward: _Forward,
    device: torch.device,
    distributed: bool,
) -> float:
    """One optimiser step on a fresh prior batch; returns the (rank-averaged) loss."""
    for g in opt.param_groups:
        g["lr"] = config.lr * _lr_factor(step, config)
    if distributed:
        # the split is shared (one global batch); the datasets differ per rank
        gen = torch.Generator().manual_seed(dist_.rank_seed(config.seed, step))
        n = _sample_train_size(config, generator=gen)
        torch.manual_seed(dist_.rank_seed(config.seed, step, dist_.rank() + 1))
    else:
        n = _sample_train_size(config)
    seq_len = config.seq_len if config.num_queries is None else n + config.num_queries
    batch = config.batch_size
    if config.tokens_per_step is not None:
        batch = max(1, min(batch, config.tokens_per_step // seq_len))
    x, y = prior.sample(batch, seq_len)
    x, y = x.to(device), y.to(device)
    xt, yt, xq, yq = x[:, :n], y[:, :n], x[:, n:], y[:, n:]
    extra: tuple = ()
    if model.tabular_classes:
        xt, _, xq, *_ = standardise_split(xt, yt, xq)  # labels stay labels
        counts = getattr(prior, "last_num_classes", None)  # each dataset's C
        extra = () if counts is None else (counts.to(device),)
    elif model.input_mode is InputMode.TABULAR:
        xt, yt, xq, yq, _, _ = standardise_split(xt, yt, xq, yq)
    with forward.autocast():
        logits = forward(xt, yt, xq, *extra)
    loss = model.loss(logits.float(), yq).mean()
    value = dist_.all_reduce_mean(loss.item(), device) if distributed else loss.item()
    if not math.isfinite(value):  # the mean: every rank stops together
        raise FloatingPointError(f"PFN training loss became {value} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
    opt.step()
    return value


def _checkpoint(
    out: Path | None,
    model: PFN,
    opt: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    history: list,
    seconds: float,
) -> None:
    """Save the model and the resumable training state (rank 0 only)."""
    if out is None or not dist_.is_main():
        return
    meta = {
        "steps": step,
        "seconds": round(seconds, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "train_config": dataclasses.asdict(config),
        # the loss curve travels with the weights (the model card's plot reads it)
        "history": history,
    }
    save_checkpoint(model, out, training=meta)
    save_training_state(out, opt, {"step": step, "history": history, "seconds": seconds})


def _log_entry(done: int, window: list[float], opt: torch.optim.Optimizer, seconds: float) -> dict:
    """A history entry: the mean loss over ``window`` at step ``done``."""
    return {
        "step": done,
        "loss": sum(window) / len(window),
        "lr": opt.param_groups[0]["lr"],
        "seconds": seconds,
    }


def train_pfn(
    prior: DatasetPrior, config: TrainConfig | None = None, model: PFN | None = None
) -> TrainResult:
    """Fit a PFN to ``prior`` by minimising the prior-data NLL.

    Args:
        prior: a dataset prior (:class:`GPPrior`, :class:`BNNPrior`, or any object with
            the same ``sample``/``describe`` interface).
        config: :class:`TrainConfig` (defaults if ``None``).
        model: an existing PFN to continue from (its config is kept); by default a new
            one is built with borders from prior samples, or loaded from
            ``config.out`` when ``config.resume`` is set.

    Returns:
        :class:`TrainResult` with the trained model (eval mode) and the loss history.

    Example::

        >>> import math, os, tempfile
        >>> from pyrobayes.pfn import GPPrior
        >>> from pyrobayes.pfn.train import TrainConfig, train_pfn
        >>> out = os.path.join(tempfile.mkdtemp(), "gp")
        >>> cfg = TrainConfig(steps=2, batch_size=4, seq_len=12, max_train=8, d_model=16,
        ...                   n_layers=1, n_heads=2, d_ff=32, num_bars=10, border_samples=500,
        ...                   log_every=1, progress=False, out=out)
        >>> result = train_pfn(GPPrior(), cfg)
        >>> result.steps, [h["step"] for h in result.history], math.isfinite(result.final_loss)
        (2, [1, 2], True)
        >>> result.model.training, result.model.config.num_outputs   # eval mode, 10 bars
        (False, 10)
        >>> sorted(os.listdir(os.path.dirname(out)))     # weights + resumable training state
        ['gp.json', 'gp.safetensors', 'gp.state.json', 'gp.state.safetensors']
    """
    config = config or TrainConfig()
    model, device, distributed, out, opt, forward, start_step, history, seconds = _setup(
        prior, config, model
    )
    main = dist_.is_main()
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        disable=not (config.progress and main),
        desc="pfn",
        dynamic_ncols=True,
    )
    window: list[float] = []
    t0 = t_start = time.perf_counter()
    step = start_step
    for step in range(start_step, config.steps):
        value = _train_step(step, prior, config, model, opt, forward, device, distributed)
        window.append(value)
        bar.update(1)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            elapsed = seconds + time.perf_counter() - t0
            entry = _log_entry(done, window, opt, elapsed)
            history.append(entry)
            window = []
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
            if not config.progress and main:
                rate = (done - start_step) / max(1e-9, time.perf_counter() - t_start)
                logger.info(
                    f"step {done}/{config.steps} loss {entry['loss']:.4f} lr {entry['lr']:.2e} "
                    f"{rate:.2f} steps/s elapsed {elapsed:.0f}s"
                )
        if config.checkpoint_every and done % config.checkpoint_every == 0:
            seconds_now = seconds + time.perf_counter() - t0
            seconds, t0 = seconds_now, time.perf_counter()
            _checkpoint(out, model, opt, config, done, history, seconds)
        if config.time_limit is not None:
            over = seconds + time.perf_counter() - t0 > config.time_limit
            if dist_.any_rank(over, device) if distributed else over:  # ranks stop together
                step = done
                break
    else:
        step = config.steps
    bar.close()
    seconds += time.perf_counter() - t0
    if window:
        history.append(_log_entry(step, window, opt, seconds))
    _checkpoint(out, model, opt, config, step, history, seconds)
    return TrainResult(model=model.eval(), history=history, steps=step, seconds=seconds)


class _Forward:
    """The PFN's forward pass as training runs it: through DDP under torch.distributed,
    ``torch.compile`` on request, bf16 autocast on CUDA on request."""

    def __init__(self, fn, amp: bool, device: torch.device):
        self.fn, self.amp, self.device = fn, amp, device

    def __call__(self, *args):
        return self.fn(*args)

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _forward(model: PFN, device: torch.device, distributed: bool, config: TrainConfig) -> _Forward:
    fn = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        fn = DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        fn = torch.compile(fn)
    amp = Precision(config.precision) is Precision.BF16
    if amp and device.type != "cuda":
        warnings.warn(
            f"precision='bf16' applies to CUDA only; training on {device} runs in fp32",
            stacklevel=3,
        )
        amp = False
    return _Forward(fn, amp, device)


# -- command line -------------------------------------------------------------------

PRIORS = ("gp", "bnn", "bnn-tabular", "bnn-tabular-classifier")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pyrobayes pfn train``.

    Example::

        >>> import argparse
        >>> from pyrobayes.pfn.train import TrainConfig, add_arguments
        >>> parser = argparse.ArgumentParser(prog="pyrobayes pfn train")
        >>> add_arguments(parser)
        >>> args = parser.parse_args(["--out", "runs/gp", "--prior", "bnn", "--steps", "300"])
        >>> args.prior, args.steps, args.out
        ('bnn', 300, 'runs/gp')
        >>> args.batch_size == TrainConfig().batch_size   # defaults come from TrainConfig
        True
    """
    d = TrainConfig()
    parser.add_argument(
        "--prior", choices=PRIORS, default="gp", help="prior over datasets (default gp)"
    )
    parser.add_argument(
        "--out", required=True, help="checkpoint path (writes OUT.safetensors + OUT.json)"
    )
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--max-train", type=int, default=d.max_train)
    parser.add_argument("--min-train", type=int, default=d.min_train)
    parser.add_argument(
        "--size-sampling",
        choices=SIZE_SAMPLING,
        default=d.size_sampling,
        help="distribution of the training-set size n per step",
    )
    parser.add_argument(
        "--num-queries",
        type=int,
        default=None,
        help="queries per dataset (then seq_len = n + this)",
    )
    parser.add_argument(
        "--tokens-per-step", type=int, default=None, help="shrink the batch for large n"
    )
    _add_tabular_arguments(parser)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--d-model", type=int, default=d.d_model)
    parser.add_argument("--layers", type=int, default=d.n_layers)
    parser.add_argument("--heads", type=int, default=d.n_heads)
    parser.add_argument("--d-ff", type=int, default=d.d_ff)
    parser.add_argument("--bars", type=int, default=d.num_bars)
    parser.add_argument(
        "--border-samples", type=int, default=d.border_samples, help="prior y draws for the borders"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop (with a checkpoint) after this many seconds",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT's checkpoint and training state"
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from this checkpoint's weights (a path or a shipped name; same "
        "architecture) and train on --prior, which may differ: fine-tuning",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="log lines instead of a tqdm bar"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (under torchrun: cuda:LOCAL_RANK per rank)"
    )
    parser.add_argument(
        "--precision",
        choices=[p.value for p in Precision],
        default=d.precision,
        help="bf16: autocast the forward pass (CUDA only)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    parser.add_argument("--lengthscale", type=float, default=0.5, help="GP prior RBF lengthscale")
    parser.add_argument("--outputscale", type=float, default=1.0, help="GP prior kernel variance")
    parser.add_argument("--noise-std", type=float, default=0.1, help="GP prior noise std")
    parser.add_argument("--x-low", type=float, default=-2.0)
    parser.add_argument("--x-high", type=float, default=2.0)


def _add_tabular_arguments(parser: argparse.ArgumentParser) -> None:
    """The tabular priors' options of ``pyrobayes pfn train``."""
    parser.add_argument(
        "--max-features",
        type=int,
        default=None,
        help="bnn-tabular(-classifier): maximum number of features (default 10 / 30)",
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        default=10,
        help="bnn-tabular-classifier: maximum number of classes",
    )
    parser.add_argument(
        "--min-classes",
        type=int,
        default=2,
        help="bnn-tabular-classifier: minimum number of classes",
    )
    parser.add_argument(
        "--logit-scale-prior",
        type=_logit_scale_arg,
        default="default",
        metavar="LOC,SCALE",
        help="bnn-tabular-classifier: the latent logit scale tau ~ LogNormal(LOC, SCALE) per "
        "data set (labels ~ softmax(tau * logits)); default: the shipped prior's "
        "LogNormal(0, 1); none: tau = 1",
    )

    parser.add_argument(
        "--noise-prior",
        type=_noise_arg,
        default="default",
        metavar="LOC,SCALE",
        help="bnn-tabular: the noise std sigma ~ LogNormal(LOC, SCALE) per data set "
        "(standardised units); default: the shipped prior's LogNormal(log 0.2, 0.8)",
    )


def _checked_by(parse):
    """An argparse ``type`` that keeps the text once ``parse`` accepts it (its
    ``ValueError`` becomes argparse's error message)."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


_noise_arg = _checked_by(noise_prior_from)  # default or LOC,SCALE
_logit_scale_arg = _checked_by(logit_scale_prior_from)  # default, none or LOC,SCALE


def _prior_device(args: argparse.Namespace) -> torch.device | str | None:
    """Where the GP and tabular-classifier priors draw datasets: where training runs, so
    sampling is no host-side bottleneck (one GPU per rank under torchrun)."""
    device = getattr(args, "device", None)
    if device and torch.device(device).type == "cuda" and dist_.world_size() > 1:
        device = dist_.local_device()
    return device


def build_prior(args: argparse.Namespace) -> DatasetPrior:
    if args.prior == "gp":
        device = _prior_device(args)
        return GPPrior(
            args.lengthscale,
            args.outputscale,
            args.noise_std,
            args.x_low,
            args.x_high,
            device=device,
        )
    if args.prior == "bnn":
        return BNNPrior(x_low=args.x_low, x_high=args.x_high)
    if args.prior == "bnn-tabular":
        return TabularBNNPrior(
            max_features=args.max_features or 10,
            noise_prior=noise_prior_from(getattr(args, "noise_prior", "default")),
        )
    if args.prior == "bnn-tabular-classifier":
        return TabularBNNClassifierPrior(
            max_features=args.max_features or 30,
            max_classes=args.max_classes,
            min_classes=args.min_classes,
            device=_prior_device(args),
            logit_scale_prior=logit_scale_prior_from(getattr(args, "logit_scale_prior", "default")),
        )
    raise ValueError(f"unknown prior {args.prior!r}; choose one of {list(PRIORS)}")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``pyrobayes pfn train``; returns the exit code.

    Example (the same as ``pyrobayes pfn train --out OUT --steps 2 ...`` in a shell)::

        >>> import argparse, os, tempfile
        >>> from pyrobayes.pfn.train import add_arguments, run
        >>> parser = argparse.ArgumentParser(prog="pyrobayes pfn train")
        >>> add_arguments(parser)
        >>> out = os.path.join(tempfile.mkdtemp(), "gp")
        >>> args = parser.parse_args(["--out", out, "--steps", "2", "--batch-size", "4",
        ...     "--seq-len", "12", "--max-train", "8", "--d-model", "16", "--layers", "1",
        ...     "--heads", "2", "--d-ff", "32", "--bars", "10", "--border-samples", "500"])
        >>> run(args)
        trained 2 steps in ...s, final loss ...; wrote .../gp.safetensors
        0
    """
    check_device(args.device)  # a clear error now, not a torch traceback at the first tensor
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_progress and not logger.handlers:
        # log lines replace the progress bar (e.g. under nohup)
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        max_train=args.max_train,
        min_train=args.min_train,
        size_sampling=args.size_sampling,
        num_queries=args.num_queries,
        tokens_per_step=args.tokens_per_step,
        lr=args.lr,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        d_ff=args.d_ff,
        num_bars=args.bars,
        border_samples=args.border_samples,
        seed=args.seed,
        progress=not args.no_progress,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        out=args.out,
        resume=args.resume,
        time_limit=args.time_limit,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        init_from=getattr(args, "init_from", None),
    )
    result = train_pfn(build_prior(args), config)
    if not dist_.is_main():
        return 0
    weights, meta = checkpoint_paths(args.out)
    print(
        f"trained {result.steps} steps in {result.seconds:.0f}s, final loss {result.final_loss:.4f}; wrote {weights}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyrobayes pfn train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
