"""The real-data comparison, ``pyrobayes compare --data diabetes|motorcycle|file.csv|uci:name``.

The protocol of the UCI regression benchmarks (Hernández-Lobato & Adams 2015):

1. ``k`` random 90/10 train/test splits (``--splits``, seeded; default 10), or, for a folder
   in the standard UCI layout (``--data /path/to/yacht`` or ``--data uci:yacht --data-root
   PATH``, :func:`~pyrobayes.data.uci.load_uci`), its given splits (all by default, the first
   ``--splits K``);
2. on each split, x (per feature) and y standardised with the *training* split's mean and
   standard deviation; every method sees every training row;
3. methods: an MLP early-stopped on a held-out 10% of the training split, with its noise
   the held-out root-mean-square residual (:func:`fit_mlp_heldout`; a point estimate), SVI
   with a MOPED guide started at that MLP and its noise, the tabular PFN (when one covers
   ``n`` and ``d``; otherwise its row says why), NUTS (the reference, started at SVI's
   posterior median) and an exact GP with an ARD RBF kernel whose hyperparameters maximise
   the marginal likelihood. SVI, NUTS and the PFN share one model,
   :func:`~pyrobayes.models.tabular_regression_model`, whose noise std is a latent site
   with a LogNormal prior (NUTS samples it, SVI's guide fits it, the PFN integrates it).
   Two baselines of the field (:mod:`pyrobayes.jobs.baselines`): a deep ensemble of 5
   mean-variance networks and MC dropout (rate and precision chosen on the training rows,
   from the folder's ``dropout_rates.txt``/``tau_values.txt`` when present).
   ``--methods mlp,ensemble,dropout,svi,gp,pfn,nuts`` (default all), ``--no-gp`` and
   ``--no-nuts`` choose the rows (SVI still fits the MLP it starts from, NUTS the SVI);
4. every PPD mapped back to raw units, :math:`y = \\mu_y + s_y z`, so that
   :math:`\\log p(y) = \\log p(z) - \\log s_y` (:func:`~pyrobayes.ppd.affine_ppd`); held-out
   NLL, CRPS, MAE, RMSE and 50/90/95% coverage in raw units, mean ± standard error over
   splits (:func:`~pyrobayes.compare.mean_se_table`);
5. ``compare.md``/``compare.json``/``compare.png``: the table, the held-out NLL with error
   bars, the calibration (coverage vs nominal) and, for 1-D data, the PPD bands of split 1.

The command line is derived from :class:`TabularConfig` (:func:`add_dataclass_arguments`),
so each option is written once, with its help text in the field's metadata.

Example (a fast smoke run)::

    pyrobayes compare --data motorcycle --splits 2 --mlp-steps 200 --svi-steps 100 \\
        --nuts-warmup 20 --nuts-samples 20 --no-progress
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pyrobayes.jobs import _tabular_common as common
from pyrobayes.jobs._tabular_common import TableJobConfig, opt
from pyrobayes.options import Option

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pyrobayes.compare import ComparisonTable

__all__ = [
    "TabularConfig",
    "Method",
    "METHOD_ROWS",
    "TabularResult",
    "Split",
    "fit_mlp_heldout",
    "make_splits",
    "standardise_split",
    "run_tabular",
    "plot_tabular_summary",
    "add_dataclass_arguments",
    "config_from_args",
    "add_arguments",
    "run",
]

PFN_NAME = "bnn-tabular"
LEVELS = (0.5, 0.9, 0.95)
# the command line made from a config dataclass, shared with the classification job
add_dataclass_arguments = common.add_dataclass_arguments
config_from_args = common.config_from_args


class Method(Option):
    """A row of the real-data table, as ``--methods`` names it (comma-separated).

    Example::

        >>> Method.parse("ensemble"), METHOD_ROWS[Method.ENSEMBLE]
        (<Method.ENSEMBLE: 'ensemble'>, 'deep ensemble')
        >>> Method.parse("bnn", "method")
        Traceback (most recent call last):
        ...
        ValueError: unknown method 'bnn'; valid: mlp, ensemble, dropout, svi, gp, pfn, nuts
    """

    MLP = "mlp"
    ENSEMBLE = "ensemble"
    DROPOUT = "dropout"
    SVI = "svi"
    GP = "gp"
    PFN = "pfn"
    NUTS = "nuts"


# Table row of each method, in the table's order.
METHOD_ROWS = {
    Method.MLP: "MLP + fitted noise",
    Method.ENSEMBLE: "deep ensemble",
    Method.DROPOUT: "MC dropout",
    Method.SVI: "SVI (MOPED)",
    Method.PFN: f"PFN ({PFN_NAME})",
    Method.GP: "exact GP (ARD)",
    Method.NUTS: "NUTS",
}


@dataclass(frozen=True)
class TabularConfig(TableJobConfig):
    """Options of the real-data job (:func:`run_tabular`): the options of every table job
    (``_tabular_common.TableJobConfig``: ``data``, ``x_cols``, ``y_col``, ``splits``,
    ``methods``, ``test_fraction``, ``seed``, ``mlp_steps``, ``svi_steps``, ``svi_lr``,
    ``nuts_splits``, ``no_nuts``, ``no_gp``, ``out``, ``no_progress``) and this job's own
    below. Each field is one command-line flag of
    ``pyrobayes compare`` (``--field-name``, or ``metadata["flag"]``: ``data`` is
    ``--data``, ``x_cols`` is ``--x``, ``y_col`` is ``--y``). Values are checked here, so a
    bad one fails before any work starts. ``selected`` is the methods whose rows the table
    shows, in its order: ``methods`` (default all) less ``gp`` under ``no_gp`` and ``nuts``
    under ``no_nuts``.

    Example::

        >>> cfg = TabularConfig(data="diabetes", splits=5, nuts_warmup=100, nuts_samples=100)
        >>> cfg.x_cols is None, cfg.test_fraction  # all features, 90/10 splits
        (True, 0.1)
        >>> TabularConfig(data="diabetes", methods="nuts,mlp", no_nuts=True).selected
        (<Method.MLP: 'mlp'>,)
        >>> TabularConfig(data="diabetes", splits=0)
        Traceback (most recent call last):
        ...
        ValueError: splits must be >= 1, got 0
    """

    METHODS = Method
    METHOD_ROWS = METHOD_ROWS
    DATA_HINT = "diabetes, motorcycle, a CSV file or a UCI folder/uci:<name>"
    POSITIVE = (
        "gp_steps",
        "ensemble_steps",
        "dropout_steps",
        "dropout_passes",
        "gp_exact_max",
        "gp_inducing",
        "pfn_subsets",
    )

    # these follow TableJobConfig's fields; keep their order: benchmarks/bench_uci.py
    # fingerprints a config by its fields in order (a reorder re-keys its result cache)
    data_root: str | None = opt(
        None,
        "folder holding the UCI data sets, for --data uci:<name> (default $PYROBAYES_UCI_ROOT)",
        flag="--data-root",
        type=str,
    )
    first_split: int = opt(
        0,
        "0-based index of the first split to run: splits first_split .. first_split + K - 1 "
        "(resuming or extending a run split by split)",
    )
    methods: tuple[str, ...] | None = opt(
        None,
        "comma-separated rows to run: " + ",".join(m.value for m in Method) + " (default all)",
        type=str,
    )
    delta: float | None = opt(
        None,
        "MOPED relative initial scale (default: chosen per split from --svi-deltas on an "
        "inner validation split of the training rows)",
        type=float,
    )
    svi_deltas: tuple[float, ...] = opt(
        (0.003, 0.01, 0.03, 0.1),
        "MOPED deltas the SVI row chooses from when --delta is not given",
        nargs="+",
        type=float,
    )
    svi_val_fraction: float = opt(
        0.2, "fraction of the training rows held out to choose the SVI delta"
    )
    svi_delta_extend: int = opt(
        2,
        "when the chosen delta is the grid's smallest or largest, try up to this many more "
        "beyond that edge (x/÷ sqrt(10) each) while the inner-validation score improves",
    )
    svi_lr_schedule: str = opt(
        "cosine",
        "step-size schedule of the SVI fits: cosine (decays to 0 over --svi-steps) or constant",
    )
    num_samples: int = opt(200, "posterior draws of the SVI predictive")
    nuts_warmup: int = opt(200, "NUTS adaptation steps per split")
    nuts_samples: int = opt(200, "NUTS draws kept per split")
    nuts_max_tree_depth: int = opt(
        10, "NUTS maximum tree depth (at most 2^depth - 1 leapfrog steps per draw)"
    )
    gp_steps: int = opt(300, "Adam steps of the GP's marginal-likelihood fit")
    ensemble_steps: int = opt(
        2000, "most full-batch Adam steps per deep-ensemble member (early-stopped)"
    )
    dropout_steps: int = opt(2000, "minibatch Adam steps per MC dropout fit")
    dropout_passes: int = opt(100, "MC dropout test-time passes (T)")
    budget_minutes: float = opt(
        120.0,
        "stop before any fit when the estimated time of the whole run exceeds this many "
        "minutes (the message names the flags that make it fit); 0: no limit",
    )
    gp_exact_max: int = opt(
        2000, "most training rows for the exact GP; beyond them a sparse GP (ARD, VFE)"
    )
    gp_inducing: int = opt(256, "inducing inputs of the sparse GP")
    pfn_subsets: int = opt(
        8,
        "beyond the PFN's trained rows/features: its row is the mixture of this many "
        "predictions, each on a random context of its trained size",
    )
    nuts_max_minutes: float = opt(
        20.0, "run NUTS only where its estimated time per split fits this many minutes"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.budget_minutes >= 0 or not self.nuts_max_minutes >= 0:
            raise ValueError(
                "budget-minutes and nuts-max-minutes must be >= 0, got "
                f"{self.budget_minutes}, {self.nuts_max_minutes}"
            )
        if self.first_split < 0:
            raise ValueError(f"first-split must be >= 0, got {self.first_split}")
        from pyrobayes.infer.fit import LRSchedule
        from pyrobayes.jobs.tabular_svi import check_deltas

        object.__setattr__(self, "svi_deltas", check_deltas(self.svi_deltas))
        if int(self.svi_delta_extend) < 0:
            raise ValueError(f"svi-delta-extend must be >= 0, got {self.svi_delta_extend}")
        LRSchedule.parse(self.svi_lr_schedule, "svi-lr-schedule")
        if not 0.0 < self.svi_val_fraction < 1.0:
            raise ValueError(f"svi-val-fraction must be in (0, 1), got {self.svi_val_fraction}")
        self._check_selected()


class TabularResult(common.TableJobResult):
    """What :func:`run_tabular` returns (a plain ``dict`` with these keys).

    - ``table``: the :class:`~pyrobayes.compare.ComparisonTable` of mean ± standard error
      over splits (:func:`~pyrobayes.compare.mean_se_table`), one row per selected method in
      the order MLP, deep ensemble, MC dropout, SVI, PFN, exact GP, NUTS; scores in raw target units, NUTS the reference of the
      ``KL(ref‖·)`` column. Plot it with :func:`plot_tabular_summary`.
    - ``nuts_table``: when NUTS ran on fewer splits than the others (``nuts_splits``), the
      same mean ± s.e. table over only those splits, every method on the same data (the
      paired comparison with the reference); else ``None``.
    - ``split_tables``: one :class:`~pyrobayes.compare.ComparisonTable` per split.
    - ``notes``: sentences on what was left out (e.g. a PFN that does not cover the data,
      NUTS on fewer splits).
    - ``infos``: per split, the fitted noise levels (``mlp_noise_std``, ``svi_noise_std``),
      the GP's hyperparameters (``gp``), NUTS's diagnostics (``nuts``: ``max_r_hat``,
      ``min_ess``, ``noise_std_median``), any PFN warnings (``pfn_warnings``) and the PFN's
      self-check on the training rows (``pfn_self_check``: ``coverage_50``, ``coverage_90``,
      ``ok``, ...; a note when it fails, :func:`~pyrobayes.pfn.check.pfn_self_check`).
    - ``files``: paths of ``compare.png``/``.json``/``.md`` (and ``compare-bands.png`` for
      1-D data) under ``TabularConfig.out``.
    - ``rows``: ``{method name: its row label}`` of the methods run (a label names the
      form the size check chose, e.g. a sparse GP).

    Example::

        >>> sorted(TabularResult.__annotations__)
        ['files', 'infos', 'notes', 'nuts_table', 'rows', 'split_tables', 'table']
    """

    rows: dict[str, str]


# ----------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """One split in standardised units plus the statistics that undo it: the methods see
    ``x_train``, ``y_train`` (standardised with the training rows' ``x_mean``/``x_std``,
    ``y_mean``/``y_std``) and ``x_test``; scores use ``y_test_raw``. Made by
    :func:`standardise_split`.

    Example::

        >>> x = torch.arange(12.0).reshape(6, 2)
        >>> s = standardise_split(x, 3 * x[:, 0] + 1, torch.arange(4), torch.tensor([4, 5]))
        >>> s.x_train.shape, s.y_test_raw.tolist()
        (torch.Size([4, 2]), [25.0, 31.0])
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test_raw: torch.Tensor
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float
    train_index: torch.Tensor
    test_index: torch.Tensor
    dropped_features: tuple[int, ...] = ()


