"""What a classification pipeline measured, how it is scored and written to disk.

:func:`score_tables` turns the test-set and out-of-distribution PPDs of every method into
:class:`~pyrobayes.compare.ComparisonTable` s (accuracy, NLL, ECE, Brier, OOD AUROC);
:func:`save_result` writes the markdown report, the JSON and the reliability diagrams.

Example::

    >>> import torch
    >>> from pyrobayes.jobs.classify.result import ClassifyResult, point_ppd, score_tables
    >>> labels = torch.tensor([0, 1, 1])
    >>> ppds = {"net": point_ppd(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]))}
    >>> table, ood_tables = score_tables(ppds, labels, {}, None, {"net": 0.1})
    >>> round(table.row("net")["accuracy"], 3), ood_tables
    (0.667, {})
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from pyrobayes.compare import ComparisonTable, compare_ppds
from pyrobayes.ppd import CategoricalPPD

__all__ = [
    "DET",
    "BAYES",
    "ClassifyResult",
    "point_ppd",
    "score_tables",
    "save_result",
    "finish_result",
    "bayesianize_and_fit",
    "svi_step_seconds",
]

DET, BAYES = "deterministic", "bayesian"


@dataclass
class ClassifyResult:
    """What a pipeline measured.

    Attributes:
        task: ``"digits"`` or ``"text"``.
        table: test-set scores of both methods, with OOD AUROC on the main OOD set
            (uniform noise for digits, other-domain sentences for text) and ``time_s``
            (deterministic training / fine-tuning time, and SVI time for the Bayesian row).
        ood_tables: ``{OOD set name: table}`` for every OOD set.
        ppds: ``{"deterministic", "bayesian"}`` test-set PPDs.
        labels: test labels.
        info: sizes, settings and timings (e.g. mean seconds per training step).
        files: what was written under ``out``.

    Example (two methods on three test points; nothing written without ``out``)::

        >>> import torch
        >>> from pyrobayes.jobs.classify.result import finish_result, point_ppd
        >>> labels = torch.tensor([0, 1, 1])
        >>> ppds = {"net": point_ppd(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])),
        ...         "flat": point_ppd(torch.zeros(3, 2))}
        >>> result = finish_result("digits", ppds, labels, {}, None, {}, {}, None, False)
        >>> round(result.metric("net", "accuracy"), 3), round(result.metric("flat", "nll"), 4)
        (0.667, 0.6931)
        >>> result.files
        []
        >>> result.report().splitlines()[0]
        '### digits: test set (3 points)'
    """

    task: str
    table: ComparisonTable
    ood_tables: dict[str, ComparisonTable]
    ppds: dict[str, CategoricalPPD]
    labels: torch.Tensor
    info: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def metric(self, method: str, name: str) -> float | None:
        return self.table.row(method)[name]

    def report(self) -> str:
        """The markdown tables: main comparison, then one OOD table per OOD set."""
        parts = [
            f"### {self.task}: test set ({self.table.num_points} points)",
            self.table.to_markdown(),
        ]
        for name, t in self.ood_tables.items():
            cols = [c for c in t.columns if c.startswith("auroc")]
            parts.append(
                f"OOD AUROC, {name}: "
                + ", ".join(
                    f"{m} " + " / ".join(f"{c[6:]} {t.row(m)[c]:.3f}" for c in cols)
                    for m in t.methods
                )
            )
        return "\n\n".join(parts)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def log(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, flush=True)


def point_ppd(logits: torch.Tensor) -> CategoricalPPD:
    """A deterministic network's prediction: a one-draw :class:`CategoricalPPD`.

    Example::

        >>> import torch
        >>> from pyrobayes.jobs.classify.result import point_ppd
        >>> ppd = point_ppd(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
        >>> ppd
        CategoricalPPD(draws=1, batch_shape=(2,), classes=2)
        >>> ppd.probs
        tensor([[0.8808, 0.1192],
                [0.5000, 0.5000]])
    """
    return CategoricalPPD.from_logits(logits.detach().unsqueeze(0))


def score_tables(
    ppds: Mapping[str, CategoricalPPD],
    labels: torch.Tensor,
    ood: Mapping[str, Mapping[str, CategoricalPPD]],
    main_ood: str | None,
    times: Mapping[str, float],
) -> tuple[ComparisonTable, dict[str, ComparisonTable]]:
    """The main table (with OOD AUROC on ``ood[main_ood]``) and one table per OOD set.

    Example (confident on the test set, uniform on the OOD set: entropy separates them)::

        >>> import torch
        >>> from pyrobayes.jobs.classify.result import point_ppd, score_tables
        >>> ppds = {"net": point_ppd(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]))}
        >>> ood = {"noise": {"net": point_ppd(torch.zeros(3, 2))}}
        >>> table, ood_tables = score_tables(ppds, torch.tensor([0, 1, 1]), ood, "noise", {})
        >>> table.columns
        ('accuracy', 'nll', 'ece', 'brier', 'auroc_entropy', 'auroc_mutual_information', 'time_s')
        >>> table.row("net")["auroc_entropy"], list(ood_tables)
        (1.0, ['noise'])
    """
    labels = labels.to(next(iter(ppds.values())).probs.device)
    table = compare_ppds(
        ppds, labels, times=times, ood_ppds=ood.get(main_ood) if main_ood else None
    )
    ood_tables = {name: compare_ppds(ppds, labels, ood_ppds=o) for name, o in ood.items()}
    return table, ood_tables


def bayesianize_and_fit(
    net: torch.nn.Module,
    data,
    *,
    delta: float,
    prior_scale: float,
    name: str,
    svi_epochs: int,
    svi_lr: float,
    svi_loss: str,
    seed: int,
    progress: bool,
    include=None,
    **fit_kwargs,
):
    """Make ``net`` Bayesian (MOPED guide, pretrained prior of scale ``prior_scale``,
    categorical likelihood) and fit it by SVI; returns ``(model, guide, history, seconds)``.

    Example::

        >>> import torch
        >>> from pyrobayes import bayesian_sites
        >>> from pyrobayes.jobs.classify.result import bayesianize_and_fit
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> model, guide, history, seconds = bayesianize_and_fit(
        ...     torch.nn.Linear(4, 3), (x, y), delta=0.1, prior_scale=1.0, name="clf",
        ...     svi_epochs=2, svi_lr=0.01, svi_loss="trace_elbo", seed=0, progress=False)
        >>> type(guide).__name__, len(history), seconds > 0, sorted(bayesian_sites(model))
        ('MOPEDNormal', 2, True, ['clf.net.bias', 'clf.net.weight'])
    """
    from pyrobayes.bayesian_model import to_bayesian
    from pyrobayes.infer import fit

    model, guide = to_bayesian(
        net,
        delta=delta,
        prior="pretrained",
        prior_kwargs={"scale": prior_scale},
        likelihood="categorical",
        include=include,
        name=name,
    )
    t0 = time.perf_counter()
    history = fit(
        model,
        guide,
        data,
        epochs=svi_epochs,
        lr=svi_lr,
        loss=svi_loss,
        seed=seed,
        progress=progress,
        **fit_kwargs,
    )
    return model, guide, history, time.perf_counter() - t0


def svi_step_seconds(t_svi: float, svi_epochs: int, n_train: int, batch_size: int) -> float:
    """Mean seconds per SVI step: ``t_svi`` over ``svi_epochs`` epochs of minibatches.

    Example (100 points in batches of 32: 4 steps per epoch, 20 in all)::

        >>> from pyrobayes.jobs.classify.result import svi_step_seconds
        >>> svi_step_seconds(10.0, svi_epochs=5, n_train=100, batch_size=32)
        0.5
    """
    steps = math.ceil(n_train / batch_size)
    return t_svi / max(1, svi_epochs * steps)


def finish_result(
    task: str,
    ppds: Mapping[str, CategoricalPPD],
    labels: torch.Tensor,
    ood: Mapping[str, Mapping[str, CategoricalPPD]],
    main_ood: str | None,
    times: Mapping[str, float],
    info: dict,
    out: str | None,
    verbose: bool,
) -> ClassifyResult:
    """Score (:func:`score_tables`), print the report when ``verbose``, write the files
    under ``out`` (:func:`save_result`) and return the result; the end of every pipeline.

    Example (``verbose=True`` prints the same report)::

        >>> import torch
        >>> from pyrobayes.jobs.classify.result import finish_result, point_ppd
        >>> ppds = {"net": point_ppd(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))}
        >>> ood = {"noise": {"net": point_ppd(torch.zeros(2, 2))}}
        >>> result = finish_result("digits", ppds, torch.tensor([0, 0]), ood, "noise",
        ...                        {"net": 1.5}, {"n_test": 2}, out=None, verbose=False)
        >>> result.table.row("net")["accuracy"], result.table.row("net")["time_s"], result.info
        (0.5, 1.5, {'n_test': 2})
        >>> result.report().splitlines()[-1]
        'OOD AUROC, noise: net entropy 1.000 / mutual_information 0.500'
    """
    table, ood_tables = score_tables(ppds, labels, ood, main_ood, times)
    result = ClassifyResult(task, table, ood_tables, dict(ppds), labels.cpu(), info)
    log(verbose, result.report())
    save_result(result, out, verbose)
    return result


def save_result(result: ClassifyResult, out: str | None, verbose: bool) -> None:
    """Write ``reliability_<task>.png``, ``classify_<task>.md`` and ``.json`` under ``out``
    (nothing when ``out`` is ``None``); the paths go to ``result.files``.

    Example::

        >>> import os, tempfile, torch
        >>> from pyrobayes.jobs.classify.result import finish_result, point_ppd, save_result
        >>> ppds = {"net": point_ppd(torch.tensor([[2.0, 0.0], [0.0, 2.0]])),
        ...         "flat": point_ppd(torch.zeros(2, 2))}
        >>> result = finish_result("digits", ppds, torch.tensor([0, 1]), {}, None, {}, {},
        ...                        out=None, verbose=False)
        >>> with tempfile.TemporaryDirectory() as out:
        ...     save_result(result, out, verbose=False)
        ...     print(sorted(os.listdir(out)))
        ['classify_digits.json', 'classify_digits.md', 'reliability_digits.png']
        >>> [os.path.basename(f) for f in result.files]
        ['reliability_digits.png', 'classify_digits.md', 'classify_digits.json']
    """
    if out is None:
        return
    # A bare Figure renders with Agg whatever pyplot's backend is, and never opens a window.
    from matplotlib.figure import Figure

    from pyrobayes.plotting import plot_reliability

    os.makedirs(out, exist_ok=True)
    fig = Figure(figsize=(4.5 * len(result.ppds), 4.5))
    axes = fig.subplots(1, len(result.ppds), squeeze=False)[0]  # one method: still a row
    for ax, (name, ppd) in zip(axes, result.ppds.items()):
        plot_reliability(ppd, result.labels, ax=ax, title=f"{result.task}: {name}")
    fig.tight_layout()
    png = os.path.join(out, f"reliability_{result.task}.png")
    fig.savefig(png, dpi=110)
    md = os.path.join(out, f"classify_{result.task}.md")
    with open(md, "w") as f:
        f.write(result.report() + "\n")
    js = os.path.join(out, f"classify_{result.task}.json")
    with open(js, "w") as f:
        json.dump(
            {
                "task": result.task,
                "table": result.table.to_dict(),
                "ood_tables": {k: v.to_dict() for k, v in result.ood_tables.items()},
                "info": result.info,
            },
            f,
            indent=2,
            default=str,
        )
    result.files.extend([png, md, js])
    log(verbose, f"wrote {png}, {md}, {js}")
