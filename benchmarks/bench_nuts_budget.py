"""How cheap can the main job's NUTS reference be and stay at NUTS quality? A seed study.

On the main job's default data set (``pyrobayes compare`` defaults: 20 training and 200 test
points drawn from the default BNN prior, seed 0), :func:`pyrobayes.infer.nuts.sampler.nuts_ppd` is
started at the fitted MLP's weights exactly as the main job does (4 chains, the given start
plus 0.1 prior std of jitter per chain, ``backend="auto"``: NumPyro's NUTS when the ``nuts``
extra is installed), for several NUTS settings (warmup/samples per chain, ``max_tree_depth``,
``target_accept_prob``, ``num_chains``) and several NUTS seeds each. Per run it records the
held-out NLL of the draw mixture with its Monte Carlo standard error (batch means of the
draws), the convergence report of ``NUTSInfo`` (rank-normalised split R-hat, bulk and tail
ESS over chains of f(x_test) at every test point and the training log-likelihood, and its
verdict), the gradient evaluations of all chains incl. warm-up (``NUTSInfo.num_grads``, the
machine-independent cost; NumPyro backend only) and the wall time incl. compilation.

A setting passes when NUTS reports converged on every seed and the mean NLL over seeds is
within Monte Carlo error of the reference setting's mean (200/300: |difference| <= 2 x the
combined standard error of the two means, where a mean's standard error is the larger of its
seed-to-seed sd / sqrt(seeds) and the runs' own MC error / sqrt(seeds)).

Reproduce::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_nuts_budget.py             # full study
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_nuts_budget.py --seeds 1 \\
        --configs 200/300 50/100 --no-write
"""

from __future__ import annotations

import os

# one CPU thread for XLA and torch: set before jax/torch are imported
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, mixture_nll_and_mc_se, write_section  # noqa: E402

SECTION = "## bench_nuts_budget.py"
REFERENCE = "200/300"  # the setting the others' NLL is held against

# The main job's setting (CompareConfig: 4 chains, 100/150, tree depth 10), cheaper and
# dearer ones; more (target_accept_prob, num_chains, ...) with --configs.
DEFAULT_CONFIGS = [REFERENCE, "100/150", "100/150:max_tree_depth=8", "75/150"]


def parse_config(spec: str) -> tuple[str, dict]:
    """``"W/S[:key=val,...]"`` -> ``(label, nuts_ppd kwargs)``."""
    budget, _, extra = spec.partition(":")
    try:
        w, s = (int(v) for v in budget.split("/"))
    except ValueError:
        raise SystemExit(f"config {spec!r}: expected WARMUP/SAMPLES[:key=value,...]") from None
    kw: dict = {"num_warmup": w, "num_samples": s}
    for item in filter(None, extra.split(",")):
        key, _, val = item.partition("=")
        kw[key] = float(val) if "." in val else int(val)
    return spec, kw


def main_job_data():
    """The main job's default data set and its fitted MLP (the NUTS start)."""
    from pyrobayes.jobs.demo_1d import CompareConfig, _fit_mlp, _load_data

    cfg = CompareConfig()
    x_tr, y_tr, x_te, y_te, *_ = _load_data(cfg)
    mlp = _fit_mlp(x_tr, y_tr, cfg.mlp_steps, cfg.seed)
    return (x_tr, y_tr, x_te, y_te), mlp


def heldout_nll(model, draws: dict[str, torch.Tensor], x_te, y_te) -> tuple[float, float]:
    """Held-out NLL of the draw mixture and its MC standard error (batch means of the
    chain-major draws, so each batch lies mostly within one chain)."""
    from pyrobayes.infer import forward_draws

    with torch.no_grad():
        f = forward_draws(model, draws, x_te)[..., 0]
        log_p = torch.distributions.Normal(f, model.likelihood.scale).log_prob(y_te)
    return mixture_nll_and_mc_se(log_p)


def run_one(kw: dict, seed: int, data, mlp) -> dict:
    from pyrobayes.infer.nuts.sampler import nuts_ppd
    from pyrobayes.models.mlp import default_regression_model

    x_tr, y_tr, x_te, y_te = data
    model = default_regression_model()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the convergence warning: the table reports it
        _, info = nuts_ppd(
            model, x_tr, y_tr, x_te, progress=False, seed=seed, return_mcmc=True, init=mlp, **kw
        )
    wall = time.perf_counter() - t0
    nll, se = heldout_nll(model, info.draws, x_te, y_te)
    return {
        "nll": nll,
        "se": se,
        "r_hat": info.max_r_hat,
        "ess": info.min_ess,
        "ess_tail": info.min_ess_tail,
        "converged": bool(info.converged),
        "chains": info.num_chains,
        "backend": str(info.backend),
        "grads": info.num_grads if info.num_grads is not None else float("nan"),
        "wall": wall,
    }


