"""Labelled tables for classification: built-in sets by name, or a CSV with a label column.

* ``"breast_cancer"`` -- scikit-learn's Wisconsin diagnostic breast cancer data (Street et
  al. 1993): 569 tumours x 30 features, labels ``"malignant"``/``"benign"``.
* ``"wine"`` -- scikit-learn's wine recognition data (Forina et al.): 178 wines x 13
  chemical features, labels ``"class_0"``, ``"class_1"``, ``"class_2"``.
* ``"iris"`` -- Fisher's iris (1936): 150 flowers x 4 features, labels ``"setosa"``,
  ``"versicolor"``, ``"virginica"``.
* any ``*.csv`` path: feature columns by name (or ``"all"``), the label column ``y_col``.

Labels stay what the user wrote: the classes are the column's distinct values (strings stay
strings, integers integers), sorted, and class index ``k`` is ``classes[k]``
(:meth:`LabelledData.decode` maps indices back). Features are checked as for regression
(as :func:`~pyrobayes.data.tabular.load_tabular`: unknown or non-numeric columns, NaN rows,
constant columns are named ``ValueError``\\ s); a missing label (NaN or an empty cell) and
a label column with a single class are errors too.

:func:`looks_like_labels` is the rule ``pyrobayes compare --task auto`` uses: a column
holding text, or whole numbers with at most ``max_classes`` distinct values, is a label.

Example::

    >>> from pyrobayes.data.labelled import load_labelled
    >>> t = load_labelled("iris")
    >>> t.x.shape, t.classes
    (torch.Size([150, 4]), ('setosa', 'versicolor', 'virginica'))
    >>> t.decode(t.y[:2])
    ['setosa', 'setosa']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pyrobayes.data.tabular import FeatureRows, csv_columns, feature_matrix, select_columns

__all__ = [
    "LabelledData",
    "BUILTIN_CLASSIFICATION",
    "MAX_AUTO_CLASSES",
    "load_labelled",
    "encode_labels",
    "looks_like_labels",
    "label_column",
]

BUILTIN_CLASSIFICATION = ("breast_cancer", "wine", "iris")
# "few distinct values": the classification prior covers 2..10 classes
MAX_AUTO_CLASSES = 10


@dataclass(frozen=True)
class LabelledData(FeatureRows):
    """A classification table: ``x [n, d]`` (float64, raw units), ``y [n]`` (class indices,
    ``long``), ``classes`` (the label of each index, as written in the data), the column
    names and a line saying where it comes from.

    Example::

        >>> t = LabelledData(torch.zeros(3, 1, dtype=torch.float64), torch.tensor([1, 0, 1]),
        ...                  ("no", "yes"), ("a",), "y", "toy")
        >>> len(t), t.num_classes, t.decode(t.y)
        (3, 2, ['yes', 'no', 'yes'])
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple
    feature_names: tuple[str, ...]
    target_name: str
    source: str

    @property
    def num_classes(self) -> int:
        """``C``, the number of distinct labels."""
        return len(self.classes)

    def decode(self, indices: Any) -> list:
        """Class indices -> the labels as written in the data (a list)."""
        return [self.classes[int(i)] for i in torch.as_tensor(indices).reshape(-1)]


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    return isinstance(v, float) and math.isnan(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def looks_like_labels(values: Sequence, max_classes: int = MAX_AUTO_CLASSES) -> bool:
    """Whether a column reads as class labels rather than a real target: it holds text (or
    booleans), or only whole numbers with at most ``max_classes`` distinct values. Missing
    cells are ignored here (:func:`encode_labels` refuses them).

    Example::

        >>> looks_like_labels(["cat", "dog", "cat"]), looks_like_labels([0, 1, 1, 0])
        (True, True)
        >>> looks_like_labels([0.5, 1.2, 3.3]), looks_like_labels(list(range(50)))
        (False, False)
    """
    present = [v for v in values if not _missing(v)]
    if not present:
        return False
    if not all(_is_number(v) for v in present):
        return True
    if not all(float(v).is_integer() for v in present):
        return False
    return len(set(float(v) for v in present)) <= max_classes


def _label_sort_key(v: Any) -> tuple:
    # numbers in numeric order, then anything else by its text (one column is one type
    # after pandas, but a hand-built list may mix them)
    return (0, float(v), "") if _is_number(v) else (1, 0.0, str(v))


def _plain(v: Any) -> Any:
    """numpy scalars as Python ones (JSON, CSV and ``==`` against the user's values)."""
    return v.item() if isinstance(v, np.generic) else v


def encode_labels(values: Sequence, column: str = "label", what: str = "data") -> tuple:
    """``(indices, classes)``: each value's index into the sorted distinct ``classes``
    (the values as written: strings stay strings). Missing labels (None, NaN, empty
    text) and a single class are ``ValueError``\\ s naming the column.

    Example::

        >>> idx, classes = encode_labels(["b", "a", "b"])
        >>> idx.tolist(), classes
        ([1, 0, 1], ('a', 'b'))
        >>> encode_labels([3, 3], column="y")
        Traceback (most recent call last):
        ...
        ValueError: data: the label column 'y' holds one class only (3); a classifier needs at least two
    """
    values = [_plain(v) for v in values]
    bad = [i for i, v in enumerate(values) if _missing(v)]
    if bad:
        shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(
            f"{what}: the label column {column!r} has {len(bad)} missing or NaN label(s) "
            f"(rows {shown}, counted from 0 after the header); drop or fill them"
        )
    classes = tuple(sorted(set(values), key=_label_sort_key))
    if len(classes) < 2:
        shown = repr(classes[0]) if classes else "no rows"
        raise ValueError(
            f"{what}: the label column {column!r} holds one class only ({shown}); a "
            "classifier needs at least two"
        )
    index = {c: k for k, c in enumerate(classes)}
    return torch.tensor([index[v] for v in values], dtype=torch.long), classes


def _builtin(name: str) -> tuple[dict[str, Sequence], str, str]:
    """``(columns, label column, source)`` of a scikit-learn set; labels as its class names."""
    from sklearn import datasets as skd

    loader, source = {
        "breast_cancer": (
            skd.load_breast_cancer,
            "scikit-learn load_breast_cancer (Wisconsin diagnostic), 569 x 30",
        ),
        "wine": (skd.load_wine, "scikit-learn load_wine (UCI wine recognition), 178 x 13"),
        "iris": (skd.load_iris, "scikit-learn load_iris (Fisher 1936), 150 x 4"),
    }[name]
    raw = loader()
    columns: dict[str, Sequence] = {n: raw.data[:, j] for j, n in enumerate(raw.feature_names)}
    columns["label"] = [str(raw.target_names[k]) for k in raw.target]
    return columns, "label", source


def _builtin_name(data: str) -> str | None:
    key = data.strip().lower().replace("-", "_")
    return key if key in BUILTIN_CLASSIFICATION else None


def _columns(data: str) -> tuple[dict[str, Sequence], str | None, str, str]:
    """``(columns, default label column, what, source)`` of a built-in name or a CSV."""
    name = _builtin_name(data)
    if name is not None:
        columns, y_default, source = _builtin(name)
        return columns, y_default, name, source
    columns, what, source = csv_columns(data, BUILTIN_CLASSIFICATION, "labelled ")
    return columns, None, what, source


def label_column(data: str, y_col: str | None = None) -> tuple[list, str] | None:
    """The label column's values and name (``None`` when ``y_col`` is not given and
    ``data`` has no default): what ``--task auto`` inspects.

    Example::

        >>> values, name = label_column("wine")
        >>> name, values[0]
        ('label', 'class_0')
    """
    columns, y_default, what, _ = _columns(data)
    y_col = y_col or y_default
    if y_col is None:
        return None
    if y_col not in columns:
        raise ValueError(f"{what}: column {y_col!r} not found; available columns: {list(columns)}")
    return list(columns[y_col]), y_col


def load_labelled(
    data: str,
    x_cols: Sequence[str] | str | None = None,
    y_col: str | None = None,
    min_rows: int = 4,
) -> LabelledData:
    """A classification table by built-in name (``"breast_cancer"``, ``"wine"``,
    ``"iris"``) or CSV path; ``y_col`` is the label column (built-in sets: ``"label"``),
    ``x_cols`` the features (``None``/``"all"``: every other column).

    Example::

        >>> t = load_labelled("breast_cancer")
        >>> t.x.shape, t.classes, int((t.y == 1).sum())   # 357 benign, 212 malignant
        (torch.Size([569, 30]), ('benign', 'malignant'), 212)
    """
    columns, y_default, what, source = _columns(data)
    y_col = y_col or y_default
    x_cols = select_columns(columns, x_cols, y_col, what, role="label")
    y, classes = encode_labels(list(columns[y_col]), y_col, what)
    x = feature_matrix(columns, x_cols, what, min_rows)
    return LabelledData(
        x=torch.as_tensor(x, dtype=torch.float64),
        y=y,
        classes=classes,
        feature_names=tuple(x_cols),
        target_name=y_col,
        source=source,
    )
