"""One loading path for every data set: a Hub name, a local folder, or local files.

Everything goes through :func:`datasets.load_dataset`, so the built-in files, a user's
own file and a Hub data set are read by the same code (and cached the same way).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import datasets

__all__ = ["load_any", "require_columns", "require_nonempty", "DataUnavailableError"]

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
        return _as_dict(_load_dataset(builder, data_files=data_files, **extra, **kwargs))
    if os.path.isfile(name_or_path):
        _check_not_empty([name_or_path])
        builder, extra = _builder_for(name_or_path)
        return _as_dict(
            _load_dataset(builder, data_files={"train": name_or_path}, **extra, **kwargs)
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
            return _as_dict(_load_dataset(os.path.join(name_or_path, config), **kwargs))
        return _as_dict(_load_dataset(name_or_path, **kwargs))
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


def _load_dataset(*args, **kwargs):
    try:
        return datasets.load_dataset(*args, **kwargs)
    except ValueError as err:
        # `datasets` refuses a file with no rows with a cryptic "Instruction ... corresponds
        # to no data!"; say which split is empty instead.
        msg = str(err)
        if "corresponds to no data" in msg:
            split = msg.split('"')[1] if msg.count('"') >= 2 else "?"
            raise ValueError(f"split(s) [{split!r}] are empty (no rows in its file(s))") from err
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
    """One local CSV file through ``datasets``' CSV builder, with the two errors a user needs:
    a missing file, and a file pandas cannot parse (``datasets`` wraps those in its own types)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path!r}")
    try:
        return load_any("csv", data_files={"train": path})["train"]
    except Exception as err:
        raise ValueError(f"CSV {path!r} could not be parsed ({type(err).__name__}: {err})") from err