def make_splits(
    n: int, k: int, test_fraction: float = 0.1, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` random ``(train_index, test_index)`` partitions of ``range(n)``, each holding
    out ``round(test_fraction * n)`` (at least 1) rows; seeded, independent across splits.

    Example::

        >>> tr, te = make_splits(20, 3, 0.1, seed=0)[0]
        >>> len(tr), len(te), sorted(torch.cat([tr, te]).tolist()) == list(range(20))
        (18, 2, True)
    """
    n_test = max(1, int(round(test_fraction * n)))
    if n - n_test < 2:
        raise ValueError(f"{n} rows leave fewer than 2 training rows after holding out {n_test}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        perm = torch.randperm(n, generator=g)
        out.append((perm[n_test:].sort().values, perm[:n_test].sort().values))
    return out


def standardise_split(
    x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor
) -> Split:
    """Standardise x (per feature) and y with the training rows' mean and standard deviation
    only (the test rows never inform them); float32 tensors for the methods. A feature that
    is constant on the training rows can inform no method: it is left out of this split
    (``dropped_features``; naval's standard splits have two); a constant target, or every
    feature constant, is a ``ValueError``.

    Example::

        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
        >>> y = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
        >>> s = standardise_split(x, y, torch.arange(4), torch.tensor([4]))
        >>> round(float(s.y_train.mean()), 6), round(float(s.y_train.std()), 6)
        (0.0, 1.0)
        >>> s.y_mean, round(float(s.x_test), 3)  # the test row is far outside: x = 10
        (2.5, 6.584)
    """
    x, dropped = common.drop_constant_features(x, train)
    xtr, ytr = x[train], y[train]
    xm, xs = xtr.mean(0), xtr.std(0)
    ym, ys = float(ytr.mean()), float(ytr.std())
    if ys == 0:
        raise ValueError("the target is constant on this training split")
    return Split(
        x_train=((xtr - xm) / xs).float(),
        y_train=((ytr - ym) / ys).float(),
        x_test=((x[test] - xm) / xs).float(),
        y_test_raw=y[test].float(),
        x_mean=xm,
        x_std=xs,
        y_mean=ym,
        y_std=ys,
        train_index=train,
        test_index=test,
        dropped_features=dropped,
    )


# ----------------------------------------------------------------- methods


def fit_mlp_heldout(
    x: torch.Tensor,
    y: torch.Tensor,
    max_steps: int,
    seed: int,
    val_fraction: float = 0.1,
    patience: int = 200,
    lr: float = 1e-2,
) -> tuple[torch.nn.Module, float, dict]:
    """The frequentist baseline, kept from interpolating: a tanh MLP (``d``-50-50-1, the
    Bayesian model's shape) trained by full-batch Adam on ``1 - val_fraction`` of the rows,
    with the weights of the step of lowest held-out MSE kept (early stopping, at most
    ``max_steps``; stops after ``patience`` steps without improvement). Its Gaussian noise is
    the held-out root-mean-square residual,

    .. math:: \\hat\\sigma = \\Big(\tfrac1{|V|}\\sum_{i\\in V}(y_i - f(x_i))^2\\Big)^{1/2},

    an estimate of the predictive noise; the training residuals of a 3,000-weight net on a
    few hundred rows go to ~0 and would call almost nothing noise.

    Returns ``(net, noise, info)`` with ``info = {"best_step", "n_val"}``.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 2, generator=g)
        >>> y = torch.sin(x[:, 0]) + 0.3 * torch.randn(200, generator=g)
        >>> net, noise, info = fit_mlp_heldout(x, y, 500, seed=0)
        >>> 0.15 < noise < 0.6
        True
    """
    from pyrobayes.models.mlp import MLP
    from pyrobayes.models.train import train_early_stopped

    n = len(x)
    n_val = max(2, int(round(val_fraction * n)))
    if n - n_val < 2:
        raise ValueError(f"{n} training rows are too few to hold out {n_val} for early stopping")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    val, fit_rows = perm[:n_val], perm[n_val:]
    torch.manual_seed(seed)
    net = MLP(x.shape[-1], (50, 50), 1, "tanh")

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (out.squeeze(-1) - target).pow(2).mean()

    best_step = train_early_stopped(
        net, mse, x[fit_rows], y[fit_rows], x[val], y[val], max_steps, lr, patience
    )
    with torch.no_grad():
        best = float(mse(net(x[val]), y[val]))
    noise = max(best**0.5, 1e-3)
    return net.eval(), noise, {"best_step": best_step, "n_val": n_val}


def _load_pfn(n_train: int, d: int) -> tuple[Any, str | None]:
    """``(pfn, None)`` if the tabular PFN exists and covers ``n_train`` x ``d``, else
    ``(None, reason)``."""
    from pyrobayes.pfn import pretrained

    try:
        pfn = pretrained(PFN_NAME)
    except (KeyError, ValueError, FileNotFoundError) as err:
        return None, f"PFN: no `{PFN_NAME}` checkpoint in this install ({err}); row left empty"
    c = pfn.config
    max_d = int(getattr(c, "max_features", getattr(c, "num_features", d)))
    max_n = int(getattr(c, "max_train", n_train))
    if d > max_d or n_train > max_n:
        return None, (
            f"PFN ({PFN_NAME}): does not cover these data ({n_train} training rows x {d} "
            f"features; it was trained on at most {max_n} rows x {max_d} features); row left "
            "empty rather than truncating the data"
        )
    return pfn, None


def _slice_mixture(ppd, sl: slice):
    from pyrobayes.ppd import NormalMixturePPD

    return NormalMixturePPD(ppd.loc[:, sl], ppd.scale[:, sl])


def _run_split(
    s: Split,
    cfg: TabularConfig,
    pfn: Any,
    run_nuts: bool,
    grid: torch.Tensor | None,
    k: int,
    dropout_grid: tuple[tuple[float, ...], tuple[float, ...]] = ((), ()),
    plan: Any = None,
) -> tuple[dict, dict, dict, dict]:
    """Standardised-unit PPDs ``(test, grid)``, times and diagnostics of split ``k``.
    ``dropout_grid``: the folder's MC dropout ``(rates, taus)``, taus of the raw target
    (empty: the defaults); ``plan``: the run's :class:`~pyrobayes.jobs.tabular_plan.TabularPlan`
    (which methods run, in which form; default: planned here for this split)."""
    import pyro

    from pyrobayes.progress import heartbeat_status

    progress = not cfg.no_progress
    seed = cfg.seed + k
    out: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
    pyro.set_rng_seed(seed)
    if plan is None:
        plan, _ = _plan(cfg, len(s.x_train), len(s.x_test), s.x_train.shape[1], 1, dropout_grid)
    sel = {Method(m) for m in plan.running}

    def beat(method: Method) -> None:
        heartbeat_status(f"split {k + 1}: {plan.get(method.value).label}")

    # SVI starts at the MLP and NUTS at SVI's posterior median: a selected method runs the
    # ones it starts from too; their rows are dropped below unless selected
    if sel & {Method.MLP, Method.SVI, Method.NUTS}:
        beat(Method.MLP)
        mlp, noise, t_mlp = _split_mlp(s, cfg, grid, seed, out)
    if Method.ENSEMBLE in sel:
        beat(Method.ENSEMBLE)
        _split_ensemble(s, cfg, grid, seed, out)
    if Method.DROPOUT in sel:
        beat(Method.DROPOUT)
        _split_dropout(s, cfg, grid, seed, dropout_grid, out)
    if sel & {Method.SVI, Method.NUTS}:
        beat(Method.SVI)
        model, svi_median = _split_svi(s, cfg, grid, seed, progress, mlp, noise, t_mlp, out)
    if pfn is not None and Method.PFN in sel:
        beat(Method.PFN)
        _split_pfn(s, pfn, grid, out, plan.get("pfn"), cfg.pfn_subsets, seed)
        _split_pfn_check(s, pfn, seed, out[3])
    if Method.GP in sel:
        beat(Method.GP)
        _split_gp(s, cfg, grid, progress, out, plan.get("gp"), seed)
    if run_nuts and Method.NUTS in sel:
        beat(Method.NUTS)
        _split_nuts(s, cfg, grid, seed, progress, model, svi_median, out)
    shown = {plan.get(m.value).label for m in sel if m in cfg.selected}
    for d in out[:3]:
        for row in [r for r in d if r not in shown]:
            del d[row]
    return out


def _split_ensemble(
    s: Split, cfg: TabularConfig, grid: torch.Tensor | None, seed: int, out: tuple
) -> None:
    """The deep ensemble's PPDs, time and members' early-stopping steps."""
    from pyrobayes.jobs.baselines import fit_deep_ensemble

    ppds, grid_ppds, times, info = out
    row = METHOD_ROWS[Method.ENSEMBLE]
    t0 = time.perf_counter()
    ens = fit_deep_ensemble(s.x_train, s.y_train, max_steps=cfg.ensemble_steps, seed=seed)
    ppds[row] = ens.predict(s.x_test)
    times[row] = time.perf_counter() - t0
    if grid is not None:
        grid_ppds[row] = ens.predict(grid)
    info["ensemble_best_steps"] = ens.best_steps


def _split_dropout(
    s: Split,
    cfg: TabularConfig,
    grid: torch.Tensor | None,
    seed: int,
    dropout_grid: tuple[tuple[float, ...], tuple[float, ...]],
    out: tuple,
) -> None:
    """MC dropout on the training rows only (its grid choice included): PPDs, time, choice."""
    from pyrobayes.jobs.baselines import DEFAULT_DROPOUT_RATES, fit_mc_dropout

    ppds, grid_ppds, times, info = out
    row = METHOD_ROWS[Method.DROPOUT]
    rates, raw_taus = dropout_grid
    # the folder's taus are precisions of the raw target (the paper's code scores raw
    # units); the network sees y / y_std, whose precision is tau * y_std**2
    taus = tuple(t * s.y_std**2 for t in raw_taus) or None
    t0 = time.perf_counter()
    fit = fit_mc_dropout(
        s.x_train,
        s.y_train,
        rates=rates or DEFAULT_DROPOUT_RATES,
        taus=taus,
        steps=cfg.dropout_steps,
        passes=cfg.dropout_passes,
        seed=seed,
    )
    ppds[row] = fit.predict(s.x_test)
    times[row] = time.perf_counter() - t0
    if grid is not None:
        grid_ppds[row] = fit.predict(grid)
    info["dropout"] = {"rate": fit.rate, "tau_raw": fit.tau / s.y_std**2}


def _split_mlp(
    s: Split, cfg: TabularConfig, grid: torch.Tensor | None, seed: int, out: tuple
) -> tuple[torch.nn.Module, float, float]:
    """Early-stopped MLP with held-out noise; returns ``(mlp, noise, fit time)``."""
    from pyrobayes.ppd import normal_ppd

    ppds, grid_ppds, times, info = out
    t0 = time.perf_counter()
    mlp, noise, mlp_info = fit_mlp_heldout(s.x_train, s.y_train, cfg.mlp_steps, seed)
    with torch.no_grad():
        ppds["MLP + fitted noise"] = normal_ppd(mlp(s.x_test).squeeze(-1), noise)
        if grid is not None:
            grid_ppds["MLP + fitted noise"] = normal_ppd(mlp(grid).squeeze(-1), noise)
    t_mlp = times["MLP + fitted noise"] = time.perf_counter() - t0
    info["mlp_noise_std"] = noise
    info["mlp_best_step"] = mlp_info["best_step"]
    return mlp, noise, t_mlp


def _split_svi(
    s: Split,
    cfg: TabularConfig,
    grid: torch.Tensor | None,
    seed: int,
    progress: bool,
    mlp: torch.nn.Module,
    noise: float,
    t_mlp: float,
    out: tuple,
) -> tuple[Any, dict]:
    """SVI (MOPED) around the MLP (:func:`pyrobayes.jobs.tabular_svi.job_svi`: its delta chosen on
    the training rows); returns ``(model, guide's posterior median)``."""
    import pyro

    from pyrobayes.infer import PosteriorPredictive
    from pyrobayes.jobs.tabular_svi import job_svi

    ppds, grid_ppds, times, info = out
    # SVI: MOPED around the early-stopped MLP, the noise site started at its held-out noise.
    # Each split's model has its own name (so do its sites); clearing Pyro's global param
    # store also keeps it from holding every split's guide.
    pyro.clear_param_store()
    t0 = time.perf_counter()
    # only the training rows reach the SVI recipe (its choice of delta included)
    model, guide, info["svi"] = job_svi(
        s.x_train,
        s.y_train,
        mlp,
        noise,
        delta=cfg.delta,
        deltas=cfg.svi_deltas,
        val_fraction=cfg.svi_val_fraction,
        extend=cfg.svi_delta_extend,
        steps=cfg.svi_steps,
        lr=cfg.svi_lr,
        lr_schedule=cfg.svi_lr_schedule,
        mlp_steps=cfg.mlp_steps,
        num_samples=cfg.num_samples,
        seed=seed,
        progress=progress,
    )
    noise_site = model.likelihood.noise_site
    pp = PosteriorPredictive(model, guide, num_samples=cfg.num_samples)
    ppds["SVI (MOPED)"] = pp(s.x_test)
    times["SVI (MOPED)"] = t_mlp + time.perf_counter() - t0
    if grid is not None:
        grid_ppds["SVI (MOPED)"] = pp(grid)
    with torch.no_grad():
        svi_median = {k: v.detach().clone() for k, v in guide.median(s.x_train).items()}
    info["svi_noise_std"] = float(svi_median[noise_site])
    return model, svi_median


def _split_pfn(
    s: Split,
    pfn: Any,
    grid: torch.Tensor | None,
    out: tuple,
    mp: Any = None,
    subsets: int = 8,
    seed: int = 0,
) -> None:
    """The PFN's PPDs and time (after a warm-up call), recording its warnings; beyond its
    trained rows/features (``mp.form == "subsets"``) the mixture over ``subsets`` random
    contexts (:func:`~pyrobayes.jobs.tabular_plan.pfn_subset_ppd`)."""
    from pyrobayes.jobs.tabular_plan import pfn_subset_ppd

    ppds, grid_ppds, times, info = out
    row = mp.label if mp is not None else f"PFN ({PFN_NAME})"
    k = subsets if mp is not None and mp.form == "subsets" else 1

    def predict(xq: torch.Tensor) -> Any:
        return pfn_subset_ppd(pfn, s.x_train, s.y_train, xq, subsets=k, seed=seed)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # warm-up (allocations) through the same path, so a table wider than the PFN's
        # trained features takes its feature subsets here too
        pfn_subset_ppd(pfn, s.x_train[:64], s.y_train[:64], s.x_test[:64], subsets=1, seed=seed)
        t0 = time.perf_counter()
        ppds[row] = predict(s.x_test)
        times[row] = time.perf_counter() - t0
        if grid is not None:
            grid_ppds[row] = predict(grid)
    if caught:
        info["pfn_warnings"] = sorted({str(w.message) for w in caught})


def _split_pfn_check(s: Split, pfn: Any, seed: int, info: dict) -> None:
    """:func:`~pyrobayes.pfn.check.pfn_self_check` on the split's training rows (the PFN's
    own score of held-out training rows; the test rows stay unseen) into ``info``. Apart
    from the PFN row's recipe: it changes none of its numbers."""
    from pyrobayes.pfn.check import pfn_self_check

    if len(s.y_train) < 10:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the PFN row already recorded its warnings
        check = pfn_self_check(pfn, s.x_train, s.y_train, seed=seed)
    info["pfn_self_check"] = {
        "coverage_50": check.coverage_50,
        "coverage_90": check.coverage_90,
        "nll_standardised": check.nll,
        "tolerance": check.tolerance,
        "ok": check.ok,
    }


def pfn_check_note(infos: list[dict]) -> str | None:
    """One note on the PFN self-checks of the splits (``None`` when none ran or all passed).

    Example::

        >>> infos = [{"pfn_self_check": {"coverage_50": c, "tolerance": 0.12, "ok": c < 0.62}}
        ...          for c in (0.83, 0.8, 0.55)]
        >>> pfn_check_note(infos)[:60]
        'PFN self-check failed on 2 of 3 splits: its central 50% inte'
    """
    checks = [i["pfn_self_check"] for i in infos if "pfn_self_check" in i]
    failed = [c for c in checks if not c["ok"]]
    if not failed:
        return None
    cov = sum(c["coverage_50"] for c in checks) / len(checks)
    side = "too wide" if cov > 0.5 else "too narrow or misplaced"
    return (
        f"PFN self-check failed on {len(failed)} of {len(checks)} splits: its central 50% "
        f"intervals cover {cov:.2f} of held-out training rows on average (0.5 expected, "
        f"± {max(c['tolerance'] for c in checks):.2f} allowed; pyrobayes.pfn.pfn_self_check, "
        f"training rows only): its intervals are {side}, the data look unlike the PFN's "
        "prior, and its row is not the answer of a Bayesian model that fits them"
    )


def _split_gp(
    s: Split,
    cfg: TabularConfig,
    grid: torch.Tensor | None,
    progress: bool,
    out: tuple,
    mp: Any = None,
    seed: int = 0,
) -> None:
    """The ARD GP's PPDs, time and fitted hyperparameters: exact, or sparse when the plan
    ``mp`` says so (:func:`~pyrobayes.gp.fit_sparse_ard_gp`, ``gp_inducing`` inputs)."""
    from pyrobayes.gp import fit_ard_gp, fit_sparse_ard_gp

    ppds, grid_ppds, times, info = out
    row = mp.label if mp is not None else METHOD_ROWS[Method.GP]
    sparse = mp is not None and mp.form == "sparse"
    t0 = time.perf_counter()
    if sparse:
        gp = fit_sparse_ard_gp(
            s.x_train, s.y_train, cfg.gp_inducing, cfg.gp_steps, seed=seed, progress=progress
        )
    else:
        gp = fit_ard_gp(s.x_train, s.y_train, steps=cfg.gp_steps, progress=progress)
    ppds[row] = gp.predict(s.x_test)
    times[row] = time.perf_counter() - t0
    if grid is not None:
        grid_ppds[row] = gp.predict(grid)
    info["gp"] = {
        "form": "sparse" if sparse else "exact",
        "lengthscales": [round(v, 4) for v in gp.lengthscales.tolist()],
        "outputscale": gp.outputscale,
        "noise_std": gp.noise_std,
        "log_marginal": gp.elbo if sparse else gp.log_marginal,
    }


def _split_nuts(
    s: Split,
    cfg: TabularConfig,
    grid: torch.Tensor | None,
    seed: int,
    progress: bool,
    model: Any,
    svi_median: dict,
    out: tuple,
) -> None:
    """NUTS on the SVI model, started at SVI's posterior median: PPDs, time, diagnostics."""
    from pyrobayes.infer.nuts.sampler import nuts_ppd

    ppds, grid_ppds, times, info = out
    # the same model (weights and noise both sampled), started at SVI's posterior
    # median: a point where the posterior has mass, so the short warm-up adapts the
    # step size and mass matrix there instead of travelling from a prior draw
    xq = s.x_test if grid is None else torch.cat([s.x_test, grid])
    t0 = time.perf_counter()
    ppd, nuts_info = nuts_ppd(
        model,
        s.x_train,
        s.y_train,
        xq,
        num_warmup=cfg.nuts_warmup,
        num_samples=cfg.nuts_samples,
        progress=progress,
        seed=seed,
        return_mcmc=True,
        init=svi_median,
        max_tree_depth=cfg.nuts_max_tree_depth,
    )
    times["NUTS"] = time.perf_counter() - t0
    m = len(s.x_test)
    ppds["NUTS"] = _slice_mixture(ppd, slice(0, m)) if grid is not None else ppd
    if grid is not None:
        grid_ppds["NUTS"] = _slice_mixture(ppd, slice(m, None))
    noise_draws = nuts_info.draws.get(model.likelihood.noise_site)
    info["nuts"] = {
        "max_r_hat": nuts_info.max_r_hat,
        "min_ess": nuts_info.min_ess,
        "min_ess_tail": nuts_info.min_ess_tail,
        "chains": nuts_info.num_chains,
        "converged": nuts_info.converged,
        "verdict": nuts_info.verdict,
        "noise_std_median": float(noise_draws.median()) if noise_draws is not None else None,
    }


# ----------------------------------------------------------------- the job


def run_tabular(cfg: TabularConfig) -> TabularResult:
    """Run the whole protocol of the module docstring on ``cfg.data`` and write
    ``compare.md``/``compare.json``/``compare.png`` under ``cfg.out``; returns a
    :class:`TabularResult` (``table``, ``split_tables``, ``notes``, ``infos``, ``files``).
    One line per finished split goes to stderr, and each split's scores are appended to
    ``splits.jsonl`` as soon as they exist.

    This is the Python side of ``pyrobayes compare --data``;
    :func:`~pyrobayes.jobs.demo_1d.run_compare` is the 1-D demo on data drawn from a prior.

    Example (the motorcycle data, one split, a tiny budget and no NUTS)::

        >>> import tempfile
        >>> cfg = TabularConfig(data="motorcycle", splits=1, mlp_steps=20, svi_steps=5,
        ...                     num_samples=10, gp_steps=5, no_nuts=True, ensemble_steps=10,
        ...                     dropout_steps=5, dropout_passes=5,
        ...                     out=tempfile.mkdtemp(), no_progress=True)
        >>> res = run_tabular(cfg)
        >>> res["table"].methods  # doctest: +NORMALIZE_WHITESPACE
        ('MLP + fitted noise', 'deep ensemble', 'MC dropout', 'SVI (MOPED)', 'PFN (bnn-tabular)',
         'exact GP (ARD)')
    """
    from pyrobayes.progress import Heartbeat, log_heartbeat_enabled

    tab, splits, dropout_grid = _load_data(cfg)
    d = tab.x.shape[1]
    n_train = max(len(tr) for tr, _ in splits)
    plan, pfn = _plan(cfg, n_train, max(len(te) for _, te in splits), d, len(splits), dropout_grid)
    print(plan.summary(), file=sys.stderr, flush=True)  # the estimate, before any fit
    notes = plan.notes
    n_nuts = plan.n_nuts
    beat = Heartbeat(enabled=log_heartbeat_enabled(bars=not cfg.no_progress))
    with beat:
        tables, infos, first, dropped = _run_splits(cfg, tab, splits, plan, pfn, dropout_grid)
    notes += common.note_dropped(dropped)
    if (check := pfn_check_note(infos)) is not None:
        notes.append(check)
    summary, nuts_table = common.summary_tables(
        tables, [plan.get(m).label for m in plan.running], n_nuts
    )
    files = _write(
        cfg, tab, (summary, nuts_table), tables, infos, notes, first, n_train, len(splits[0][1])
    )
    rows = {m: plan.get(m).label for m in plan.running}
    return {**common.job_result((summary, nuts_table), tables, notes, infos, files), "rows": rows}


def _run_splits(
    cfg: TabularConfig, tab: Any, splits: list, plan: Any, pfn: Any, dropout_grid: tuple
) -> tuple[list, list, dict, dict]:
    """Every split in turn: ``(tables, infos, first split's grid PPDs for 1-D data,
    {feature: splits where it was constant})``."""
    from pyrobayes.compare import compare_ppds
    from pyrobayes.ppd import affine_ppd

    tables, infos = [], []
    first: dict[str, Any] = {}
    dropped: dict[str, list[int]] = {}  # feature -> splits whose training rows hold it constant
    t_start = time.perf_counter()
    for k, (tr, te) in enumerate(splits):
        s = standardise_split(tab.x, tab.y, tr, te)
        for i in s.dropped_features:
            dropped.setdefault(tab.feature_names[i], []).append(k + 1)
        grid = None
        if tab.x.shape[1] == 1 and k == 0:
            lo, hi = float(tab.x.min()), float(tab.x.max())
            pad = 0.05 * (hi - lo)
            grid_raw = torch.linspace(lo - pad, hi + pad, 200, dtype=torch.float64)[:, None]
            grid = ((grid_raw - s.x_mean) / s.x_std).float()
        ppds, grid_ppds, times, info = _run_split(
            s, cfg, pfn, k < plan.n_nuts, grid, cfg.first_split + k, dropout_grid, plan
        )
        raw = {m: affine_ppd(p, s.y_mean, s.y_std) for m, p in ppds.items()}
        table = compare_ppds(
            raw,
            s.y_test_raw,
            times=times,
            reference="NUTS" if "NUTS" in raw else None,
            levels=LEVELS,
        )
        tables.append(table)
        infos.append(info)
        record = {"split": k, "table": json.loads(table.to_json()), "info": info}
        common.record_split(cfg.out, k, len(splits), record, t_start)
        if grid is not None:
            first = {
                "grid": grid_raw.float(),
                "ppds": {m: affine_ppd(p, s.y_mean, s.y_std) for m, p in grid_ppds.items()},
                "train": (tab.x[tr].float(), tab.y[tr].float()),
            }
    return tables, infos, first, dropped


def _plan(
    cfg: TabularConfig, n_train: int, n_test: int, d: int, n_splits: int, dropout_grid: tuple
) -> tuple[Any, Any]:
    """``(plan, pfn)`` before the first split (:func:`~pyrobayes.jobs.tabular_plan.plan_tabular`:
    each method's form, estimate and notes); the PFN when its row runs. Raises
    :class:`~pyrobayes.jobs.tabular_plan.PlanError` when the run exceeds ``budget_minutes``."""
    from pyrobayes.jobs.baselines import DEFAULT_DROPOUT_RATES
    from pyrobayes.jobs.tabular_plan import PlanError, plan_tabular

    pfn, limits = None, None
    if Method.PFN in cfg.selected:
        pfn = _pfn_checkpoint()
        if pfn is not None:
            limits = (int(pfn.config.max_train), int(pfn.config.num_features))
    plan = plan_tabular(
        cfg,
        n_train,
        n_test,
        d,
        n_splits,
        pfn_limits=limits,
        pfn_name=PFN_NAME,
        dropout_rates=len(dropout_grid[0]) or len(DEFAULT_DROPOUT_RATES),
    )
    if not plan.fits:
        raise PlanError(plan.over_budget_message())
    if not plan.running:
        raise PlanError("no method left to run: " + "; ".join(plan.notes))
    return plan, pfn if "pfn" in plan.running else None


def _pfn_checkpoint() -> Any:
    """The ``bnn-tabular`` PFN, or ``None`` when this install has no checkpoint."""
    from pyrobayes.pfn import pretrained

    try:
        return pretrained(PFN_NAME)
    except (KeyError, ValueError, FileNotFoundError):
        return None


def _load_data(cfg: TabularConfig) -> tuple[Any, list, tuple]:
    """``(table, splits, (dropout rates, raw taus))``: a UCI folder's given splits (the first
    ``cfg.splits``, default all) and MC dropout grid, or a table with seeded random splits."""
    from pyrobayes.data.tabular import load_tabular
    from pyrobayes.data.uci import is_uci, load_uci

    if is_uci(cfg.data):
        if cfg.x_cols is not None or cfg.y_col is not None:
            raise ValueError(
                f"--x/--y do not apply to the UCI layout ({cfg.data}): its index_features.txt "
                "and index_target.txt name the columns"
            )
        uci = load_uci(cfg.data, cfg.data_root)
        first = cfg.first_split
        if first >= uci.num_splits:
            raise ValueError(
                f"--first-split {first}: {uci.path} holds {uci.num_splits} splits (0 .. "
                f"{uci.num_splits - 1})"
            )
        k = uci.num_splits - first if cfg.splits is None else cfg.splits
        # more than the folder holds: uci.splits names the count and the files
        return uci, uci.splits(first + k)[first:], (uci.dropout_rates, uci.tau_values)
    tab = load_tabular(cfg.data, cfg.x_cols, cfg.y_col)
    k = common.DEFAULT_SPLITS if cfg.splits is None else cfg.splits
    # the same seeded sequence as a run from split 0: split j is the j-th draw
    first = cfg.first_split
    splits = make_splits(len(tab.x), first + k, cfg.test_fraction, cfg.seed)[first:]
    return tab, splits, ((), ())


def plot_tabular_summary(table: ComparisonTable, title: str | None = None) -> Figure:
    """The job's figure: held-out NLL per method with standard-error bars (left,
    :func:`~pyrobayes.plotting.plot_metric_errorbars`) and calibration, the empirical
    coverage of the 50/90/95% central intervals against their nominal level (right,
    :func:`~pyrobayes.plotting.plot_coverage`). ``table`` is ``run_tabular(cfg)["table"]``
    (or any table with ``nll`` and ``coverage_<level>`` columns). Returns a
    ``matplotlib.figure.Figure`` (not attached to pyplot: display it in a notebook, or
    ``fig.savefig(path)``).

    Example::

        >>> from pyrobayes.compare import ComparisonRow, ComparisonTable
        >>> t = ComparisonTable("regression", ("nll", "coverage_50", "coverage_90"), (
        ...     ComparisonRow("GP", (5.45, 0.50, 0.88), (0.03, 0.02, 0.01)),
        ...     ComparisonRow("NUTS", (5.47, 0.51, 0.88), (0.03, 0.02, 0.01))))
        >>> fig = plot_tabular_summary(t, title="diabetes")
        >>> len(fig.axes)
        2
    """
    from matplotlib.figure import Figure

    from pyrobayes.plotting import plot_coverage, plot_metric_errorbars

    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    plot_metric_errorbars(table, "nll", ax=ax1, title="held-out NLL (raw units), mean ± s.e.")
    plot_coverage(table, ax=ax2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _write(cfg, tab, summaries, tables, infos, notes, first, n_train, n_test) -> dict:
    """``compare.json``/``.md`` (``_tabular_common.write_outputs``), the
    NLL and calibration figure ``compare.png`` and, for 1-D data, ``compare-bands.png``."""
    from pyrobayes.plotting import plot_ppd_comparison

    summary, nuts_table = summaries
    note_md = "".join(f"- {x}\n" for x in notes)
    md = (
        f"# pyrobayes compare --data {cfg.data}\n\n"
        f"Data: {tab.source}; target `{tab.target_name}`, {len(tab.feature_names)} feature(s). "
        + _splits_md(tab, len(tables), n_train, n_test, cfg.seed)
        + "x and y standardised on each training split; every method sees every training row. "
        "Scores in raw target units (NLL includes log of the y scale); mean ± standard error over "
        "splits. Times are wall-clock seconds per split (SVI includes the MLP pre-training).\n\n"
        f"{summary.to_markdown()}\n\n"
        + (f"Notes:\n\n{note_md}\n" if notes else "")
        + "![NLL and calibration](compare.png)\n"
        + ("\n![PPD bands](compare-bands.png)\n" if first else "")
        + common.nuts_subset_md(nuts_table)
        + _diagnostics_md(infos)
    )
    extra = {"n_train": n_train, "n_test": n_test}
    files = common.write_outputs(cfg, tab, (summary, nuts_table, tables), infos, notes, extra, md)
    fig = plot_tabular_summary(
        summary, title=f"{tab.source}: {len(tables)} splits of {n_train}/{n_test} rows"
    )
    fig.savefig(files["png"], dpi=110, bbox_inches="tight")
    if first:
        fig2, _ = plot_ppd_comparison(first["grid"], first["ppds"], train=first["train"], ncols=3)
        fig2.suptitle(f"PPDs of split 1 ({tab.source})", fontsize=9)
        files["bands"] = Path(cfg.out) / "compare-bands.png"
        fig2.savefig(files["bands"], dpi=110, bbox_inches="tight")
    return files


def _splits_md(tab: Any, k: int, n_train: int, n_test: int, seed: int) -> str:
    from pyrobayes.data.uci import UCIData

    if isinstance(tab, UCIData):
        return (
            f"The first {k} of its {tab.num_splits} given splits (standard UCI layout, "
            f"index_train_K/index_test_K), {n_train} training / {n_test} test rows; "
        )
    return f"{k} random splits of {n_train} training / {n_test} test rows (seed {seed}); "


def _diagnostics_md(infos: list[dict]) -> str:
    """Per-split fitted noise std (standardised units) and NUTS diagnostics."""

    def cell(v: Any) -> str:
        return "—" if v is None else f"{v:.3g}"

    rows = []
    for k, info in enumerate(infos, 1):
        nuts = info.get("nuts") or {}
        gp = info.get("gp") or {}
        rows.append(
            f"| {k} | {cell(info.get('mlp_noise_std'))} | {cell(info.get('svi_noise_std'))} | "
            f"{cell(nuts.get('noise_std_median'))} | {cell(nuts.get('max_r_hat'))} | "
            f"{cell(nuts.get('min_ess'))} | {nuts.get('verdict', '—').split(' (')[0]} | "
            f"{cell(gp.get('noise_std'))} |"
        )
    return (
        "\n## Noise std per split (standardised units) and NUTS diagnostics\n\n"
        "| split | MLP noise | SVI noise | NUTS noise (median) | NUTS max R-hat | "
        "NUTS min ESS | NUTS verdict | GP noise |\n| ---: | ---: | ---: | ---: | ---: | ---: | :--- | ---: |\n"
        + "\n".join(rows)
        + "\n"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the real-data job's flags (one per :class:`TabularConfig` field) to ``p``.

    Example::

        >>> p = argparse.ArgumentParser()
        >>> add_arguments(p)
        >>> p.parse_args(["--data", "motorcycle", "--splits", "3"]).splits
        3
    """
    add_dataclass_arguments(p, TabularConfig)


def run(args: argparse.Namespace) -> int:
    """``pyrobayes compare --data ...``: build the :class:`TabularConfig` from ``args``, run
    :func:`run_tabular` with one torch thread, print the table and notes; returns 0.

    Example (one split of the motorcycle data, a tiny budget)::

        >>> import tempfile
        >>> p = argparse.ArgumentParser()
        >>> add_arguments(p)
        >>> args = p.parse_args(["--data", "motorcycle", "--splits", "1", "--mlp-steps", "20",
        ...     "--svi-steps", "5", "--num-samples", "10", "--gp-steps", "5", "--no-nuts",
        ...     "--methods", "mlp,svi,gp", "--no-progress", "--out", tempfile.mkdtemp()])
        >>> run(args)  # doctest: +ELLIPSIS
        | method | NLL | ...
        0
    """
    return common.run_cli(TabularConfig, args, run_tabular)
