"""``pyrobayes classify text``: a MiniLM BERT fine-tuned on a sentence-classification set
against its Bayesian version (a chosen part of it; MOPED guide + SVI), scored on the test
split and on out-of-domain sentences.

A smoke run (``run_text(smoke=True)``, a few seconds) is in ``tests/test_classify.py``;
the options are checked before anything is loaded or trained.

Example::

    >>> from pyrobayes.jobs.classify.text import run_text
    >>> run_text(bayes="middle")
    Traceback (most recent call last):
    ...
    ValueError: unknown Bayesian part 'middle'; valid: head, head+last, all, last:K
"""

from __future__ import annotations

import torch
from torch import nn

from pyrobayes.jobs.classify.result import (
    BAYES,
    DET,
    ClassifyResult,
    bayesianize_and_fit,
    finish_result,
    log,
    point_ppd,
    resolve_device,
    svi_step_seconds,
)
from pyrobayes.ppd import CategoricalPPD

__all__ = ["run_text", "bayesian_text_ppd"]


def _subset(ds, n: int | None):
    return ds if n is None or ds.num_rows <= n else ds.shuffle(seed=0).select(range(n))


@torch.no_grad()
def bayesian_text_ppd(
    model: nn.Module,
    guide: nn.Module,
    encoded,
    num_samples: int,
    batch_size: int = 64,
    max_floats_per_chunk: float = 2e7,
) -> CategoricalPPD:
    """Posterior predictive of a Bayesian transformer classifier over a tokenised split.

    The same ``num_samples`` weight draws score every sentence. Draws are made in chunks
    so that at most ``max_floats_per_chunk`` sampled weights live in memory at once
    (head + last MiniLM layer: ~1.9M weights per draw), and sentences go through in
    batches of ``batch_size``.

    Example (a tiny randomly initialised BERT with a Bayesian head, so nothing is loaded;
    ``max_floats_per_chunk=60`` forces one head draw of 27 weights per chunk)::

        >>> import datasets, torch, transformers
        >>> from pyrobayes import to_bayesian
        >>> from pyrobayes.jobs.classify.text import bayesian_text_ppd
        >>> cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
        ...                               num_attention_heads=2, intermediate_size=16, num_labels=3)
        >>> bert = transformers.BertForSequenceClassification(cfg)
        >>> model, guide = to_bayesian(bert, likelihood="categorical", include="classifier")
        >>> encoded = datasets.Dataset.from_dict(
        ...     {"input_ids": [[1, 5, 2], [1, 7, 2]], "attention_mask": [[1, 1, 1]] * 2}
        ... ).with_format("torch")
        >>> guide.setup(**encoded[:])  # fit() does this in a pipeline
        >>> ppd = bayesian_text_ppd(model, guide, encoded, num_samples=4, batch_size=1,
        ...                         max_floats_per_chunk=60)
        >>> ppd
        CategoricalPPD(draws=4, batch_shape=(2,), classes=3)
        >>> torch.allclose(ppd.probs.sum(-1), torch.ones(2))
        True
    """
    from pyrobayes.infer import forward_draws, sample_posterior
    from pyrobayes.infer.predictive import posterior_chunks
    from pyrobayes.models.hf import model_inputs

    model.eval()
    n_weights = sum(int(torch.as_tensor(v).numel()) for v in sample_posterior(guide, 1).values())
    chunk = max(1, min(num_samples, int(max_floats_per_chunk // max(1, n_weights))))
    device = next(iter(model.buffers())).device
    outs = []
    for draws in posterior_chunks(guide, num_samples, chunk):
        per_batch = []
        for start in range(0, len(encoded), batch_size):
            inputs = model_inputs(encoded[start : start + batch_size], device)
            per_batch.append(forward_draws(model, draws, **inputs))
        outs.append(torch.cat(per_batch, dim=1))
    return model.likelihood.ppd(torch.cat(outs))


def run_text(
    task: str = "sentiment",
    model_name: str | None = None,
    bayes: str = "head+last",
    epochs: int = 5,
    svi_epochs: int = 20,
    num_samples: int = 30,
    delta: float = 0.05,
    prior_scale: float = 0.02,
    lr: float = 1e-4,
    svi_lr: float = 5e-2,
    svi_loss: str = "meanfield",
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
    out: str | None = None,
    progress: bool = True,
    smoke: bool = False,
    device: str | torch.device | None = None,
    verbose: bool = True,
) -> ClassifyResult:
    """Fine-tuned vs Bayesian MiniLM sentence classifier.

    The pretrained encoder (``model_name``; default the shipped MiniLM-L6) gets a new
    classification head and is fine-tuned ``epochs`` epochs on ``task`` (``"sentiment"``:
    the shipped set; or a GLUE task name, through :func:`~pyrobayes.data.load_glue`). The
    part chosen by ``bayes`` (:func:`~pyrobayes.models.hf.bayesian_include`: ``"head"``,
    ``"head+last"``, ``"last:K"``, ``"all"``) then becomes Bayesian with a MOPED guide
    around the fine-tuned weights and prior :math:`\\mathcal N(w_\\text{ft}, s^2)`; the
    rest is frozen at its fine-tuned value. SVI runs ``svi_epochs`` epochs. Both are scored
    on the test split (GLUE: validation) and, for single-sentence tasks, on the shipped
    out-of-domain sentences.

    The defaults (prior scale 0.02, SVI lr 0.05 for 20 epochs) come from a small sweep on
    the shipped set: with 350 sentences and ~1.9M Bayesian weights the posterior of most
    weights is their prior, so a prior as wide as the weights themselves (0.1) wrecks the
    fine-tuned layer, while 0.01 hardly changes the predictions.

    ``smoke=True``: 8 training and 6 test/OOD sentences, one epoch each, 2 draws.

    Example (the shipped-set run of ``benchmarks/RESULTS.md``, about 3.5 minutes on one
    CPU thread, so it is not run here; ``tests/test_classify.py`` runs ``smoke=True``; bad
    options fail before anything is loaded)::

        >>> result = run_text(progress=False, verbose=False)  # doctest: +SKIP
        >>> bayes = result.table.row("bayesian")  # doctest: +SKIP
        >>> bayes["accuracy"], round(bayes["ece"], 3)  # doctest: +SKIP
        (0.89, 0.048)
        >>> run_text(num_samples=0)
        Traceback (most recent call last):
            ...
        ValueError: need num_samples >= 1, epochs >= 0 and svi_epochs >= 0
    """
    import datasets

    from pyrobayes.models.hf import fine_tune, parse_part, predict_logits

    if num_samples < 1 or svi_epochs < 0 or epochs < 0:
        raise ValueError("need num_samples >= 1, epochs >= 0 and svi_epochs >= 0")
    parse_part(bayes)  # fail before any loading or training
    dev = resolve_device(device)
    if not progress:
        datasets.disable_progress_bars()
    train, test, ood, single, num_labels = _load_splits(task, smoke)
    if smoke:
        epochs, svi_epochs, num_samples = min(epochs, 1), min(svi_epochs, 1), min(num_samples, 2)
        max_length, batch_size = min(max_length, 24), min(batch_size, 8)
    settings = {
        "epochs": epochs,
        "svi_epochs": svi_epochs,
        "num_samples": num_samples,
        "delta": delta,
        "prior_scale": prior_scale,
        "lr": lr,
        "svi_lr": svi_lr,
        "svi_loss": svi_loss,
        "batch_size": batch_size,
        "max_length": max_length,
        "seed": seed,
    }
    model, enc_train, enc_test, enc_ood = _load_model_and_encode(
        model_name, num_labels, train, test, ood if single else None, max_length, seed, dev
    )

    hist = fine_tune(
        model, enc_train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress
    )
    t_det = float(sum(hist["step_time"]))
    y_te = enc_test[:]["label"].to(dev)
    det = point_ppd(predict_logits(model, enc_test))
    det_ood = point_ppd(predict_logits(model, enc_ood)) if single else None

    include, n_bayes = _choose_bayesian_part(model, bayes)
    bmodel, guide, history, t_svi = _fit_bayesian(
        model, enc_train, include, settings, dev, progress
    )
    bay = bayesian_text_ppd(bmodel, guide, enc_test, num_samples)
    bay_ood = bayesian_text_ppd(bmodel, guide, enc_ood, num_samples) if single else None

    ppds = {DET: det, BAYES: bay}
    ood_sets = {"other-domain sentences": {DET: det_ood, BAYES: bay_ood}} if single else {}
    sizes = (len(enc_train), len(enc_test), len(enc_ood) if single else 0)
    info = _run_info(task, bayes, n_bayes, include, sizes, settings, dev, smoke)
    info.update(_timing_info(t_det, hist, t_svi, history, settings, len(enc_train)))
    log(verbose, f"Bayesian part {bayes!r}: {n_bayes:,} weights in {include}")
    main_ood = "other-domain sentences" if single else None
    times = {DET: t_det, BAYES: t_svi}
    return finish_result("text", ppds, y_te, ood_sets, main_ood, times, info, out, verbose)


def _load_task(task: str):
    """``(dataset dict, test split name, number of labels)`` for ``task``."""
    from pyrobayes.data import load_glue, load_sentiment

    if task == "sentiment":
        return load_sentiment(), "test", 2
    from pyrobayes.data.text import GLUE_TASKS

    dd = load_glue(task)
    spec = GLUE_TASKS[task.lower().replace("-", "")]
    if spec.num_labels < 2:
        raise ValueError(
            f"GLUE task {task!r} is a regression task; classify needs a classification task"
        )
    test_split = "validation" if "validation" in dd else next(s for s in dd if s != "train")
    return dd, test_split, spec.num_labels


def _load_splits(task: str, smoke: bool):
    """Train, test and other-domain sentences (cut down when ``smoke``), whether the task
    is a single-sentence one, and its number of labels."""
    from pyrobayes.data import load_ood_sentences, text_columns_of

    dd, test_split, num_labels = _load_task(task)
    train, test = dd["train"], dd[test_split]
    ood = load_ood_sentences().select_columns(["sentence"])
    # The other-domain sentences are single sentences: they only make sense as OOD inputs
    # for single-sentence tasks (not for sentence-pair tasks such as MNLI).
    single = len(text_columns_of(train)) == 1
    if smoke:
        train, test, ood = _subset(train, 8), _subset(test, 6), _subset(ood, 6)
    return train, test, ood, single, num_labels


def _load_model_and_encode(model_name, num_labels, train, test, ood, max_length, seed, dev):
    """The seeded pretrained classifier on ``dev`` and the tokenised splits (``ood`` may be
    ``None``)."""
    from pyrobayes.data import tokenize
    from pyrobayes.models.hf import load_sequence_classifier

    torch.manual_seed(seed)
    model, tokenizer = load_sequence_classifier(model_name, num_labels=num_labels)
    model.to(dev)
    enc_train = tokenize(train, tokenizer, max_length)
    enc_test = tokenize(test, tokenizer, max_length)
    enc_ood = tokenize(ood, tokenizer, max_length) if ood is not None else None
    return model, enc_train, enc_test, enc_ood


def _choose_bayesian_part(model: nn.Module, bayes: str):
    """Freeze all but the part ``bayes`` names; returns its include patterns and size."""
    from pyrobayes.models.hf import bayesian_include, parameters_under

    include = bayesian_include(model, bayes)
    chosen = set(parameters_under(model, include))
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)  # the deterministic rest stays at its fine-tuned value
    n_bayes = sum(p.numel() for n, p in model.named_parameters() if n in chosen)
    return include, n_bayes


def _fit_bayesian(model, enc_train, include, settings: dict, dev, progress: bool):
    """SVI on the chosen part (:func:`~pyrobayes.jobs.classify.result.bayesianize_and_fit`) over
    shuffled minibatches of ``enc_train``."""
    gen = torch.Generator().manual_seed(settings["seed"])
    loader = torch.utils.data.DataLoader(
        enc_train, batch_size=settings["batch_size"], shuffle=True, generator=gen
    )
    return bayesianize_and_fit(
        model,
        loader,
        delta=settings["delta"],
        prior_scale=settings["prior_scale"],
        name="text_bnn",
        svi_epochs=settings["svi_epochs"],
        svi_lr=settings["svi_lr"],
        svi_loss=settings["svi_loss"],
        seed=settings["seed"],
        progress=progress,
        include=include,
        device=dev,
    )


def _run_info(task, bayes, n_bayes, include, sizes, settings: dict, dev, smoke: bool) -> dict:
    """The run's sizes and settings for ``ClassifyResult.info``."""
    n_train, n_test, n_ood = sizes
    return {
        "task": task,
        "bayes": bayes,
        "bayesian_parameters": n_bayes,
        "include": include,
        "n_train": n_train,
        "n_test": n_test,
        "n_ood": n_ood,
        **settings,
        "device": str(dev),
        "smoke": smoke,
    }


def _timing_info(t_det, hist, t_svi, history, settings: dict, n_train: int) -> dict:
    """Fine-tuning and SVI timings and the ELBO trace for ``ClassifyResult.info``."""
    svi_epochs, batch_size = settings["svi_epochs"], settings["batch_size"]
    return {
        "finetune_seconds": t_det,
        "svi_seconds": t_svi,
        "finetune_step_seconds": t_det / max(1, len(hist["step_time"])),
        "svi_step_seconds": svi_step_seconds(t_svi, svi_epochs, n_train, batch_size),
        "elbo_loss_per_point": history.losses,
    }
