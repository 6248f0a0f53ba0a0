"""Image classification data: scikit-learn digits (built in) and MNIST through ``datasets``.

Both come out in one format, a :class:`datasets.DatasetDict` whose rows hold
``pixels`` (the flattened image, floats in [0, 1]) and ``label`` (an integer class), so
the same training code reads either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import torch

from pyrobayes.data._io import load_any, require_columns, require_nonempty
from pyrobayes.options import Option

__all__ = ["load_digits", "load_mnist", "to_tensors", "image_ood", "ImageOOD", "DIGITS_SHAPE"]

DIGITS_SHAPE = (8, 8)
_DIGITS_N = 1797


def _stratified_split(labels: np.ndarray, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified split with exactly ``n_train`` training rows.

    Each class gets ``n_train * n_c / N`` training rows, rounded by the largest-remainder
    rule so that the counts add up exactly.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = n_train * counts / counts.sum()
    take = np.floor(quota).astype(int)
    remainder = n_train - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:remainder]] += 1
    train, test = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:k])
        test.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(n_train: int = 1200, seed: int = 0) -> datasets.DatasetDict:
    """The 8x8 handwritten digits of scikit-learn (1,797 images, 10 classes) as a
    ``DatasetDict`` with a fixed stratified split (default 1,200 train / 597 test).

    Pixels are scaled from the original 0..16 grey levels to [0, 1] (``x / 16``) and
    flattened to 64 values; labels are a :class:`datasets.ClassLabel`.

    Args:
        n_train: training rows; the rest form the test split.
        seed: the split's seed (the default split is the same on every machine).

    Example::

        >>> from pyrobayes.data import load_digits, to_tensors
        >>> dd = load_digits()
        >>> x, y = to_tensors(dd["train"])
        >>> tuple(x.shape), float(x.max()) <= 1.0
        ((1200, 64), True)
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:  # scikit-learn ships the digits; it is only a dev extra
        raise ImportError(
            "the built-in digits data set needs scikit-learn: pip install scikit-learn"
        ) from err
    if not 0 < n_train < _DIGITS_N:
        raise ValueError(f"n_train must be between 1 and {_DIGITS_N - 1}, got {n_train}")
    raw = _sk_load_digits()
    x = (raw.data / 16.0).astype(np.float32)
    y = raw.target.astype(np.int64)
    tr, te = _stratified_split(y, n_train, seed)
    features = datasets.Features(
        {
            "pixels": datasets.Sequence(datasets.Value("float32"), length=x.shape[1]),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"pixels": x[idx], "label": y[idx]}, features=features
            )
            for split, idx in (("train", tr), ("test", te))
        }
    )


def load_mnist(
    name_or_path: str = "ylecun/mnist",
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    image_column: str = "image",
    label_column: str = "label",
    max_per_split: int | None = None,
    **load_kwargs,
) -> datasets.DatasetDict:
    """MNIST (or any image-folder/parquet data set with an image and a label column) as
    flattened pixels in [0, 1], the same format as :func:`load_digits`.

    ``name_or_path`` is a Hub name (``"ylecun/mnist"``, needs the Hub or its cache), a
    local file or folder, or with ``data_files`` a builder name (``"parquet"``); see
    :func:`pyrobayes.data._io.load_any`. Images are converted to grey scale, flattened
    row by row and divided by 255; all images must share one size.

    Args:
        image_column, label_column: the columns holding the image and the class.
        max_per_split: keep only the first rows of each split (quick experiments).

    Example (a local parquet file in the Hub's MNIST format)::

        >>> dd = load_mnist("parquet", data_files={"train": "mnist-train.parquet"})  # doctest: +SKIP
        >>> dd["train"][0]["pixels"].__len__()                                       # doctest: +SKIP
        784
    """
    dd = load_any(name_or_path, data_files=data_files, **load_kwargs)
    require_nonempty(dd, f"load_mnist({name_or_path!r})")
    out = {}
    for split, ds in dd.items():
        require_columns(ds, [image_column], f"load_mnist split {split!r}", "image column")
        require_columns(ds, [label_column], f"load_mnist split {split!r}", "label column")
        if max_per_split is not None:
            ds = ds.select(range(min(max_per_split, ds.num_rows)))
        if not isinstance(ds.features[image_column], datasets.Image):
            # Plain parquet written without Hugging Face metadata stores {bytes, path}.
            ds = ds.cast_column(image_column, datasets.Image())
        out[split] = _flatten_images(ds, image_column, label_column, split)
    sizes = {split: len(ds[0]["pixels"]) for split, ds in out.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"load_mnist: splits have images of different sizes (pixels per image: {sizes})"
        )
    return datasets.DatasetDict(out)


