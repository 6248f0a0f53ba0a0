"""Text classification data: the shipped sentiment set, its out-of-domain companion,
GLUE through ``datasets``, and tokenisation with a model's own tokenizer.

Every loader goes through :func:`datasets.load_dataset` (the shipped ``.jsonl`` files
included), so a user's own file is read exactly like the built-in one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import datasets

from pyrobayes.data._io import load_any, require_columns, require_nonempty

__all__ = [
    "DATA_DIR",
    "GLUE_TASKS",
    "GlueTask",
    "load_sentiment",
    "load_ood_sentences",
    "load_text_classification",
    "load_glue",
    "tokenize",
    "text_columns_of",
]

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
SENTIMENT_FILES = {
    "train": os.path.join(DATA_DIR, "sentiment_train.jsonl"),
    "test": os.path.join(DATA_DIR, "sentiment_test.jsonl"),
}
OOD_FILE = os.path.join(DATA_DIR, "ood_sentences.jsonl")


class GlueTask:
    """Columns and label space of one GLUE task (``num_labels == 1``: regression).

    Example::

        >>> from pyrobayes.data.text import GLUE_TASKS, GlueTask
        >>> GLUE_TASKS["mrpc"]
        GlueTask(text_columns=('sentence1', 'sentence2'), num_labels=2)
        >>> GLUE_TASKS["stsb"].num_labels, GlueTask(("text",), 4).text_columns
        (1, ('text',))
    """

    def __init__(self, text_columns: tuple[str, ...], num_labels: int):
        self.text_columns, self.num_labels = text_columns, num_labels

    def __repr__(self) -> str:
        return f"GlueTask(text_columns={self.text_columns}, num_labels={self.num_labels})"


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), 2),
    "sst2": GlueTask(("sentence",), 2),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2),
    "qqp": GlueTask(("question1", "question2"), 2),
    "stsb": GlueTask(("sentence1", "sentence2"), 1),
    "mnli": GlueTask(("premise", "hypothesis"), 3),
    "mnli_matched": GlueTask(("premise", "hypothesis"), 3),
    "mnli_mismatched": GlueTask(("premise", "hypothesis"), 3),
    "qnli": GlueTask(("question", "sentence"), 2),
    "rte": GlueTask(("sentence1", "sentence2"), 2),
    "wnli": GlueTask(("sentence1", "sentence2"), 2),
    "ax": GlueTask(("premise", "hypothesis"), 3),
}
# GLUE hides test labels and marks them -1.
_HIDDEN_LABEL = -1


def _check_labels(
    ds: datasets.Dataset, label_column: str, num_labels: int | None, what: str
) -> None:
    labels = ds[label_column]
    labels = list(labels)
    if num_labels == 1:  # regression (STS-B): finite floats
        bad = [i for i, v in enumerate(labels) if not isinstance(v, (int, float)) or v != v]
        if bad:
            raise ValueError(
                f"{what}: label column {label_column!r} must hold numbers; bad rows {bad[:10]}"
            )
        return
    bad = [
        i
        for i, v in enumerate(labels)
        if isinstance(v, bool)
        or not isinstance(v, int)
        or v < 0
        or (num_labels is not None and v >= num_labels)
    ]
    if bad:
        expected = f"integers in [0, {num_labels - 1}]" if num_labels else "non-negative integers"
        raise ValueError(
            f"{what}: label column {label_column!r} must hold {expected}; "
            f"{len(bad)} row(s) do not, e.g. row {bad[0]} = {labels[bad[0]]!r}"
        )


def load_text_classification(
    name_or_path: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    text_columns: str | Sequence[str] = "sentence",
    label_column: str = "label",
    num_labels: int | None = None,
    **load_kwargs,
) -> datasets.DatasetDict:
    """A labelled text classification set from a local file/folder or the Hub.

    Checks that the text and label columns exist (naming the ones that do when not),
    that no split is empty, and that labels are integers in ``[0, num_labels)``; the
    label column is renamed to ``label``.

    Example::

        >>> from pyrobayes.data.text import load_text_classification, SENTIMENT_FILES
        >>> dd = load_text_classification("json", data_files=SENTIMENT_FILES)
        >>> dd["train"].num_rows, dd["test"].num_rows
        (350, 100)
    """
    if name_or_path is None and data_files is None:
        raise ValueError("give name_or_path (a Hub name, file or folder) or data_files")
    dd = load_any(name_or_path or "", data_files=data_files, **load_kwargs)
    cols = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    what = f"text data {name_or_path or data_files!r}"
    require_nonempty(dd, what)
    for split, ds in dd.items():
        require_columns(ds, cols, f"{what} split {split!r}", "text column")
        require_columns(ds, [label_column], f"{what} split {split!r}", "label column")
        _check_labels(ds, label_column, num_labels, f"{what} split {split!r}")
    if label_column != "label":
        dd = dd.rename_column(label_column, "label")
    return dd


def load_sentiment() -> datasets.DatasetDict:
    """The shipped sentiment set: 450 hand-written review sentences (products, films,
    restaurants, travel, services, books, ...), balanced, label 1 = positive, 0 = negative,
    split 350 train / 100 test. See ``pyrobayes/data/README.md`` for how it was made.

    Example::

        >>> from pyrobayes.data import load_sentiment
        >>> dd = load_sentiment()
        >>> sorted(set(dd["train"]["label"]))
        [0, 1]
    """
    return load_text_classification("json", data_files=SENTIMENT_FILES, num_labels=2)


def load_ood_sentences() -> datasets.Dataset:
    """160 neutral sentences from other domains (technical instructions, contract clauses,
    recipe steps, weather reports, science facts, notices) for out-of-domain detection
    with a sentiment model; columns ``sentence`` and ``domain``.

    Example::

        >>> from pyrobayes.data import load_ood_sentences
        >>> load_ood_sentences().num_rows
        160
    """
    ds = load_any("json", data_files={"train": OOD_FILE})["train"]
    require_columns(ds, ["sentence"], "out-of-domain sentences")
    return ds


def load_glue(
    task: str,
    name_or_path: str = "glue",
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    label_column: str = "label",
    **load_kwargs,
) -> datasets.DatasetDict:
    """A GLUE task through ``datasets.load_dataset("glue", task)``, or a local copy.

    ``name_or_path`` may also be a local folder or (with ``data_files``) a builder name
    such as ``"parquet"``: the same checks then apply to files in GLUE's format. The task
    name is checked against the GLUE list, its text columns and label column must exist,
    and labels must lie in the task's label space. Splits whose labels are all hidden
    (GLUE marks test labels ``-1``) are dropped with a warning, since they cannot be scored.

    Raises:
        ValueError: unknown task (lists the valid ones), missing columns, bad labels, empty split.
        DataUnavailableError: the Hub is unreachable and the task is not cached.

    Example::

        >>> dd = load_glue("sst2")  # needs the Hub or its cache  # doctest: +SKIP
        >>> dd["train"].column_names  # doctest: +SKIP
        ['sentence', 'label', 'idx']
    """
    key = task.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(GLUE_TASKS)}")
    spec = GLUE_TASKS[key]
    dd = load_any(name_or_path, config=key, data_files=data_files, **load_kwargs)
    what = f"GLUE {key}"
    require_nonempty(dd, what)
    kept = {}
    for split, ds in dd.items():
        require_columns(ds, spec.text_columns, f"{what} split {split!r}", "text column")
        require_columns(ds, [label_column], f"{what} split {split!r}", "label column")
        if spec.num_labels > 1 and all(v == _HIDDEN_LABEL for v in ds[label_column]):
            warnings.warn(
                f"{what}: split {split!r} has hidden labels (-1) and is dropped", stacklevel=2
            )
            continue
        _check_labels(ds, label_column, spec.num_labels, f"{what} split {split!r}")
        kept[split] = ds
    if not kept:
        raise ValueError(f"{what}: no split has labels")
    dd = datasets.DatasetDict(kept)
    if label_column != "label":
        dd = dd.rename_column(label_column, "label")
    return dd


def text_columns_of(ds: datasets.Dataset) -> tuple[str, ...]:
    """Guess the text column(s): ``sentence``/``text``, or a known GLUE sentence pair.

    Example::

        >>> import datasets
        >>> from pyrobayes.data.text import text_columns_of
        >>> pair = datasets.Dataset.from_dict({"premise": ["a"], "hypothesis": ["b"]})
        >>> text_columns_of(pair), text_columns_of(datasets.Dataset.from_dict({"text": ["hi"]}))
        (('premise', 'hypothesis'), ('text',))
        >>> text_columns_of(datasets.Dataset.from_dict({"body": ["hi"]}))
        Traceback (most recent call last):
            ...
        ValueError: cannot tell the text column(s) among ['body']; pass text_columns=... explicitly
    """
    cols = set(ds.column_names)
    for spec in GLUE_TASKS.values():
        if len(spec.text_columns) == 2 and set(spec.text_columns) <= cols:
            return spec.text_columns
    for name in ("sentence", "text"):
        if name in cols:
            return (name,)
    raise ValueError(
        f"cannot tell the text column(s) among {ds.column_names}; pass text_columns=... explicitly"
    )


def tokenize(
    dataset: datasets.Dataset | datasets.DatasetDict,
    tokenizer,
    max_length: int = 128,
    text_columns: str | Sequence[str] | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Tokenise with the model's own tokenizer into torch-formatted columns
    ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the tokenizer makes
    them) plus ``label`` when present.

    Sequences are truncated to ``max_length`` and padded to the longest sequence of the
    split (not to ``max_length``): short review sentences then cost short forward passes,
    and every row of a split has the same length so batches stack without a collator.

    Example::

        >>> from transformers import AutoTokenizer
        >>> from pyrobayes.data import load_sentiment, tokenize
        >>> from pyrobayes.models.hf import default_model_path
        >>> tok = AutoTokenizer.from_pretrained(default_model_path())
        >>> enc = tokenize(load_sentiment()["test"], tok, max_length=64)
        >>> enc[:]["input_ids"].shape[0]
        100
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {k: tokenize(v, tokenizer, max_length, text_columns) for k, v in dataset.items()}
        )
    if dataset.num_rows == 0:
        raise ValueError("tokenize: the split is empty")
    cols = (
        text_columns_of(dataset)
        if text_columns is None
        else ((text_columns,) if isinstance(text_columns, str) else tuple(text_columns))
    )
    require_columns(dataset, cols, "tokenize", "text column")
    if len(cols) > 2:
        raise ValueError(f"tokenize takes one or two text columns, got {cols}")

    def texts(batch):
        return [batch[c] for c in cols]

    lengths = dataset.map(
        lambda b: {
            "_n": [
                len(ids)
                for ids in tokenizer(*texts(b), truncation=True, max_length=max_length)["input_ids"]
            ]
        },
        batched=True,
        remove_columns=dataset.column_names,
    )["_n"]
    pad_to = int(max(lengths))

    def encode(batch):
        return dict(
            tokenizer(*texts(batch), truncation=True, max_length=pad_to, padding="max_length")
        )

    keep = ["label"] if "label" in dataset.column_names else []
    enc = dataset.map(
        encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep]
    )
    model_cols = [
        c for c in ("input_ids", "attention_mask", "token_type_ids") if c in enc.column_names
    ]
    return enc.with_format("torch", columns=model_cols + keep)
