"""The tabular PFN against NUTS on the same model, on fresh data sets from its prior.

Data sets: ``--datasets`` (default 100) draws from :class:`pyrobayes.pfn.TabularBNNPrior`
(the ``tabular_regression_model`` BNN with its latent noise), cycling through the grid
``d in {2, 5, 10}`` x ``n in {20, 100, 400}`` training points, each with ``--n-test``
held-out points; data set ``i`` is regenerated from seed ``seed + i``.

* PFN (``pretrained("bnn-tabular")`` or ``--checkpoint``): held-out NLL per point in the
  data set's own units and seconds per data set (one ``predict`` call, one thread).
* NUTS (:func:`pyrobayes.reference.nuts_ppd`) on the same model, weights AND noise sampled,
  on the first ``--nuts-datasets`` data sets (the cycle order covers all nine cells first,
  then every ``d`` once more). Each chain starts at the latents that generated the data
  set: in the joint ``p(theta, D) = p(D) p(theta | D)`` those latents are an exact posterior
  draw, so the chain starts in its stationary distribution and warm-up only adapts the step
  size and mass matrix. Max R-hat / min ESS are those of ``NUTSInfo`` (PPD functionals);
  the NLL's Monte Carlo error comes from batch means of the draws.
* Baseline: ``N(mean, sd)`` of the training targets (a model that ignores x).

NUTS results do not depend on the PFN, so they are cached in ``--nuts-cache`` (JSON, one
entry per data set and NUTS setting, written after every data set) and reused: a new PFN
checkpoint is benchmarked in seconds.

Targets (issue 10): PFN - NUTS held-out NLL <= 0.05 nats/point (mean over the NUTS data
sets, with its standard error); PFN >= 1,000x faster per data set.

Reproduce::

    python benchmarks/bench_tabular.py                     # NUTS from cache where present
    python benchmarks/bench_tabular.py --rerun-nuts        # redo the reference too
    python benchmarks/bench_tabular.py --datasets 18 --nuts-datasets 3 --no-write  # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, mixture_nll_and_mc_se, write_section  # noqa: E402

SECTION = "## bench_tabular.py"
DS = (2, 5, 10)
NS = (20, 100, 400)
MAX_REFERENCE_SE = 0.1  # nats/point: twice the gap target
DEFAULT_CACHE = Path(__file__).with_name("tabular_nuts_reference.json")


def cell(i: int) -> tuple[int, int]:
    """Data set ``i``'s (d, n): d cycles fastest, so any 3 consecutive ones cover every d."""
    return DS[i % 3], NS[(i // 3) % 3]


def dataset(i: int, seed: int, n_test: int):
    """Data set ``i``: train/test tensors and its generating latents (one row of the batch)."""
    from pyrobayes.pfn import TabularBNNPrior

    d, n = cell(i)
    prior = TabularBNNPrior()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + i)
        x, y, latents = prior.sample_with_latents(1, n + n_test, d)
    x, y = x[0], y[0]
    latents = {k: v[0] for k, v in latents.items()}
    return prior.model(d), (x[:n], y[:n], x[n:], y[n:]), latents


def run_nuts(i: int, args: argparse.Namespace) -> dict:
    from pyrobayes.reference import nuts_ppd

    model, (xt, yt, xq, yq), latents = dataset(i, args.seed, args.n_test)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the R-hat warning: R-hat is reported in the table
        ppd, info = nuts_ppd(
            model,
            xt,
            yt,
            xq,
            num_warmup=args.nuts_warmup,
            num_samples=args.nuts_samples,
            max_tree_depth=args.nuts_max_tree_depth,
            progress=False,
            seed=args.seed + i,
            return_mcmc=True,
            init=latents,
        )
    seconds = time.perf_counter() - t0
    # the PPD's own components (one Normal per draw): no second pass over the draws
    nll, mc_se = mixture_nll_and_mc_se(torch.distributions.Normal(ppd.loc, ppd.scale).log_prob(yq))
    d, n = cell(i)
    return {
        "i": i,
        "d": d,
        "n": n,
        "nll": nll,
        "mc_se": mc_se,
        "max_r_hat": float(info.max_r_hat),
        "min_ess": float(info.min_ess),
        "seconds": seconds,
    }


def _key(args: argparse.Namespace, i: int) -> str:
    return (
        f"seed{args.seed}-i{i}-test{args.n_test}-w{args.nuts_warmup}-s{args.nuts_samples}"
        f"-depth{args.nuts_max_tree_depth}"
    )


def nuts_results(args: argparse.Namespace) -> list[dict]:
    cache_path = Path(args.nuts_cache)
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    results = []
    for i in range(args.nuts_datasets):
        key = _key(args, i)
        if key not in cache or args.rerun_nuts:
            cache[key] = run_nuts(i, args)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, cache_path)  # a killed run keeps every finished data set
            r = cache[key]
            print(
                f"  NUTS data set {i} (d={r['d']}, n={r['n']}): NLL {r['nll']:.4f} "
                f"+- {r['mc_se']:.4f}, R-hat {r['max_r_hat']:.3f}, {r['seconds']:.0f} s",
                flush=True,
            )
        results.append(cache[key])
    return results


