"""Built-in data and loaders, all through Hugging Face ``datasets``.

* images: :func:`load_digits` (scikit-learn's 8x8 digits, the offline default),
  :func:`load_mnist` (Hub or a local file in MNIST's format), :func:`to_tensors`,
  :func:`image_ood` (flipped / transposed / uniform-noise images for OOD detection);
* text: :func:`load_sentiment` (a shipped, hand-written sentiment set),
  :func:`load_ood_sentences` (neutral sentences from other domains), :func:`load_glue`,
  :func:`load_text_classification` (your own file), :func:`tokenize`;
* regression: :func:`regression_from_prior` (1-D data drawn from a BNN prior),
  :func:`load_csv_regression` (one column), :func:`load_tabular` (real tables by name --
  ``diabetes``, ``motorcycle`` -- or a CSV with several feature columns), :func:`load_uci`
  (the UCI benchmark's standard layout with its given splits, read from a folder: never
  shipped);
* classification tables: :func:`load_labelled` (``breast_cancer``, ``wine``, ``iris`` or a
  CSV with a label column; labels kept as written).

Example::

    >>> from pyrobayes.data import load_digits, to_tensors
    >>> x_train, y_train = to_tensors(load_digits()["train"])
"""

from pyrobayes.data._io import DataUnavailableError, load_any
from pyrobayes.data.images import (
    DIGITS_SHAPE,
    ImageOOD,
    image_ood,
    load_digits,
    load_mnist,
    to_tensors,
)
from pyrobayes.data.labelled import BUILTIN_CLASSIFICATION, LabelledData, load_labelled
from pyrobayes.data.regression import RegressionData, load_csv_regression, regression_from_prior
from pyrobayes.data.tabular import BUILTIN_TABLES, TabularData, load_tabular
from pyrobayes.data.text import (
    DATA_DIR,
    GLUE_TASKS,
    load_glue,
    load_ood_sentences,
    load_sentiment,
    load_text_classification,
    text_columns_of,
    tokenize,
)
from pyrobayes.data.uci import UCIData, load_uci

__all__ = [
    "BUILTIN_CLASSIFICATION",
    "BUILTIN_TABLES",
    "DATA_DIR",
    "DIGITS_SHAPE",
    "GLUE_TASKS",
    "DataUnavailableError",
    "ImageOOD",
    "LabelledData",
    "RegressionData",
    "TabularData",
    "UCIData",
    "image_ood",
    "load_any",
    "load_csv_regression",
    "load_digits",
    "load_glue",
    "load_labelled",
    "load_mnist",
    "load_ood_sentences",
    "load_sentiment",
    "load_tabular",
    "load_text_classification",
    "load_uci",
    "regression_from_prior",
    "text_columns_of",
    "to_tensors",
    "tokenize",
]
