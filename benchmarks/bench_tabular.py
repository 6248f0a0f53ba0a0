"""The tabular PFN against NUTS on the same model, on fresh data sets from its prior.

Data sets: ``--datasets`` (default 100) draws from :class:`pyrobayes.pfn.TabularBNNPrior`
(the ``tabular_regression_model`` BNN with its latent noise), cycling through the grid
``d in {2, 5, 10}`` x ``n in {20, 100, 400}`` training points, each with ``--n-test``
held-out points; data set ``i`` is regenerated from seed ``seed + i``.

* PFN (``pretrained("bnn-tabular")`` or ``--checkpoint``): held-out NLL per point in the
  data set's own units and seconds per data set (one ``predict`` call, one thread).
* NUTS (:func:`pyrobayes.infer.nuts.sampler.nuts_ppd`, ``--nuts-chains`` chains, default 4, on its
  default backend: NumPyro's NUTS when the ``nuts`` extra is installed) on the same model,
  weights AND noise sampled, on the first ``--nuts-datasets`` data sets (the cycle order
  covers all nine cells first; 27 = three per cell). The chains start at the latents that
  generated the data set plus 0.1 prior std of jitter each: in the joint
  ``p(theta, D) = p(D) p(theta | D)`` those latents are an exact posterior draw, so the
  chains start near their stationary distribution. Max rank-normalised split R-hat and min
  bulk/tail ESS are those of ``NUTSInfo`` (PPD functionals f(x_test) and the training
  log-likelihood, over chains); a reference counts as converged with
  ``pyrobayes.diagnostics.summarize(..., rhat_max=1.05, ess_min=200)`` semantics (R-hat
  <= 1.05 and bulk and tail ESS >= 200, at least 2 chains), and the PFN - NUTS gap is
  reported on converged references only. With ``--nuts-retry K1 K2 ...`` a reference that
  did not converge is run again with K1 x the warm-up and draws (and
  ``--nuts-retry-depth``), one that still did not with K2 x, and so on; the last run
  replaces it. The ladder is driven by the diagnostics alone (never by the PFN): the
  references that missed had R-hat near 1 and an ESS that grew with the draws (slow mixing,
  not stuck chains), which more draws and a longer adaptation fix.
* Baseline: ``N(mean, sd)`` of the training targets (a model that ignores x).

NUTS results do not depend on the PFN, so they are cached in ``--nuts-cache`` (JSON, one
entry per data set and NUTS setting, written after every data set) and reused: a new PFN
checkpoint is benchmarked in seconds.

Targets (issues 10, 20): PFN - NUTS held-out NLL <= 0.05 nats/point (mean over the converged
NUTS references, with its standard error); >= 24 reference data sets covering every (d, n)
cell, >= 90% of them converged; PFN >= 1,000x faster per data set.

Reproduce::

    python benchmarks/bench_tabular.py                     # NUTS from cache where present
    python benchmarks/bench_tabular.py --rerun-nuts        # redo the reference too
    python benchmarks/bench_tabular.py --nuts-only         # fill the NUTS cache (resumable)
    python benchmarks/bench_tabular.py --nuts-retry 2 4 --nuts-retry-depth 10  # RESULTS.md run
    python benchmarks/bench_tabular.py --datasets 18 --nuts-datasets 3 --no-write  # quick
"""

from __future__ import annotations

import os

# one CPU thread for XLA (the NumPyro backend) and torch: set before jax/torch are imported
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, mixture_nll_and_mc_se, write_section  # noqa: E402

SECTION = "## bench_tabular.py"
DS = (2, 5, 10)
NS = (20, 100, 400)
RHAT_MAX = 1.05
ESS_MIN = 200  # bulk and tail, over all chains (issue 20)
# tabular_nuts_reference.json holds the earlier single-chain Pyro references
DEFAULT_CACHE = Path(__file__).with_name("tabular_nuts_reference_chains.json")


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