def oracle_nll(model, latents: dict, xq: torch.Tensor, yq: torch.Tensor) -> float:
    """NLL of the generating function and noise: the expected NLL of any PPD (the exact one
    included) is at least this one's, so it bounds how good a reference can look."""
    from pyrobayes.infer import forward_draws

    noise_site = model.likelihood.noise_site
    weights = {k: v.unsqueeze(0) for k, v in latents.items() if k != noise_site}
    f = forward_draws(model, weights, xq).reshape(-1)
    return float(-torch.distributions.Normal(f, latents[noise_site]).log_prob(yq).mean())


def pfn_results(args: argparse.Namespace) -> list[dict]:
    from pyrobayes.pfn import load_checkpoint, pretrained

    pfn = load_checkpoint(args.checkpoint) if args.checkpoint else pretrained("bnn-tabular")
    rows = []
    for i in range(args.datasets):
        model, (xt, yt, xq, yq), latents = dataset(i, args.seed, args.n_test)
        pfn.predict(xt[:5], yt[:5], xq[:5])  # warm caches outside the clock
        t0 = time.perf_counter()
        with torch.no_grad():
            ppd = pfn.predict(xt, yt, xq)
        seconds = time.perf_counter() - t0
        base = torch.distributions.Normal(yt.mean(), yt.std())
        d, n = cell(i)
        rows.append(
            {
                "i": i,
                "d": d,
                "n": n,
                "nll": float(-ppd.log_prob(yq).mean()),
                "baseline": float(-base.log_prob(yq).mean()),
                "oracle": oracle_nll(model, latents, xq, yq),
                "seconds": seconds,
            }
        )
    return rows


