"""``pyrobayes classify text``: a MiniLM BERT fine-tuned on a sentence-classification set
against its Bayesian version (a chosen part of it; MOPED guide + SVI), scored on the test
split and on out-of-domain sentences.

A smoke run (``run_text(smoke=True)``, a few seconds) is in ``tests/test_classify.py``;
the options are checked before anything is loaded or trained.

Example::

    >>> from pyrobayes.classify.text import run_text
    >>> run_text(bayes="middle")
    Traceback (most recent call last):
    ...
    ValueError: unknown Bayesian part 'middle'; valid: head, head+last, all, last:K
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from pyrobayes.classify.result import (
    BAYES,
    DET,
    ClassifyResult,
    finish_result,
    log,
    point_ppd,
    resolve_device,
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
    """
    import datasets

    from pyrobayes.data import (
        load_glue,
        load_ood_sentences,
        load_sentiment,
        text_columns_of,
        tokenize,
    )
    from pyrobayes.infer import fit
    from pyrobayes.model import to_bayesian
    from pyrobayes.models.hf import (
        bayesian_include,
        fine_tune,
        load_sequence_classifier,
        parameters_under,
        parse_part,
        predict_logits,
    )

    if num_samples < 1 or svi_epochs < 0 or epochs < 0:
        raise ValueError("need num_samples >= 1, epochs >= 0 and svi_epochs >= 0")
    parse_part(bayes)  # fail before any loading or training
    dev = resolve_device(device)
    if not progress:
        datasets.disable_progress_bars()
    if task == "sentiment":
        dd = load_sentiment()
        test_split = "test"
        num_labels = 2
    else:
        from pyrobayes.data.text import GLUE_TASKS

        dd = load_glue(task)
        spec = GLUE_TASKS[task.lower().replace("-", "")]
        if spec.num_labels < 2:
            raise ValueError(
                f"GLUE task {task!r} is a regression task; classify needs a classification task"
            )
        num_labels = spec.num_labels
        test_split = "validation" if "validation" in dd else next(s for s in dd if s != "train")
    train, test = dd["train"], dd[test_split]
    ood = load_ood_sentences().select_columns(["sentence"])
    # The other-domain sentences are single sentences: they only make sense as OOD inputs
    # for single-sentence tasks (not for sentence-pair tasks such as MNLI).
    single = len(text_columns_of(train)) == 1
    if smoke:
        epochs, svi_epochs, num_samples = min(epochs, 1), min(svi_epochs, 1), min(num_samples, 2)
        max_length, batch_size = min(max_length, 24), min(batch_size, 8)
        train, test, ood = _subset(train, 8), _subset(test, 6), _subset(ood, 6)

    torch.manual_seed(seed)
    model, tokenizer = load_sequence_classifier(model_name, num_labels=num_labels)
    model.to(dev)
    enc_train = tokenize(train, tokenizer, max_length)
    enc_test = tokenize(test, tokenizer, max_length)
    enc_ood = tokenize(ood, tokenizer, max_length) if single else None

    hist = fine_tune(
        model, enc_train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress
    )
    t_det = float(sum(hist["step_time"]))
    y_te = enc_test[:]["label"].to(dev)
    det = point_ppd(predict_logits(model, enc_test))
    det_ood = point_ppd(predict_logits(model, enc_ood)) if single else None

    include = bayesian_include(model, bayes)
    chosen = set(parameters_under(model, include))
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)  # the deterministic rest stays at its fine-tuned value
    n_bayes = sum(p.numel() for n, p in model.named_parameters() if n in chosen)
    bmodel, guide = to_bayesian(
        model,
        delta=delta,
        prior="pretrained",
        prior_kwargs={"scale": prior_scale},
        likelihood="categorical",
        include=include,
        name="text_bnn",
    )
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        enc_train, batch_size=batch_size, shuffle=True, generator=gen
    )
    t0 = time.perf_counter()
    history = fit(
        bmodel,
        guide,
        loader,
        epochs=svi_epochs,
        lr=svi_lr,
        loss=svi_loss,
        seed=seed,
        progress=progress,
        device=dev,
    )
    t_svi = time.perf_counter() - t0
    bay = bayesian_text_ppd(bmodel, guide, enc_test, num_samples)
    bay_ood = bayesian_text_ppd(bmodel, guide, enc_ood, num_samples) if single else None

    ppds = {DET: det, BAYES: bay}
    ood_sets = {"other-domain sentences": {DET: det_ood, BAYES: bay_ood}} if single else {}
    steps = math.ceil(len(enc_train) / batch_size)
    info = {
        "task": task,
        "bayes": bayes,
        "bayesian_parameters": n_bayes,
        "include": include,
        "n_train": len(enc_train),
        "n_test": len(enc_test),
        "n_ood": len(enc_ood) if single else 0,
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
        "device": str(dev),
        "smoke": smoke,
        "finetune_seconds": t_det,
        "svi_seconds": t_svi,
        "finetune_step_seconds": t_det / max(1, len(hist["step_time"])),
        "svi_step_seconds": t_svi / max(1, svi_epochs * steps),
        "elbo_loss_per_point": history.losses,
    }
    log(verbose, f"Bayesian part {bayes!r}: {n_bayes:,} weights in {include}")
    main_ood = "other-domain sentences" if single else None
    times = {DET: t_det, BAYES: t_svi}
    return finish_result("text", ppds, y_te, ood_sets, main_ood, times, info, out, verbose)
