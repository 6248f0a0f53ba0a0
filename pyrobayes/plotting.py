"""Matplotlib helpers for PPDs: predictive bands, side-by-side comparisons, reliability
diagrams and NLL-versus-time plots.

Everything draws on :class:`matplotlib.figure.Figure` objects (never ``pyplot``'s global
state, never ``show``), so it works headless and in notebooks alike; every function
returns the figure and its axes, and accepts torch tensors or numpy arrays.

Example::

    >>> import torch
    >>> from pyrobayes.gp import exact_gp_ppd
    >>> from pyrobayes.plotting import plot_ppd
    >>> x_tr = torch.rand(8) * 4 - 2
    >>> y_tr = torch.sin(2 * x_tr)
    >>> xq = torch.linspace(-3, 3, 200)
    >>> fig, ax = plot_ppd(xq, exact_gp_ppd(x_tr, y_tr, xq), train=(x_tr, y_tr), label="GP")
    >>> fig.savefig("gp.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch.distributions import Distribution

from pyrobayes.metrics import _as_regression_ppd, _quantiles, reliability_bins

__all__ = [
    "plot_ppd",
    "plot_ppd_comparison",
    "plot_reliability",
    "plot_reliability_grid",
    "plot_nll_vs_time",
    "plot_metric_errorbars",
    "plot_coverage",
    "plot_training_curve",
]

Truth = Callable[[Any], Any] | Sequence[Any] | np.ndarray | torch.Tensor | tuple[Any, Any]


def _np(x: Any, name: str) -> np.ndarray:
    """A float numpy array from a tensor (any device, with or without grad) or array-like."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be read as numbers: {err}") from None
    return arr


