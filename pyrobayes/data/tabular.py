"""Real regression tables: built-in sets by name, or a CSV file with several features.

* ``"diabetes"`` -- scikit-learn's shipped diabetes data (Efron et al. 2004): 442 patients,
  10 baseline features (age, sex, bmi, bp, s1..s6, raw units), target a measure of disease
  progression one year later.
* ``"motorcycle"`` -- the motorcycle-crash data (Silverman 1985; ``MASS::mcycle``): 133
  rows, head acceleration ``accel`` (g) against ``times`` (ms) after impact; shipped as
  ``mcycle.csv`` (source and licence in ``data/README.md``).
* any ``*.csv`` path: ``x`` columns by name (or ``"all"``: every column but ``y``).

Every table is checked the same way: unknown columns (the message lists the available
ones), non-numeric values (the column and row are named), missing/NaN rows (counted),
constant feature columns (named: standardising them would divide by zero) and too few
rows are clear ``ValueError``\\ s.

Example::

    >>> from pyrobayes.data.tabular import load_tabular
    >>> t = load_tabular("diabetes")
    >>> t.x.shape, t.y.shape, t.feature_names[:3]
    (torch.Size([442, 10]), torch.Size([442]), ('age', 'sex', 'bmi'))
    >>> load_tabular("motorcycle").x.shape
    torch.Size([133, 1])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pyrobayes.data._io import read_csv

__all__ = ["TabularData", "BUILTIN_TABLES", "load_tabular", "MCYCLE_CSV"]

MCYCLE_CSV = os.path.join(os.path.dirname(__file__), "mcycle.csv")
BUILTIN_TABLES = ("diabetes", "motorcycle")


class FeatureRows:
    """What every table (:class:`TabularData`, :class:`~pyrobayes.data.labelled.LabelledData`,
    :class:`~pyrobayes.data.uci.UCIData`) answers about its feature matrix ``x [n, d]``:
    ``len(table)`` is ``n``, ``table.num_features`` is ``d``."""

    @property
    def num_features(self) -> int:
        """``d``, the number of feature columns."""
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class TabularData(FeatureRows):
    """A regression table in raw units: ``x [n, d]``, ``y [n]`` (float64), the names of
    its columns and a line saying where it comes from (:func:`load_tabular` makes it).

    Example::

        >>> t = TabularData(torch.zeros(3, 2, dtype=torch.float64),
        ...                 torch.arange(3.0, dtype=torch.float64), ("a", "b"), "y", "toy")
        >>> len(t), t.num_features
        (3, 2)
    """

    x: torch.Tensor
    y: torch.Tensor
    feature_names: tuple[str, ...]
    target_name: str
    source: str


def feature_matrix(
    columns: dict, x_cols: list[str], what: str, min_rows: int, finite: np.ndarray | None = None
) -> np.ndarray:
    """The float matrix of the feature columns ``x_cols`` of a read table, refusing rows with
    a missing/NaN/infinite value (``finite``: the target's own mask, if it has one), fewer than
    ``min_rows`` rows and constant columns (nothing to standardise). Shared by the regression
    and the labelled-table loaders."""
    x = np.stack([_to_float(columns[c], c, what) for c in x_cols], axis=1)
    ok = np.isfinite(x).all(1) if finite is None else np.isfinite(x).all(1) & finite
    bad = np.flatnonzero(~ok)
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise ValueError(
            f"{what}: {bad.size} row(s) have a missing, NaN or infinite value "
            f"(rows {shown}, counted from 0 after the header); drop or fill them"
        )
    if len(x) < min_rows:
        raise ValueError(f"{what}: {len(x)} row(s), need at least {min_rows}")
    const = [c for j, c in enumerate(x_cols) if np.ptp(x[:, j]) == 0]
    if const:
        raise ValueError(
            f"{what}: constant feature column(s) {const} carry no information and cannot be "
            "standardised (their spread is zero); leave them out of --x"
        )
    return x


def _to_float(values: Sequence, column: str, what: str) -> np.ndarray:
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            out.append(float("nan"))
            continue
        if isinstance(v, bool):
            raise ValueError(
                f"{what}: column {column!r} is boolean (row {i} holds {v!r}), not a number"
            )
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(
                f"{what}: column {column!r} is not numeric (row {i} holds {v!r}); "
                "encode it as numbers or leave it out of --x"
            ) from None
    return np.asarray(out, dtype=np.float64)


def select_columns(
    columns: dict[str, Sequence],
    x_cols: Sequence[str] | str | None,
    y_col: str | None,
    what: str,
    role: str = "target",
) -> list[str]:
    """The feature columns of a read table (``None``/``"all"``/``["all"]``: every column but
    ``y_col``), checked against its columns: ``y_col`` named, every column present, the
    features non-empty, distinct and without ``y_col`` (``role``: what ``y_col`` is called
    in the errors, ``"target"`` or ``"label"``). Shared by the regression and the
    labelled-table loaders."""
    names = list(columns)
    if y_col is None:
        raise ValueError(f"{what}: name the {role} column (--y); columns are {names}")
    if isinstance(x_cols, str):
        x_cols = [x_cols]
    if x_cols is None or list(x_cols) == ["all"]:
        x_cols = [c for c in names if c != y_col]
    x_cols = list(x_cols)
    if not x_cols:
        raise ValueError(f"{what}: no feature columns (the table has only {names})")
    missing = [c for c in [*x_cols, y_col] if c not in columns]
    if missing:
        raise ValueError(
            f"{what}: column(s) {', '.join(repr(c) for c in missing)} not found; "
            f"available columns: {names}"
        )
    if y_col in x_cols:
        raise ValueError(f"{what}: the {role} {y_col!r} is also listed as a feature")
    if len(set(x_cols)) != len(x_cols):
        raise ValueError(f"{what}: feature columns listed twice: {x_cols}")
    return x_cols


def _select(
    columns: dict[str, Sequence],
    x_cols: Sequence[str] | str | None,
    y_col: str | None,
    what: str,
    min_rows: int,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    x_cols = select_columns(columns, x_cols, y_col, what)
    y = _to_float(columns[y_col], y_col, what)
    x = feature_matrix(columns, x_cols, what, min_rows, np.isfinite(y))
    if np.ptp(y) == 0:
        raise ValueError(f"{what}: the target {y_col!r} is constant; nothing to regress")
    return x, y, tuple(x_cols), y_col


def csv_columns(data: str, builtins: Sequence[str], kind: str = "") -> tuple[dict, str, str]:
    """``(columns, what, source)`` of the CSV file ``data``: its columns by name (lists),
    the table's name in errors and the line saying where it comes from. ``data`` neither
    a ``.csv``/``.tsv`` name nor an existing file is a ``FileNotFoundError`` that lists the
    built-in ``kind`` data sets ``builtins`` (shared by the regression and labelled
    loaders)."""
    if not data.lower().endswith((".csv", ".tsv")) and not os.path.exists(data):
        raise FileNotFoundError(
            f"--data {data!r} is neither a built-in {kind}data set ({', '.join(builtins)}) "
            "nor an existing .csv file"
        )
    ds = read_csv(data)
    columns = {c: list(ds[c]) for c in ds.column_names}
    return columns, f"CSV {data!r}", f"CSV {os.path.basename(data)}"


def load_tabular(
    data: str,
    x_cols: Sequence[str] | str | None = None,
    y_col: str | None = None,
    min_rows: int = 4,
) -> TabularData:
    """A regression table by built-in name (``"diabetes"``, ``"motorcycle"``) or CSV path.

    Args:
        data: a built-in name or a path to a ``.csv`` file.
        x_cols: feature columns, or ``None``/``"all"``/``["all"]`` for every column but
            ``y_col``.
        y_col: the target column (built-in sets default to theirs: ``target`` for
            diabetes, ``accel`` for motorcycle).
        min_rows: fewer rows than this is an error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: see the module docstring.

    Example::

        >>> t = load_tabular("diabetes", ["age", "bmi"])
        >>> t.feature_names, t.target_name, len(t)
        (('age', 'bmi'), 'target', 442)
        >>> load_tabular("diabetes", ["age", "weight"])
        Traceback (most recent call last):
        ...
        ValueError: ...'weight'...
    """
    if data == "diabetes":
        from sklearn.datasets import load_diabetes

        raw = load_diabetes(scaled=False)
        names = list(raw.feature_names)
        columns: dict[str, Sequence] = {n: raw.data[:, j] for j, n in enumerate(names)}
        columns["target"] = raw.target
        what, y_col = "diabetes", y_col or "target"
        source = "scikit-learn load_diabetes (Efron et al. 2004), 442 x 10, raw units"
    elif data == "motorcycle":
        columns, _, _ = csv_columns(MCYCLE_CSV, BUILTIN_TABLES)
        what, y_col = "motorcycle", y_col or "accel"
        source = "motorcycle crash (Silverman 1985, MASS::mcycle), 133 rows"
    else:
        columns, what, source = csv_columns(data, BUILTIN_TABLES)
    x, y, xs, yc = _select(columns, x_cols, y_col, what, min_rows)
    return TabularData(
        x=torch.as_tensor(x, dtype=torch.float64),
        y=torch.as_tensor(y, dtype=torch.float64),
        feature_names=xs,
        target_name=yc,
        source=source,
    )
