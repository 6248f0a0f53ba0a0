"""One loading path for every data set: a Hub name, a local folder, or local files.

Everything goes through :func:`datasets.load_dataset`, so the built-in files, a user's
own file and a Hub data set are read by the same code (and cached the same way).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence

import datasets

__all__ = [
    "load_any",
    "read_csv",
    "drop_index_column",
    "require_columns",
    "require_nonempty",
    "DataUnavailableError",
]

# File extension -> packaged `datasets` builder.
_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
}
_PACKAGED = set(_BUILDERS.values())


class DataUnavailableError(ConnectionError):
    """A Hub data set or model could not be reached (offline, or not in the local cache)."""


class _NoRowsError(ValueError):
    """A file with a header (or nothing but blank lines) and no data rows."""


def _builder_for(
    files: str | Sequence[str] | Mapping[str, str | Sequence[str]],
) -> tuple[str, dict]:
    if isinstance(files, Mapping):
        first = next(iter(files.values()), None)
    else:
        first = files
    if not isinstance(first, str):
        first = next(iter(first), None) if first is not None else None
    if first is None:
        raise ValueError("data_files is empty")
    ext = os.path.splitext(first)[1].lower()
    if ext not in _BUILDERS:
        raise ValueError(
            f"cannot tell the format of {first!r}; known extensions: {', '.join(sorted(_BUILDERS))}"
        )
    extra = {"delimiter": "\t"} if ext == ".tsv" else {}
    return _BUILDERS[ext], extra


def _check_files_exist(files) -> None:
    if isinstance(files, Mapping):
        items = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    else:
        items = [files] if isinstance(files, str) else list(files)
    missing = [f for f in items if "*" not in f and "://" not in f and not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"data file(s) not found: {missing}")
    _check_not_empty(f for f in items if "*" not in f and "://" not in f)


def _check_not_empty(files) -> None:
    # `datasets` fails on a 0-byte file with a bare "DatasetGenerationError"; name the file.
    empty = [f for f in files if os.path.isfile(f) and os.path.getsize(f) == 0]
    if empty:
        raise ValueError(f"data file(s) {empty} are empty (0 bytes): no header and no rows")


def load_any(
    name_or_path: str,
    config: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    **kwargs,
) -> datasets.DatasetDict:
    """Load a :class:`datasets.DatasetDict` from a Hub name, a local folder or local files.

    Resolution order:

    1. ``data_files`` given: ``name_or_path`` is a packaged builder (``"parquet"``,
       ``"json"``, ``"csv"``, ``"arrow"``) or ``None``/a path, in which case the builder
       follows the files' extension;
    2. ``name_or_path`` is a file: the builder follows its extension (one ``train`` split);
    3. ``name_or_path`` is a folder written by ``save_to_disk``: :func:`datasets.load_from_disk`;
       any other folder: :func:`datasets.load_dataset` infers builder and splits from the
       file names (``train-*.parquet``, ``test.jsonl``, ...);
    4. otherwise a Hub name, ``load_dataset(name_or_path, config)``. When the Hub is not
       reachable (``HF_HUB_OFFLINE=1`` or no network) and the data set is not cached,
       :class:`DataUnavailableError` says so.

    Example::

        >>> from pyrobayes.data._io import load_any
        >>> from pyrobayes.data import DATA_DIR
        >>> dd = load_any(os.path.join(DATA_DIR, "sentiment_test.jsonl"))
        >>> dd["train"].num_rows
        100
    """
    if data_files is not None:
        _check_files_exist(data_files)
        if name_or_path in _PACKAGED:
            builder, extra = name_or_path, {}
        else:
            builder, extra = _builder_for(data_files)
        return _as_dict(
            _load_dataset(builder, data_files=data_files, quiet=True, **extra, **kwargs)
        )
    if os.path.isfile(name_or_path):
        _check_not_empty([name_or_path])
        builder, extra = _builder_for(name_or_path)
        return _as_dict(
            _load_dataset(
                builder, data_files={"train": name_or_path}, quiet=True, **extra, **kwargs
            )
        )
    if os.path.isdir(name_or_path):
        saved = any(
            os.path.exists(os.path.join(name_or_path, f))
            for f in ("dataset_dict.json", "state.json")
        )
        if saved:
            return _as_dict(datasets.load_from_disk(name_or_path))
        # A local copy of a multi-config Hub repo keeps one sub-folder per config
        # (glue/sst2/...); a plain folder of files has no configs.
        if config is not None and os.path.isdir(os.path.join(name_or_path, config)):
            return _as_dict(_load_dataset(os.path.join(name_or_path, config), quiet=True, **kwargs))
        return _as_dict(_load_dataset(name_or_path, quiet=True, **kwargs))
    looks_local = (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
        or os.path.splitext(name_or_path)[1].lower() in _BUILDERS
    )
    if looks_local:
        raise FileNotFoundError(f"no such file or folder: {name_or_path!r}")
    try:
        return _as_dict(_load_dataset(name_or_path, config, **kwargs))
    except ConnectionError as err:
        raise DataUnavailableError(
            f"could not load {name_or_path!r}{f' ({config})' if config else ''} from the Hugging Face Hub: "
            f"the Hub is not reachable (offline or HF_HUB_OFFLINE=1) and the data set is not in the local "
            f"cache. Pass a local file or folder in the same format instead. ({err})"
        ) from err


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """``datasets``' progress bars ("Generating train split") and info logging off while
    reading local files (a few rows are no progress worth showing); the user's settings
    are restored afterwards, also on an error."""
    bars_were_off = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _files_of_split(data_files, split: str) -> list[str]:
    if isinstance(data_files, Mapping):
        data_files = data_files.get(split, [])
    return [data_files] if isinstance(data_files, str) else list(data_files or [])


def _no_rows_error(split: str, files: list[str]) -> _NoRowsError:
    if len(files) == 1 and files[0].lower().endswith((".csv", ".tsv")):
        return _NoRowsError(f"CSV {files[0]!r} has a header but no data rows")
    return _NoRowsError(f"split {split!r}: data file(s) {files} have no data rows")


def _load_dataset(*args, quiet: bool = False, **kwargs):
    try:
        with _quiet_datasets() if quiet else contextlib.nullcontext():
            return datasets.load_dataset(*args, **kwargs)
    except ValueError as err:
        # `datasets` refuses a file with no rows with a cryptic "Instruction ... corresponds
        # to no data!"; name the file(s) instead.
        msg = str(err)
        if "corresponds to no data" in msg:
            split = msg.split('"')[1] if msg.count('"') >= 2 else "train"
            raise _no_rows_error(split, _files_of_split(kwargs.get("data_files"), split)) from err
        raise


def _as_dict(ds) -> datasets.DatasetDict:
    if isinstance(ds, datasets.Dataset):
        return datasets.DatasetDict({"train": ds})
    return ds


def require_columns(
    ds: datasets.Dataset, columns: Sequence[str], what: str, role: str = "column"
) -> None:
    """Raise ``ValueError`` naming the missing ``columns`` and the ones that exist."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{what}: {role} {', '.join(repr(c) for c in missing)} not found; "
            f"the data has columns {ds.column_names}"
        )