def _inputs_1d(x: Any, name: str) -> np.ndarray:
    """Shape ``[n]`` or ``[n, 1]`` inputs as a 1-D array (plots need a scalar input)."""
    arr = _np(x, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D inputs of shape [n] or [n, 1], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    lv = tuple(sorted({float(v) for v in levels}, reverse=True))  # widest first
    for v in lv:
        if not 0.0 < v < 1.0:
            raise ValueError(f"interval levels must lie in (0, 1), got {v}")
    return lv


def _bands(x: Any, ppd: Distribution, levels: tuple[float, ...]):
    """Sorted inputs, predictive mean and ``{level: (lower, upper)}`` at each input."""
    reg = _as_regression_ppd(ppd)
    xs = _inputs_1d(x, "x")
    if len(reg.batch_shape) != 1 or reg.batch_shape[0] != xs.shape[0]:
        raise ValueError(
            f"x has {xs.shape[0]} points but the PPD's batch shape is {tuple(reg.batch_shape)}; "
            "plot a PPD evaluated at exactly these 1-D query points"
        )
    order = np.argsort(xs, kind="stable")
    mean = _np(reg.mean, "mean")[order]
    bands = {}
    if levels:
        q = [p for lv in levels for p in ((1 - lv) / 2, (1 + lv) / 2)]
        ends = _np(_quantiles(reg, q), "quantiles")[:, order]
        for i, lv in enumerate(levels):
            bands[lv] = (ends[2 * i], ends[2 * i + 1])
    return xs[order], mean, bands


def _truth_curve(truth: Truth | None, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The true function as ``(x, f(x))``: a callable (evaluated at ``xs``), values at
    ``xs`` (already sorted by the caller), or an explicit ``(x, y)`` pair."""
    if truth is None:
        return None
    if callable(truth):
        out = truth(torch.as_tensor(xs))
        return xs, _np(out, "truth(x)").reshape(-1)
    if isinstance(truth, tuple) and len(truth) == 2:
        tx, ty = _inputs_1d(truth[0], "truth x"), _np(truth[1], "truth y").reshape(-1)
        if tx.shape != ty.shape:
            raise ValueError(f"truth x has {tx.shape[0]} points but truth y has {ty.shape[0]}")
        order = np.argsort(tx, kind="stable")
        return tx[order], ty[order]
    ty = _np(truth, "truth").reshape(-1)
    if ty.shape[0] != xs.shape[0]:
        raise ValueError(
            f"truth has {ty.shape[0]} values but there are {xs.shape[0]} query points; pass "
            "a callable, values at the query points, or an (x, y) pair"
        )
    return xs, ty


def _train_points(train: tuple[Any, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
    if train is None:
        return None
    if not isinstance(train, tuple | list) or len(train) != 2:
        raise ValueError("train must be a pair (x_train, y_train)")
    tx, ty = _inputs_1d(train[0], "x_train"), _np(train[1], "y_train").reshape(-1)
    if tx.shape[0] != ty.shape[0]:
        raise ValueError(f"x_train has {tx.shape[0]} points but y_train has {ty.shape[0]}")
    return tx, ty


def _draw_ppd(
    ax: Axes,
    xs: np.ndarray,
    mean: np.ndarray,
    bands: dict[float, tuple[np.ndarray, np.ndarray]],
    train: tuple[np.ndarray, np.ndarray] | None,
    truth: tuple[np.ndarray, np.ndarray] | None,
    label: str | None,
    color: str,
) -> None:
    n = len(bands)
    for i, (lv, (lo, hi)) in enumerate(bands.items()):  # widest first, lightest
        alpha = 0.15 + 0.2 * i / max(n - 1, 1)
        ax.fill_between(
            xs, lo, hi, color=color, alpha=alpha, linewidth=0, label=f"{lv:.0%} interval"
        )
    ax.plot(xs, mean, color=color, linewidth=2, label=label or "predictive mean")
    if truth is not None:
        ax.plot(truth[0], truth[1], color="black", linestyle="--", linewidth=1.2, label="truth")
    if train is not None:
        ax.scatter(train[0], train[1], s=14, color="black", zorder=3, label="training data")


def plot_ppd(
    x: Any,
    ppd: Distribution,
    ax: Axes | None = None,
    train: tuple[Any, Any] | None = None,
    levels: Sequence[float] = (0.5, 0.9),
    truth: Truth | None = None,
    label: str | None = None,
    color: str = "C0",
    title: str | None = None,
    legend: bool = True,
) -> tuple[Figure, Axes]:
    """Predictive mean and shaded central intervals of a 1-D regression PPD.

    Args:
        x: the query inputs the PPD was evaluated at, shape ``[n]`` or ``[n, 1]``.
        ppd: a :class:`~pyrobayes.ppd.RegressionPPD` with batch shape ``[n]``.
        ax: axes to draw on (default: a new figure).
        train: ``(x_train, y_train)`` drawn as points.
        levels: central interval levels to shade (e.g. 50% and 90%).
        truth: the true function: a callable ``f(x)``, its values at ``x``, or an
            ``(x, y)`` pair; drawn dashed.
        label: legend label of the mean line (e.g. the method's name).

    Returns:
        ``(figure, axes)``.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> xq = torch.linspace(0, 1, 50)
        >>> fig, ax = plot_ppd(xq, normal_ppd(xq.sin(), 0.1), truth=torch.sin)
    """
    lv = _check_levels(levels)
    xs, mean, bands = _bands(x, ppd, lv)
    fig, ax = _new_axes(ax, (6.0, 4.0))
    _draw_ppd(ax, xs, mean, bands, _train_points(train), _truth_curve(truth, xs), label, color)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(loc="best", fontsize="small")
    return fig, ax


def plot_ppd_comparison(
    x: Any,
    ppds: Mapping[str, Distribution],
    train: tuple[Any, Any] | None = None,
    truth: Truth | None = None,
    levels: Sequence[float] = (0.5, 0.9),
    ncols: int | None = None,
    panel_size: tuple[float, float] = (4.0, 3.2),
    ylim: tuple[float, float] | None = None,
) -> tuple[Figure, np.ndarray]:
    """One panel per method, all on the same axis limits, with the training data and the
    true function (where known) in every panel.

    Args:
        x: the shared query inputs, shape ``[n]`` or ``[n, 1]``.
        ppds: ``{method name: RegressionPPD with batch shape [n]}``.
        train, truth, levels: as in :func:`plot_ppd`.
        ncols: panels per row (default: up to 3).
        ylim: fixed y-limits (default: the union of all bands, training data and truth).

    Returns:
        ``(figure, axes)`` with ``axes`` a flat array of one axes per method.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import normal_ppd
        >>> xq = torch.linspace(0, 1, 50)
        >>> fig, axes = plot_ppd_comparison(
        ...     xq, {"wide": normal_ppd(xq, 1.0), "narrow": normal_ppd(xq, 0.1)})
        >>> len(axes)
        2
    """
    if not isinstance(ppds, Mapping) or not ppds:
        raise ValueError("ppds must be a non-empty mapping {method name: PPD}")
    lv = _check_levels(levels)
    drawn = {name: _bands(x, p, lv) for name, p in ppds.items()}
    xs = next(iter(drawn.values()))[0]
    tr = _train_points(train)
    tc = _truth_curve(truth, xs)

    if ylim is None:
        lows = [np.min(b[next(iter(b))][0]) if b else np.min(m) for _, m, b in drawn.values()]
        highs = [np.max(b[next(iter(b))][1]) if b else np.max(m) for _, m, b in drawn.values()]
        for extra in (tr, tc):
            if extra is not None:
                lows.append(np.min(extra[1]))
                highs.append(np.max(extra[1]))
        lo, hi = float(min(lows)), float(max(highs))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ylim = (lo - pad, hi + pad)
    xlo, xhi = float(xs.min()), float(xs.max())
    if tr is not None:
        xlo, xhi = min(xlo, float(tr[0].min())), max(xhi, float(tr[0].max()))

    n = len(ppds)
    ncols = ncols or min(n, 3)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    # Limits are set explicitly below; not sharing axes keeps tick labels on panels whose
    # neighbour below is a hidden spare.
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = grid.reshape(-1)
    for i, (name, (xsi, mean, bands)) in enumerate(drawn.items()):
        ax = axes[i]
        _draw_ppd(ax, xsi, mean, bands, tr, tc, "mean", f"C{i % 10}")
        ax.set_title(name)
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(*ylim)
        if i % ncols == 0:
            ax.set_ylabel("y")
        ax.set_xlabel("x")
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(loc="best", fontsize="small")
    return fig, axes[:n]


def plot_reliability(
    ppd: Distribution,
    labels: Any,
    n_bins: int = 15,
    ax: Axes | None = None,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """Reliability diagram of a classifier: accuracy against confidence per equal-width
    confidence bin, the diagonal of perfect calibration, and the ECE in the title.

    Bars show each non-empty bin's accuracy; the red segments join it to the bin's mean
    confidence (the gap the ECE averages, weighted by the bin's share of points).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> probs = torch.softmax(torch.randn(200, 3), -1)
        >>> fig, ax = plot_reliability(CategoricalPPD(probs[None]), probs.argmax(-1), n_bins=10)
    """
    rb = reliability_bins(ppd, labels, n_bins)
    fig, ax = _new_axes(ax, (4.5, 4.5))
    centres = 0.5 * (rb.edges[:-1] + rb.edges[1:])
    width = 1.0 / n_bins
    filled = rb.counts > 0
    ax.bar(
        centres[filled],
        rb.accuracy[filled],
        width=width,
        color="C0",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    ax.vlines(
        centres[filled],
        rb.accuracy[filled],
        rb.confidence[filled],
        color="C3",
        linewidth=2,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    head = f"{title} — " if title else ""
    ax.set_title(f"{head}ECE = {rb.ece:.4f} ({n_bins} bins)")
    ax.legend(loc="upper left", fontsize="small")
    return fig, ax


def plot_reliability_grid(
    ppds: Mapping[str, Distribution],
    labels: Any,
    n_bins: int = 10,
    ncols: int | None = None,
    panel_size: tuple[float, float] = (3.6, 3.6),
    title: str | None = None,
) -> tuple[Figure, np.ndarray]:
    """One reliability diagram (:func:`plot_reliability`) per method, side by side, all
    on the same labels: e.g. each method's test predictions of every split pooled.

    Args:
        ppds: ``{method name: CategoricalPPD}``, all over the points of ``labels``.
        labels: the true class indices.
        n_bins: equal-width confidence bins.
        ncols: panels per row (default: up to 4).
        title: the figure's title.

    Returns:
        ``(figure, axes)``, one axes per method.

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> probs = torch.softmax(torch.randn(100, 3), -1)
        >>> fig, axes = plot_reliability_grid(
        ...     {"a": CategoricalPPD(probs[None]), "b": CategoricalPPD(probs.flip(-1)[None])},
        ...     probs.argmax(-1))
        >>> [ax.get_title().split(" —")[0] for ax in axes]
        ['a', 'b']
    """
    if not ppds:
        raise ValueError("plot_reliability_grid needs at least one PPD")
    n = len(ppds)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    axes = np.array([fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)])
    for ax, (name, ppd) in zip(axes, ppds.items()):
        plot_reliability(ppd, labels, n_bins=n_bins, ax=ax, title=name)
        ax.title.set_fontsize("small")
        if ax is not axes[0]:
            ax.get_legend().remove()
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig, axes[:n]


def plot_nll_vs_time(
    results: Mapping[str, tuple[Any, Any]] | Any,
    ax: Axes | None = None,
    reference_nll: float | None = None,
    reference_label: str = "reference",
    title: str | None = "NLL against wall time",
) -> tuple[Figure, Axes]:
    """Held-out NLL of each method against its wall time (log-scale time axis), as in the
    PFN paper's BNN figure.

    Args:
        results: ``{method: (seconds, nll)}`` with scalars (one point) or equal-length
            sequences (a curve, e.g. SVI after each number of epochs, NUTS per number of
            draws), or a :class:`~pyrobayes.compare.ComparisonTable` (its ``time_s`` and
            ``nll`` columns; methods without a time are skipped).
        reference_nll: drawn as a horizontal line (e.g. the exact GP's NLL).

    Example::

        >>> fig, ax = plot_nll_vs_time({"PFN": (0.02, 0.31), "SVI": ([1, 10, 60], [0.9, 0.5, 0.4]),
        ...                             "NUTS": ([30, 300], [0.45, 0.3])})
        >>> ax.get_xscale()
        'log'
    """
    if hasattr(results, "columns") and hasattr(results, "column"):
        if "time_s" not in results.columns or "nll" not in results.columns:
            raise ValueError("the comparison table needs 'time_s' and 'nll' columns")
        times, nlls = results.column("time_s"), results.column("nll")
        results = {m: (times[m], nlls[m]) for m in results.methods if times[m] is not None}
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty mapping {method: (seconds, nll)}")
    curves = {}
    for name, pair in results.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"results[{name!r}] must be a pair (seconds, nll), got {pair!r}")
        t = np.atleast_1d(_np(pair[0], f"seconds of {name!r}")).reshape(-1)
        v = np.atleast_1d(_np(pair[1], f"nll of {name!r}")).reshape(-1)
        if t.shape != v.shape:
            raise ValueError(f"{name!r} has {t.size} times but {v.size} NLL values")
        if t.size == 0:
            raise ValueError(f"{name!r} has no points")
        if not np.isfinite(t).all() or (t <= 0).any():
            raise ValueError(
                f"times of {name!r} must be positive seconds (log-scale axis), got {t}"
            )
        if np.isnan(v).any():
            raise ValueError(f"NLL of {name!r} contains NaN")
        order = np.argsort(t, kind="stable")
        curves[name] = (t[order], v[order])

    fig, ax = _new_axes(ax, (6.0, 4.0))
    markers = "osD^v<>pX*"
    for i, (name, (t, v)) in enumerate(curves.items()):
        style = "-" if t.size > 1 else "none"
        ax.plot(
            t, v, marker=markers[i % len(markers)], linestyle=style, color=f"C{i % 10}", label=name
        )
    if reference_nll is not None:
        ax.axhline(float(reference_nll), color="gray", linestyle="--", label=reference_label)
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log scale)")
    ax.set_ylabel("held-out NLL")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig, ax


def _table_rows(table: Any, column: str) -> list[tuple[str, float, float]]:
    """``(method, value, s.e. or 0)`` for the methods that have ``column``."""
    if not (hasattr(table, "columns") and hasattr(table, "rows")):
        raise ValueError(f"expected a ComparisonTable, got {type(table).__name__}")
    if column not in table.columns:
        raise ValueError(f"the table has no column {column!r}; columns: {list(table.columns)}")
    j = table.columns.index(column)
    out = []
    for r in table.rows:
        v = r.values[j]
        if v is None:
            continue
        e = r.errors[j] if r.errors is not None and r.errors[j] is not None else 0.0
        out.append((r.method, float(v), float(e)))
    return out


def plot_metric_errorbars(
    table: Any, column: str = "nll", ax: Axes | None = None, title: str | None = None
) -> tuple[Figure, Axes]:
    """One metric per method with its standard-error bar (e.g. held-out NLL over splits,
    from :func:`~pyrobayes.compare.mean_se_table`); methods without a value are left out.

    Example::

        >>> from pyrobayes.compare import ComparisonRow, ComparisonTable
        >>> t = ComparisonTable("regression", ("nll",), (ComparisonRow("GP", (0.4,), (0.05,)),
        ...                                              ComparisonRow("MLP", (0.9,), (0.2,))))
        >>> fig, ax = plot_metric_errorbars(t)
        >>> [t.get_text() for t in ax.get_yticklabels()]
        ['GP', 'MLP']
    """
    rows = _table_rows(table, column)
    if not rows:
        raise ValueError(f"no method has a value in column {column!r}")
    fig, ax = _new_axes(ax, (6.0, 0.5 + 0.45 * len(rows)))
    ys = np.arange(len(rows))
    for i, (_, v, e) in enumerate(rows):
        ax.errorbar(v, ys[i], xerr=e, fmt="o", color=f"C{i % 10}", capsize=4)
    ax.set_yticks(ys, [m for m, _, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{column} (mean ± s.e.)")
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig, ax


def plot_coverage(
    table: Any, ax: Axes | None = None, title: str | None = "Calibration: interval coverage"
) -> tuple[Figure, Axes]:
    """Empirical coverage of each method's central intervals against their nominal levels
    (the table's ``coverage_<level>`` columns, with s.e. bars); calibrated = on the diagonal.

    Example::

        >>> from pyrobayes.compare import ComparisonRow, ComparisonTable
        >>> t = ComparisonTable("regression", ("coverage_50", "coverage_90"),
        ...                     (ComparisonRow("GP", (0.52, 0.88)),))
        >>> fig, ax = plot_coverage(t)
        >>> len(ax.lines) >= 2  # the diagonal and one method
        True
    """
    cols = [c for c in table.columns if c.startswith("coverage_")]
    if not cols:
        raise ValueError("the table has no coverage_<level> columns")
    nominal = np.array([float(c.removeprefix("coverage_")) / 100 for c in cols])
    fig, ax = _new_axes(ax, (4.5, 4.5))
    lo = max(0.0, float(nominal.min()) - 0.15)
    ax.plot([lo, 1], [lo, 1], color="gray", linestyle="--", label="calibrated")
    per = {c: {m: (v, e) for m, v, e in _table_rows(table, c)} for c in cols}
    markers = "osD^v<>pX*"
    for i, m in enumerate(table.methods):
        pts = [(nominal[k], *per[c][m]) for k, c in enumerate(cols) if m in per[c]]
        if not pts:
            continue
        a = np.array(pts)
        ax.errorbar(
            a[:, 0],
            a[:, 1],
            yerr=a[:, 2],
            marker=markers[i % len(markers)],
            color=f"C{i % 10}",
            capsize=3,
            label=m,
        )
    ax.set_xlabel("nominal level")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    if title:
        ax.set_title(title)
    return fig, ax


def plot_training_curve(
    history: Sequence[Mapping[str, float]] | str | Any,
    ax: Axes | None = None,
    window: int = 5,
    title: str | None = "Training loss",
    log_y: bool = True,
) -> tuple[Figure, Axes]:
    """Loss (and learning rate, when logged) against step of a PFN training run.

    Each logged loss is the mean over one logging window of steps, still noisy when the
    data set size and feature count change every step, so a running median over ``window``
    log entries is drawn on top.

    Args:
        history: ``[{"step": ..., "loss": ..., "lr": ...}, ...]`` as in a checkpoint's
            ``training["history"]``, or the path of a PFN checkpoint (its JSON is read).
        window: log entries per running median (1 = none).
        log_y: log-scale loss axis (isolated spikes from rare extreme data sets would
            otherwise flatten the curve).

    Example::

        >>> hist = [{"step": 100 * (i + 1), "loss": 2.0 / (i + 1), "lr": 1e-3} for i in range(20)]
        >>> fig, ax = plot_training_curve(hist)
        >>> ax.get_xlabel()
        'step'
    """
    if isinstance(history, str) or hasattr(history, "__fspath__"):
        from pyrobayes.pfn.checkpoint import read_checkpoint_json

        history = read_checkpoint_json(history).get("training", {}).get("history")
        if not history:
            raise ValueError("the checkpoint has no training history")
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    try:
        steps = np.array([float(h["step"]) for h in history])
        loss = np.array([float(h["loss"]) for h in history])
    except (KeyError, TypeError) as err:
        raise ValueError("history entries need 'step' and 'loss' keys") from err
    if steps.size == 0:
        raise ValueError("history is empty")
    fig, ax = _new_axes(ax, (6.0, 3.5))
    ax.plot(steps, loss, color="C0", alpha=0.35, label="logged (window mean)")
    if window > 1 and loss.size >= window:
        # a running median: one window holding a rare extreme data set must not smear
        smooth = np.median(np.lib.stride_tricks.sliding_window_view(loss, window), axis=1)
        half = (window - 1) // 2
        ax.plot(steps[half : half + smooth.size], smooth, color="C0", label=f"median of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (NLL per query)")
    if log_y and (loss > 0).all():
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if all("lr" in h for h in history):
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [float(h["lr"]) for h in history], color="C1", linestyle="--")
        lr_ax.set_ylabel("learning rate", color="C1")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return fig, ax