def _flatten_images(
    ds: datasets.Dataset, image_column: str, label_column: str, split: str
) -> datasets.Dataset:
    first = np.asarray(ds[0][image_column].convert("L"))
    shape = first.shape

    def convert(batch):
        pixels = []
        for img in batch[image_column]:
            a = np.asarray(img.convert("L"), dtype=np.float32)
            if a.shape != shape:
                raise ValueError(
                    f"load_mnist split {split!r}: image of size {a.shape}, expected {shape}"
                )
            pixels.append((a / 255.0).reshape(-1))
        labels = batch[label_column]
        if any(
            not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0 for v in labels
        ):
            raise ValueError(
                f"load_mnist split {split!r}: label column {label_column!r} must hold non-negative integers"
            )
        return {"pixels": pixels, "label": labels}

    label_feature = ds.features[label_column]
    if not isinstance(label_feature, datasets.ClassLabel):
        label_feature = datasets.Value("int64")
    features = datasets.Features(
        {
            "pixels": datasets.Sequence(datasets.Value("float32"), length=int(np.prod(shape))),
            "label": label_feature,
        }
    )
    return ds.map(convert, batched=True, remove_columns=ds.column_names, features=features)


def to_tensors(
    ds: datasets.Dataset,
    x_column: str = "pixels",
    y_column: str = "label",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: float32 features ``[N, D]`` and int64 labels ``[N]`` of a split.

    Example::

        >>> from pyrobayes.data import load_digits, to_tensors
        >>> x, y = to_tensors(load_digits()["test"])
        >>> x.shape, y.dtype
        (torch.Size([597, 64]), torch.int64)
    """
    require_columns(ds, [x_column, y_column], "to_tensors")
    if ds.num_rows == 0:
        raise ValueError("to_tensors: the split is empty")
    table = ds.with_format("numpy", columns=[x_column, y_column])[:]
    x = torch.as_tensor(np.stack(table[x_column]).astype(np.float32), device=device)
    y = torch.as_tensor(np.asarray(table[y_column]).astype(np.int64), device=device)
    return x, y


class ImageOOD(Option):
    """Out-of-distribution image sets built from in-distribution images.

    Example (one 2x2 image ``[[0, 1], [2, 3]]``, flattened)::

        >>> import torch
        >>> from pyrobayes.data import image_ood
        >>> from pyrobayes.data.images import ImageOOD
        >>> x = torch.arange(4.0)[None]
        >>> image_ood(x, ImageOOD.FLIP, image_shape=(2, 2))
        tensor([[2., 3., 0., 1.]])
        >>> image_ood(x, "transpose", image_shape=(2, 2))
        tensor([[0., 2., 1., 3.]])
    """

    FLIP = "flip"  # upside down (vertical flip)
    TRANSPOSE = "transpose"  # mirrored along the diagonal
    NOISE = "noise"  # i.i.d. uniform pixels in [0, 1]


def image_ood(
    x: torch.Tensor,
    kind: str | ImageOOD,
    image_shape: tuple[int, int] = DIGITS_SHAPE,
    seed: int = 0,
) -> torch.Tensor:
    """An out-of-distribution copy of the flattened images ``x`` ``[N, H*W]``.

    ``"flip"`` turns each image upside down and ``"transpose"`` mirrors it along the
    diagonal (mostly not a digit any more, though symmetric ones such as 0, 1 and 8 stay
    close to their class); ``"noise"`` draws the same number of images with i.i.d.
    :math:`U(0, 1)` pixels. The result follows ``x``'s device and dtype.

    Example::

        >>> import torch
        >>> from pyrobayes.data import image_ood
        >>> image_ood(torch.rand(5, 64), "noise").shape
        torch.Size([5, 64])
    """
    kind = ImageOOD.parse(kind, "OOD kind")
    h, w = image_shape
    if x.dim() != 2 or x.shape[1] != h * w:
        raise ValueError(
            f"image_ood expects flattened images of shape [N, {h * w}], got {tuple(x.shape)}"
        )
    if kind is ImageOOD.NOISE:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    imgs = x.reshape(-1, h, w)
    imgs = imgs.flip(1) if kind is ImageOOD.FLIP else imgs.transpose(1, 2)
    return imgs.reshape(x.shape[0], h * w).contiguous()