def run_nuts(i: int, args: argparse.Namespace, scale: int = 1, depth: int | None = None) -> dict:
    """NUTS on data set ``i`` with ``scale`` x the warm-up and draws of ``args`` and max tree
    depth ``depth`` (default ``args.nuts_max_tree_depth``)."""
    depth = depth or args.nuts_max_tree_depth
    from pyrobayes.infer.nuts.sampler import nuts_ppd

    model, (xt, yt, xq, yq), latents = dataset(i, args.seed, args.n_test)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the R-hat warning: R-hat is reported in the table
        ppd, info = nuts_ppd(
            model,
            xt,
            yt,
            xq,
            num_warmup=scale * args.nuts_warmup,
            num_samples=scale * args.nuts_samples,
            max_tree_depth=depth,
            num_chains=args.nuts_chains,
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
        "warmup": scale * args.nuts_warmup,
        "samples": scale * args.nuts_samples,
        "depth": depth,
        "nll": nll,
        "mc_se": mc_se,
        "max_r_hat": float(info.max_r_hat),
        "min_ess": float(info.min_ess),
        "min_ess_tail": float(info.min_ess_tail),
        "num_chains": info.num_chains,
        "converged": converged(info.max_r_hat, info.min_ess, info.min_ess_tail, info.num_chains),
        "backend": str(info.backend),
        "num_grads": info.num_grads,
        "seconds": seconds,
    }


def converged(r_hat: float, ess_bulk: float, ess_tail: float, chains: int) -> bool:
    """``summarize(..., rhat_max=RHAT_MAX, ess_min=ESS_MIN).converged`` from its worst values
    (a non-finite draw makes R-hat NaN, which fails here as there)."""
    return bool(chains >= 2 and r_hat <= RHAT_MAX and min(ess_bulk, ess_tail) >= ESS_MIN)


def is_converged(r: dict) -> bool:
    """A cached reference's verdict at today's thresholds (entries without a tail ESS or a
    chain count, i.e. single-chain runs, never count)."""
    return converged(
        r["max_r_hat"], r["min_ess"], r.get("min_ess_tail", float("nan")), r.get("num_chains", 1)
    )


def _key(args: argparse.Namespace, i: int, scale: int = 1, depth: int | None = None) -> str:
    return (
        f"seed{args.seed}-i{i}-test{args.n_test}-w{scale * args.nuts_warmup}"
        f"-s{scale * args.nuts_samples}-depth{depth or args.nuts_max_tree_depth}"
        f"-chains{args.nuts_chains}"
    )


def nuts_results(args: argparse.Namespace) -> list[dict]:
    """One reference per data set: the ``args`` budget, or, with ``--nuts-retry K1 K2 ...``,
    K1 x that budget (and ``--nuts-retry-depth``) where the first run did not converge, K2 x
    where that one did not, ... (the last run replaces it; ``retried``)."""
    cache_path = Path(args.nuts_cache)
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    results = []
    for i in range(args.nuts_datasets):
        r = _cached_run(cache, cache_path, args, i, 1, None)
        # a ladder of longer runs, each only where the one before did not converge: slow
        # mixing (R-hat near 1, ESS growing with the draws) needs draws, not a new sampler
        for scale in args.nuts_retry:
            if is_converged(r):
                break
            again = _cached_run(cache, cache_path, args, i, scale, args.nuts_retry_depth)
            if again is None:  # --nuts-cached-only and not run yet
                r = {**r, "not_run": scale}
                break
            r = {**again, "retried": True}
        results.append(r)
    return results


