"""The comparison on labelled tables, ``pyrobayes compare --data file.csv --y label``.

The regression job's protocol (:mod:`pyrobayes.jobs.tabular_regression`) for classification:

1. the label column (:mod:`pyrobayes.data.labelled`): text, or whole numbers with at most
   10 distinct values, makes ``--task auto`` a classification (``--task classification``
   or ``regression`` forces it); labels stay what the user wrote (strings come back as
   strings in ``predictions.csv`` and :func:`run_classify_tabular`'s ``predictions``);
   built-in sets ``breast_cancer`` (569 x 30), ``wine`` (178 x 13), ``iris`` (150 x 4);
2. ``k`` seeded *stratified* splits (``--splits``, default 10): each class holds out
   ``round(test_fraction * n_c)`` of its ``n_c`` rows (at most ``n_c - 1``, so every class
   keeps a training row); every method sees every training row; x standardised with the
   training rows' mean and std (a feature constant there is left out of that split);
3. rows: logistic regression (L2, its strength chosen by 5-fold cross-validated log-loss on
   the training rows), an MLP (tanh ``d``-50-50-``C``, cross-entropy, early-stopped on a
   stratified 10% of the training rows), a deep ensemble of 5 such MLPs (each its own
   seed and held-out rows; equal mixture of their softmaxes), SVI with a MOPED guide
   started at the MLP, and NUTS (started at SVI's posterior median) on one Bayesian
   classifier, the classification PFN (the shipped ``bnn-tabular-classifier``, or the
   checkpoint ``--pfn-checkpoint PATH``; ``predict(..., num_classes=C,
   class_permutations=--pfn-permutations)`` on the split's standardised training rows;
   beyond the rows or features it was trained for, the stated equal mixture of
   ``--pfn-subsets`` predictions on random contexts of its trained size, its row label
   and a note saying so; no checkpoint, or more classes than it was trained on: its row
   is empty and a note says why), and a GP classifier (scikit-learn's Laplace approximation, RBF kernel, one-vs-rest for
   ``C > 2``) where it is cheap (``n_train <= --gp-max-rows``, else skipped with a reason);
4. scores per split (:func:`~pyrobayes.compare.compare_ppds`): accuracy, NLL, ECE
   (``--ece-bins`` equal-width bins), Brier, ROC-AUC (:func:`~pyrobayes.metrics.roc_auc`:
   binary, or one-vs-rest macro), KL to NUTS, seconds; mean ± standard error over splits
   (:func:`~pyrobayes.compare.mean_se_table`);
5. ``compare.md``/``compare.json``, ``compare.png`` (reliability diagrams of every method
   on the test rows of all splits pooled, :func:`~pyrobayes.plotting.plot_reliability_grid`)
   and ``predictions.csv`` (per split and test row: the true label and each method's
   predicted label, as written in the data), ``probabilities.csv`` (the same rows, each
   method's class probabilities); the summary's ECE is the mean of the splits' ECEs, and
   ``compare.md`` adds one ECE (with a bootstrap s.e.), NLL and accuracy over the test rows
   of all splits pooled (:func:`pooled_calibration`: a split's few dozen rows make its ECE
   mostly noise).

Example (a fast smoke run)::

    pyrobayes compare --data iris --splits 2 --mlp-steps 200 --svi-steps 100 \\
        --nuts-warmup 20 --nuts-samples 20 --no-progress
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pyrobayes.jobs import _tabular_common as common
from pyrobayes.jobs._tabular_common import TableJobConfig, opt
from pyrobayes.options import Option, Task
from pyrobayes.pfn.model import DEFAULT_CLASS_PERMUTATIONS

if TYPE_CHECKING:
    from pyrobayes.compare import ComparisonTable
    from pyrobayes.data.labelled import LabelledData
    from pyrobayes.ppd import CategoricalPPD

__all__ = [
    "ClassifyTabularConfig",
    "ClassMethod",
    "TaskChoice",
    "CLASS_METHOD_ROWS",
    "ClassifyTabularResult",
    "ClassSplit",
    "detect_task",
    "stratified_splits",
    "check_training_classes",
    "standardise_features",
    "fit_mlp_classifier",
    "fit_ensemble_classifier",
    "run_classify_tabular",
    "wants_classification",
    "add_arguments",
    "run",
]

PFN_NAME = "bnn-tabular-classifier"


class TaskChoice(Option):
    """``--task``: what ``pyrobayes compare --data`` does with the target column.

    Example::

        >>> TaskChoice.parse("auto") is TaskChoice.AUTO
        True
    """

    AUTO = "auto"
    REGRESSION = "regression"
    CLASSIFICATION = "classification"


class ClassMethod(Option):
    """A row of the classification table, as ``--methods`` names it (comma-separated).

    Example::

        >>> ClassMethod.parse("logreg")
        <ClassMethod.LOGREG: 'logreg'>
        >>> ClassMethod.parse("dropout", "classification method")
        Traceback (most recent call last):
        ...
        ValueError: unknown classification method 'dropout'; valid: logreg, mlp, ensemble, svi, pfn, gp, nuts
    """

    LOGREG = "logreg"
    MLP = "mlp"
    ENSEMBLE = "ensemble"
    SVI = "svi"
    PFN = "pfn"
    GP = "gp"
    NUTS = "nuts"


# Table row of each method, in the table's order.
CLASS_METHOD_ROWS = {
    ClassMethod.LOGREG: "logistic regression",
    ClassMethod.MLP: "MLP",
    ClassMethod.ENSEMBLE: "deep ensemble",
    ClassMethod.SVI: "SVI (MOPED)",
    ClassMethod.PFN: f"PFN ({PFN_NAME})",
    ClassMethod.GP: "GP classifier (Laplace)",
    ClassMethod.NUTS: "NUTS",
}


@dataclass(frozen=True)
class ClassifyTabularConfig(TableJobConfig):
    """Options of the classification comparison (:func:`run_classify_tabular`): the options
    of every table job (``_tabular_common.TableJobConfig``) and this job's own below. Each
    field is a ``pyrobayes compare`` flag (``--field-name``; ``x_cols`` is ``--x``,
    ``y_col`` is ``--y``); flags shared with the regression job
    (:class:`~pyrobayes.jobs.tabular_regression.TabularConfig`) are the same flags. Checked
    here, before any work; ``selected`` is the rows to show, in the table's order
    (``methods`` less ``no_gp``/``no_nuts``).

    Example::

        >>> cfg = ClassifyTabularConfig(data="iris", methods="nuts,logreg", splits=3)
        >>> cfg.selected
        (<ClassMethod.LOGREG: 'logreg'>, <ClassMethod.NUTS: 'nuts'>)
        >>> ClassifyTabularConfig(data="iris", task="ranking")
        Traceback (most recent call last):
        ...
        ValueError: unknown task 'ranking'; valid: auto, regression, classification
    """

    METHODS = ClassMethod
    METHOD_KIND = "classification method"
    METHOD_ROWS = CLASS_METHOD_ROWS
    DATA_HINT = "breast_cancer, wine, iris or a CSV file"
    POSITIVE = ("ensemble_steps", "pfn_subsets", "pfn_permutations", "gp_max_rows", "ece_bins")

    methods: tuple[str, ...] | None = opt(
        None, "rows: " + ",".join(m.value for m in ClassMethod), type=str
    )
    task: str = opt(
        "auto",
        "what --y is: auto (text, or whole numbers with at most 10 distinct values, is a "
        "label: classification), regression or classification",
    )
    ensemble_steps: int = opt(2000, "most full-batch Adam steps per ensemble member")
    delta: float = opt(0.1, "MOPED relative initial scale")
    num_samples: int = opt(200, "posterior draws of the SVI predictive")
    nuts_warmup: int = opt(200, "NUTS adaptation steps per chain")
    nuts_samples: int = opt(200, "NUTS draws kept per chain")
    nuts_max_tree_depth: int = opt(10, "NUTS maximum tree depth")
    gp_max_rows: int = opt(
        1000, "classification: run the GP classifier only up to this many training rows"
    )
    ece_bins: int = opt(10, "classification: equal-width confidence bins of the ECE")
    pfn_checkpoint: str | None = opt(
        None,
        "classification: the PFN checkpoint of the PFN row (a path, with or without .json; "
        f"default the shipped {PFN_NAME})",
        type=str,
    )
    pfn_subsets: int = opt(
        8,
        "beyond the PFN's trained rows/features: its row is the mixture of this many "
        "predictions, each on a random context of its trained size",
    )
    pfn_permutations: int = opt(
        DEFAULT_CLASS_PERMUTATIONS,
        "classification PFN: its probabilities averaged over this many class relabellings",
    )
    logit_scale_prior: str = opt(
        "default",
        "classification: the latent logit scale tau ~ LogNormal(LOC, SCALE) of SVI's and "
        "NUTS's classifier, given as LOC,SCALE; default: the shipped PFN's LogNormal(0, 1); "
        "none: tau = 1",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        TaskChoice.parse(self.task, "task")
        from pyrobayes.models.tabular import logit_scale_prior_from

        try:
            logit_scale_prior_from(self.logit_scale_prior)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"logit-scale-prior: {exc}") from None
        self._check_selected()

    def classifier_logit_scale_prior(self):
        """The latent logit scale's prior of SVI's and NUTS's classifier, or ``None``."""
        from pyrobayes.models.tabular import logit_scale_prior_from

        return logit_scale_prior_from(self.logit_scale_prior)


