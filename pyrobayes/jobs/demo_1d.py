"""The main job, ``pyrobayes compare``: one data set, four posterior predictives, one table.

1. a 1-D regression data set drawn from the default BNN prior (seeded) or from the GP prior
   (``--prior gp``); real tables (``--data``) go to :mod:`pyrobayes.jobs.tabular_regression` (from
   Python: :func:`~pyrobayes.jobs.tabular_regression.run_tabular`), labelled ones (``--task``) to
   :mod:`pyrobayes.jobs.tabular_classification`;
2. a frequentist MLP is fitted, converted with ``to_pyro``, given a MOPED guide started
   at its weights, and fitted with SVI (``Trace_ELBO``);
3. predictions from the posterior predictive wrapper, the pretrained PFN for that prior,
   and a reference (NUTS on the same BNN, or the exact GP);
4. the comparison table printed and written as ``compare.md``/``compare.json``, with the
   side-by-side plot ``compare.png``.

Example (a fast smoke run)::

    pyrobayes compare --n-train 10 --svi-steps 50 --nuts-warmup 10 --nuts-samples 10 --no-progress
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pyrobayes.options import Option

__all__ = ["CompareConfig", "PriorChoice", "run_compare", "add_arguments", "run"]

NUTS_CHAINS = 4  # the reference's chains (nuts_ppd's default)
NUTS_MAX_TREE_DEPTH = 10  # nuts_ppd's default


class PriorChoice(Option):
    """Where the demo's data come from: the default BNN prior (reference NUTS, PFN
    ``bnn-1d``) or the GP prior (reference the exact GP, PFN ``gp-1d``).

    Example::

        >>> PriorChoice.parse("gp") is PriorChoice.GP
        True
    """

    BNN = "bnn"
    GP = "gp"


@dataclass(frozen=True)
class CompareConfig:
    """Options of the 1-D demo (:func:`run_compare`); each is the ``pyrobayes compare`` flag
    of the same name. ``data`` is accepted only as ``None``: real data go through
    :class:`~pyrobayes.jobs.tabular_regression.TabularConfig` and
    :func:`~pyrobayes.jobs.tabular_regression.run_tabular` (the error says so), the split protocol that
    ``pyrobayes compare --data`` runs.

    Example::

        >>> CompareConfig(n_train=10).n_train
        10
        >>> CompareConfig(data="diabetes")
        Traceback (most recent call last):
        ...
        ValueError: CompareConfig runs the 1-D demo on data drawn from a prior; for real data (data='diabetes') use pyrobayes.run_tabular(...
    """

    prior: str = "bnn"
    n_train: int = 20
    n_test: int = 200
    seed: int = 0
    mlp_steps: int = 2000
    svi_steps: int = 2000
    # lr 1e-3 from a small sweep (seeds 0-2, 20 points): held-out NLL -0.58 against -0.29
    # at lr 1e-2, whose longer strides reach the wider mean-field optimum sooner.
    svi_lr: float = 1e-3
    delta: float = 0.1
    num_samples: int = 200
    # NUTS 4 chains x (100 warm-up + 150 draws) from a seed study
    # (benchmarks/bench_nuts_budget.py): converged on 3/3 seeds (R-hat <= 1.010, bulk and
    # tail ESS >= 350), held-out NLL within Monte Carlo error of 200/300 at 0.47x its gradients.
    nuts_warmup: int = 100
    nuts_samples: int = 150
    data: str | None = None
    out: str = "pyrobayes-out"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.data is not None:
            # The real-data protocol (splits, every row used, raw units) has its own config:
            # silently running this 1-D demo on one column of a table would mislead.
            raise ValueError(
                f"CompareConfig runs the 1-D demo on data drawn from a prior; for real data "
                f"(data={self.data!r}) use pyrobayes.run_tabular(pyrobayes.TabularConfig("
                f"data={self.data!r}, ...)), the split protocol behind "
                f"`pyrobayes compare --data`"
            )
        PriorChoice.parse(self.prior, "prior")
        for name in (
            "n_train",
            "n_test",
            "mlp_steps",
            "svi_steps",
            "num_samples",
            "nuts_warmup",
            "nuts_samples",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.n_train < 2:
            raise ValueError("n-train must be at least 2")
        if not self.svi_lr > 0 or not self.delta > 0:
            raise ValueError("svi-lr and delta must be positive")


def _load_data(cfg: CompareConfig):
    """``(x_train, y_train, x_test, y_test, x_grid, truth, note)``; x as ``[n, 1]``."""
    from pyrobayes.data import regression_from_prior

    if cfg.prior == PriorChoice.GP:
        from pyrobayes.pfn import GPPrior

        torch.manual_seed(cfg.seed)
        xs, ys = GPPrior(lengthscale=0.5, outputscale=1.0, noise_std=0.1).sample(
            1, cfg.n_train + cfg.n_test
        )
        xs, ys = xs.reshape(-1, 1), ys.reshape(-1)
        grid = torch.linspace(-2, 2, 200)[:, None]
        n = cfg.n_train
        return (
            xs[:n],
            ys[:n],
            xs[n:],
            ys[n:],
            grid,
            None,
            "1-D GP prior (RBF, lengthscale 0.5, noise 0.1)",
        )
    d = regression_from_prior(n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    return (
        d.x_train,
        d.y_train,
        d.x_test,
        d.y_test,
        d.x_grid,
        (d.x_grid, d.f_grid),
        "default BNN prior (1-50-50-1 tanh, noise 0.1)",
    )


def _fit_mlp(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> torch.nn.Module:
    from pyrobayes.models.mlp import MLP
    from pyrobayes.models.train import train_network

    torch.manual_seed(seed)
    net = MLP(x.shape[-1], (50, 50), 1, "tanh")
    train_network(
        net, x, y, loss="mse", epochs=steps, lr=1e-2, batch_size=None, seed=seed, progress=False
    )
    return net


def _baseline_ppds(cfg, x_tr, y_tr, x_te, grid, test_ppds, grid_ppds, times):
    """Fit the MLP baseline and the MOPED SVI posterior; return NUTS-start MLP weights."""
    from pyrobayes.guides import MOPEDNormal
    from pyrobayes.infer import PosteriorPredictive, fit
    from pyrobayes.models.mlp import DEFAULT_REGRESSION, default_regression_model
    from pyrobayes.ppd import normal_ppd

    t0 = time.perf_counter()
    mlp = _fit_mlp(x_tr, y_tr, cfg.mlp_steps, cfg.seed)
    t_mlp = time.perf_counter() - t0
    with torch.no_grad():
        noise = DEFAULT_REGRESSION["noise"]  # the prior's noise, as every other method uses
        test_ppds["MLP + noise"] = normal_ppd(mlp(x_te).squeeze(-1), noise)
        grid_ppds["MLP + noise"] = normal_ppd(mlp(grid).squeeze(-1), noise)
    times["MLP + noise"] = t_mlp

    mlp_weights = copy.deepcopy(mlp)  # NUTS starts from these (conversion reuses ``mlp``)
    t0 = time.perf_counter()
    model = default_regression_model(net=mlp)
    guide = MOPEDNormal(model, delta=cfg.delta)
    fit(
        model,
        guide,
        (x_tr, y_tr),
        epochs=cfg.svi_steps,
        batch_size=len(x_tr),
        lr=cfg.svi_lr,
        progress=cfg.progress,
        seed=cfg.seed,
    )
    pp = PosteriorPredictive(model, guide, num_samples=cfg.num_samples)
    test_ppds["SVI (MOPED)"] = pp(x_te)
    times["SVI (MOPED)"] = t_mlp + time.perf_counter() - t0
    grid_ppds["SVI (MOPED)"] = pp(grid)
    return mlp_weights


def _pfn_ppds(cfg, x_tr, y_tr, x_te, grid, test_ppds, grid_ppds, times) -> None:
    """Predict with the pretrained PFN that matches the prior (timed after a warm-up)."""
    from pyrobayes.pfn import pretrained

    pfn_name = "gp-1d" if cfg.prior == PriorChoice.GP else "bnn-1d"
    pfn = pretrained(pfn_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prior draws may graze the box edges
        pfn.predict(x_tr, y_tr, x_te)  # warm-up: the first call pays one-off allocation costs
        t0 = time.perf_counter()
        test_ppds[f"PFN ({pfn_name})"] = pfn.predict(x_tr, y_tr, x_te)
        times[f"PFN ({pfn_name})"] = time.perf_counter() - t0
        grid_ppds[f"PFN ({pfn_name})"] = pfn.predict(x_tr, y_tr, grid)


def _compile_nuts_ahead(cfg, ref_model, x_tr, y_tr):
    """Trace and lower the NUTS reference's chains here and let XLA compile them on another
    thread (``None`` without the ``nuts`` extra): compilation runs outside Python's GIL, so
    on a machine with a free core it overlaps fitting the MLP whose weights the chains start
    at. Nothing of Pyro runs on that thread (Pyro's handler stack is global)."""
    from pyrobayes.infer.nuts import jax_potential

    if not jax_potential.available():
        return None
    return jax_potential.compile_nuts(
        ref_model,
        x_tr,
        y_tr,
        num_chains=NUTS_CHAINS,
        num_warmup=cfg.nuts_warmup,
        num_samples=cfg.nuts_samples,
        max_tree_depth=NUTS_MAX_TREE_DEPTH,
        progress=cfg.progress,
        background=True,
    )


def _reference_ppds(
    cfg, x_tr, y_tr, x_te, grid, mlp_weights, test_ppds, grid_ppds, times, diagnostics, nuts=None
) -> str:
    """Add the reference (exact GP or NUTS) PPDs; return the reference's name. ``nuts``:
    ``(ref_model, its compiled chains or None)`` from :func:`_compile_nuts_ahead`."""
    from pyrobayes.models.mlp import default_regression_model

    if cfg.prior == PriorChoice.GP:
        from pyrobayes.gp import exact_gp_ppd

        t0 = time.perf_counter()
        ref_name = "exact GP"
        test_ppds[ref_name] = exact_gp_ppd(x_tr, y_tr, x_te, 0.5, 1.0, 0.1)
        times[ref_name] = time.perf_counter() - t0
        grid_ppds[ref_name] = exact_gp_ppd(x_tr, y_tr, grid, 0.5, 1.0, 0.1)
    else:
        from pyrobayes.infer import forward_draws
        from pyrobayes.infer.nuts.sampler import nuts_diagnostics, nuts_ppd

        ref_model, compiled = nuts if nuts is not None else (default_regression_model(), None)
        if compiled is not None:
            compiled.wait()  # the row's time counts the compilation once (compile_seconds)
        t0 = time.perf_counter()
        ppd, info = nuts_ppd(
            ref_model,
            x_tr,
            y_tr,
            x_te,
            num_warmup=cfg.nuts_warmup,
            num_samples=cfg.nuts_samples,
            num_chains=NUTS_CHAINS,
            max_tree_depth=NUTS_MAX_TREE_DEPTH,
            progress=cfg.progress,
            seed=cfg.seed,
            return_mcmc=True,
            init=mlp_weights,  # start where the posterior mass is, not at a prior draw
            compiled=compiled,
        )
        # the verdict goes into the row's name, so tables and plot legends both show it
        ref_name = "NUTS (converged)" if info.converged else "NUTS (NOT converged)"
        # the row's time includes the compilation that ran beside the MLP fit: its cost
        ahead = compiled.compile_seconds if compiled is not None else 0.0
        times[ref_name] = time.perf_counter() - t0 + ahead
        diagnostics[ref_name] = nuts_diagnostics(info)
        test_ppds[ref_name] = ppd
        grid_ppds[ref_name] = ref_model.likelihood.ppd_from_draws(
            forward_draws(ref_model, info.draws, grid), info.draws
        )
    return ref_name


def _write_outputs(cfg, out, table, ref_name, note, x_tr, y_tr, x_te, grid, truth, grid_ppds):
    """Save the comparison plot, JSON payload and markdown report under ``out``."""
    from pyrobayes.plotting import plot_ppd_comparison

    out.mkdir(parents=True, exist_ok=True)
    fig, _ = plot_ppd_comparison(grid, grid_ppds, train=(x_tr, y_tr), truth=truth, ncols=2)
    fig.suptitle(f"Posterior predictives, n_train={len(x_tr)} — {note}", fontsize=9)
    files = {"png": out / "compare.png", "json": out / "compare.json", "md": out / "compare.md"}
    fig.savefig(files["png"], dpi=110, bbox_inches="tight")
    payload = {
        "config": asdict(cfg),
        "data": note,
        "n_train": len(x_tr),
        "n_test": len(x_te),
        "table": table.to_dict(),
    }
    files["json"].write_text(json.dumps(payload, indent=2, default=str))
    md = (
        f"# pyrobayes compare\n\nData: {note}; {len(x_tr)} training and {len(x_te)} test points, seed {cfg.seed}.\n"
        f"Reference: {ref_name}. Times are wall-clock seconds (SVI includes the MLP pre-training).\n\n"
        f"{table.to_markdown()}\n\n![comparison](compare.png)\n"
    )
    files["md"].write_text(md)
    return files


def run_compare(cfg: CompareConfig) -> dict:
    """Run the whole 1-D comparison; returns ``{"table", "ppds", "times", "files"}``: the
    :class:`~pyrobayes.compare.ComparisonTable` on the test points, each method's PPD on
    them, wall-clock seconds per method and the paths of ``compare.png/.json/.md``.

    For real data use :func:`~pyrobayes.jobs.tabular_regression.run_tabular`.

    Example (a tiny budget, GP prior so that the exact GP is the reference)::

        >>> import tempfile
        >>> cfg = CompareConfig(prior="gp", n_train=8, n_test=30, mlp_steps=10, svi_steps=5,
        ...                     num_samples=10, out=tempfile.mkdtemp(), progress=False)
        >>> res = run_compare(cfg)
        >>> sorted(res["ppds"])
        ['MLP + noise', 'PFN (gp-1d)', 'SVI (MOPED)', 'exact GP']
        >>> res["files"]["png"].exists()
        True
    """
    import pyro

    from pyrobayes.compare import compare_ppds

    out = Path(cfg.out)
    x_tr, y_tr, x_te, y_te, grid, truth, note = _load_data(cfg)
    pyro.set_rng_seed(cfg.seed)
    times: dict[str, float] = {}
    diagnostics: dict[str, dict[str, float]] = {}  # max R-hat / min ESS of the NUTS reference
    test_ppds, grid_ppds = {}, {}

    nuts = None
    if cfg.prior == PriorChoice.BNN:
        from pyrobayes.models.mlp import default_regression_model

        ref_model = default_regression_model()
        nuts = (ref_model, _compile_nuts_ahead(cfg, ref_model, x_tr, y_tr))
    mlp_weights = _baseline_ppds(cfg, x_tr, y_tr, x_te, grid, test_ppds, grid_ppds, times)
    _pfn_ppds(cfg, x_tr, y_tr, x_te, grid, test_ppds, grid_ppds, times)
    ref_name = _reference_ppds(
        cfg, x_tr, y_tr, x_te, grid, mlp_weights, test_ppds, grid_ppds, times, diagnostics, nuts
    )

    table = compare_ppds(test_ppds, y_te, times=times, reference=ref_name, diagnostics=diagnostics)
    files = _write_outputs(
        cfg, out, table, ref_name, note, x_tr, y_tr, x_te, grid, truth, grid_ppds
    )
    return {"table": table, "ppds": test_ppds, "times": times, "files": files}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the flags of ``pyrobayes compare`` to ``p``: the demo's (:class:`CompareConfig`)
    and the real-data job's (``--data``, ``--x``, ``--splits``, ...).

    Example::

        >>> p = argparse.ArgumentParser()
        >>> add_arguments(p)
        >>> args = p.parse_args(["--n-train", "12", "--data", "diabetes"])
        >>> args.n_train, args.data
        (12, 'diabetes')
    """
    d = CompareConfig()
    p.add_argument(
        "--prior",
        choices=[c.value for c in PriorChoice],
        default=d.prior,
        help="prior the data are drawn from (and the PFN/reference used)",
    )
    p.add_argument(
        "--n-train",
        type=int,
        default=d.n_train,
        help="training points drawn from the prior (<= 50)",
    )
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--mlp-steps",
        type=int,
        default=d.mlp_steps,
        help="full-batch Adam steps of the frequentist MLP",
    )
    p.add_argument("--svi-steps", type=int, default=d.svi_steps, help="full-batch SVI steps")
    p.add_argument("--svi-lr", type=float, default=d.svi_lr, help="Adam step size of SVI")
    # default None: the 1-D demo uses CompareConfig's delta, --data chooses one per split
    # on the training rows (pyrobayes.jobs.tabular_svi) unless --delta is given
    p.add_argument(
        "--delta",
        type=float,
        default=None,
        help=f"MOPED relative initial scale (1-D demo: default {d.delta}; --data: default "
        "chosen per split from --svi-deltas on an inner validation split of the training rows)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=d.num_samples,
        help="posterior draws of the SVI predictive",
    )
    # default None, as --delta: the demo and the real-data jobs have their own budgets
    p.add_argument(
        "--nuts-warmup",
        type=int,
        default=None,
        help=f"NUTS adaptation steps per chain (1-D demo: default {d.nuts_warmup}; --data: "
        "the job's own, 200)",
    )
    p.add_argument(
        "--nuts-samples",
        type=int,
        default=None,
        help=f"NUTS draws kept per chain (1-D demo: default {d.nuts_samples}; --data: the "
        "job's own, 200)",
    )
    p.add_argument("--out", default=d.out, help="output folder for compare.png/.json/.md")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    # --data and the real-data protocol's own flags (--x, --y, --splits, --no-nuts, ...)
    from pyrobayes.jobs.tabular_classification import add_arguments as add_classify_arguments
    from pyrobayes.jobs.tabular_regression import add_arguments as add_tabular_arguments

    add_tabular_arguments(p)
    add_classify_arguments(p)  # --task and the classification-only flags


def run(args: argparse.Namespace) -> int:
    """The ``pyrobayes compare`` command: the real-data job when ``--data`` is given,
    otherwise the 1-D demo; prints the table and returns the exit status.

    Example::

        >>> import tempfile
        >>> p = argparse.ArgumentParser()
        >>> add_arguments(p)
        >>> args = p.parse_args(["--prior", "gp", "--n-train", "8", "--n-test", "20",
        ...     "--mlp-steps", "10", "--svi-steps", "5", "--num-samples", "10",
        ...     "--no-progress", "--out", tempfile.mkdtemp()])
        >>> run(args)  # doctest: +ELLIPSIS
        | method | NLL | ...
        0
    """
    if getattr(args, "data", None) is not None:
        # a labelled table (or --task classification): the classification comparison
        from pyrobayes.jobs.tabular_classification import run as run_classify
        from pyrobayes.jobs.tabular_classification import wants_classification

        if wants_classification(args):
            return run_classify(args)
        # real data: the split protocol of pyrobayes.jobs.tabular_regression (every row used, raw units)
        from pyrobayes.jobs.tabular_regression import run as run_tabular

        return run_tabular(args)
    cfg = CompareConfig(
        prior=args.prior,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        mlp_steps=args.mlp_steps,
        svi_steps=args.svi_steps,
        svi_lr=args.svi_lr,
        delta=CompareConfig.delta if args.delta is None else args.delta,
        num_samples=args.num_samples,
        nuts_warmup=CompareConfig.nuts_warmup if args.nuts_warmup is None else args.nuts_warmup,
        nuts_samples=(
            CompareConfig.nuts_samples if args.nuts_samples is None else args.nuts_samples
        ),
        out=args.out,
        progress=not args.no_progress,
    )
    # Every network here is tiny: a second thread costs more in synchronisation than it
    # saves, and on a busy machine far more (seen: 40x slower SVI steps with 2 threads).
    torch.set_num_threads(1)
    if cfg.n_train > 50:
        raise ValueError(
            "n-train must be <= 50: the shipped PFNs were trained with up to 50 points"
        )
    result = run_compare(cfg)
    print(result["table"].to_markdown())
    print("wrote " + ", ".join(str(f) for f in result["files"].values()))
    return 0
