"""Side-by-side comparison of PPDs from different methods on the same held-out data.

:func:`compare_ppds` scores every PPD with the same metrics (regression or classification,
see :mod:`pyrobayes.metrics`), adds each method's wall time and, for a named reference
method, every method's KL divergence from it, and returns a :class:`ComparisonTable` --
a frozen, pandas-free dataclass renderable as markdown or JSON.

Example::

    >>> import torch
    >>> from pyrobayes.ppd import normal_ppd
    >>> from pyrobayes.compare import compare_ppds
    >>> y = torch.randn(50)
    >>> table = compare_ppds(
    ...     {"exact": normal_ppd(torch.zeros(50), 1.0), "too sure": normal_ppd(torch.zeros(50), 0.3)},
    ...     y, times={"exact": 0.01, "too sure": 0.02}, reference="exact")
    >>> table.best("nll")
    'exact'
    >>> print(table.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Categorical, Distribution, Normal

from pyrobayes.metrics import (
    DEFAULT_LEVELS,
    OODScore,
    classification_metrics,
    kl_divergences_grid,
    regression_metrics,
)
from pyrobayes.options import Option
from pyrobayes.ppd import CategoricalPPD, RegressionPPD

__all__ = [
    "ProblemKind",
    "ComparisonRow",
    "ComparisonTable",
    "compare_ppds",
    "mean_se_table",
    "Stopwatch",
    "stopwatch",
]

FORMAT = "pyrobayes.comparison/1"
TIME_COLUMN = "time_s"
KL_COLUMN = "kl_to_reference"
SE_SUFFIX = "_se"


class ProblemKind(Option):
    """What the PPDs predict: real targets or class labels.

    Example::

        >>> from pyrobayes.compare import ProblemKind
        >>> ProblemKind("classification") is ProblemKind.CLASSIFICATION
        True
        >>> ProblemKind.parse("ranking", "kind")
        Traceback (most recent call last):
            ...
        ValueError: unknown kind 'ranking'; valid: regression, classification
    """

    REGRESSION = "regression"
    CLASSIFICATION = "classification"


# Which way is better for each column; coverage is best closest to its nominal level.
_LOWER_BETTER = {"nll", "crps", "mae", "rmse", "ece", "brier", KL_COLUMN, TIME_COLUMN}
_HIGHER_BETTER = {"accuracy", "roc_auc"}

_LABELS = {
    "nll": "NLL",
    "crps": "CRPS",
    "mae": "MAE",
    "rmse": "RMSE",
    "accuracy": "accuracy",
    "ece": "ECE",
    "brier": "Brier",
    "roc_auc": "ROC-AUC",
    KL_COLUMN: "KL(ref‖·)",
    TIME_COLUMN: "time (s)",
    "r_hat": "R-hat",
    "ess": "bulk ESS",
    "ess_tail": "tail ESS",
    "chains": "chains",
}


def _column_label(column: str) -> str:
    if column in _LABELS:
        return _LABELS[column]
    if column.startswith("coverage_"):
        return f"cov {column.removeprefix('coverage_')}%"
    if column.startswith("auroc_"):
        return f"AUROC ({column.removeprefix('auroc_').replace('_', ' ')})"
    return column


def _score_for_best(column: str, value: float) -> float | None:
    """A number to minimise for ``column``, or None if the column has no 'better' side."""
    if column in _LOWER_BETTER:
        return value
    if column in _HIGHER_BETTER or column.startswith("auroc_"):
        return -value
    if column.startswith("coverage_"):
        try:
            nominal = float(column.removeprefix("coverage_")) / 100
        except ValueError:
            return None
        return abs(value - nominal)
    return None


@dataclass(frozen=True)
class ComparisonRow:
    """One method's scores, aligned with :attr:`ComparisonTable.columns` (None = not
    available, e.g. no wall time given or no OOD data for that method).

    Example::

        >>> from pyrobayes.compare import ComparisonRow, ComparisonTable
        >>> row = ComparisonRow("svi", (0.8, None), errors=(0.05, None))
        >>> table = ComparisonTable("regression", ("nll", "time_s"), (row,))
        >>> table.column("nll"), table.column("time_s"), row.errors[0]
        ({'svi': 0.8}, {'svi': None}, 0.05)
    """

    method: str
    values: tuple[float | None, ...]
    errors: tuple[float | None, ...] | None = None
    """Standard errors of ``values`` (e.g. over data splits; see :func:`mean_se_table`)."""


@dataclass(frozen=True)
class ComparisonTable:
    """Scores of several methods on the same held-out data.

    Attributes:
        kind: ``"regression"`` or ``"classification"``.
        columns: metric names (e.g. ``"nll"``, ``"coverage_90"``, ``"kl_to_reference"``,
            ``"time_s"``), in display order.
        rows: one :class:`ComparisonRow` per method, in the order given.
        reference: the name of the reference method, if any.
        num_points: number of held-out points scored.

    Example::

        >>> t = ComparisonTable("regression", ("nll", "time_s"),
        ...                     (ComparisonRow("a", (1.0, 2.0)), ComparisonRow("b", (0.5, None))))
        >>> t.column("nll")
        {'a': 1.0, 'b': 0.5}
        >>> ComparisonTable.from_json(t.to_json()) == t
        True
    """

    kind: str
    columns: tuple[str, ...]
    rows: tuple[ComparisonRow, ...]
    reference: str | None = None
    num_points: int = 0

    def __post_init__(self) -> None:
        ProblemKind.parse(self.kind, "problem kind")
        names = [r.method for r in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate method names in comparison rows: {names}")
        for r in self.rows:
            if len(r.values) != len(self.columns) or (
                r.errors is not None and len(r.errors) != len(self.columns)
            ):
                raise ValueError(
                    f"row {r.method!r} has {len(r.values)} values for {len(self.columns)} columns"
                )
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not one of the methods {names}")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(r.method for r in self.rows)

    def row(self, method: str) -> dict[str, float | None]:
        """``{column: value}`` for one method."""
        for r in self.rows:
            if r.method == method:
                return dict(zip(self.columns, r.values))
        raise KeyError(f"no method {method!r}; methods: {list(self.methods)}")

    def column(self, name: str) -> dict[str, float | None]:
        """``{method: value}`` for one metric."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {list(self.columns)}")
        j = self.columns.index(name)
        return {r.method: r.values[j] for r in self.rows}

    def best(self, name: str) -> str | None:
        """The method with the best value of a column (lowest NLL, highest accuracy, coverage
        closest to nominal, ...); None if no method has a value."""
        # the reference's KL to itself is 0 by definition, not a result
        scored = [
            (s, m)
            for m, v in self.column(name).items()
            if v is not None
            and not (name == KL_COLUMN and m == self.reference)
            and (s := _score_for_best(name, v)) is not None
        ]
        if not scored:
            return None
        return min(scored, key=lambda t: t[0])[1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"format", "kind", "reference", "num_points", "columns",
        "rows": [{"method": ..., <column>: value, ...}]}``."""
        return {
            "format": FORMAT,
            "kind": self.kind,
            "reference": self.reference,
            "num_points": self.num_points,
            "columns": list(self.columns),
            "rows": [
                {
                    "method": r.method,
                    **dict(zip(self.columns, r.values)),
                    **(
                        {f"{c}{SE_SUFFIX}": e for c, e in zip(self.columns, r.errors)}
                        if r.errors is not None
                        else {}
                    ),
                }
                for r in self.rows
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparisonTable:
        """Inverse of :meth:`to_dict`; rejects dicts of another format."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(
                f"not a pyrobayes comparison table (format {found!r}, expected {FORMAT!r})"
            )
        columns = tuple(data["columns"])
        rows = []
        for r in data["rows"]:
            missing = [c for c in columns if c not in r]
            if "method" not in r or missing:
                raise ValueError(f"comparison row {r!r} lacks 'method' or columns {missing}")
            errors = (
                tuple(_clean(r.get(f"{c}{SE_SUFFIX}")) for c in columns)
                if any(f"{c}{SE_SUFFIX}" in r for c in columns)
                else None
            )
            rows.append(ComparisonRow(r["method"], tuple(_clean(r[c]) for c in columns), errors))
        return cls(
            kind=data["kind"],
            columns=columns,
            rows=tuple(rows),
            reference=data.get("reference"),
            num_points=int(data.get("num_points", 0)),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: missing values are ``null``, infinite ones the strings ``"inf"``/``"-inf"``."""
        data = self.to_dict()
        data["rows"] = [
            {k: _json_value(v) if k != "method" else v for k, v in r.items()} for r in data["rows"]
        ]
        return json.dumps(data, indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ComparisonTable:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def to_markdown(self, precision: int = 4, highlight: bool = True) -> str:
        """A GitHub-flavoured markdown table, one row per method.

        Numbers get ``precision`` significant digits; missing values show as ``—``; with
        ``highlight`` the best value of each column is bold; the reference method is
        marked ``(ref)``.
        """
        best = {c: self.best(c) for c in self.columns} if highlight else {}
        header = ["method", *(_column_label(c) for c in self.columns)]
        align = [":---", *(["---:"] * len(self.columns))]
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
        for r in self.rows:
            name = r.method.replace("|", "\\|")
            if r.method == self.reference:
                name += " (ref)"
            cells = [name]
            errors = r.errors or (None,) * len(self.columns)
            for c, v, e in zip(self.columns, r.values, errors):
                text = "—" if v is None else _format_number(v, precision)
                if v is not None and e is not None:
                    text += f" ± {_format_number(e, 2)}"
                if highlight and v is not None and best.get(c) == r.method and len(self.rows) > 1:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown(highlight=False)


def _format_number(v: float, precision: int) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.{max(precision - 1, 0)}e}"
    return f"{v:.{precision}g}"


def _kind_of(ppd: Any) -> ProblemKind | None:
    if isinstance(ppd, RegressionPPD | Normal):
        return ProblemKind.REGRESSION
    if isinstance(ppd, CategoricalPPD | Categorical):
        return ProblemKind.CLASSIFICATION
    return None


def _clean(v: Any) -> float | None:
    """Metric value as a float; NaN (undefined) becomes None, +-inf stays (a real result,
    e.g. the NLL of a target where a PPD has zero density)."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _json_value(v: float | None) -> float | str | None:
    # strict JSON has no Infinity; keep it as a string that float() reads back
    if v is not None and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _categorical_kl(ref: Distribution, cand: Distribution) -> float:
    """Mean over points of :math:`\\sum_c p_c (\\log p_c - \\log q_c)` (exact, no grid)."""
    p, q = ref.probs, cand.probs.to(ref.probs.device)
    tiny = torch.finfo(p.dtype).tiny
    terms = torch.where(p > 0, p * (p.clamp_min(tiny).log() - q.clamp_min(tiny).log()), 0.0)
    return float(terms.sum(-1).mean())


def _check_ppds(ppds: Mapping[str, Distribution]) -> ProblemKind:
    """Validate the methods' PPDs (names, kind, batch shape, classes); return their kind."""
    if not isinstance(ppds, Mapping) or not ppds:
        raise ValueError("ppds must be a non-empty mapping {method name: PPD}")
    for name in ppds:
        if not isinstance(name, str) or not name:
            raise ValueError(f"method names must be non-empty strings, got {name!r}")
    kinds = {name: _kind_of(p) for name, p in ppds.items()}
    unknown = [n for n, k in kinds.items() if k is None]
    if unknown:
        raise ValueError(
            "not a PPD (RegressionPPD or CategoricalPPD): "
            + ", ".join(f"{n!r} ({type(ppds[n]).__name__})" for n in unknown)
        )
    if len(set(kinds.values())) > 1:
        detail = ", ".join(f"{n!r}: {k.value}" for n, k in kinds.items())
        raise ValueError(f"cannot compare PPDs of different kinds ({detail})")
    kind = next(iter(kinds.values()))
    shapes = {name: tuple(p.batch_shape) for name, p in ppds.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{n!r}: {s}" for n, s in shapes.items())
        raise ValueError(
            f"PPDs must score the same points, but their batch shapes differ ({detail})"
        )
    if kind is ProblemKind.CLASSIFICATION:
        classes = {name: p.probs.shape[-1] for name, p in ppds.items()}
        if len(set(classes.values())) > 1:
            raise ValueError(f"PPDs disagree on the number of classes: {classes}")
    return kind


def _check_options(
    ppds: Mapping[str, Distribution],
    kind: ProblemKind,
    times: Mapping[str, float] | None,
    reference: str | None,
    ood_ppds: Mapping[str, Distribution] | None,
    diagnostics: Mapping[str, Mapping[str, float]] | None,
) -> tuple[dict, dict, dict]:
    """Validate the per-method options of :func:`compare_ppds`; return them as dicts."""
    times = dict(times or {})
    extra = sorted(set(times) - set(ppds))
    if extra:
        raise ValueError(f"times given for unknown methods {extra}; methods: {list(ppds)}")
    for name, t in times.items():
        if t is not None and not (isinstance(t, int | float) and math.isfinite(t) and t >= 0):
            raise ValueError(
                f"time of {name!r} must be a non-negative number of seconds, got {t!r}"
            )
    if reference is not None and reference not in ppds:
        raise ValueError(f"reference {reference!r} is not one of the methods {list(ppds)}")
    ood_ppds = dict(ood_ppds or {})
    if ood_ppds and kind is not ProblemKind.CLASSIFICATION:
        raise ValueError("ood_ppds (OOD AUROC) are only supported for classification PPDs")
    extra = sorted(set(ood_ppds) - set(ppds))
    if extra:
        raise ValueError(f"ood_ppds given for unknown methods {extra}; methods: {list(ppds)}")
    diagnostics = dict(diagnostics or {})
    extra = sorted(set(diagnostics) - set(ppds))
    if extra:
        raise ValueError(f"diagnostics given for unknown methods {extra}; methods: {list(ppds)}")
    return times, ood_ppds, diagnostics


def _ordered_columns(per_method: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Union of the methods' columns, first-seen order, with KL and time last."""
    columns: list[str] = []
    for m in per_method.values():  # union, in first-seen order (OOD columns may be partial)
        columns.extend(c for c in m if c not in columns)
    # keep KL and time last, in that order
    columns = [c for c in columns if c not in (KL_COLUMN, TIME_COLUMN)] + [
        c for c in (KL_COLUMN, TIME_COLUMN) if c in columns
    ]
    return columns


def compare_ppds(
    ppds: Mapping[str, Distribution],
    y_test: Any,
    times: Mapping[str, float] | None = None,
    reference: str | None = None,
    ood_ppds: Mapping[str, Distribution] | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    n_bins: int = 15,
    ood_scores: Sequence[OODScore | str] = ("entropy", "mutual_information"),
    diagnostics: Mapping[str, Mapping[str, float]] | None = None,
) -> ComparisonTable:
    """Score several PPDs of the same held-out points and tabulate them.

    Regression PPDs get NLL, CRPS, MAE, RMSE and central-interval coverage at ``levels``;
    classification PPDs get accuracy, NLL, ECE (``n_bins``), Brier and, for methods with a
    PPD on out-of-distribution inputs in ``ood_ppds``, the OOD AUROC of each score in
    ``ood_scores``. Every table has a ``time_s`` column from ``times`` (wall-clock seconds,
    ``None`` where not given). With ``reference`` (the name of one of the methods, e.g.
    ``"NUTS"`` or ``"exact GP"``), a ``kl_to_reference`` column holds the mean over query
    points of :math:`\\mathrm{KL}(p_\\text{ref} \\| p_\\text{method})` (on a ``y`` grid for
    regression, exact for classification).

    Args:
        ppds: ``{method name: PPD}``, all regression or all classification, all with the
            same batch shape (the held-out points).
        y_test: held-out targets/labels, shape = the PPDs' batch shape.
        times: ``{method name: seconds}``.
        reference: name of the reference method.
        ood_ppds: ``{method name: PPD on OOD inputs}`` (classification only).
        diagnostics: ``{method name: {column: value}}`` shown next to that method's scores,
            e.g. ``{"NUTS": {"r_hat": 1.01, "ess": 310.0}}`` (``None`` for other methods).

    Example::

        >>> import torch
        >>> from pyrobayes.ppd import CategoricalPPD
        >>> labels = torch.tensor([0, 1, 1])
        >>> sure = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]]))
        >>> flat = CategoricalPPD(torch.full((1, 3, 2), 0.5))
        >>> compare_ppds({"sure": sure, "flat": flat}, labels).best("nll")
        'sure'
    """
    kind = _check_ppds(ppds)
    times, ood_ppds, diagnostics = _check_options(
        ppds, kind, times, reference, ood_ppds, diagnostics
    )

    kl = {}
    if reference is not None and kind is ProblemKind.REGRESSION:
        others = {k: v for k, v in ppds.items() if k != reference}
        kl = kl_divergences_grid(ppds[reference], others, reduction="mean")
    per_method: dict[str, dict[str, float]] = {}
    for name, ppd in ppds.items():
        if kind is ProblemKind.REGRESSION:
            m = regression_metrics(ppd, y_test, levels=levels)
        else:
            m = classification_metrics(
                ppd, y_test, n_bins=n_bins, ood_ppd=ood_ppds.get(name), scores=ood_scores
            )
        if reference is not None:
            if name == reference:
                m[KL_COLUMN] = 0.0
            elif kind is ProblemKind.REGRESSION:
                m[KL_COLUMN] = kl[name]
            else:
                m[KL_COLUMN] = _categorical_kl(_as_cat(ppds[reference]), _as_cat(ppd))
        m.update({c: float(v) for c, v in diagnostics.get(name, {}).items()})
        m[TIME_COLUMN] = times.get(name)
        per_method[name] = m

    columns = _ordered_columns(per_method)
    rows = tuple(
        ComparisonRow(name, tuple(_clean(m.get(c)) for c in columns))
        for name, m in per_method.items()
    )
    num_points = int(next(iter(ppds.values())).batch_shape.numel())
    return ComparisonTable(
        kind=kind.value,
        columns=tuple(columns),
        rows=rows,
        reference=reference,
        num_points=num_points,
    )


def mean_se_table(
    tables: Sequence[ComparisonTable], methods: Sequence[str] = ()
) -> ComparisonTable:
    """Mean and standard error over runs (e.g. random train/test splits) of several tables.

    For each method and column, over the :math:`k` runs where the value exists,

    .. math:: \\bar v = \\frac1k \\sum_i v_i, \\qquad
              \\mathrm{s.e.} = \\sqrt{\\tfrac{1}{k(k-1)} \\sum_i (v_i - \\bar v)^2}

    (the s.e. is None for :math:`k < 2`). Rows follow ``methods`` (those no table has get a
    row of ``—``, e.g. a PFN that does not cover the data), then the other methods of the
    tables in first-seen order. ``num_points`` is the total number of held-out points scored.

    Example::

        >>> a = ComparisonTable("regression", ("nll",), (ComparisonRow("m", (1.0,)),))
        >>> b = ComparisonTable("regression", ("nll",), (ComparisonRow("m", (3.0,)),))
        >>> mean_se_table([a, b]).rows[0]
        ComparisonRow(method='m', values=(2.0,), errors=(1.0,))
    """
    if not tables:
        raise ValueError("mean_se_table needs at least one table")
    kinds = {t.kind for t in tables}
    if len(kinds) > 1:
        raise ValueError(f"cannot average tables of different kinds: {sorted(kinds)}")
    refs = {t.reference for t in tables}
    columns: list[str] = []
    names: list[str] = list(dict.fromkeys(methods))
    for t in tables:
        columns.extend(c for c in t.columns if c not in columns)
        names.extend(m for m in t.methods if m not in names)
    columns = [c for c in columns if c not in (KL_COLUMN, TIME_COLUMN)] + [
        c for c in (KL_COLUMN, TIME_COLUMN) if c in columns
    ]
    rows = []
    for m in names:
        values, errors = [], []
        for c in columns:
            vs = [
                v
                for t in tables
                if m in t.methods and c in t.columns and (v := t.row(m)[c]) is not None
            ]
            if not vs:
                values.append(None)
                errors.append(None)
                continue
            k = len(vs)
            mean = math.fsum(vs) / k
            values.append(mean)
            errors.append(
                math.sqrt(math.fsum((v - mean) ** 2 for v in vs) / (k * (k - 1))) if k > 1 else None
            )
        rows.append(ComparisonRow(m, tuple(values), tuple(errors)))
    return ComparisonTable(
        kind=kinds.pop(),
        columns=tuple(columns),
        rows=tuple(rows),
        reference=refs.pop() if len(refs) == 1 else None,
        num_points=sum(t.num_points for t in tables),
    )


def _as_cat(ppd: Distribution) -> CategoricalPPD:
    return ppd if isinstance(ppd, CategoricalPPD) else CategoricalPPD(ppd.probs.unsqueeze(0))


@dataclass
class Stopwatch:
    """Wall-clock seconds of a ``with stopwatch():`` block (``seconds`` is set on exit).

    Example::

        >>> import math, time
        >>> from pyrobayes.compare import Stopwatch, stopwatch
        >>> math.isnan(Stopwatch().seconds)  # not timed yet
        True
        >>> with stopwatch() as sw:
        ...     time.sleep(0.01)
        >>> 0.01 <= sw.seconds < 1.0
        True
    """

    seconds: float = math.nan


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """Time a block for the ``times`` of :func:`compare_ppds`.

    Example::

        >>> with stopwatch() as sw:
        ...     _ = sum(range(1000))
        >>> sw.seconds >= 0
        True
    """
    sw = Stopwatch()
    start = time.perf_counter()
    try:
        yield sw
    finally:
        sw.seconds = time.perf_counter() - start