class ClassifyTabularResult(common.TableJobResult):
    """What :func:`run_classify_tabular` returns (a plain ``dict``).

    - ``table``: mean ± s.e. over splits, one row per selected method;
    - ``nuts_table``: the same over only the splits NUTS ran on (when fewer), else ``None``;
    - ``split_tables``: one table per split; ``notes``: what was left out and why;
    - ``infos``: per split, e.g. the chosen logistic-regression strength, early-stopping
      steps, NUTS diagnostics;
    - ``classes``: the labels as written in the data (class ``k`` is ``classes[k]``);
    - ``predictions``: one dict per split and test row, ``{"split", "row", "label",
      <method>: predicted label}``, labels as written in the data;
    - ``pooled``: per method, ``{"ece", "ece_se", "nll", "accuracy", "rows"}`` on the test
      rows of all splits together (:func:`pooled_calibration`);
    - ``files``: ``compare.md``/``.json``/``.png``, ``predictions.csv`` and
      ``probabilities.csv`` under ``out``.

    Example::

        >>> sorted(ClassifyTabularResult.__annotations__)[:4]
        ['classes', 'files', 'infos', 'notes']
    """

    classes: tuple
    predictions: list[dict[str, Any]]
    pooled: dict[str, dict[str, float]]


# ----------------------------------------------------------------- task and splits


def detect_task(data: str, y_col: str | None = None, task: str = "auto") -> Task:
    """Regression or classification for ``--data``/``--y``: ``task`` when forced; under
    ``"auto"`` the built-in labelled sets are classification, the regression ones (and UCI
    folders) regression, and a CSV's ``y_col`` is classification when it
    :func:`~pyrobayes.data.labelled.looks_like_labels`.

    Example::

        >>> detect_task("iris"), detect_task("diabetes")
        (<Task.CLASSIFICATION: 'classification'>, <Task.REGRESSION: 'regression'>)
        >>> detect_task("iris", task="regression")
        <Task.REGRESSION: 'regression'>
    """
    from pyrobayes.data.labelled import _builtin_name, label_column, looks_like_labels
    from pyrobayes.data.tabular import BUILTIN_TABLES
    from pyrobayes.data.uci import is_uci

    choice = TaskChoice.parse(task, "task")
    if choice is not TaskChoice.AUTO:
        return Task(choice.value)
    if _builtin_name(data) is not None:
        return Task.CLASSIFICATION
    if data in BUILTIN_TABLES or is_uci(data) or y_col is None:
        return Task.REGRESSION
    values, _ = label_column(data, y_col)
    return Task.CLASSIFICATION if looks_like_labels(values) else Task.REGRESSION


