r"""The one deterministic trainer: fit a plain ``nn.Module`` by Adam on a loss.

Used wherever a pretrained network is needed before it is made Bayesian (the digits MLP
of ``pyrobayes classify``, the frequentist MLP of ``pyrobayes compare``, the benchmarks).
Each epoch visits the data in a random order drawn from ``seed`` (minibatches of
``batch_size``; ``batch_size=None``: one full-batch step per epoch) and takes an Adam step
per batch on the batch-mean loss

.. math::

    \ell_\text{ce}(B) = -\frac1{|B|}\sum_{i\in B} \log \mathrm{softmax}(f(x_i))_{y_i},
    \qquad
    \ell_\text{mse}(B) = \frac1{|B|}\sum_{i\in B} \lVert f(x_i) - y_i \rVert^2 .

Everything random (the order, dropout) is drawn from ``seed`` inside a forked RNG, so the
same call gives the same network and leaves the caller's global RNG untouched; the
network's initial weights are the caller's.

Example::

    >>> import torch
    >>> from pyrobayes.models import MLP
    >>> from pyrobayes.models.train import train_network
    >>> x = torch.linspace(-2, 2, 64).unsqueeze(-1)
    >>> y = torch.sin(2 * x).squeeze(-1)
    >>> _ = torch.manual_seed(0)
    >>> net = MLP(1, (32, 32), 1)
    >>> history = train_network(net, x, y, loss="mse", epochs=300, lr=1e-2, progress=False)
    >>> history.losses[-1] < 0.02 < history.losses[0]
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pyrobayes.options import Option
from pyrobayes.progress import progress_bar

__all__ = ["NetLoss", "TrainHistory", "train_early_stopped", "train_network"]


class NetLoss(Option):
    """The training loss: ``cross_entropy`` (logits against integer class labels) or
    ``mse`` (outputs against real targets; an output ``[N, 1]`` is matched to ``y [N]``).

    Example::

        >>> from pyrobayes.models.train import NetLoss
        >>> NetLoss.parse("mse")
        <NetLoss.MSE: 'mse'>
        >>> NetLoss.parse("hinge")
        Traceback (most recent call last):
        ...
        ValueError: unknown net loss 'hinge'; valid: cross_entropy, mse
    """

    CROSS_ENTROPY = "cross_entropy"
    MSE = "mse"


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.dim() == y.dim() + 1 and out.shape[-1] == 1:
        out = out.squeeze(-1)
    if out.shape != y.shape:
        raise ValueError(
            f"mse: network output {tuple(out.shape)} does not match targets {tuple(y.shape)}"
        )
    return nn.functional.mse_loss(out, y)


_LOSSES: dict[NetLoss, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    NetLoss.CROSS_ENTROPY: nn.functional.cross_entropy,
    NetLoss.MSE: _mse,
}


@dataclass
class TrainHistory:
    """Per-epoch mean training loss (weighted by batch size) and wall-clock seconds.

    Example::

        >>> import torch
        >>> from pyrobayes.models.train import train_network
        >>> x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
        >>> h = train_network(torch.nn.Linear(2, 2), x, y, epochs=3, progress=False)
        >>> len(h.losses), len(h.epoch_seconds)
        (3, 3)
        >>> h.losses[-1] < h.losses[0]
        True
    """

    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def train_network(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str | NetLoss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int | None = 64,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train network",
) -> TrainHistory:
    """Train ``net`` in place with Adam and leave it in eval mode.

    Args:
        net: any module mapping ``x[idx]`` to outputs; its parameters are updated.
        x, y: inputs ``[N, ...]`` and targets ``[N, ...]`` on the network's device.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, target) -> scalar``.
        epochs: passes over the data (``0``: the network is left as it is).
        lr: Adam's step size.
        batch_size: minibatch size; ``None`` (or ``>= N``): full-batch steps.
        seed: seed of the visiting order and of any randomness inside ``net``.
        progress: show a progress bar over the epochs.

    Returns:
        :class:`TrainHistory` with one entry per epoch.

    Example::

        >>> import torch
        >>> net = torch.nn.Linear(1, 1)
        >>> x = torch.linspace(-1, 1, 20)[:, None]
        >>> y = 3 * x[:, 0] + 1                   # a line the network can fit exactly
        >>> h = train_network(net, x, y, loss="mse", epochs=100, lr=0.1, batch_size=None,
        ...                   progress=False)
        >>> h.losses[-1] < 1e-3 < h.losses[0]
        True
        >>> round(net.weight.item(), 1), round(net.bias.item(), 1)
        (3.0, 1.0)
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many targets as inputs (>= 1), got {len(x)} and {len(y)}")
    loss_fn = loss if callable(loss) else _LOSSES[NetLoss.parse(loss, "loss")]
    n = len(x)
    full = batch_size is None or batch_size >= n
    step = n if full else batch_size
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history = TrainHistory()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net.train()
        bar = progress_bar(range(epochs), enabled=progress, desc=desc, unit="epoch")
        for _ in bar:
            t0 = time.perf_counter()
            # Full batch: no shuffle, so the one step is the exact full-data gradient step.
            order = None if full else torch.randperm(n, generator=gen).to(x.device)
            total = torch.zeros((), device=x.device)
            for i in range(0, n, step):
                if order is None:
                    xb, yb = x, y
                else:
                    idx = order[i : i + step]
                    xb, yb = x[idx], y[idx]
                value = loss_fn(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                total += value.detach() * len(yb)
            history.losses.append(float(total) / n)  # one host sync per epoch
            history.epoch_seconds.append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{history.losses[-1]:.4g}")
    net.eval()
    return history


def train_early_stopped(
    net: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    max_steps: int,
    lr: float,
    patience: int,
) -> int:
    """Full-batch Adam on ``loss(net(x), y)``, keeping the weights of the step of lowest
    held-out ``loss``, stopping ``patience`` steps after it; returns that step (0: the
    starting weights were best). The early-stopped trainer of the real-data job's MLP and
    of the deep ensemble's members.

    Example::

        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(1, 1)
        >>> x = torch.linspace(-1, 1, 40)[:, None]
        >>> mse = lambda out, y: (out[:, 0] - y).pow(2).mean()
        >>> best = train_early_stopped(net, mse, x[::2], 2 * x[::2, 0], x[1::2], 2 * x[1::2, 0],
        ...                            max_steps=300, lr=0.1, patience=20)
        >>> best > 0, 1.8 < float(net.weight) < 2.1  # the slope of y = 2x
        (True, True)
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.no_grad():
        best = float(loss(net(x_val), y_val))
    best_step, best_state = 0, {k: t.detach().clone() for k, t in net.state_dict().items()}
    for step in range(max_steps):
        opt.zero_grad(set_to_none=True)
        loss(net(x_fit), y_fit).backward()
        opt.step()
        with torch.no_grad():
            v = float(loss(net(x_val), y_val))
        if v < best:
            best, best_step = v, step + 1
            best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
        elif step + 1 - best_step >= patience:
            break
    net.load_state_dict(best_state)
    return best_step
