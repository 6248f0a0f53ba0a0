"""Why the real-data job's SVI (MOPED) row was worse than its MLP, measured on training rows.

For each data set and each of the first ``--splits`` standard UCI splits: the training rows
only are standardised and split again, ``1 - --val`` inner-training / ``--val`` inner
validation (seeded). On the inner-training rows the job's MLP (early-stopped, held-out noise,
:func:`~pyrobayes.jobs.tabular_regression.fit_mlp_heldout`) is fitted, then each SVI variant
(:class:`~pyrobayes.jobs.tabular_svi.SVIRecipe`: KL weight, MOPED delta, Bayesian layers, steps,
lr; plus predictive draws) starting from it; every row is scored by the mean negative log
predictive density of the inner validation rows (standardised units) and the RMSE of its
predictive mean. The test rows of the splits are never read.

Reproduce::

    OMP_NUM_THREADS=1 python benchmarks/svi_recipe_study.py --data yacht energy \\
        wine-quality-red kin8nm --splits 3 --subsample 2000

It prints one table per data set and writes ``benchmarks/svi_recipe_study.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pyrobayes
from pyrobayes.jobs.tabular_svi import SVIRecipe, fit_svi_moped, svi_nll  # noqa: E402

HERE = Path(__file__).parent

# name -> (recipe, predictive draws); "base" is the job's recipe before issue 21
VARIANTS: dict[str, tuple[SVIRecipe, int]] = {
    "base (beta=1, delta=0.1, all, 2000 steps, lr 1e-3)": (SVIRecipe(), 200),
    "base, 1000 draws": (SVIRecipe(), 1000),
    "beta=0.3": (SVIRecipe(kl_weight=0.3), 200),
    "beta=0.1": (SVIRecipe(kl_weight=0.1), 200),
    "beta=0.03": (SVIRecipe(kl_weight=0.03), 200),
    "beta=0.01": (SVIRecipe(kl_weight=0.01), 200),
    "beta=0.001": (SVIRecipe(kl_weight=0.001), 200),
    "delta=0.01": (SVIRecipe(delta=0.01), 200),
    "delta=0.3": (SVIRecipe(delta=0.3), 200),
    "delta=0.03": (SVIRecipe(delta=0.03), 200),
    "delta=0.003": (SVIRecipe(delta=0.003), 200),
    "delta=0.001": (SVIRecipe(delta=0.001), 200),
    "delta=0.0003": (SVIRecipe(delta=0.0003), 200),
    "delta=0.01, beta=0.1": (SVIRecipe(delta=0.01, kl_weight=0.1), 200),
    "delta=0.01, 5000 steps": (SVIRecipe(delta=0.01, steps=5000), 200),
    "delta=0.01, lr 3e-3": (SVIRecipe(delta=0.01, lr=3e-3), 200),
    "delta=0.01, last layer": (SVIRecipe(delta=0.01, layers="last"), 200),
    "EB noise 0.1, delta=0.003": (SVIRecipe(delta=0.003, noise_prior_scale=0.1), 200),
    "EB noise 0.1, delta=0.01": (SVIRecipe(delta=0.01, noise_prior_scale=0.1), 200),
    "EB noise 0.1, delta=0.03": (SVIRecipe(delta=0.03, noise_prior_scale=0.1), 200),
    "EB noise 0.1, delta=0.1": (SVIRecipe(delta=0.1, noise_prior_scale=0.1), 200),
    "EB noise 0.03, delta=0.01": (SVIRecipe(delta=0.01, noise_prior_scale=0.03), 200),
    "500 steps": (SVIRecipe(steps=500), 200),
    "lr 1e-2": (SVIRecipe(lr=1e-2), 200),
    "last layer": (SVIRecipe(layers="last"), 200),
    "last layer, lr 1e-2": (SVIRecipe(layers="last", lr=1e-2), 200),
}


def _inner(s, val: float, seed: int):
    n = len(s.x_train)
    n_val = max(2, int(round(val * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_000 + seed))
    v, t = perm[:n_val], perm[n_val:]
    return s.x_train[t], s.y_train[t], s.x_train[v], s.y_train[v]


def run_split(uci, k: int, tr, te, args, variants) -> dict[str, dict]:
    """Every variant's inner-validation NLL/RMSE on outer split ``k`` (test rows unused)."""
    from pyrobayes.jobs.tabular_regression import fit_mlp_heldout, standardise_split
    from pyrobayes.ppd import normal_ppd

    if args.subsample and len(tr) > args.subsample:
        g = torch.Generator().manual_seed(k)
        tr = tr[torch.randperm(len(tr), generator=g)[: args.subsample]].sort().values
    # te is passed only because standardise_split wants it; nothing below reads s.x_test
    s = standardise_split(uci.x, uci.y, tr, te[:1])
    xt, yt, xv, yv = _inner(s, args.val, k)
    mlp, noise, _ = fit_mlp_heldout(xt, yt, 2000, seed=k)
    with torch.no_grad():
        mu = mlp(xv).squeeze(-1)
    out = {
        "MLP + fitted noise": {
            "nll": float(-normal_ppd(mu, noise).log_prob(yv).mean()),
            "rmse": float((mu - yv).pow(2).mean().sqrt()),
            "noise": noise,
            "seconds": 0.0,
        }
    }
    for name, (recipe, draws) in variants.items():
        t0 = time.perf_counter()
        model, guide = fit_svi_moped(xt, yt, mlp, noise, recipe, seed=k)
        nll = svi_nll(model, guide, xv, yv, draws)
        from pyrobayes.infer import PosteriorPredictive

        with torch.no_grad():
            mean = PosteriorPredictive(model, guide, num_samples=draws)(xv).mean
            med = guide.median(xt)
        out[name] = {
            "nll": nll,
            "rmse": float((mean - yv).pow(2).mean().sqrt()),
            "noise": float(med[model.likelihood.noise_site]),
            "seconds": time.perf_counter() - t0,
        }
    return out