def stratified_splits(
    y: torch.Tensor, k: int, test_fraction: float = 0.1, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` seeded random ``(train_index, test_index)`` partitions of ``range(len(y))``,
    stratified by class: class ``c`` with ``n_c`` rows holds out
    ``min(round(test_fraction * n_c), n_c - 1)`` of them (every class keeps a training
    row; a class of one row is never tested).

    Example::

        >>> y = torch.tensor([0] * 20 + [1] * 10)
        >>> tr, te = stratified_splits(y, 3, 0.2, seed=0)[0]
        >>> len(tr), y[te].tolist(), sorted(torch.cat([tr, te]).tolist()) == list(range(30))
        (24, [0, 0, 0, 0, 1, 1], True)
    """
    g = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(y == c).reshape(-1) for c in torch.unique(y).tolist()]
    out = []
    for _ in range(k):
        train, test = [], []
        for rows in by_class:
            n_test = min(int(round(test_fraction * len(rows))), len(rows) - 1)
            perm = rows[torch.randperm(len(rows), generator=g)]
            test.append(perm[:n_test])
            train.append(perm[n_test:])
        tr, te = torch.cat(train).sort().values, torch.cat(test).sort().values
        if len(te) == 0:
            raise ValueError(
                f"test-fraction {test_fraction} holds out no row of {len(y)}; raise it"
            )
        out.append((tr, te))
    return out


def check_training_classes(y_train: torch.Tensor, classes: tuple, split: int = 1) -> None:
    """A ``ValueError`` naming every class with no training row in split ``split`` (a
    classifier cannot learn a class it never sees), and for one class only.

    Example::

        >>> check_training_classes(torch.tensor([0, 0, 2]), ("a", "b", "c"), split=3)
        Traceback (most recent call last):
        ...
        ValueError: split 3: class(es) 'b' have no training rows (3 training rows: 'a' 2, 'c' 1); every class needs at least one
    """
    counts = torch.bincount(y_train.reshape(-1), minlength=len(classes)).tolist()
    absent = [repr(c) for c, n in zip(classes, counts) if n == 0]
    if absent:
        have = ", ".join(f"{c!r} {n}" for c, n in zip(classes, counts) if n)
        raise ValueError(
            f"split {split}: class(es) {', '.join(absent)} have no training rows "
            f"({len(y_train)} training rows: {have}); every class needs at least one"
        )


@dataclass(frozen=True)
class ClassSplit:
    """One split: standardised ``x_train``/``x_test`` (float32), labels as class indices,
    the row indices and the features left out (constant on the training rows).

    Example::

        >>> x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [6.0, 2.0]])
        >>> s = standardise_features(x, torch.tensor([0, 1, 0, 1]), torch.arange(3),
        ...                          torch.tensor([3]))
        >>> s.x_train.shape, s.dropped_features
        (torch.Size([3, 1]), (1,))
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_index: torch.Tensor
    test_index: torch.Tensor
    dropped_features: tuple[int, ...] = ()


def standardise_features(
    x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor
) -> ClassSplit:
    """x standardised per feature with the training rows' mean and std only; a feature
    constant on the training rows is left out (``dropped_features``).

    Example::

        >>> x = torch.tensor([[1.0], [3.0], [100.0]])
        >>> s = standardise_features(x, torch.tensor([0, 1, 1]), torch.arange(2),
        ...                          torch.tensor([2]))
        >>> [round(v, 4) for v in s.x_train.flatten().tolist()]  # +-1 / sqrt(2)
        [-0.7071, 0.7071]
        >>> round(float(s.x_test), 2)  # (100 - 2) / sqrt(2)
        69.3
    """
    x, dropped = common.drop_constant_features(x, train)
    mean, std = x[train].mean(0), x[train].std(0)
    return ClassSplit(
        x_train=((x[train] - mean) / std).float(),
        y_train=y[train],
        x_test=((x[test] - mean) / std).float(),
        y_test=y[test],
        train_index=train,
        test_index=test,
        dropped_features=dropped,
    )


# ----------------------------------------------------------------- the methods


def _holdout(y: torch.Tensor, seed: int, fraction: float = 0.1) -> tuple[torch.Tensor, ...]:
    """``(fit_rows, val_rows)``: a stratified seeded ``fraction`` of the training rows held
    out for early stopping (at least one row in all; classes keep a fitting row)."""
    tr, val = stratified_splits(y, 1, fraction, seed)[0] if len(y) >= 10 else (None, None)
    if tr is None or len(val) == 0:
        raise ValueError(f"{len(y)} training rows are too few to hold out rows for early stopping")
    return tr, val


def _cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(out, target)


def fit_mlp_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    max_steps: int = 2000,
    seed: int = 0,
    lr: float = 1e-2,
    patience: int = 200,
) -> tuple[torch.nn.Module, int]:
    """A tanh MLP (``d``-50-50-``C``, the Bayesian classifier's shape) trained by full-batch
    Adam on the cross-entropy of 90% of the rows, keeping the step of lowest cross-entropy
    on a stratified held-out 10% (:func:`~pyrobayes.models.train.train_early_stopped`).
    Returns ``(net in eval mode, best step)``; the initial weights and held-out rows come
    from ``seed`` (the global RNG is left as it was).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(100, 2, generator=g)
        >>> net, step = fit_mlp_classifier(x, (x[:, 0] > 0).long(), 2, max_steps=300)
        >>> float((net(x).argmax(-1) == (x[:, 0] > 0)).float().mean()) > 0.9
        True
    """
    from pyrobayes.models.mlp import MLP
    from pyrobayes.models.train import train_early_stopped

    fit_rows, val = _holdout(y, seed)
    fit_rows, val = fit_rows.to(x.device), val.to(x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net = MLP(x.shape[1], (50, 50), num_classes, "tanh").to(device=x.device, dtype=x.dtype)
    best = train_early_stopped(
        net, _cross_entropy, x[fit_rows], y[fit_rows], x[val], y[val], max_steps, lr, patience
    )
    return net.eval(), best


def fit_ensemble_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    members: int = 5,
    max_steps: int = 2000,
    seed: int = 0,
) -> tuple[list[torch.nn.Module], list[int]]:
    """A deep ensemble (Lakshminarayanan et al. 2017, without adversarial training):
    ``members`` :func:`fit_mlp_classifier` nets, member ``m`` with seed ``seed * 1000 + m``
    (its own initial weights and held-out rows). Its PPD is the equal mixture of the
    members' softmaxes, ``CategoricalPPD`` with one draw per member.

    Example::

        >>> x = torch.randn(60, 2, generator=torch.Generator().manual_seed(1))
        >>> nets, steps = fit_ensemble_classifier(x, (x[:, 1] > 0).long(), 2, members=2,
        ...                                       max_steps=20)
        >>> len(nets), len(steps)
        (2, 2)
    """
    fits = [
        fit_mlp_classifier(x, y, num_classes, max_steps, seed * 1000 + m) for m in range(members)
    ]
    return [n for n, _ in fits], [s for _, s in fits]


def _probs(nets: list[torch.nn.Module], x: torch.Tensor) -> CategoricalPPD:
    from pyrobayes.ppd import CategoricalPPD

    with torch.no_grad():
        return CategoricalPPD(torch.stack([torch.softmax(n(x), -1) for n in nets]))


def _classifier_model(
    d: int, num_classes: int, net: torch.nn.Module | None = None, logit_scale_prior="default"
):
    """The Bayesian classifier SVI and NUTS share (and the classification PFN's prior):
    :func:`pyrobayes.models.tabular_classifier_model`, a tanh ``d``-50-50-``C`` MLP with
    fan-in Normal weight priors and a Categorical likelihood on its ``C`` logits (times a
    latent logit scale with ``logit_scale_prior``)."""
    from pyrobayes.models import tabular_classifier_model

    return tabular_classifier_model(d, num_classes, net=net, logit_scale_prior=logit_scale_prior)


def _split_logreg(s: ClassSplit, num_classes: int, seed: int, out: tuple) -> None:
    """L2 logistic regression, its inverse strength ``C`` chosen among 10 log-spaced values
    by 5-fold (stratified, seeded) cross-validated log-loss on the training rows."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    from pyrobayes.ppd import CategoricalPPD

    ppds, times, info = out
    xtr, ytr = s.x_train.double().cpu().numpy(), s.y_train.cpu().numpy()
    t0 = time.perf_counter()
    folds = min(5, int(np.bincount(ytr, minlength=num_classes).min()))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        clf = LogisticRegressionCV(Cs=10, cv=cv, scoring="neg_log_loss", max_iter=5000)
    else:  # a class with one training row cannot be in every fold: the default strength
        clf = LogisticRegression(C=1.0, max_iter=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of weakly regularised fits
        clf.fit(xtr, ytr)
    probs = torch.as_tensor(clf.predict_proba(s.x_test.double().cpu().numpy()))
    # scikit-learn orders columns by the classes it saw: place them at their indices
    full = torch.zeros(len(probs), num_classes, dtype=torch.float64)
    full[:, torch.as_tensor(clf.classes_)] = probs
    ppds[CLASS_METHOD_ROWS[ClassMethod.LOGREG]] = CategoricalPPD(full[None].float())
    times[CLASS_METHOD_ROWS[ClassMethod.LOGREG]] = time.perf_counter() - t0
    c = getattr(clf, "C_", [1.0])
    info["logreg_C"] = float(np.ravel(c)[0])


def _split_gp(s: ClassSplit, num_classes: int, seed: int, out: tuple) -> None:
    """scikit-learn's GP classifier: Laplace approximation, an RBF kernel (one lengthscale,
    started at ``sqrt(d)``) times a constant, hyperparameters by the approximate marginal
    likelihood; one-vs-rest for ``C > 2`` (its probabilities normalised over classes).
    One lengthscale, not one per feature: on one 90/10 split each of iris, wine and breast
    cancer, ARD gave held-out NLL 0.34/0.33/0.085 against 0.22/0.22/0.081 isotropic, and
    took 101 s against 4 s on breast cancer's 30 features."""
    from sklearn.gaussian_process import GaussianProcessClassifier
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel

    from pyrobayes.ppd import CategoricalPPD

    ppds, times, info = out
    d = s.x_train.shape[1]
    kernel = ConstantKernel(1.0) * RBF(length_scale=math.sqrt(d))
    gpc = GaussianProcessClassifier(kernel=kernel, random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bound warnings of the hyperparameter search
        gpc.fit(s.x_train.double().cpu().numpy(), s.y_train.cpu().numpy())
    probs = torch.as_tensor(gpc.predict_proba(s.x_test.double().cpu().numpy()))
    row = CLASS_METHOD_ROWS[ClassMethod.GP]
    ppds[row] = CategoricalPPD(probs[None].float())
    times[row] = time.perf_counter() - t0
    info["gp_log_marginal"] = float(gpc.log_marginal_likelihood_value_)


def _split_svi(
    s: ClassSplit,
    cfg: ClassifyTabularConfig,
    mlp: torch.nn.Module,
    num_classes: int,
    seed: int,
    out: tuple,
) -> tuple[Any, dict]:
    """SVI (MOPED around the MLP) on the Bayesian classifier; returns ``(model, median)``."""
    import pyro

    from pyrobayes.guides import MOPEDNormal
    from pyrobayes.infer import PosteriorPredictive, fit

    ppds, times, info = out
    pyro.clear_param_store()  # one split's guide at a time in Pyro's global store
    t0 = time.perf_counter()
    model = _classifier_model(
        s.x_train.shape[1], num_classes, copy.deepcopy(mlp), cfg.classifier_logit_scale_prior()
    )
    guide = MOPEDNormal(model, delta=cfg.delta)
    fit(
        model,
        guide,
        (s.x_train, s.y_train),
        epochs=cfg.svi_steps,
        batch_size=len(s.x_train),
        lr=cfg.svi_lr,
        progress=not cfg.no_progress,
        seed=seed,
    )
    row = CLASS_METHOD_ROWS[ClassMethod.SVI]
    ppds[row] = PosteriorPredictive(model, guide, num_samples=cfg.num_samples)(s.x_test)
    times[row] = time.perf_counter() - t0 + info.get("mlp_seconds", 0.0)
    with torch.no_grad():
        median = {k: v.detach().clone() for k, v in guide.median(s.x_train).items()}
    return model, median


def _split_nuts(
    s: ClassSplit, cfg: ClassifyTabularConfig, model: Any, init: dict, seed: int, out: tuple
) -> None:
    """NUTS on the same Bayesian classifier, 4 chains started at SVI's posterior median."""
    from pyrobayes.infer.nuts.sampler import nuts_ppd

    ppds, times, info = out
    t0 = time.perf_counter()
    ppd, nuts_info = nuts_ppd(
        model,
        s.x_train,
        s.y_train,
        s.x_test,
        num_warmup=cfg.nuts_warmup,
        num_samples=cfg.nuts_samples,
        progress=not cfg.no_progress,
        seed=seed,
        return_mcmc=True,
        init=init,
        max_tree_depth=cfg.nuts_max_tree_depth,
    )
    times["NUTS"] = time.perf_counter() - t0
    ppds["NUTS"] = ppd
    info["nuts"] = {
        "max_r_hat": nuts_info.max_r_hat,
        "min_ess": nuts_info.min_ess,
        "min_ess_tail": nuts_info.min_ess_tail,
        "chains": nuts_info.num_chains,
        "converged": nuts_info.converged,
        "verdict": nuts_info.verdict,
        "backend": nuts_info.backend,
    }


def _pfn_name(cfg: ClassifyTabularConfig) -> str:
    """The PFN row's name: the shipped one, or a given checkpoint's file name."""
    if cfg.pfn_checkpoint is None:
        return PFN_NAME
    name = Path(cfg.pfn_checkpoint).name
    return name[: -len(".json")] if name.endswith(".json") else name


def _load_pfn(cfg: ClassifyTabularConfig) -> tuple[Any, str | None]:
    """``(pfn, None)``, or ``(None, why)`` when the default PFN is not shipped; a checkpoint
    given by path must exist and be a tabular classifier (else an error naming it)."""
    from pyrobayes.pfn import load_checkpoint, pretrained

    if cfg.pfn_checkpoint is None:
        try:
            return pretrained(PFN_NAME), None
        except (KeyError, ValueError, FileNotFoundError):
            return None, (
                f"PFN: no classification PFN (`{PFN_NAME}`) is shipped in this install yet "
                "(--pfn-checkpoint PATH names one); row left empty"
            )
    pfn = load_checkpoint(cfg.pfn_checkpoint)
    if not getattr(pfn, "tabular_classes", False):
        raise ValueError(
            f"--pfn-checkpoint {cfg.pfn_checkpoint}: not a tabular classification PFN "
            f"(task {pfn.config.task!r}, input mode {pfn.config.input_mode!r})"
        )
    return pfn, None


def _pfn_plan(
    cfg: ClassifyTabularConfig, n_train: int, n_test: int, d: int, num_classes: int
) -> tuple[Any, Any]:
    """``(pfn or None, MethodPlan)`` of the PFN row: every training row when the PFN covers
    ``n_train`` x ``d``, else the stated mixture over random contexts
    (:func:`~pyrobayes.jobs.tabular_plan.plan_pfn`); not run (the note says why) without a
    checkpoint or with more classes than it was trained on."""
    from pyrobayes.jobs.tabular_plan import MethodPlan, plan_pfn

    name = _pfn_name(cfg)
    pfn, why = _load_pfn(cfg)
    if pfn is None:
        return None, MethodPlan("pfn", f"PFN ({name})", False, "skip", 0.0, 0.0, why)
    kmax = int(pfn.config.num_classes)
    if num_classes > kmax:
        why = (
            f"PFN ({name}): trained on 2..{kmax} classes, here {num_classes} classes; "
            "row left empty"
        )
        return None, MethodPlan("pfn", f"PFN ({name})", False, "skip", 0.0, 0.0, why)
    limits = (int(pfn.config.max_train), int(pfn.config.num_features))
    return pfn, plan_pfn(cfg, n_train, n_test, d, limits, name)


def _split_pfn(
    s: ClassSplit, cfg: ClassifyTabularConfig, pfn_row: tuple, num_classes: int, seed: int, out
) -> None:
    """The PFN's ``CategoricalPPD`` on the test rows given the split's standardised training
    rows, ``predict(..., num_classes=C, class_permutations=...)``; beyond its trained
    rows/features the mixture of ``pfn_subsets`` random contexts
    (:func:`~pyrobayes.jobs.tabular_plan.pfn_subset_ppd`). Timed after a warm-up call through
    the same path (one-off allocations)."""
    from pyrobayes.jobs.tabular_plan import pfn_subset_ppd

    ppds, times, info = out
    pfn, plan = pfn_row
    k = cfg.pfn_subsets if plan.form == "subsets" else 1
    kw = {"num_classes": num_classes, "class_permutations": cfg.pfn_permutations}
    pfn_subset_ppd(pfn, s.x_train[:64], s.y_train[:64], s.x_test[:64], 1, seed, **kw)
    t0 = time.perf_counter()
    ppd = pfn_subset_ppd(pfn, s.x_train, s.y_train, s.x_test, k, seed, **kw)
    seconds = time.perf_counter() - t0
    ppds[plan.label], times[plan.label] = ppd, seconds
    info["pfn"] = {"form": plan.form, "contexts": k, "seconds": seconds}


def _row_labels(pfn_plan: Any = None) -> dict[ClassMethod, str]:
    """Each method's table row; the PFN's names its checkpoint and form (its plan's label)."""
    return {**CLASS_METHOD_ROWS, **({ClassMethod.PFN: pfn_plan.label} if pfn_plan else {})}


def _run_split(
    s: ClassSplit, cfg: ClassifyTabularConfig, num_classes: int, pfn_row: Any, k: int, nuts: bool
) -> tuple[dict, dict, dict]:
    """``(ppds, times, info)`` of one split, rows in the table's order; ``pfn_row`` is
    ``(pfn, plan)`` when the PFN row runs, else ``None``."""
    import pyro

    seed = cfg.seed + k
    pyro.set_rng_seed(seed)
    sel = set(cfg.selected)
    out: tuple[dict, dict, dict] = ({}, {}, {})
    ppds, times, info = out
    if ClassMethod.LOGREG in sel:
        _split_logreg(s, num_classes, seed, out)
    if sel & {ClassMethod.MLP, ClassMethod.SVI, ClassMethod.NUTS}:
        t0 = time.perf_counter()
        mlp, info["mlp_best_step"] = fit_mlp_classifier(
            s.x_train, s.y_train, num_classes, cfg.mlp_steps, seed
        )
        ppds["MLP"] = _probs([mlp], s.x_test)
        info["mlp_seconds"] = times["MLP"] = time.perf_counter() - t0
    if ClassMethod.ENSEMBLE in sel:
        t0 = time.perf_counter()
        nets, info["ensemble_best_steps"] = fit_ensemble_classifier(
            s.x_train, s.y_train, num_classes, 5, cfg.ensemble_steps, seed
        )
        ppds["deep ensemble"] = _probs(nets, s.x_test)
        times["deep ensemble"] = time.perf_counter() - t0
    if sel & {ClassMethod.SVI, ClassMethod.NUTS}:
        model, median = _split_svi(s, cfg, mlp, num_classes, seed, out)
    if pfn_row is not None:
        _split_pfn(s, cfg, pfn_row, num_classes, seed, out)
    if ClassMethod.GP in sel and len(s.x_train) <= cfg.gp_max_rows:
        _split_gp(s, num_classes, seed, out)
    if nuts:
        _split_nuts(s, cfg, model, median, seed, out)
    labels = _row_labels(pfn_row[1] if pfn_row else None)
    shown = {labels[m] for m in sel}
    ppds = {labels[m]: ppds[labels[m]] for m in labels if labels[m] in ppds and labels[m] in shown}
    return ppds, {r: t for r, t in times.items() if r in ppds}, info


# ----------------------------------------------------------------- the job


def _split_table(s: ClassSplit, ppds: dict, times: dict, info: dict, cfg) -> ComparisonTable:
    from pyrobayes.compare import compare_ppds
    from pyrobayes.metrics import roc_auc

    extra: dict[str, dict[str, float]] = {
        m: {"roc_auc": roc_auc(p, s.y_test)} for m, p in ppds.items()
    }
    if "NUTS" in ppds and "nuts" in info:
        n = info["nuts"]
        extra["NUTS"].update(
            {"r_hat": n["max_r_hat"], "ess": n["min_ess"], "ess_tail": n["min_ess_tail"]}
        )
    return compare_ppds(
        ppds,
        s.y_test,
        times=times,
        reference="NUTS" if "NUTS" in ppds else None,
        n_bins=cfg.ece_bins,
        diagnostics=extra,
    )


def _prior_mismatch(cfg: ClassifyTabularConfig, pfn: Any) -> list[str]:
    """A note when the PFN was trained with another logit scale prior than the one SVI and
    NUTS use here (their rows then answer a different Bayesian question)."""
    from pyrobayes.pfn.priors import describe_scalar_prior

    prior = cfg.classifier_logit_scale_prior()
    ours = "tau = 1" if prior is None else f"tau ~ {describe_scalar_prior(prior)}"
    recorded = (getattr(pfn.config, "prior", None) or {}).get("logit_scale_prior")
    theirs = "tau = 1" if recorded is None else f"tau ~ {recorded}"
    if ours == theirs:
        return []
    return [
        f"prior: the PFN was trained with logit scale {theirs}, SVI and NUTS use {ours} "
        "(--logit-scale-prior): their rows are not the same posterior"
    ]


def _plan(cfg: ClassifyTabularConfig, tab: LabelledData, n_train: int, n_test: int, n_splits: int):
    """``(notes, pfn_row, n_nuts)``: what is not run and why, before the first split;
    ``pfn_row`` is ``(pfn, plan)`` when the PFN row runs (its plan's note, if any, states
    the approximation beyond the PFN's trained range)."""
    notes: list[str] = []
    sel = cfg.selected
    skipped = [m.value for m in ClassMethod if m not in sel]
    if skipped:
        notes.append(f"not run (--methods/--no-gp/--no-nuts): {', '.join(skipped)}")
    pfn_row = None
    if ClassMethod.PFN in sel:
        pfn, plan = _pfn_plan(cfg, n_train, n_test, tab.num_features, tab.num_classes)
        pfn_row = (pfn, plan) if pfn is not None else None
        if plan.note:
            notes.append(plan.note)
        if pfn is not None and {ClassMethod.SVI, ClassMethod.NUTS} & set(sel):
            notes.extend(_prior_mismatch(cfg, pfn))
    if ClassMethod.GP in sel and n_train > cfg.gp_max_rows:
        notes.append(
            f"GP classifier: skipped, {n_train} training rows > --gp-max-rows "
            f"{cfg.gp_max_rows} (its Laplace fit costs O(n^3) per hyperparameter step)"
        )
    n_nuts = 0 if ClassMethod.NUTS not in sel else min(n_splits, cfg.nuts_splits or n_splits)
    if 0 < n_nuts < n_splits:
        notes.append(f"NUTS: run on the first {n_nuts} of {n_splits} splits only (--nuts-splits)")
    return notes, pfn_row, n_nuts


def run_classify_tabular(cfg: ClassifyTabularConfig) -> ClassifyTabularResult:
    """Run the protocol of the module docstring on ``cfg.data``; write ``compare.md``,
    ``compare.json``, ``compare.png``, ``predictions.csv`` and ``probabilities.csv`` under
    ``cfg.out``.

    Example (iris, two splits, a tiny budget, no NUTS)::

        >>> import tempfile
        >>> cfg = ClassifyTabularConfig(data="iris", splits=2, mlp_steps=20, svi_steps=5,
        ...     num_samples=10, ensemble_steps=10, no_nuts=True, out=tempfile.mkdtemp(),
        ...     no_progress=True)
        >>> res = run_classify_tabular(cfg)  # one progress line per split on stderr
        >>> res["table"].methods[:3], res["predictions"][0]["label"]
        (('logistic regression', 'MLP', 'deep ensemble'), 'setosa')
    """
    from pyrobayes.data.labelled import load_labelled

    if TaskChoice.parse(cfg.task, "task") is TaskChoice.REGRESSION:
        raise ValueError("task is 'regression': use pyrobayes.run_tabular(TabularConfig(...))")
    tab = load_labelled(cfg.data, cfg.x_cols, cfg.y_col)
    splits = stratified_splits(
        tab.y, cfg.splits or common.DEFAULT_SPLITS, cfg.test_fraction, cfg.seed
    )
    n_train, n_test = max(len(tr) for tr, _ in splits), max(len(te) for _, te in splits)
    notes, pfn_row, n_nuts = _plan(cfg, tab, n_train, n_test, len(splits))
    tables, infos, predictions, pooled = [], [], [], {}
    dropped: dict[str, list[int]] = {}
    t_start = time.perf_counter()
    for k, (tr, te) in enumerate(splits):
        check_training_classes(tab.y[tr], tab.classes, k + 1)
        s = standardise_features(tab.x, tab.y, tr, te)
        for i in s.dropped_features:
            dropped.setdefault(tab.feature_names[i], []).append(k + 1)
        ppds, times, info = _run_split(s, cfg, tab.num_classes, pfn_row, k, k < n_nuts)
        tables.append(_split_table(s, ppds, times, info, cfg))
        infos.append(info)
        predictions.extend(_predictions(tab, s, ppds, k))
        for m, p in ppds.items():
            pooled.setdefault(m, []).append((p.probs.detach().cpu(), s.y_test))
        record = {"split": k + 1, "table": json.loads(tables[-1].to_json()), "info": info}
        common.record_split(cfg.out, k, len(splits), record, t_start)
    notes += common.note_dropped(dropped)
    labels = _row_labels(pfn_row[1] if pfn_row else None)
    summary, nuts_table = common.summary_tables(tables, [labels[m] for m in cfg.selected], n_nuts)
    pooled_scores = pooled_calibration(pooled, cfg.ece_bins)
    files = _write(
        cfg, tab, summary, nuts_table, tables, infos, notes, predictions, pooled, pooled_scores
    )
    return {
        **common.job_result((summary, nuts_table), tables, notes, infos, files),
        "classes": tab.classes,
        "predictions": predictions,
        "pooled": pooled_scores,
    }


def pooled_calibration(
    pooled: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
    n_bins: int,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    r"""ECE, NLL and accuracy of each method on the test rows of all splits taken together.

    A split's ECE on 15-60 test rows in 10 bins is mostly sampling noise, biased upwards:
    a bin with one or two rows has a large :math:`|\mathrm{acc}_b - \mathrm{conf}_b|` even
    for a calibrated predictor (confidence 0.95, every row right: 0.05), and ~0 for one that
    says 0.999 and happens to be right. One ECE over the :math:`\sum_k n_k` pooled test
    rows (the rows the reliability figure shows) has far fewer such bins.
    ``ece_se`` is its standard error from ``bootstrap`` resamples of the pooled rows (the
    same resamples for every method, drawn with ``seed``). ``pooled`` maps a table row to
    its ``(probs [n_k, C], labels [n_k])`` per split.

    Example::

        >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        >>> out = pooled_calibration({"M": [(p, torch.tensor([0, 1]))] * 2}, n_bins=10)
        >>> out["M"]["accuracy"], round(out["M"]["ece"], 3), out["M"]["rows"]
        (1.0, 0.15, 4)
    """
    from pyrobayes.metrics import accuracy, nll
    from pyrobayes.ppd import CategoricalPPD

    scores, resamples = {}, None
    for m, parts in pooled.items():
        probs = torch.cat([p for p, _ in parts])  # their own dtype: the figure's bins
        y = torch.cat([t for _, t in parts]).long()
        if resamples is None:
            resamples = bootstrap_rows(len(y), bootstrap, seed)
        ppd = CategoricalPPD(probs[None])
        boot = resampled_ece(probs, y, n_bins, resamples)
        scores[m] = {
            "ece": resampled_ece(probs, y, n_bins)[0].item(),
            "ece_se": float(boot.std()) if bootstrap > 1 else math.nan,
            "nll": float(nll(ppd, y)),
            "accuracy": accuracy(ppd, y),
            "rows": int(y.numel()),
        }
    return scores


def bootstrap_rows(n: int, bootstrap: int, seed: int = 0) -> torch.Tensor:
    """``[bootstrap, n]`` row indices drawn with replacement (seeded; pass the same ones to
    every method for paired differences)."""
    return torch.randint(n, (bootstrap, n), generator=torch.Generator().manual_seed(seed))


def resampled_ece(
    probs: torch.Tensor, y: torch.Tensor, n_bins: int, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """ECE (:func:`~pyrobayes.metrics.reliability_bins`) of ``probs [N, C]`` against
    ``y [N]`` on each row set of ``rows [B, N]`` (:func:`bootstrap_rows`), or on all rows."""
    from pyrobayes.metrics import reliability_bins
    from pyrobayes.ppd import CategoricalPPD

    sets = torch.arange(len(y))[None] if rows is None else rows
    return torch.tensor(
        [reliability_bins(CategoricalPPD(probs[i][None]), y[i], n_bins).ece for i in sets],
        dtype=torch.float64,
    )


def _predictions(tab: LabelledData, s: ClassSplit, ppds: dict, k: int) -> list[dict]:
    """Per test row: split, row, true label and each method's predicted label, as written."""
    preds = {m: tab.decode(p.probs.argmax(-1)) for m, p in ppds.items()}
    rows = []
    for j, (row, label) in enumerate(zip(s.test_index.tolist(), tab.decode(s.y_test))):
        rows.append(
            {"split": k + 1, "row": row, "label": label, **{m: v[j] for m, v in preds.items()}}
        )
    return rows


def _write(
    cfg, tab, summary, nuts_table, tables, infos, notes, predictions, pooled, pooled_scores
) -> dict:
    """``compare.json``/``.md`` (``_tabular_common.write_outputs``), the
    reliability diagrams of the pooled test rows ``compare.png``, ``predictions.csv`` and
    ``probabilities.csv``."""
    from pyrobayes.plotting import plot_reliability_grid
    from pyrobayes.ppd import CategoricalPPD

    md = _markdown(cfg, tab, summary, nuts_table, tables, infos, notes, pooled_scores)
    extra = {"classes": list(tab.classes), "pooled": pooled_scores}
    files = common.write_outputs(cfg, tab, (summary, nuts_table, tables), infos, notes, extra, md)
    pooled_ppds = {m: CategoricalPPD(torch.cat([p for p, _ in v])[None]) for m, v in pooled.items()}
    labels = torch.cat([y for _, y in next(iter(pooled.values()))]) if pooled else None
    title = f"{tab.source}: test rows of {len(tables)} splits pooled"
    fig, _ = plot_reliability_grid(pooled_ppds, labels, n_bins=cfg.ece_bins, title=title)
    fig.savefig(files["png"], dpi=110, bbox_inches="tight")
    files["predictions"] = Path(cfg.out) / "predictions.csv"
    with open(files["predictions"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(predictions[0]))
        writer.writeheader()
        writer.writerows(predictions)
    files["probabilities"] = Path(cfg.out) / "probabilities.csv"
    _write_probabilities(files["probabilities"], tab.classes, predictions, pooled)
    return files


def _write_probabilities(path: Path, classes: tuple, predictions: list[dict], pooled: dict) -> None:
    """One line per split, test row and method: its class probabilities (columns named by
    the labels as written), so calibration can be re-scored without rerunning the job.
    ``predictions`` and each method's pooled parts list the same rows in the same order."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "row", "label", "method", *[f"p({c})" for c in classes]])
        for m, parts in pooled.items():
            probs = torch.cat([p for p, _ in parts]).to(torch.float64).tolist()
            for r, ps in zip(predictions, probs, strict=True):
                writer.writerow([r["split"], r["row"], r["label"], m, *(f"{q:.6g}" for q in ps)])


def _markdown(cfg, tab, summary, nuts_table, tables, infos, notes, pooled_scores) -> str:
    counts = torch.bincount(tab.y, minlength=tab.num_classes).tolist()
    balance = ", ".join(f"{c!r} {n}" for c, n in zip(tab.classes, counts))
    n_test = tables[0].num_points
    md = (
        f"# pyrobayes compare --data {cfg.data} (classification)\n\n"
        f"Data: {tab.source}; label `{tab.target_name}` ({balance}), "
        f"{tab.num_features} feature(s). {len(tables)} stratified random splits "
        f"(~{n_test} test rows each, seed {cfg.seed}); x standardised on each training split; "
        "every method sees every training row. Mean ± standard error over splits; ECE with "
        f"{cfg.ece_bins} bins; ROC-AUC one-vs-rest macro for more than two classes; times are "
        "seconds per split (SVI includes the MLP it starts from).\n\n"
        f"{summary.to_markdown()}\n\n"
        + ("Notes:\n\n" + "".join(f"- {x}\n" for x in notes) + "\n" if notes else "")
        + "![reliability](compare.png)\n"
    )
    if pooled_scores:
        n_rows = next(iter(pooled_scores.values()))["rows"]
        md += (
            f"\n## The test rows of all {len(tables)} splits pooled ({n_rows} predictions)\n\n"
            "One ECE over every split's test rows (the rows of the figure above): a split's "
            "ECE on a few dozen rows is mostly noise, biased upwards.\n\n"
            "| method | ECE (pooled, ± bootstrap s.e.) | NLL (pooled) | accuracy (pooled) |\n"
            "| :--- | ---: | ---: | ---: |\n"
        )
        md += "".join(
            f"| {m} | {v['ece']:.4f} ± {v['ece_se']:.4f} | {v['nll']:.4f} | {v['accuracy']:.4f} |\n"
            for m, v in pooled_scores.items()
        )
    md += common.nuts_subset_md(nuts_table)
    nuts = [(k, i["nuts"]) for k, i in enumerate(infos, 1) if "nuts" in i]
    if nuts:
        md += (
            "\n## NUTS diagnostics per split\n\n| split | max R-hat | min bulk ESS | "
            "min tail ESS | verdict |\n| ---: | ---: | ---: | ---: | :--- |\n"
        )
        md += "".join(
            f"| {k} | {n['max_r_hat']:.3f} | {n['min_ess']:.0f} | "
            f"{n['min_ess_tail']:.0f} | {n['verdict'].split(' (')[0]} |\n"
            for k, n in nuts
        )
    return md


# ----------------------------------------------------------------- command line


def wants_classification(args: argparse.Namespace) -> bool:
    """Whether ``pyrobayes compare --data ...`` is a classification (:func:`detect_task` on
    ``--data``, ``--y`` and ``--task``); the hook :mod:`pyrobayes.jobs.demo_1d` asks.

    Example::

        >>> wants_classification(argparse.Namespace(data="wine", y_col=None, task="auto"))
        True
        >>> wants_classification(argparse.Namespace(data="wine", task="regression"))
        False
    """
    data = getattr(args, "data", None)
    if data is None:
        return False
    task = detect_task(data, getattr(args, "y_col", None), getattr(args, "task", "auto"))
    return task is Task.CLASSIFICATION


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this job's flags that ``p`` lacks (the shared ones stay the regression job's).

    Example::

        >>> p = argparse.ArgumentParser()
        >>> add_arguments(p)
        >>> p.parse_args(["--data", "iris", "--task", "classification"]).task
        'classification'
    """
    common.add_dataclass_arguments(p, ClassifyTabularConfig)


def run(args: argparse.Namespace) -> int:
    """``pyrobayes compare --data ...`` on a labelled table: build the config from ``args``,
    run :func:`run_classify_tabular` with one torch thread, print the table; returns 0.

    Example (one split of iris, logistic regression only)::

        >>> import tempfile
        >>> p = argparse.ArgumentParser()
        >>> add_arguments(p)
        >>> args = p.parse_args(["--data", "iris", "--splits", "1", "--methods", "logreg",
        ...                      "--no-progress", "--out", tempfile.mkdtemp()])
        >>> run(args)  # doctest: +ELLIPSIS
        | method | accuracy | NLL | ECE | Brier | ROC-AUC | time (s) |
        ...
        0
    """
    return common.run_cli(ClassifyTabularConfig, args, run_classify_tabular)