def _cached_run(cache: dict, cache_path: Path, args, i: int, scale: int, depth: int | None):
    key = _key(args, i, scale, depth)
    if key not in cache and args.nuts_cached_only and scale > 1:
        return None
    if key not in cache or args.rerun_nuts:
        cache[key] = run_nuts(i, args, scale, depth)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, cache_path)  # a killed run keeps every finished data set
        r = cache[key]
        print(
            f"  NUTS data set {i} (d={r['d']}, n={r['n']}, {r['warmup']}/{r['samples']}, depth "
            f"{r['depth']}): NLL "
            f"{r['nll']:.4f} +- {r['mc_se']:.4f}, R-hat {r['max_r_hat']:.3f}, ESS bulk "
            f"{r['min_ess']:.0f} tail {r['min_ess_tail']:.0f}, "
            f"{'converged' if r['converged'] else 'NOT converged'}, {r['seconds']:.0f} s",
            flush=True,
        )
    return cache[key]


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
    per_set, gaps = _per_set_table(nuts, by_i)
    ok = [is_converged(r) for r in nuts]
    good = [g for g, c in zip(gaps, ok) if c]
    conv = [r for r, c in zip(nuts, ok) if c]
    cells_ok = {(r["d"], r["n"]) for r, c in zip(nuts, ok) if c}
    speed = sum(r["seconds"] for r in nuts) / sum(by_i[r["i"]]["seconds"] for r in nuts)
    nan2 = (float("nan"), float("nan"))
    summary = {
        "gap_all": _mean_se(gaps) if gaps else nan2,
        "gap": _mean_se(good) if good else nan2,
        "n_converged": len(good),
        "n_retried": sum(bool(r.get("retried")) for r in nuts),
        "n_cells": len({(r["d"], r["n"]) for r in nuts}),
        "n_cells_converged": len(cells_ok),
        "gap_by_d": {
            d: _mean_se(v) if (v := [g for g, r in zip(good, conv) if r["d"] == d]) else nan2
            for d in DS
        },
        "speedup": speed,
        "pfn_nll": _mean_se([r["nll"] for r in pfn]),
        "baseline_nll": _mean_se([r["baseline"] for r in pfn]),
        "max_r_hat": max((r["max_r_hat"] for r in nuts), default=float("nan")),
        "min_ess": min((min(r["min_ess"], r.get("min_ess_tail", 0.0)) for r in nuts), default=0),
    }
    return per_cell, per_set, summary


def _per_set_table(nuts: list[dict], by_i: dict) -> tuple[str, list[float]]:
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
                f"{r.get('min_ess_tail', float('nan')):.0f}",
                ("yes" if is_converged(r) else "**no**")
                + (
                    f" ({r['warmup']}/{r['samples']}, depth {r['depth']})"
                    if r.get("retried")
                    else ""
                ),
                f"{r['seconds']:.0f}",
                f"{r['seconds'] / p['seconds']:.0f}",
            ]
        )
    header = ["#", "d", "n", "NUTS NLL ± MC s.e.", "PFN NLL", "oracle NLL", "PFN − NUTS",
              "R-hat", "bulk ESS", "tail ESS", "converged", "NUTS s", "NUTS s / PFN s"]  # fmt: skip
    return markdown_table(header, rows), gaps


