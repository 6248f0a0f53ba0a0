"""1-D regression data: data sets drawn from a BNN prior, and a user's CSV file."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from pyrobayes.data._io import read_csv, require_columns
from pyrobayes.data.tabular import _to_float

__all__ = ["RegressionData", "regression_from_prior", "load_csv_regression"]


class RegressionData(NamedTuple):
    """A 1-D regression task with its ground truth.

    ``x_*`` have shape ``[N, 1]`` (the network's input), ``y_*`` shape ``[N]``;
    ``f_grid`` is the noiseless function at the sorted ``x_grid`` and ``noise_std`` the
    observation noise the targets were drawn with. Unpacks like a tuple:
    ``x_tr, y_tr, x_te, y_te, x_grid, f_grid, noise = data``.

    Example::

        >>> from pyrobayes.data.regression import regression_from_prior
        >>> data = regression_from_prior(n_train=5, n_test=7, grid_size=11)
        >>> x_tr, y_tr, x_te, y_te, x_grid, f_grid, noise = data
        >>> tuple(x_tr.shape), tuple(y_tr.shape), tuple(data.x_test.shape), tuple(f_grid.shape)
        ((5, 1), (5,), (7, 1), (11,))
        >>> round(noise, 3), bool((x_grid[1:] >= x_grid[:-1]).all())
        (0.1, True)
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_grid: torch.Tensor
    f_grid: torch.Tensor
    noise_std: float


def regression_from_prior(
    n_train: int = 20,
    n_test: int = 200,
    seed: int = 0,
    model: nn.Module | None = None,
    x_range: tuple[float, float] = (-2.0, 2.0),
    grid_size: int = 200,
) -> RegressionData:
    """A 1-D regression data set drawn from a Bayesian network's prior.

    One weight draw :math:`w \\sim p(w)` fixes a function :math:`f_w`; inputs are
    i.i.d. :math:`x \\sim U(\\text{x\\_range})` and targets
    :math:`y = f_w(x) + \\varepsilon` drawn from the model's likelihood (for the default
    model :math:`\\varepsilon \\sim \\mathcal N(0, 0.1^2)`). The true posterior predictive
    for this data is therefore the one the model itself defines, which makes it the
    natural test bed for comparing SVI, NUTS and a PFN trained on the same prior.

    Args:
        n_train, n_test: numbers of training and test points.
        seed: fixes the weight draw, the inputs and the noise.
        model: a :class:`~pyrobayes.bayesian_model.BayesianModel` with a Gaussian likelihood
            (default: :func:`~pyrobayes.models.mlp.default_regression_model`).
        x_range: interval the inputs are drawn from (and the grid spans).
        grid_size: points of the noiseless-function grid.

    Example::

        >>> from pyrobayes.data import regression_from_prior
        >>> d = regression_from_prior(n_train=10, n_test=50, seed=1)
        >>> d.x_train.shape, d.y_train.shape, d.f_grid.shape
        (torch.Size([10, 1]), torch.Size([10]), torch.Size([200]))
    """
    from pyrobayes.infer.predictive import forward_draws, sample_prior

    if n_train < 1 or n_test < 0:
        raise ValueError(
            f"need n_train >= 1 and n_test >= 0, got n_train={n_train}, n_test={n_test}"
        )
    lo, hi = (float(v) for v in x_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"x_range must be a finite interval (lo, hi) with lo < hi, got {x_range}")
    if grid_size < 2:
        raise ValueError(f"grid_size must be at least 2, got {grid_size}")
    if model is None:
        from pyrobayes.models.mlp import default_regression_model

        model = default_regression_model()
    device = next(iter(model.buffers()), torch.empty(0)).device
    noise = getattr(model.likelihood, "scale", None)
    if noise is None:
        raise ValueError(
            "regression_from_prior needs a model with a Gaussian likelihood (a `scale`)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = sample_prior(model, 1)
        x = lo + (hi - lo) * torch.rand(n_train + n_test, 1)
        x_grid = torch.linspace(lo, hi, grid_size).unsqueeze(-1)
        x_all = torch.cat([x, x_grid]).to(device)
        f_all = forward_draws(model, draws, x_all).reshape(-1)
        scale = float(torch.as_tensor(noise).detach())
        eps = torch.randn(n_train + n_test) * scale
    f_all = f_all.detach()
    y = f_all[: n_train + n_test] + eps.to(f_all)
    n = n_train + n_test
    return RegressionData(
        x_train=x[:n_train].to(device),
        y_train=y[:n_train],
        x_test=x[n_train:n].to(device),
        y_test=y[n_train:n],
        x_grid=x_grid.to(device),
        f_grid=f_all[n:],
        noise_std=scale,
    )


def load_csv_regression(
    path: str,
    x_col: str,
    y_col: str,
    min_points: int = 2,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a 1-D regression data set ``(x [N, 1], y [N])`` from a CSV file (through
    ``datasets.load_dataset("csv")``, like every other loader).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a column is missing (the message lists the columns that exist), a
            value is not a number, rows hold NaN/empty cells (how many and which rows,
            counted from 0 after the header), or fewer than ``min_points`` rows.

    Example::

        >>> import os, tempfile
        >>> from pyrobayes.data import load_csv_regression
        >>> p = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> _ = open(p, "w").write("x,y\\n0,1\\n1,3\\n2,5\\n")
        >>> x, y = load_csv_regression(p, "x", "y")
        >>> x.shape, y.tolist()
        (torch.Size([3, 1]), [1.0, 3.0, 5.0])
    """
    ds = read_csv(path)
    require_columns(ds, [x_col, y_col], f"CSV {path!r}")
    cols = {c: _to_float(ds[c], c, f"CSV {path!r}") for c in (x_col, y_col)}
    bad = np.flatnonzero(~(np.isfinite(cols[x_col]) & np.isfinite(cols[y_col])))
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise ValueError(
            f"CSV {path!r}: {bad.size} row(s) have a missing, NaN or infinite value in "
            f"{x_col!r}/{y_col!r} (rows {shown}, counted from 0 after the header); drop or fill them"
        )
    n = len(cols[x_col])
    if n < min_points:
        raise ValueError(f"CSV {path!r}: {n} data point(s), need at least {min_points}")
    x = torch.as_tensor(cols[x_col], dtype=dtype).unsqueeze(-1)
    y = torch.as_tensor(cols[y_col], dtype=dtype)
    return x, y
