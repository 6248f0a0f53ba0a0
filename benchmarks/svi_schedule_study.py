"""Constant or decaying SVI step size, measured on training rows only (issue 21).

For each data set and each of the first ``--splits`` standard UCI splits, the training rows
are standardised and split as the real-data job's delta choice splits them
(``select_svi_recipe``: a seeded 20% inner validation, the job's MLP on the other 80%).
Every delta of the job's grid is fitted from that MLP with each ``--schedules`` step size
(2,000 full-batch Adam steps at lr 1e-3; ``fit``'s ``lr_schedule``), and the inner
validation NLL (standardised units, 200 predictive draws) is recorded along the fit. The
table compares what the job would choose: per split, the best delta's NLL at the last step
minus the MLP's, for each schedule ("+ steps": the best (delta, checkpoint) pair, a
step-count choice the job does not make). The test rows are never read.

Reproduce (the numbers in RESULTS.md, "SVI recipe: a decaying step size")::

    OMP_NUM_THREADS=1 python benchmarks/svi_schedule_study.py --data yacht energy \\
        wine-quality-red --splits 3
    OMP_NUM_THREADS=1 python benchmarks/svi_schedule_study.py --data kin8nm --splits 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pyrobayes
from pyrobayes.jobs.tabular_svi import DEFAULT_DELTAS, svi_model, svi_nll  # noqa: E402

CHECKPOINTS = (100, 250, 500, 1000, 1500, 2000)


def _curves(xt, yt, xv, yv, mlp, noise, schedule: str, seed: int) -> dict[float, dict]:
    """``{delta: {step: inner-validation NLL}}`` for one schedule."""
    from pyrobayes.guides import MOPEDNormal
    from pyrobayes.infer import fit

    out = {}
    for delta in DEFAULT_DELTAS:
        model = svi_model(mlp, "all", noise)
        guide = MOPEDNormal(model, delta=delta, init_values={model.likelihood.noise_site: noise})
        curve: dict[int, float] = {}

        def record(rec, model=model, guide=guide, curve=curve):
            if rec["epoch"] in CHECKPOINTS:
                curve[rec["epoch"]] = svi_nll(model, guide, xv, yv, 200)

        pyro.set_rng_seed(seed)
        fit(model, guide, (xt, yt), epochs=max(CHECKPOINTS), batch_size=len(xt), lr=1e-3,
            lr_schedule=schedule, progress=False, seed=seed, callbacks=[record])  # fmt: skip
        out[delta] = curve
    return out


def run_split(data, k: int, schedules: list[str]) -> dict:
    """The MLP's and every (schedule, delta)'s inner-validation NLL curve on split ``k``."""
    from pyrobayes.jobs.tabular_regression import fit_mlp_heldout, standardise_split
    from pyrobayes.ppd import normal_ppd

    tr, te = data.train_index[k], data.test_index[k]
    s = standardise_split(data.x, data.y, tr, te[:1])  # te only because the call wants it
    n = len(s.x_train)
    n_val = max(2, int(round(0.2 * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # the job's split
    v, t = perm[:n_val], perm[n_val:]
    xt, yt, xv, yv = s.x_train[t], s.y_train[t], s.x_train[v], s.y_train[v]
    mlp, noise, _ = fit_mlp_heldout(xt, yt, 2000, 0)
    with torch.no_grad():
        mlp_nll = float(-normal_ppd(mlp(xv).squeeze(-1), noise).log_prob(yv).mean())
    return {
        "mlp": mlp_nll,
        **{sch: _curves(xt, yt, xv, yv, mlp, noise, sch, 0) for sch in schedules},
    }


def summary(results: dict, schedules: list[str]) -> str:
    last = max(CHECKPOINTS)
    head = " | ".join(f"{s} (delta)" for s in schedules)
    lines = [f"| data set | split | MLP NLL | {head} | " + " | ".join(f"{s} + steps" for s in schedules) + " |",
             ("| --- | ---: | ---: | " + "---: | " * (2 * len(schedules))).rstrip()]  # fmt: skip
    means: dict[str, list[list[float]]] = {}
    for ds, splits in results.items():
        for k, r in splits.items():
            cells, extra, diffs = [], [], []
            for sch in schedules:
                delta = min(r[sch], key=lambda d: r[sch][d][last])
                diffs.append(r[sch][delta][last] - r["mlp"])
                cells.append(f"{diffs[-1]:+.4f} ({delta:g})")
                best = min((c[step], d, step) for d, c in r[sch].items() for step in c)
                extra.append(f"{best[0] - r['mlp']:+.4f} ({best[1]:g} @ {best[2]})")
            means.setdefault(ds, []).append(diffs)
            lines.append(f"| {ds} | {k} | {r['mlp']:.4f} | " + " | ".join(cells + extra) + " |")
    lines.append("")
    for ds, rows in means.items():
        cols = list(zip(*rows))
        lines.append(f"{ds}: mean over {len(rows)} splits, chosen delta minus MLP: "
                     + ", ".join(f"{s} {statistics.mean(c):+.4f}" for s, c in zip(schedules, cols)))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from pyrobayes.data.uci import load_uci

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["yacht", "energy", "wine-quality-red"])
    p.add_argument(
        "--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "uci")
    )
    p.add_argument("--splits", type=int, default=3)
    p.add_argument("--schedules", nargs="+", default=["constant", "cosine"])
    p.add_argument("--out", default=str(Path(__file__).with_name("svi_schedule_study.json")))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results: dict = {}
    for ds in args.data:
        data = load_uci(f"uci:{ds}", args.data_root)
        for k in range(args.splits):
            t0 = time.perf_counter()
            results.setdefault(ds, {})[k] = run_split(data, k, args.schedules)
            print(f"{ds} split {k}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(summary(results, args.schedules))
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
