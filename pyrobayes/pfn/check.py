"""Does a data set look like a regression PFN's prior? A check on the training rows alone.

A PFN answers with the posterior predictive of the prior it was trained on, whatever the
data; on data the prior gives little mass to (yacht: nearly noise-free, its target
exponential in one feature, unlike the smooth tanh-BNN functions of ``bnn-tabular``'s prior)
its answer is misplaced or needlessly vague, and nothing in the PPD says so. :func:`pfn_self_check` asks the
PFN to predict each of ``folds`` held-out parts of the *training* rows from the others and
reads the probability integral transforms :math:`u_i = F_i(y_i)`: for data from the prior
they are uniform, so the central 50% interval covers half the held-out rows. A coverage far
from 0.5 means the data lie outside what the PFN learnt (above 0.5: its intervals are too
wide, e.g. far less noise than the prior expects; below: too narrow or misplaced). The test
rows are never touched, so the check can gate a result without peeking at its score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PFNSelfCheck", "pfn_self_check"]

# Coverage of the central 50% interval may stray this far from 0.5 before the check fails,
# or 4 binomial standard errors when the held-out rows are fewer than 400: real data are
# never exactly the prior's, and 40-60% is a margin within which a PPD is still usable.
MIN_TOLERANCE = 0.1


@dataclass(frozen=True)
class PFNSelfCheck:
    """The result of :func:`pfn_self_check`.

    Attributes:
        coverage_50: share of held-out training rows inside the PFN's central 50% interval.
        coverage_90: the same for the central 90% interval.
        nll: mean negative log-density of the held-out rows (in ``y_train``'s units).
        rows: held-out rows scored (every training row once).
        folds: the number of parts.
        context_rows: training rows given to the PFN per part (at most its ``max_train``).
        features: column indices the PFN saw (all, or a seeded random subset of its
            ``num_features`` when the table is wider).
        tolerance: :math:`\\max(0.1, 4\\sqrt{0.25/\\text{rows}})`, how far ``coverage_50``
            may stray from 0.5.

    Example::

        >>> c = PFNSelfCheck(0.83, 0.96, 2.6, 277, 5, 222, (0, 1), 0.12)
        >>> c.ok, c.message().split(":")[0]
        (False, 'PFN self-check failed')
    """

    coverage_50: float
    coverage_90: float
    nll: float
    rows: int
    folds: int
    context_rows: int
    features: tuple[int, ...]
    tolerance: float

    @property
    def ok(self) -> bool:
        """Whether ``coverage_50`` is within ``tolerance`` of 0.5."""
        return abs(self.coverage_50 - 0.5) <= self.tolerance

    def message(self) -> str:
        """One line for a log or a table note."""
        verdict = "passed" if self.ok else "failed"
        side = "too wide" if self.coverage_50 > 0.5 else "too narrow or misplaced"
        text = (
            f"PFN self-check {verdict}: its central 50% intervals cover "
            f"{self.coverage_50:.2f} of {self.rows} held-out training rows ({self.folds} "
            f"folds; 0.5 ± {self.tolerance:.2f} expected), 90% intervals {self.coverage_90:.2f}"
        )
        if not self.ok:
            text += (
                f"; its intervals are {side}: the data look unlike the PFN's prior, and its "
                "PPD here is not the answer of a Bayesian model that fits them"
            )
        return text


def pfn_self_check(
    pfn: Any, x_train: Any, y_train: Any, folds: int = 5, seed: int = 0
) -> PFNSelfCheck:
    """Score a regression PFN on held-out parts of the training rows (module docstring).

    The rows are cut into ``folds`` seeded random parts; part ``k`` is predicted from the
    others (a seeded random ``max_train`` of them when there are more). A table wider
    than the PFN's ``num_features`` is checked on a seeded random subset of that many
    columns (the same for every part). Costs ``folds`` forward passes.

    Args:
        pfn: a regression :class:`~pyrobayes.pfn.PFN` (e.g. ``pretrained("bnn-tabular")``).
        x_train: ``[n]`` or ``[n, d]`` training inputs.
        y_train: ``[n]`` training targets.
        folds: parts, at least 2; every part needs a row.
        seed: the parts, contexts and columns.

    Raises:
        ValueError: a classification PFN, fewer than ``2 * folds`` rows, ``folds < 2``.

    Example::

        >>> from pyrobayes.pfn import pretrained
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 2, generator=g)
        >>> y = torch.tanh(x[:, 0]) + 0.3 * torch.randn(200, generator=g)
        >>> check = pfn_self_check(pretrained("bnn-tabular"), x, y)
        >>> check.ok, check.rows
        (True, 200)
    """
    from pyrobayes.metrics import interval_coverage, nll
    from pyrobayes.pfn.model import Task

    if pfn.task is not Task.REGRESSION:
        raise ValueError("pfn_self_check needs a regression PFN (it reads interval coverage)")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    x = torch.as_tensor(x_train, dtype=torch.float32)
    y = torch.as_tensor(y_train, dtype=torch.float32).reshape(-1)
    x = x[:, None] if x.dim() == 1 else x
    n, d = x.shape
    if len(y) != n:
        raise ValueError(f"x_train has {n} rows but y_train has {len(y)}")
    if n < 2 * folds:
        raise ValueError(
            f"pfn_self_check needs at least {2 * folds} rows for {folds} folds, got {n}"
        )
    g = torch.Generator().manual_seed(seed)
    max_d = int(pfn.config.num_features)
    cols = torch.arange(d) if d <= max_d else torch.randperm(d, generator=g)[:max_d].sort().values
    perm = torch.randperm(n, generator=g)
    parts = [perm[k::folds] for k in range(folds)]
    max_n = int(pfn.config.max_train)
    cover, row_nll, context = torch.zeros(2), [], 0
    for k, held in enumerate(parts):
        rest = torch.cat([p for j, p in enumerate(parts) if j != k])
        if len(rest) > max_n:
            rest = rest[torch.randperm(len(rest), generator=g)[:max_n]]
        context = max(context, len(rest))
        ppd = pfn.predict(x[rest][:, cols], y[rest], x[held][:, cols])
        target = y[held].to(ppd.mean.device)
        cov = interval_coverage(ppd, target, (0.5, 0.9))
        cover += len(held) * torch.tensor([cov[0.5], cov[0.9]])
        row_nll.append(nll(ppd, target, reduction="none").cpu())
    return PFNSelfCheck(
        coverage_50=float(cover[0] / n),
        coverage_90=float(cover[1] / n),
        nll=float(torch.cat(row_nll).double().mean()),
        rows=n,
        folds=folds,
        context_rows=context,
        features=tuple(int(c) for c in cols),
        tolerance=max(MIN_TOLERANCE, 4 * math.sqrt(0.25 / n)),
    )
