"""What the two table jobs share: the options every one of them has, the command line made
from a config dataclass, the per-split bookkeeping and the output files.

:mod:`pyrobayes.jobs.tabular_regression` (``run_tabular``) and
:mod:`pyrobayes.jobs.tabular_classification` (``run_classify_tabular``) run the same
protocol (seeded splits, features standardised on the training rows, a row per method,
mean ± s.e. over splits, ``compare.md``/``.json``/``.png`` and ``splits.jsonl``); each
keeps only what is its own: its methods, its splits (random vs stratified), its scores
and its figure.

Example::

    >>> from pyrobayes.jobs.tabular_regression import TabularConfig
    >>> isinstance(TabularConfig(data="diabetes"), TableJobConfig)
    True
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import torch

from pyrobayes.options import Option

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyrobayes.compare import ComparisonTable

DEFAULT_SPLITS = 10


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field: its default, its ``--help`` text and ``extra`` metadata (``flag``,
    ``nargs``, ``type``) for :func:`add_dataclass_arguments`."""
    return field(default=default, metadata={"help": help, **extra})


# ----------------------------------------------------------------- the shared options


@dataclass(frozen=True)
class TableJobConfig:
    """The options every table job has; a job's config adds its own fields after these.

    The order matters: ``benchmarks/bench_uci.py`` fingerprints a regression config by its
    fields in order, so only fields that lead the regression config (or that the
    fingerprint leaves out: the data, the row choice, the output) may live here.

    A subclass names its methods (``METHODS``: the :class:`~pyrobayes.options.Option`,
    ``METHOD_KIND``: its name in errors, ``METHOD_ROWS``: each method's table row in the
    table's order), what ``--data`` accepts (``DATA_HINT``) and its extra ``>= 1`` fields
    (``POSITIVE``); it declares ``delta``, ``num_samples``, ``nuts_warmup``,
    ``nuts_samples`` and ``nuts_max_tree_depth`` itself (after its own fields that the
    fingerprint orders before them), which the checks here read; its ``__post_init__``
    calls this one, checks its own fields, then :meth:`_check_selected`.
    """

    METHODS: ClassVar[type[Option]]
    METHOD_KIND: ClassVar[str] = "method"
    METHOD_ROWS: ClassVar[dict[Any, str]]
    DATA_HINT: ClassVar[str]
    POSITIVE: ClassVar[tuple[str, ...]] = ()

    data: str | None = opt(
        None,
        "built-in data set (regression: diabetes, motorcycle; classification: breast_cancer, "
        "wine, iris), a CSV file, a folder in the standard UCI layout (data.txt, index_*.txt) "
        "or uci:<name> (with --data-root)",
        flag="--data",
    )
    x_cols: tuple[str, ...] | None = opt(
        None,
        "feature columns of --data ('all' = every column but --y; default all)",
        flag="--x",
        nargs="+",
        type=str,
    )
    y_col: str | None = opt(
        None, "target or label column (built-in sets know theirs)", flag="--y", type=str
    )
    splits: int | None = opt(
        None,
        f"number of splits: random train/test splits (default {DEFAULT_SPLITS}; stratified "
        "by class for classification), or the first K given splits of a UCI folder (default "
        "all of them)",
        type=int,
    )
    methods: tuple[str, ...] | None = opt(None, "comma-separated rows to run", type=str)
    test_fraction: float = opt(0.1, "held-out fraction of each split (of each class)")
    seed: int = opt(0, "seed of the splits and of every method")
    mlp_steps: int = opt(2000, "most full-batch Adam steps of the MLP (early-stopped)")
    svi_steps: int = opt(2000, "full-batch SVI steps")
    svi_lr: float = opt(1e-3, "Adam step size of SVI")
    nuts_splits: int | None = opt(
        None, "run NUTS on the first K splits only (default: all; the table says so)", type=int
    )
    no_nuts: bool = opt(False, "skip the NUTS reference")
    no_gp: bool = opt(False, "skip the GP")
    out: str = opt("pyrobayes-out", "output folder for compare.png/.json/.md")
    no_progress: bool = opt(False, "hide progress bars")

    def __post_init__(self) -> None:
        if self.data is None:
            raise ValueError(f"--data is required: {self.DATA_HINT}")
        object.__setattr__(self, "methods", self._parse_methods(self.methods))
        shared = ("splits", "mlp_steps", "svi_steps", "num_samples", "nuts_samples")
        for name in (*shared, *self.POSITIVE, "nuts_splits"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {v}")
        if self.nuts_max_tree_depth < 1:
            raise ValueError(f"nuts-max-tree-depth must be >= 1, got {self.nuts_max_tree_depth}")
        if self.nuts_warmup < 0:
            raise ValueError(f"nuts-warmup must be >= 0, got {self.nuts_warmup}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test-fraction must be in (0, 1), got {self.test_fraction}")
        if not self.svi_lr > 0 or not (self.delta is None or self.delta > 0):
            raise ValueError("svi-lr and delta must be positive")

    def _check_selected(self) -> None:
        """Called last by a subclass's ``__post_init__``: some row must be left to run."""
        if not self.selected:
            raise ValueError(
                "no method left to run (--methods less --no-gp/--no-nuts); valid: "
                + self._valid_methods()
            )

    @classmethod
    def _valid_methods(cls) -> str:
        return ", ".join(m.value for m in cls.METHODS)

    @classmethod
    def _parse_methods(cls, value: str | tuple | list | None) -> tuple[str, ...] | None:
        """``--methods`` as a tuple of valid names in the table's order (``None``: all)."""
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else list(value)
        names = [str(v).strip() for v in items if str(v).strip()]
        if not names:
            raise ValueError("--methods is empty; name at least one of " + cls._valid_methods())
        chosen = {cls.METHODS.parse(v, cls.METHOD_KIND) for v in names}
        return tuple(m.value for m in cls.METHOD_ROWS if m in chosen)

    @property
    def selected(self) -> tuple[Any, ...]:
        """The methods whose rows the table shows, in its order: ``methods`` (default all)
        less ``gp`` under ``no_gp`` and ``nuts`` under ``no_nuts``."""
        every = [m.value for m in self.METHODS]
        chosen = {self.METHODS.parse(m) for m in (self.methods or every)}
        dropped = [m for m, off in (("gp", self.no_gp), ("nuts", self.no_nuts)) if off]
        chosen -= {self.METHODS.parse(m) for m in dropped}
        return tuple(m for m in self.METHOD_ROWS if m in chosen)


class TableJobResult(TypedDict):
    """What every table job returns (a ``dict``; a job's result type adds keys): the mean ±
    s.e. ``table``, the same over the splits NUTS ran on when fewer (``nuts_table``, else
    ``None``), ``split_tables``, ``notes`` (what was left out, why), per-split ``infos``
    and the ``files`` written."""

    table: ComparisonTable
    nuts_table: ComparisonTable | None
    split_tables: list[ComparisonTable]
    notes: list[str]
    infos: list[dict[str, Any]]
    files: dict[str, Path]


def job_result(summaries: tuple, split_tables: list, notes: list, infos: list, files: dict) -> dict:
    """The :class:`TableJobResult` keys of a run (``summaries``: ``(table, nuts_table)``)."""
    keys = ("table", "nuts_table", "split_tables", "notes", "infos", "files")
    return dict(zip(keys, (*summaries, split_tables, notes, infos, files)))


# ----------------------------------------------------------------- dataclass -> argparse


def _flag(f) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the dataclass ``cls`` (help from ``metadata["help"]``,
    flag from ``metadata["flag"]`` or ``--field-name``, ``dest`` = the field name).
    Booleans become ``store_true`` switches; ``metadata["nargs"]``/``["type"]`` pass
    through; otherwise the type is the default's. Flags the parser already has (shared
    with another job on the same subcommand) are skipped: :func:`config_from_args` reads
    them by ``dest``.

    Example::

        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Opts:
        ...     n_steps: int = 10
        ...     verbose: bool = False
        >>> p = argparse.ArgumentParser()
        >>> add_dataclass_arguments(p, Opts)
        >>> p.parse_args(["--n-steps", "3", "--verbose"])
        Namespace(n_steps=3, verbose=True)
    """
    for f in fields(cls):
        flag = _flag(f)
        if flag in parser._option_string_actions:
            continue
        default = f.default if f.default is not MISSING else None
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": f.metadata.get("help")}
        if isinstance(default, bool):
            kw["action"] = "store_true"
        else:
            kw["type"] = f.metadata.get("type", type(default) if default is not None else str)
            if "nargs" in f.metadata:
                kw["nargs"] = f.metadata["nargs"]
        parser.add_argument(flag, **kw)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from a namespace filled by :func:`add_dataclass_arguments` (fields
    missing from it keep their defaults; lists become tuples).

    Example::

        >>> from pyrobayes.jobs.tabular_regression import TabularConfig
        >>> p = argparse.ArgumentParser()
        >>> add_dataclass_arguments(p, TabularConfig)
        >>> cfg = config_from_args(TabularConfig, p.parse_args(["--data", "diabetes",
        ...                                                    "--x", "age", "bmi"]))
        >>> cfg.data, cfg.x_cols, cfg.splits  # splits None: 10 random ones (all, for UCI)
        ('diabetes', ('age', 'bmi'), None)
    """
    kw = {}
    for f in fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            # jobs share flags registered once (the first job's defaults): an unset flag
            # whose shared default is None leaves this config's own default in place
            if v is None and f.default is not None and f.default is not MISSING:
                continue
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def run_cli(cls: type, args: argparse.Namespace, job: Callable[[Any], dict]) -> int:
    """A job's ``run(args)``: its config from ``args`` (:func:`config_from_args`), ``job``
    run with one torch thread (tiny nets: a second thread costs more than it saves), then
    the table, the notes and the files written on stdout; returns 0."""
    cfg = config_from_args(cls, args)
    torch.set_num_threads(1)
    result = job(cfg)
    print(result["table"].to_markdown())
    for note in result["notes"]:
        print("note:", note)
    print("wrote " + ", ".join(str(f) for f in result["files"].values()))
    return 0


