"""How cheap can the main job's NUTS reference be and stay at NUTS quality? A seed study.

On the main job's default data set (``pyrobayes compare`` defaults: 20 training and 200 test
points drawn from the default BNN prior, seed 0), :func:`pyrobayes.reference.nuts_ppd` is
started at the fitted MLP's weights exactly as the main job does, for several NUTS settings
(warmup/samples budget, ``max_tree_depth``, ``target_accept_prob``, a MAP start, chains) and
several NUTS seeds each. Per run it records the held-out NLL with its Monte Carlo standard
error (batch means of the draws, as in ``bench_reference.py``), the max split R-hat, the min
ESS of the PPD functionals (f(x_test) at every test point and the training log-likelihood),
the number of potential-gradient evaluations (machine-independent cost) and the wall time.

A setting passes when, across all its seeds, max R-hat <= 1.05 and the mean NLL over seeds is
within Monte Carlo error of the 200/200 runs' mean (|difference| <= 2 x the combined
standard error of the two means, where a mean's standard error is the larger of its
seed-to-seed sd / sqrt(seeds) and the runs' own MC error / sqrt(seeds)).

Reproduce::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_nuts_budget.py             # full study
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_nuts_budget.py --seeds 2 \\
        --configs 200/200 50/100 --no-write
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, write_section  # noqa: E402
from bench_reference import _data, _nll_and_mc_error  # noqa: E402

SECTION = "## bench_nuts_budget.py"

# What the study that set CompareConfig's defaults ran (RESULTS.md). Not run by default:
# ``num_chains=2`` (on a 2-core box Pyro runs the chains one after another: it reserves a CPU)
# and ``target_accept_prob`` / ``map_steps`` variants (run them with --configs).
DEFAULT_CONFIGS = [
    "200/200",
    "100/200",
    "100/100",
    "50/200",
    "50/100",
    "50/100:max_tree_depth=6",
]


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


class _GradCounter:
    """Counts potential evaluations (one per leapfrog step plus the initial ones): wraps
    ``Potential.__call__`` for the duration of the study."""

    def __init__(self):
        from pyrobayes.infer.potential import Potential

        self.cls, self.orig, self.n = Potential, Potential.__call__, 0
        counter = self

        def counted(pot, params):
            counter.n += 1
            return counter.orig(pot, params)

        Potential.__call__ = counted

    def restore(self) -> None:
        self.cls.__call__ = self.orig


def run_one(kw: dict, seed: int, data, mlp, counter: _GradCounter) -> dict:
    from pyrobayes.models.mlp import default_regression_model
    from pyrobayes.reference import nuts_ppd

    x_tr, y_tr, x_te, y_te = data
    model = default_regression_model()
    counter.n = 0
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the R-hat warning: the table reports R-hat itself
        _, info = nuts_ppd(
            model, x_tr, y_tr, x_te, progress=False, seed=seed, return_mcmc=True, init=mlp, **kw
        )
    wall = time.perf_counter() - t0
    nll, se = _nll_and_mc_error(model, info.draws, x_te, y_te)
    return {
        "nll": nll,
        "se": se,
        "r_hat": info.max_r_hat,
        "ess": info.min_ess,
        "grads": counter.n,
        "wall": wall,
        "step": float(getattr(info.mcmc.kernel, "step_size", float("nan"))),
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

    data = _data()
    x_tr, y_tr, *_ = data
    results: dict[str, list[dict]] = {}
    if args.merge:
        for path in args.merge:
            for line in path.read_text().splitlines():
                r = json.loads(line)
                results.setdefault(r["label"], []).append(r)
        results = {k: results[k] for k in sorted(results, key=_order)}
        args.seeds = max(len(v) for v in results.values())
    else:
        _run_study(args, data, results)
    _report(args, data, results)


def _order(label: str) -> tuple:
    """200/200 first, then by budget (descending), variants after their budget."""
    budget, _, extra = label.partition(":")
    w, s = (int(v) for v in budget.split("/"))
    return (-(w + s), -w, extra)


def _run_study(args, data, results: dict[str, list[dict]]) -> None:
    from pyrobayes.compare_job import CompareConfig, _fit_mlp

    x_tr, y_tr, *_ = data
    mlp = copy.deepcopy(_fit_mlp(x_tr, y_tr, CompareConfig().mlp_steps, 0))
    counter = _GradCounter()
    try:
        for spec in args.configs:
            label, kw = parse_config(spec)
            results[label] = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                r = run_one(kw, seed, data, mlp, counter)
                r.update(label=label, seed=seed)
                results[label].append(r)
                if args.jsonl:
                    with args.jsonl.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                print(
                    f"{label:32s} seed {seed}: NLL {r['nll']:.3f} ± {r['se']:.3f}  R-hat "
                    f"{r['r_hat']:.3f}  ESS {r['ess']:.0f}  grads {r['grads']}  "
                    f"{r['wall']:.1f} s  step {r['step']:.3g}",
                    flush=True,
                )
    finally:
        counter.restore()


def _report(args, data, results: dict[str, list[dict]]) -> None:
    x_tr = data[0]
    base_label = next((lbl for lbl in results if lbl.startswith("200/200")), None)
    base = summarise(results[base_label]) if base_label else None
    rows = []
    for label, runs in results.items():
        s = summarise(runs)
        n_ok = sum(r["r_hat"] <= 1.05 for r in runs)
        if base is not None:
            diff = s["nll"] - base["nll"]
            tol = 2 * math.hypot(s["se_mean"], base["se_mean"])
            nll_ok = abs(diff) <= tol
            ok = nll_ok and n_ok == len(runs)
            verdict = f"{diff:+.3f} (tol {tol:.3f}); {'pass' if ok else 'FAIL'}"
        else:
            verdict = ""
        rows.append(
            [
                label,
                len(runs),
                f"{s['nll']:.3f}",
                f"{s['sd']:.3f}" if len(runs) > 1 else "—",
                f"{s['mc']:.3f}",
                f"{s['r_hat']:.3f}",
                f"{n_ok}/{len(runs)}",
                f"{s['ess']:.0f}",
                f"{s['grads']:.0f}",
                f"{s['wall']:.1f}",
                verdict,
            ]
        )
    header = [
        "setting (warmup/samples)",
        "seeds",
        "mean NLL",
        "sd over seeds",
        "MC se per run",
        "max R-hat",
        "seeds R-hat <= 1.05",
        "min ESS",
        "gradients / run",
        "wall s / run",
        "NLL vs 200/200",
    ]
    table = markdown_table(header, rows)
    report = (
        f"{SECTION}\n\nSeed study of the main job's NUTS reference (`nuts_ppd` on the trace-free "
        f"potential, started at the fitted MLP's weights) on the default data set of "
        f"`pyrobayes compare` ({len(x_tr)} train, {len(data[2])} test points), k NUTS "
        "seeds per setting (k = seeds column), 1 torch thread. Wall times come from a 2-core box "
        "shared with a PFN training (one core) and other jobs, so they are inflated and "
        "only comparable within this table; gradients / run is the machine-independent "
        f"cost. {args.load_note}\n"
        "Pass = max R-hat <= 1.05 over all seeds and mean NLL within 2 combined standard "
        "errors of the 200/200 mean (a mean's se = max(sd over seeds, MC se) / sqrt(seeds)).\n\n"
        f"{table}\n"
    )
    print(report)
    if not args.no_write:
        write_section(SECTION, report)


if __name__ == "__main__":
    main()