def report(args, per_cell: str, per_set: str, s: dict, checkpoint_note: str, nuts) -> str:
    by_d = ", ".join(f"d={d}: {m:+.3f} ± {se:.3f}" for d, (m, se) in s["gap_by_d"].items())
    k = args.nuts_datasets
    met = "met" if s["gap"][0] <= 0.05 else "NOT met"
    frac = s["n_converged"] / k if k else float("nan")
    conv_met = "met" if k >= 24 and frac >= 0.9 and s["n_cells_converged"] == 9 else "NOT met"
    fast = "met" if s["speedup"] >= 1000 else "NOT met"
    factors = " then ".join(f"{k}x" for k in args.nuts_retry)
    not_run = [f"#{r['i']} ({r['not_run']}x)" for r in nuts if r.get("not_run")]
    retry = (
        f" With `--nuts-retry {' '.join(map(str, args.nuts_retry))}`: {s['n_retried']} "
        f"references that had not converged at {args.nuts_warmup}/{args.nuts_samples} were "
        f"rerun with {factors} the warm-up and draws (max tree depth "
        f"{args.nuts_retry_depth or args.nuts_max_tree_depth}; the next factor only where "
        "the run before did not converge, judged by R-hat and ESS alone), and the last rerun "
        "replaces them (its budget in the converged column)."
        + (f" Not run (time): {', '.join(not_run)}." if not_run else "")
        if args.nuts_retry
        else ""
    )
    return f"""{SECTION}

`python benchmarks/bench_tabular.py --nuts-datasets {k}{_retry_flags(args)}` ({args.datasets} prior data sets,
{args.n_test} held-out points each; NUTS {args.nuts_warmup}/{args.nuts_samples} per chain, max
tree depth {args.nuts_max_tree_depth}, {args.nuts_chains} chains started at the generating
latents (an exact posterior draw) plus 0.1 prior std of jitter each, on the first {k}).
Machine: {platform.machine()}, {os.cpu_count()} cores, one torch/XLA thread, shared with other
jobs (times are inflated; NUTS times come from the runs that filled the cache, at their own load, PFN times from this run). PFN: {checkpoint_note}.

NUTS convergence (rank-normalised split R-hat <= {RHAT_MAX}, bulk and tail ESS >= {ESS_MIN} of
f(x_test) and the training log-likelihood over chains): **{s["n_converged"]}/{k} references
converged ({100 * frac:.0f}%)**, covering {s["n_cells_converged"]} of the
{s["n_cells"]} (d, n) cells run (target: >= 24 data sets, every cell, >= 90%: {conv_met});
worst R-hat {s["max_r_hat"]:.3f}, smallest ESS {s["min_ess"]:.0f}.{retry}

**PFN − NUTS held-out NLL: {s["gap"][0]:+.3f} ± {s["gap"][1]:.3f} nats/point** over the
{s["n_converged"]} converged references ({k - s["n_converged"]} excluded; target <= 0.05:
{met}); by d (converged): {by_d}; over all {k}: {s["gap_all"][0]:+.3f} ± {s["gap_all"][1]:.3f}.
PFN time per data set vs NUTS: **{s["speedup"]:,.0f}x faster** (target >= 1,000x: {fast}).
Over all {args.datasets} data sets: PFN NLL {s["pfn_nll"][0]:.3f} ± {s["pfn_nll"][1]:.3f},
the x-blind N(mean, sd) baseline {s["baseline_nll"][0]:.3f} ± {s["baseline_nll"][1]:.3f}.

{per_set}

All {args.datasets} data sets, PFN by cell:

{per_cell}
"""


def _retry_flags(args) -> str:
    if not args.nuts_retry:
        return ""
    depth = f" --nuts-retry-depth {args.nuts_retry_depth}" if args.nuts_retry_depth else ""
    cached = " --nuts-cached-only" if args.nuts_cached_only else ""
    return f" --nuts-retry {' '.join(map(str, args.nuts_retry))}{depth}{cached}"


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
    p.add_argument("--nuts-datasets", type=int, default=27, help="27 = 3 per (d, n) cell")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--nuts-warmup", type=int, default=150)
    p.add_argument("--nuts-samples", type=int, default=300)
    p.add_argument("--nuts-max-tree-depth", type=int, default=8)
    p.add_argument("--nuts-chains", type=int, default=4)
    p.add_argument(
        "--nuts-retry",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="K1 [K2 ...]: rerun a reference that did not converge with K1 x warm-up and "
        "draws (and --nuts-retry-depth), then one that still did not with K2 x, ...",
    )
    p.add_argument(
        "--nuts-retry-depth", type=int, default=None, help="max tree depth of those reruns"
    )
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--checkpoint", default=None, help="a PFN checkpoint (default: shipped)")
    p.add_argument("--nuts-cache", default=str(DEFAULT_CACHE))
    p.add_argument("--rerun-nuts", action="store_true")
    p.add_argument(
        "--nuts-cached-only",
        action="store_true",
        help="take the --nuts-retry reruns from the cache only (a missing one is reported as "
        "not run)",
    )
    p.add_argument("--nuts-only", action="store_true", help="fill the NUTS cache and stop")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.nuts_datasets > args.datasets:
        p.error("--nuts-datasets must be <= --datasets")
    if any(k < 2 for k in args.nuts_retry) or args.nuts_retry != sorted(set(args.nuts_retry)):
        p.error(f"--nuts-retry needs increasing factors >= 2, got {args.nuts_retry}")
    torch.set_num_threads(1)
    nuts = nuts_results(args)
    if args.nuts_only:
        return
    pfn = pfn_results(args)
    per_cell, per_set, summary = tables(pfn, nuts)
    note = _checkpoint_note(args.checkpoint)
    text = report(args, per_cell, per_set, summary, note, nuts)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