# ----------------------------------------------------------------- splits


def drop_constant_features(
    x: torch.Tensor, train: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(x without the features constant on the rows train, their indices)``: such a
    feature can inform no method and would divide by a zero std when standardised; every
    feature constant is a ``ValueError``.

    Example::

        >>> x = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 7.0]])
        >>> kept, dropped = drop_constant_features(x, torch.arange(2))
        >>> kept.shape, dropped
        (torch.Size([3, 1]), (1,))
    """
    keep = x[train].std(0) > 0
    if not bool(keep.any()):
        raise ValueError("every feature is constant on this training split")
    return x[:, keep], tuple(torch.nonzero(~keep).reshape(-1).tolist())


def note_dropped(dropped: dict[str, list[int]]) -> list[str]:
    """One note per feature left out of some splits (``{feature: 1-based splits}``)."""
    return [
        f"feature {name!r} is constant on the training rows of split(s) {ks}: left out there"
        for name, ks in dropped.items()
    ]


def record_split(out: str, k: int, n_splits: int, record: dict, t_start: float) -> None:
    """The ``record`` (scores, info) of the run's ``k``-th split (0-based; ``k = 0`` starts
    the file afresh) appended to ``out/splits.jsonl`` as soon as it exists (a long run
    stopped early keeps them) and one progress line on stderr (alive without bars too)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / "splits.jsonl", "w" if k == 0 else "a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    seconds = time.perf_counter() - t_start
    print(f"split {k + 1}/{n_splits} done ({seconds:.0f} s so far)", file=sys.stderr, flush=True)