def _mean_se(v: list[float]) -> tuple[float, float]:
    t = torch.tensor(v, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(t.mean()), se


def tables(pfn: list[dict], nuts: list[dict]) -> tuple[str, str, dict]:
    cells = []
    for d in DS:
        for n in NS:
            rows = [r for r in pfn if (r["d"], r["n"]) == (d, n)]
            if not rows:
                continue
            m, se = _mean_se([r["nll"] for r in rows])
            b, bse = _mean_se([r["baseline"] for r in rows])
            cells.append(
                [
                    d,
                    n,
                    len(rows),
                    f"{m:.3f} ± {se:.3f}",
                    f"{b:.3f} ± {bse:.3f}",
                    f"{1e3 * sum(r['seconds'] for r in rows) / len(rows):.0f}",
                ]
            )
    per_cell = markdown_table(
        ["d", "n", "data sets", "PFN NLL", "N(mean, sd) NLL", "PFN ms/data set"], cells
    )
    by_i = {r["i"]: r for r in pfn}
    gaps, rows = [], []
    for r in nuts:
        p = by_i[r["i"]]
        gaps.append(p["nll"] - r["nll"])
        rows.append(
            [
                r["i"],
                r["d"],
                r["n"],
                f"{r['nll']:.4f} ± {r['mc_se']:.4f}",
                f"{p['nll']:.4f}",
                f"{p['oracle']:.4f}",
                f"{gaps[-1]:+.4f}",
                f"{r['max_r_hat']:.3f}",
                f"{r['min_ess']:.0f}",
                f"{r['seconds']:.0f}",
                f"{r['seconds'] / p['seconds']:.0f}",
            ]
        )
    per_set = markdown_table(
        [
            "#",
            "d",
            "n",
            "NUTS NLL ± MC s.e.",
            "PFN NLL",
            "oracle NLL",
            "PFN − NUTS",
            "R-hat",
            "ESS",
            "NUTS s",
            "NUTS s / PFN s",
        ],
        rows,
    )
    gap, gap_se = _mean_se(gaps)
    # a reference whose own Monte Carlo error exceeds the target cannot judge the target
    sure = [g for g, r in zip(gaps, nuts) if r["mc_se"] <= MAX_REFERENCE_SE]
    speed = sum(r["seconds"] for r in nuts) / sum(by_i[r["i"]]["seconds"] for r in nuts)
    summary = {
        "gap": gap,
        "gap_se": gap_se,
        "gap_sure": _mean_se(sure) if sure else (float("nan"), float("nan")),
        "n_sure": len(sure),
        "gap_by_d": {d: _mean_se([g for g, r in zip(gaps, nuts) if r["d"] == d]) for d in DS},
        "speedup": speed,
        "pfn_nll": _mean_se([r["nll"] for r in pfn]),
        "baseline_nll": _mean_se([r["baseline"] for r in pfn]),
        "max_r_hat": max((r["max_r_hat"] for r in nuts), default=float("nan")),
        "converged": sum(r["max_r_hat"] <= 1.05 for r in nuts),
    }
    return per_cell, per_set, summary


def report(args, per_cell: str, per_set: str, s: dict, checkpoint_note: str) -> str:
    by_d = ", ".join(f"d={d}: {m:+.3f} ± {se:.3f}" for d, (m, se) in s["gap_by_d"].items())
    met = "met" if s["gap_sure"][0] <= 0.05 else "NOT met"
    fast = "met" if s["speedup"] >= 1000 else "NOT met"
    return f"""{SECTION}

`python benchmarks/bench_tabular.py` ({args.datasets} prior data sets, {args.n_test} held-out
points each; NUTS {args.nuts_warmup}/{args.nuts_samples}, max tree depth
{args.nuts_max_tree_depth}, one chain started at the generating latents (an exact posterior
draw), on the first {args.nuts_datasets}). Machine: {platform.machine()}, {os.cpu_count()}
cores, one torch thread, shared with other jobs (times are inflated; the ratio is of one
run). PFN: {checkpoint_note}.

**PFN − NUTS held-out NLL: {s["gap_sure"][0]:+.3f} ± {s["gap_sure"][1]:.3f} nats/point** over
the {s["n_sure"]} data sets whose NUTS NLL has Monte Carlo s.e. <= {MAX_REFERENCE_SE} (target <= 0.05:
{met}); over all {args.nuts_datasets}: {s["gap"]:+.3f} ± {s["gap_se"]:.3f}; by d (all): {by_d}.
PFN time per data set vs NUTS: **{s["speedup"]:,.0f}x faster** (target >= 1,000x: {fast}).
NUTS convergence: {s["converged"]}/{args.nuts_datasets} data sets with max R-hat <= 1.05
(worst {s["max_r_hat"]:.2f}); where R-hat is above, the reference is itself uncertain and
the gap on that data set is indicative only.
Over all {args.datasets} data sets: PFN NLL {s["pfn_nll"][0]:.3f} ± {s["pfn_nll"][1]:.3f},
the x-blind N(mean, sd) baseline {s["baseline_nll"][0]:.3f} ± {s["baseline_nll"][1]:.3f}.

{per_set}

All {args.datasets} data sets, PFN by cell:

{per_cell}
"""


def _checkpoint_note(path: str | None) -> str:
    from pyrobayes.pfn.checkpoint import read_checkpoint_json
    from pyrobayes.pfn.pretrained import CHECKPOINT_DIR

    path = path or str(CHECKPOINT_DIR / "bnn-tabular")
    t = read_checkpoint_json(path).get("training", {})
    total = t.get("train_config", {}).get("steps", "?")
    return f"`{Path(path).name}`, step {t.get('steps', '?')} of {total} ({t.get('seconds', 0) / 3600:.1f} h)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", type=int, default=100)
    p.add_argument("--nuts-datasets", type=int, default=12)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--nuts-warmup", type=int, default=150)
    p.add_argument("--nuts-samples", type=int, default=300)
    p.add_argument("--nuts-max-tree-depth", type=int, default=8)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--checkpoint", default=None, help="a PFN checkpoint (default: shipped)")
    p.add_argument("--nuts-cache", default=str(DEFAULT_CACHE))
    p.add_argument("--rerun-nuts", action="store_true")
    p.add_argument("--nuts-only", action="store_true", help="fill the NUTS cache and stop")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.nuts_datasets > args.datasets:
        p.error("--nuts-datasets must be <= --datasets")
    torch.set_num_threads(1)
    nuts = nuts_results(args)
    if args.nuts_only:
        return
    pfn = pfn_results(args)
    per_cell, per_set, summary = tables(pfn, nuts)
    note = _checkpoint_note(args.checkpoint)
    text = report(args, per_cell, per_set, summary, note)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