def summarise(runs: list[dict]) -> dict:
    nlls = [r["nll"] for r in runs]
    k = len(runs)
    sd = statistics.stdev(nlls) if k > 1 else float("nan")
    mc = math.sqrt(statistics.mean(r["se"] ** 2 for r in runs))
    return {
        "nll": statistics.mean(nlls),
        "sd": sd,
        "se_mean": max(sd if k > 1 else 0.0, mc) / math.sqrt(k),
        "mc": mc,
        "r_hat": max(r["r_hat"] for r in runs),
        "ess": min(r["ess"] for r in runs),
        "ess_tail": min(r["ess_tail"] for r in runs),
        "n_ok": sum(r["converged"] for r in runs),
        "grads": statistics.mean(r["grads"] for r in runs),
        "wall": statistics.mean(r["wall"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--seeds", type=int, default=3, help="NUTS seeds per setting")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+k-1")
    ap.add_argument("--load-note", default="", help="how loaded the box was (for RESULTS.md)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--jsonl", type=Path, help="append every run as a JSON line here")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="build the table from these --jsonl files (runs of several processes) instead",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)

    data, mlp = main_job_data()
    results: dict[str, list[dict]] = {}
    if args.merge:
        for path in args.merge:
            for line in path.read_text().splitlines():
                r = json.loads(line)
                results.setdefault(r["label"], []).append(r)
        args.seeds = max(len(v) for v in results.values())
    else:
        _run_study(args, data, mlp, results)
    results = {k: results[k] for k in sorted(results, key=_order)}
    _report(args, data, results)


def _order(label: str) -> tuple:
    """The reference first, then by budget (descending), variants after their budget."""
    budget, _, extra = label.partition(":")
    w, s = (int(v) for v in budget.split("/"))
    return (label != REFERENCE, -(w + s), -w, extra)


def _run_study(args, data, mlp, results: dict[str, list[dict]]) -> None:
    for spec in args.configs:
        label, kw = parse_config(spec)
        results[label] = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = run_one(kw, seed, data, mlp)
            r.update(label=label, seed=seed)
            results[label].append(r)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            print(
                f"{label:28s} seed {seed}: NLL {r['nll']:.4f} ± {r['se']:.4f}  R-hat "
                f"{r['r_hat']:.3f}  ESS bulk {r['ess']:.0f} tail {r['ess_tail']:.0f}  "
                f"{'converged' if r['converged'] else 'NOT converged'}  grads {r['grads']}  "
                f"{r['wall']:.1f} s ({r['backend']}, {r['chains']} chains)",
                flush=True,
            )


def _row(label: str, runs: list[dict], base: dict | None) -> list:
    s = summarise(runs)
    verdict = ""
    if base is not None:
        diff = s["nll"] - base["nll"]
        tol = 2 * math.hypot(s["se_mean"], base["se_mean"])
        ok = abs(diff) <= tol and s["n_ok"] == len(runs)
        verdict = f"{diff:+.4f} (tol {tol:.4f}); {'pass' if ok else 'FAIL'}"
    return [
        label,
        len(runs),
        f"{s['nll']:.4f}",
        f"{s['sd']:.4f}" if len(runs) > 1 else "—",
        f"{s['mc']:.4f}",
        f"{s['r_hat']:.3f}",
        f"{s['ess']:.0f}",
        f"{s['ess_tail']:.0f}",
        f"{s['n_ok']}/{len(runs)}",
        f"{s['grads']:.0f}",
        f"{s['wall']:.1f}",
        verdict,
    ]


def _report(args, data, results: dict[str, list[dict]]) -> None:
    base = summarise(results[REFERENCE]) if REFERENCE in results else None
    rows = [_row(label, runs, base) for label, runs in results.items()]
    header = [
        "setting (warmup/samples per chain)",
        "seeds",
        "mean NLL",
        "sd over seeds",
        "MC se per run",
        "max R-hat",
        "min bulk ESS",
        "min tail ESS",
        "seeds converged",
        "gradients / run",
        "wall s / run",
        f"NLL vs {REFERENCE}",
    ]
    table = markdown_table(header, rows)
    first = next(iter(results.values()))[0]
    report = (
        f"{SECTION}\n\nSeed study of the main job's NUTS reference (`nuts_ppd`, "
        f"{first['chains']} chains on the {first['backend']} backend, started at the fitted "
        f"MLP's weights plus 0.1 prior std of jitter per chain) on the default data set of "
        f"`pyrobayes compare` ({len(data[0])} train, {len(data[2])} test points), k NUTS seeds "
        "per setting (k = seeds column), one CPU thread (XLA and torch). Converged = "
        "`NUTSInfo.converged` (rank-normalised split R-hat <= 1.05 and bulk and tail ESS >= 100 "
        "of f(x_test) and the training log-likelihood over chains); gradients / run = "
        "`NUTSInfo.num_grads` (all chains, warm-up included), the machine-independent cost; "
        "wall time includes JAX compilation, on a 2-core box shared with other jobs (only "
        f"comparable within this table). {args.load_note}\n"
        f"Pass = converged on every seed and mean NLL within 2 combined standard errors of "
        f"the {REFERENCE} mean (a mean's se = max(sd over seeds, MC se) / sqrt(seeds)).\n\n"
        f"{table}\n"
    )
    print(report)
    if not args.no_write:
        write_section(SECTION, report)


if __name__ == "__main__":
    main()