def require_nonempty(dd: Mapping[str, datasets.Dataset], what: str) -> None:
    """Raise ``ValueError`` if there is no split or any split has no rows."""
    if not dd:
        raise ValueError(f"{what}: no splits were loaded")
    empty = [name for name, ds in dd.items() if ds.num_rows == 0]
    if empty:
        raise ValueError(f"{what}: split(s) {empty} are empty")


def read_csv(path: str) -> datasets.Dataset:
    """One local CSV file through ``datasets``' CSV builder, with the errors a user needs:
    a missing file, a file with no data rows, and a file pandas cannot parse (``datasets``
    wraps those in its own types). A row index written as an unnamed first column (pandas'
    ``to_csv``, R's ``write.csv``) is left out with a warning (:func:`drop_index_column`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path!r}")
    try:
        ds = load_any("csv", data_files={"train": path})["train"]
    except _NoRowsError:
        raise
    except Exception as err:
        raise ValueError(f"CSV {path!r} could not be parsed ({type(err).__name__}: {err})") from err
    return drop_index_column(ds, f"CSV {path!r}")


def _is_unnamed(column: str) -> bool:
    # pandas (which `datasets` reads CSVs with) names an empty header cell "Unnamed: <i>".
    return not column.strip() or column == "Unnamed: 0"


def _looks_like_index(values: list) -> bool:
    """Unique, non-missing integers (0..n-1, 1..n, a shuffled or filtered pandas index) or
    unique strings (R's row names): what a written row index holds."""
    if not values or any(v is None for v in values) or len(set(values)) != len(values):
        return False
    if all(isinstance(v, str) for v in values):
        return True
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer()
        for v in values
    )


def drop_index_column(ds: datasets.Dataset, what: str) -> datasets.Dataset:
    """``ds`` without a leading row-index column (a first column with no header name that
    holds an index, as ``DataFrame.to_csv()`` writes it: header ``,a,b,y``), with a
    ``UserWarning`` saying so; an unnamed first column that is not an index is a
    ``ValueError`` (it would silently become a feature called ``Unnamed: 0``).

    Example::

        >>> ds = datasets.Dataset.from_dict({"Unnamed: 0": [0, 1, 2], "a": [1.0, 2.0, 0.5]})
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     drop_index_column(ds, "toy").column_names
        ['a']
        >>> "row index" in str(caught[0].message)
        True
    """
    if not ds.column_names or not _is_unnamed(ds.column_names[0]):
        return ds
    first = ds.column_names[0]
    values = list(ds[first])
    if not _looks_like_index(values):
        raise ValueError(
            f"{what}: the first column has no name in the header and is not a row index "
            f"(its values are not unique integers or labels, e.g. {values[:3]}); give it a "
            "name in the header, or drop it"
        )
    warnings.warn(
        f"{what}: the first column has no name in the header and holds unique row labels "
        f"({', '.join(map(repr, values[:3]))}, ...): a row index, as pandas' to_csv() or R's "
        "write.csv() write it; it is left out (write the file with index=False, or name the "
        "column in the header to use it)",
        UserWarning,
        stacklevel=3,
    )
    return ds.remove_columns(first)