def summary_tables(
    tables: list[ComparisonTable], methods: list[str], n_nuts: int
) -> tuple[ComparisonTable, ComparisonTable | None]:
    """``(mean ± s.e. over every split, the same over the first n_nuts splits)``; the
    second only when NUTS ran on fewer splits than the others: NUTS's mean is over its own
    splits, so the fair comparison is every method on those (else ``None``)."""
    from pyrobayes.compare import mean_se_table

    summary = mean_se_table(tables, methods=methods)
    nuts_table = (
        mean_se_table(tables[:n_nuts], methods=methods) if 0 < n_nuts < len(tables) else None
    )
    return summary, nuts_table


# ----------------------------------------------------------------- outputs


def write_outputs(
    cfg: Any,
    tab: Any,
    tables: tuple[ComparisonTable, ComparisonTable | None, list[ComparisonTable]],
    infos: list[dict],
    notes: list[str],
    extra: dict[str, Any],
    markdown: str,
) -> dict[str, Path]:
    """``compare.json`` (the config, the data's names, ``extra``, the notes, the summary
    table, the NUTS-splits table, every split's table and info) and ``compare.md``
    (``markdown``) under ``cfg.out``; ``tables`` is ``(summary, nuts_table, per split)``.
    Returns the paths, with ``compare.png`` where the job's figure goes."""
    summary, nuts_table, split_tables = tables
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"png": out / "compare.png", "json": out / "compare.json", "md": out / "compare.md"}
    payload = {
        "config": asdict(cfg),
        "data": tab.source,
        "features": list(tab.feature_names),
        "target": tab.target_name,
        **extra,
        "notes": notes,
        "table": json.loads(summary.to_json()),
        "nuts_table": json.loads(nuts_table.to_json()) if nuts_table is not None else None,
        "split_tables": [json.loads(t.to_json()) for t in split_tables],
        "split_info": infos,
    }
    files["json"].write_text(json.dumps(payload, indent=2, default=str))
    files["md"].write_text(markdown)
    return files


def nuts_subset_md(nuts_table: ComparisonTable | None) -> str:
    """The markdown section of the splits NUTS ran on (empty when it ran on all)."""
    if nuts_table is None:
        return ""
    return (
        "\n## The splits with NUTS (every method on the same splits)\n\n"
        f"{nuts_table.to_markdown()}\n"
    )
