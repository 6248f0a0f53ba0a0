r"""The up-front plan of the real-data job: for each method, the form that fits the data's
size, its estimated time and memory per split, and what is left out and why.

:func:`plan_tabular` runs before any fit (:func:`pyrobayes.jobs.tabular_regression.run_tabular` calls
it once the data are loaded) and decides

* **GP**: the exact ARD GP (:func:`~pyrobayes.gp.fit_ard_gp`) up to ``gp_exact_max``
  training rows and while its memory, about ``8 n^2`` bytes times :data:`EXACT_GP_COPIES`
  matrices, stays under half the available memory; beyond that a sparse GP with ARD and
  ``gp_inducing`` inducing inputs (Pyro's ``SparseGPRegression``, variational free energy,
  :func:`~pyrobayes.gp.fit_sparse_ard_gp`), :math:`O(n M^2)` per step. The row's label
  says which (``exact GP (ARD)`` / ``sparse GP (ARD, VFE, M inducing)``).
* **PFN**: the tabular PFN on all training rows when it was trained for that many rows
  and features; beyond, an equal mixture over ``pfn_subsets`` PFN predictions, each given
  a random context of at most ``max_train`` training rows (disjoint while rows last) and,
  when ``d`` exceeds its features, a random subset of ``max_features`` features
  (:func:`pfn_subset_ppd`). The label states the approximation.
* **NUTS**: only when its estimated time per split fits ``nuts_max_minutes``; otherwise
  its row is left out and a note gives the estimate and the flags.
* everything else runs as configured; the estimate of every row is listed.

Time model (seconds per split; constants measured on this project's 2-core machine, one
torch thread, under load, so they err on the slow side): a full-batch Adam step of the
``d``-50-50 MLP on ``n`` rows costs :math:`t(n) = 10^{-3} + 2.4\cdot 10^{-6} n`; the MLP
``mlp_steps`` of them, the deep ensemble ``5 x 2 x ensemble_steps`` (mean then
mean-variance phase; both early-stopped, so this is an upper bound), SVI ``3 svi_steps``
(a draw, the model and the guide per step) on top of the MLP it starts from, times
``1 + 0.8 x (len(svi_deltas) + svi_delta_extend)`` plus one more MLP on 80% of the rows when the delta is chosen
on an inner split, MC dropout
``(rates + 1) x dropout_steps`` minibatch steps; the exact GP
:math:`3.1\cdot 10^{-10} n^3` per marginal-likelihood step, the sparse GP
:math:`1.5\cdot 10^{-9} n M^2`; NUTS ``(warm-up + draws) x (2^{depth} - 1)`` gradients of
:math:`5\cdot 10^{-4} + 1.5\cdot 10^{-6} n` seconds each. When the total over all splits
exceeds ``budget_minutes`` the job stops before any fit with :class:`PlanError`, whose
message lists each row's estimate and flags that make the run fit.

Example::

    >>> from pyrobayes.jobs.tabular_regression import TabularConfig
    >>> cfg = TabularConfig(data="big.csv", splits=10)
    >>> plan = plan_tabular(cfg, n_train=45_000, n_test=5_000, d=8, n_splits=10,
    ...                     pfn_limits=(512, 10), memory_bytes=24 * 2**30)
    >>> plan.get("gp").label, plan.get("nuts").run
    ('sparse GP (ARD, VFE, 256 inducing)', False)
    >>> plan.fits
    False
    >>> "--splits" in plan.over_budget_message()
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pyrobayes.jobs.tabular_regression import TabularConfig

__all__ = [
    "MethodPlan",
    "TabularPlan",
    "PlanError",
    "plan_tabular",
    "plan_gp",
    "plan_pfn",
    "plan_nuts",
    "available_memory",
    "pfn_subset_ppd",
    "EXACT_GP_COPIES",
]

# n x n float64 matrices alive at once in GPyTorch's exact marginal-likelihood step
# (kernel, noisy kernel, Cholesky factor, their gradients, solves)
EXACT_GP_COPIES = 8
# The table's order (tabular_regression.METHOD_ROWS) and what each method's fit needs first.
ORDER = ("mlp", "ensemble", "dropout", "svi", "pfn", "gp", "nuts")
NEEDS = {"svi": ("mlp",), "nuts": ("mlp", "svi")}
FLAG_OF = {"gp": "--no-gp", "nuts": "--no-nuts"}


class PlanError(ValueError):
    """The run does not fit its budget; raised before any fit. The message names the
    estimate and flags that make it fit.

    Example::

        >>> issubclass(PlanError, ValueError)  # the CLI's one-line error, exit code 2
        True
    """


@dataclass(frozen=True)
class MethodPlan:
    """One method's plan: ``run`` (or ``note`` says why not), ``label`` (its table row,
    naming the form), ``form``, estimated ``seconds`` and peak ``memory_bytes`` per split.

    Example::

        >>> MethodPlan("gp", "exact GP (ARD)", True, "exact", 12.0).note is None
        True
    """

    method: str
    label: str
    run: bool
    form: str
    seconds: float
    memory_bytes: float = 0.0
    note: str | None = None


@dataclass(frozen=True)
class TabularPlan:
    """The plan of a whole run (:func:`plan_tabular`): per-method plans in the table's
    order, the data's size and the budget. ``total_seconds`` counts each fit a selected
    method needs once per split (SVI reuses the MLP's fit) and NUTS on ``n_nuts`` splits.

    Example::

        >>> from pyrobayes.jobs.tabular_regression import TabularConfig
        >>> plan = plan_tabular(TabularConfig(data="d.csv", methods="mlp,svi"), 400, 40, 5, 3,
        ...                     memory_bytes=2**33)
        >>> plan.running, plan.seconds_for(["svi"], 3) == plan.total_seconds
        (('mlp', 'svi'), True)
    """

    n_train: int
    n_test: int
    d: int
    n_splits: int
    n_nuts: int
    methods: tuple[MethodPlan, ...]
    budget_s: float | None
    memory_bytes: float
    fit_seconds: dict[str, float] = field(default_factory=dict)
    extra_notes: tuple[str, ...] = ()

    def get(self, method: str) -> MethodPlan:
        for m in self.methods:
            if m.method == str(method):
                return m
        raise KeyError(
            f"no plan for method {method!r}; planned: {[m.method for m in self.methods]}"
        )

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(m.method for m in self.methods if m.run)

    def seconds_for(self, methods: tuple[str, ...] | list[str], splits: int) -> float:
        """Estimated seconds of running ``methods`` on ``splits`` splits (their fits once)."""
        fits = {f for m in methods for f in (m, *NEEDS.get(m, ()))}
        per_split = sum(self.fit_seconds.get(f, 0.0) for f in fits if f != "nuts")
        nuts = self.fit_seconds.get("nuts", 0.0) if "nuts" in fits else 0.0
        return per_split * splits + nuts * min(splits, self.n_nuts)

    @property
    def total_seconds(self) -> float:
        return self.seconds_for(self.running, self.n_splits)

    @property
    def fits(self) -> bool:
        return self.budget_s is None or self.total_seconds <= self.budget_s

    @property
    def notes(self) -> list[str]:
        """What is left out or approximated, one sentence each (the table's notes)."""
        selected = [m.note for m in self.methods if m.note and (m.run or m.form == "skip")]
        return [*self.extra_notes, *selected]

    def summary(self) -> str:
        """The lines printed before the first fit: size, per-row estimates, total."""
        rows = ", ".join(
            f"{m.label} {_duration(m.seconds)}" if m.run else f"{m.label}: not run"
            for m in self.methods
        )
        budget = "no limit" if self.budget_s is None else _duration(self.budget_s)
        return (
            f"plan: {self.n_splits} split(s) of {self.n_train} training / {self.n_test} test "
            f"rows x {self.d} features; estimated time per split: {rows}; total about "
            f"{_duration(self.total_seconds)} (budget {budget}, --budget-minutes)"
        )

    def over_budget_message(self) -> str:
        """Why the run stops up front, each row's estimate and flags that make it fit."""
        assert self.budget_s is not None
        per = "\n".join(
            f"  {m.label}: {_duration(m.seconds)} per split"
            + (f" (x {self.n_nuts} splits)" if m.method == "nuts" else "")
            for m in self.methods
            if m.run
        )
        return (
            f"this run is estimated at {_duration(self.total_seconds)} ({self.n_splits} "
            f"split(s) of {self.n_train} training rows x {self.d} features), over its budget "
            f"of {_duration(self.budget_s)} (--budget-minutes {self.budget_s / 60:g}); "
            f"nothing was fitted. Estimates (upper bounds where early stopping may end "
            f"sooner):\n{per}\nFlags that make it fit:\n"
            + "\n".join(f"  {s}" for s in self._suggestions())
        )

    def _suggestions(self) -> list[str]:
        budget = self.budget_s or math.inf
        out = []
        chosen = list(self.running)
        per_split = self.seconds_for(chosen, 1)
        k = int(budget // per_split) if per_split > 0 else self.n_splits
        if 1 <= k < self.n_splits:
            out.append(f"--splits {k} (every row; about {_duration(self.seconds_for(chosen, k))})")
        previous: list[str] = []
        # fewer methods on every split, then the most methods that one split allows
        for splits in sorted({self.n_splits, 1}, reverse=True):
            kept = self._cheapest_fit(chosen, splits, budget)
            if kept and kept != chosen and len(kept) > len(previous):
                out.append(
                    _methods_flag(kept, chosen)
                    + (f" --splits {splits}" if splits != self.n_splits else "")
                    + f" (about {_duration(self.seconds_for(kept, splits))})"
                )
                previous = kept
        out.append(
            "fewer steps: --mlp-steps, --ensemble-steps, --svi-steps, --dropout-steps, "
            "--gp-steps (or --gp-inducing for the sparse GP)"
        )
        out.append(
            f"--budget-minutes {math.ceil(self.total_seconds / 60)} to run it as planned "
            "(--budget-minutes 0: no limit)"
        )
        return out

    def _cheapest_fit(self, chosen: list[str], splits: int, budget: float) -> list[str]:
        """``chosen`` less its most expensive methods until ``splits`` splits fit."""
        kept = list(chosen)
        while kept and self.seconds_for(kept, splits) > budget:
            kept.remove(max(kept, key=lambda m: self.seconds_for([m], splits)))
        return kept


def _methods_flag(kept: list[str], chosen: list[str]) -> str:
    dropped = [m for m in chosen if m not in kept]
    if all(m in FLAG_OF for m in dropped):
        return " ".join(FLAG_OF[m] for m in dropped)
    return "--methods " + ",".join(kept)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def available_memory() -> float:
    """Bytes this process may still use: ``MemAvailable`` of ``/proc/meminfo``, capped by a
    cgroup limit when one is set (Linux); elsewhere 8 GiB, a cautious guess.

    Example::

        >>> available_memory() > 0
        True
    """
    avail = 8.0 * 2**30
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = float(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < avail:
            avail = float(raw)
    return avail


# ----------------------------------------------------------------- the time model


def _step(n: float) -> float:
    """Seconds of one full-batch Adam step of the d-50-50 MLP on ``n`` rows."""
    return 1e-3 + 2.4e-6 * n


def _fit_seconds(cfg: TabularConfig, n: int, n_test: int, rates: int) -> dict[str, float]:
    """Estimated seconds per split of each fit that does not depend on a size choice."""
    n_fit = 0.9 * n  # 10% held out for early stopping
    predict = 1e-6 * n_test * 50  # a forward pass per draw / pass over the test rows
    return {
        "mlp": cfg.mlp_steps * _step(n_fit),
        "ensemble": 5 * 2 * cfg.ensemble_steps * _step(n_fit),
        "dropout": (rates + 1) * cfg.dropout_steps * _step(min(128, n))
        + cfg.dropout_passes * (rates * 0.2 * n + n_test) * 5e-6,
        "svi": _svi_fits(cfg) * 3 * cfg.svi_steps * _step(n)
        + (cfg.mlp_steps * _step(0.8 * n) if cfg.delta is None else 0.0)
        + cfg.num_samples * predict,
    }


def _svi_fits(cfg: TabularConfig) -> float:
    """SVI fits per split: one, plus one per candidate delta (each on 80% of the rows) when
    the delta is chosen on an inner validation split (``tabular_svi.job_svi``), counting the
    deltas it may try beyond the grid's edge."""
    if cfg.delta is not None or len(cfg.svi_deltas) < 2:
        return 1.0
    return 1.0 + 0.8 * (len(cfg.svi_deltas) + cfg.svi_delta_extend)


def plan_gp(cfg: TabularConfig, n: int, d: int, memory_bytes: float) -> MethodPlan:
    """Exact ARD GP while ``n <= gp_exact_max`` and its matrices fit half the memory; else
    the sparse GP with ``gp_inducing`` inducing inputs (module docstring).

    Example::

        >>> from pyrobayes.jobs.tabular_regression import TabularConfig
        >>> cfg = TabularConfig(data="d.csv")
        >>> plan_gp(cfg, 1000, 8, 2**34).form, plan_gp(cfg, 9000, 8, 2**34).label
        ('exact', 'sparse GP (ARD, VFE, 256 inducing)')
    """
    exact_mem = EXACT_GP_COPIES * 8.0 * n * n
    if n <= cfg.gp_exact_max and exact_mem <= 0.5 * memory_bytes:
        seconds = cfg.gp_steps * (3.1e-10 * n**3 + 2e-3)
        return MethodPlan("gp", "exact GP (ARD)", True, "exact", seconds, exact_mem)
    m = min(cfg.gp_inducing, n)
    why = (
        f"{n} training rows > --gp-exact-max {cfg.gp_exact_max}"
        if n > cfg.gp_exact_max
        else f"the exact GP's ~{exact_mem / 2**30:.1f} GiB exceed half the available "
        f"{memory_bytes / 2**30:.1f} GiB"
    )
    note = (
        f"GP: sparse GP with ARD and {m} inducing inputs (Pyro SparseGPRegression, VFE) "
        f"instead of the exact GP: {why}"
    )
    seconds = cfg.gp_steps * (1.5e-9 * n * m * m + 2e-3)
    label = f"sparse GP (ARD, VFE, {m} inducing)"
    return MethodPlan("gp", label, True, "sparse", seconds, 6 * 8.0 * n * m, note)


def plan_pfn(
    cfg: TabularConfig, n: int, n_test: int, d: int, limits: tuple[int, int] | None, name: str
) -> MethodPlan:
    """The PFN on every row when it covers ``n`` x ``d`` (``limits`` = its trained rows and
    features; ``None``: no checkpoint), else a mixture over random context subsets.

    Example::

        >>> from pyrobayes.jobs.tabular_regression import TabularConfig
        >>> plan_pfn(TabularConfig(data="d.csv"), 2000, 200, 4, (512, 10), "bnn-tabular").label
        'PFN (bnn-tabular, mixture of 8 random 512-row contexts)'
    """
    if limits is None:
        note = f"PFN: no `{name}` checkpoint in this install; row left empty"
        return MethodPlan("pfn", f"PFN ({name})", False, "skip", 0.0, 0.0, note)
    max_n, max_d = limits
    one = 2 * (0.2 + 6e-4 * (min(n, max_n) + n_test))  # warm-up call + timed call
    if n <= max_n and d <= max_d:
        return MethodPlan("pfn", f"PFN ({name})", True, "full", one)
    k = cfg.pfn_subsets
    rows = min(n, max_n)
    feats = f", {max_d} of {d} features each" if d > max_d else ""
    label = f"PFN ({name}, mixture of {k} random {rows}-row contexts{feats})"
    note = (
        f"PFN: trained for at most {max_n} rows x {max_d} features, here {n} x {d}: its row "
        f"is the equal mixture of {k} PFN predictions, each given {rows} random training rows "
        f"(disjoint while rows last){feats and ' and ' + feats[2:].replace(' each', '') + ' drawn at random'}"
        " (--pfn-subsets); an approximation, not the PFN's posterior given every row"
    )
    return MethodPlan("pfn", label, True, "subsets", k * one / 2 + one / 2, 0.0, note)


def plan_nuts(cfg: TabularConfig, n: int, n_splits: int) -> tuple[MethodPlan, int]:
    """NUTS when its estimate per split fits ``nuts_max_minutes``; ``(plan, n_nuts)``.

    Example::

        >>> from pyrobayes.jobs.tabular_regression import TabularConfig
        >>> plan, n_nuts = plan_nuts(TabularConfig(data="d.csv"), 20_000, 10)
        >>> plan.run, n_nuts, plan.note.split(":")[:2]
        (False, 0, ['NUTS', ' not run'])
    """
    # every tree at full depth: a d-50-50-1 posterior's trees mostly are (yacht, 277
    # rows: 2 x 200 draws took > 9 min on the loaded 2-core machine)
    grads = (cfg.nuts_warmup + cfg.nuts_samples) * (2**cfg.nuts_max_tree_depth - 1)
    seconds = grads * (5e-4 + 1.5e-6 * n)
    n_nuts = min(n_splits, cfg.nuts_splits or n_splits)
    if seconds > cfg.nuts_max_minutes * 60:
        note = (
            f"NUTS: not run: estimated {_duration(seconds)} per split ({n} training rows, "
            f"{cfg.nuts_warmup + cfg.nuts_samples} draws x ~{grads // (cfg.nuts_warmup + cfg.nuts_samples)}"
            f" gradients) > --nuts-max-minutes {cfg.nuts_max_minutes:g}; raise it, or lower "
            "--nuts-warmup/--nuts-samples/--nuts-max-tree-depth"
        )
        return MethodPlan("nuts", "NUTS", False, "skip", seconds, 0.0, note), 0
    note = None
    if n_nuts < n_splits:
        note = f"NUTS: run on the first {n_nuts} of {n_splits} splits only (--nuts-splits)"
    return MethodPlan("nuts", "NUTS", True, "full", seconds, 0.0, note), n_nuts


def plan_tabular(
    cfg: TabularConfig,
    n_train: int,
    n_test: int,
    d: int,
    n_splits: int,
    *,
    pfn_limits: tuple[int, int] | None = None,
    pfn_name: str = "bnn-tabular",
    memory_bytes: float | None = None,
    dropout_rates: int = 4,
) -> TabularPlan:
    """The plan of a run of ``cfg`` on ``n_splits`` splits of ``n_train``/``n_test`` rows
    x ``d`` features (module docstring). ``pfn_limits``: the PFN's ``(max rows, max
    features)``, ``None`` when there is none; ``memory_bytes``: default
    :func:`available_memory`; ``dropout_rates``: the size of MC dropout's rate grid.
    Methods not selected get ``run=False``. Raises nothing: :attr:`TabularPlan.fits` says
    whether the budget holds (the job raises :class:`PlanError` when it does not).

    Example::

        >>> from pyrobayes.jobs.tabular_regression import TabularConfig
        >>> plan = plan_tabular(TabularConfig(data="d.csv", no_nuts=True), 300, 30, 4, 5,
        ...                     pfn_limits=(512, 10), memory_bytes=2**33)
        >>> plan.get("gp").label, plan.get("pfn").label, plan.running[-1], plan.fits
        ('exact GP (ARD)', 'PFN (bnn-tabular)', 'gp', True)
    """
    from pyrobayes.jobs.tabular_regression import METHOD_ROWS, Method

    mem = available_memory() if memory_bytes is None else float(memory_bytes)
    selected = {m.value for m in cfg.selected}
    fit_s = _fit_seconds(cfg, n_train, n_test, dropout_rates)
    sized = {
        "gp": plan_gp(cfg, n_train, d, mem),
        "pfn": plan_pfn(cfg, n_train, n_test, d, pfn_limits, pfn_name),
    }
    sized["nuts"], n_nuts = plan_nuts(cfg, n_train, n_splits)
    for m, p in sized.items():
        fit_s[m] = p.seconds if p.run else 0.0
    out = []
    for m in ORDER:
        own = sized.get(m) or MethodPlan(m, METHOD_ROWS[Method(m)], True, "full", fit_s[m])
        if m in NEEDS and m != "nuts":  # SVI's time includes the MLP it starts from
            own = MethodPlan(m, own.label, True, own.form, own.seconds + fit_s["mlp"])
        if m not in selected:
            own = MethodPlan(m, own.label, False, "skip", own.seconds, own.memory_bytes)
        out.append(own)
    skipped = [m for m in ORDER if m not in selected]
    extra = (f"not run (--methods/--no-gp/--no-nuts): {', '.join(skipped)}",) if skipped else ()
    return TabularPlan(
        n_train=n_train,
        n_test=n_test,
        d=d,
        n_splits=n_splits,
        n_nuts=n_nuts if "nuts" in selected else 0,
        methods=tuple(out),
        budget_s=cfg.budget_minutes * 60 if cfg.budget_minutes > 0 else None,
        memory_bytes=mem,
        fit_seconds=fit_s,
        extra_notes=extra,
    )


# ----------------------------------------------------------------- the PFN beyond its rows


def pfn_subset_ppd(
    pfn: Any,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_query: torch.Tensor,
    subsets: int,
    seed: int = 0,
    **predict_kw: Any,
) -> Any:
    """The PFN beyond the rows (and features) it was trained for: the equal mixture of
    ``subsets`` PFN predictions, prediction ``k`` given a random context of ``max_train``
    training rows (one seeded permutation cut into consecutive blocks, so contexts are
    disjoint while rows last) and, when ``d`` exceeds the PFN's ``num_features``, a random
    subset of that many features (the same columns of ``x_query``). Within its range
    (``n <= max_train``, ``d <= num_features``) this is one ``pfn.predict`` call on every
    row. ``predict_kw`` go to every ``predict`` call (a classifier's ``num_classes``: a
    context may lack a rare class).

    The mixture :math:`\\frac1K \\sum_k p_k(y \\mid x)` is a
    :class:`~pyrobayes.ppd.MixturePPD` of regression PPDs, and for a classifier the
    :class:`~pyrobayes.ppd.CategoricalPPD` with the ``K`` predictions as its draws (its
    probabilities are their mean).

    Example::

        >>> from pyrobayes.pfn import pretrained
        >>> pfn = pretrained("bnn-tabular")
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(700, 3, generator=g)
        >>> ppd = pfn_subset_ppd(pfn, x, x[:, 0], x[:4], subsets=3)
        >>> type(ppd).__name__, ppd.num_components, ppd.batch_shape
        ('MixturePPD', 3, torch.Size([4]))
    """
    from pyrobayes.ppd import CategoricalPPD, MixturePPD

    c = pfn.config
    max_n, max_d = int(c.max_train), int(c.num_features)
    n, d = x_train.shape
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if n <= max_n and d <= max_d:
        return pfn.predict(x_train, y_train, x_query, **predict_kw)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    rows_per = min(n, max_n)
    parts = []
    for k in range(subsets):
        start = (k * rows_per) % n
        idx = perm.roll(-start)[:rows_per]
        cols = torch.randperm(d, generator=g)[:max_d].sort().values if d > max_d else None
        xt, xq = x_train[idx], x_query
        if cols is not None:
            xt, xq = xt[:, cols], xq[:, cols]
        parts.append(pfn.predict(xt, y_train[idx], xq, **predict_kw))
    if all(isinstance(p, CategoricalPPD) for p in parts):
        return CategoricalPPD(torch.cat([p.probs_per_draw for p in parts]))
    return MixturePPD(parts)