def summarise(per_split: list[dict]) -> list[tuple]:
    rows = []
    for name in per_split[0]:
        vals = {k: [r[name][k] for r in per_split] for k in ("nll", "rmse", "noise", "seconds")}
        diff = [r[name]["nll"] - r["MLP + fitted noise"]["nll"] for r in per_split]
        se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        rows.append(
            (
                name,
                statistics.mean(vals["nll"]),
                statistics.mean(diff),
                se,
                statistics.mean(vals["rmse"]),
                statistics.mean(vals["noise"]),
                statistics.mean(vals["seconds"]),
            )
        )
    return rows


def main() -> None:
    from pyrobayes.data.uci import load_uci

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=["yacht", "energy", "wine-quality-red"])
    p.add_argument("--data-root", default="/work/shared/uci")
    p.add_argument("--splits", type=int, default=3)
    p.add_argument("--val", type=float, default=0.2, help="inner validation fraction")
    p.add_argument("--subsample", type=int, default=0, help="at most this many training rows")
    p.add_argument("--variants", nargs="*", default=None, help="substrings of variant names")
    p.add_argument("--out", default=str(HERE / "svi_recipe_study.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    variants = {
        k: v for k, v in VARIANTS.items() if not args.variants or any(s in k for s in args.variants)
    }
    results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    for data in args.data:
        uci = load_uci(f"uci:{data}", args.data_root)
        per_split = [
            run_split(uci, k, tr, te, args, variants)
            for k, (tr, te) in enumerate(uci.splits(args.splits))
        ]
        results[data] = {"splits": args.splits, "subsample": args.subsample, "per_split": per_split}
        print(
            f"\n## {data}: inner validation ({args.val:.0%} of training rows), "
            f"{args.splits} outer splits, NLL in standardised units"
        )
        print("| variant | NLL | NLL - MLP (± s.e.) | RMSE | noise | s |")
        print("| :--- | ---: | ---: | ---: | ---: | ---: |")
        for name, nll, d, se, rmse, noise, sec in summarise(per_split):
            print(
                f"| {name} | {nll:.3f} | {d:+.3f} ± {se:.3f} | {rmse:.3f} | {noise:.3f} | {sec:.1f} |"
            )
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
