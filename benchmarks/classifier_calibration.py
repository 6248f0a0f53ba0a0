"""Calibration of the classification comparison, re-scored on all splits' test rows pooled.

``pyrobayes compare --data NAME`` (a labelled table) reports the mean over splits of each
split's ECE. On the built-in sets a split has 15 (iris), 18 (wine) or 57 (breast cancer)
test rows in 10 bins, so a split's ECE is mostly sampling noise, biased upwards (a bin of one
or two rows: a calibrated 0.95 that is right scores 0.05, a 0.999 that is right ~0). This
script reads the ``probabilities.csv`` the job writes and scores every method once on the
test rows of all splits together (the rows of the job's reliability figure), with a paired
bootstrap over those rows (the same resamples for every method) for the difference
between the PFN and the best baseline (the lowest pooled ECE among the rows that are not
the PFN or the NUTS reference). It fits nothing: it re-scores a finished run.

Reproduce (the runs: ``pyrobayes compare --data NAME --splits 10 --no-progress --out DIR``)::

    python benchmarks/classifier_calibration.py --runs DIR_IRIS DIR_WINE DIR_BC --write
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _results import write_section  # noqa: E402

from pyrobayes.jobs.tabular_classification import (  # noqa: E402
    bootstrap_rows,
    resampled_ece,
)

SECTION = "## classifier_calibration.py"
NOT_BASELINES = ("PFN", "NUTS")


def load_run(folder: Path) -> tuple[str, dict[str, torch.Tensor], torch.Tensor, dict]:
    """``(data, {method: probs [N, C]}, labels [N], compare.json)`` of one finished run."""
    path = folder / "probabilities.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass the --out folder of a `pyrobayes compare --data ...` run "
            "on a labelled table (the job writes probabilities.csv since Dec 2026)"
        )
    payload = json.loads((folder / "compare.json").read_text())
    classes = [str(c) for c in payload["classes"]]
    probs: dict[str, list[list[float]]] = {}
    labels: dict[str, list[int]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            probs.setdefault(r["method"], []).append([float(r[f"p({c})"]) for c in classes])
            labels.setdefault(r["method"], []).append(classes.index(r["label"]))
    y = torch.tensor(next(iter(labels.values())))
    if any(torch.tensor(v).ne(y).any() for v in labels.values()):
        raise ValueError(f"{path}: the methods' rows do not list the same labels in order")
    return payload["config"]["data"], {m: torch.tensor(p) for m, p in probs.items()}, y, payload


def score(folders: Sequence[Path], bins: int, bootstrap: int, seed: int) -> dict:
    """Pooled ECEs of the runs in ``folders``: one data set, the same splits (seed), their
    methods merged (a method in several runs must have the same probabilities in each)."""
    probs: dict[str, torch.Tensor] = {}
    per_split: dict[str, float] = {}
    runs: list[tuple[tuple, str]] = []
    y = torch.empty(0, dtype=torch.long)
    for folder in folders:
        data, run_probs, y_run, payload = load_run(folder)
        cfg = payload["config"]
        key = (data, cfg["seed"], len(payload["split_tables"]))
        if runs and (key != runs[0][0] or not torch.equal(y_run, y)):
            raise ValueError(f"{folder}: not the same data and splits as {folders[0]}")
        y = y_run
        runs.append((key, ",".join(cfg["methods"] or ["all"])))
        for m, p in run_probs.items():
            if m in probs and not torch.allclose(probs[m], p, atol=1e-6):
                raise ValueError(f"{folder}: {m}'s probabilities differ from another run's")
            probs.setdefault(m, p)
        per_split.update({r["method"]: r["ece"] for r in payload["table"]["rows"]})
    (data, seed_splits, n_splits), _ = runs[0]
    rows = bootstrap_rows(len(y), bootstrap, seed)
    pooled = {m: resampled_ece(p, y, bins)[0].item() for m, p in probs.items()}
    boot = {m: resampled_ece(p, y, bins, rows) for m, p in probs.items()}
    pfn = next((m for m in probs if m.startswith("PFN")), None)
    baselines = [m for m in probs if not m.startswith(NOT_BASELINES)]
    best = min(baselines, key=pooled.get)
    best_split = min(baselines, key=per_split.get)
    out = {
        "data": data,
        "rows": len(y),
        "splits": n_splits,
        "pooled": pooled,
        "pooled_se": {m: float(b.std()) for m, b in boot.items()},
        "per_split": {m: per_split[m] for m in probs},
        "best_baseline": best,
        "best_baseline_per_split": best_split,
        "methods": [m for _, m in runs],
        "seed": seed_splits,
    }
    if pfn is not None:
        diff = boot[pfn] - boot[best]
        out.update(
            pfn=pfn,
            diff=pooled[pfn] - pooled[best],
            diff_se=float(diff.std()),
            p_not_worse=float((diff <= 0).double().mean()),
        )
    return out


def markdown(results: list[dict], bins: int, bootstrap: int) -> str:
    lines = [
        f"ECE with {bins} equal-width bins; per split = the job's mean over splits, pooled = one "
        f"ECE over every split's test rows (± s.e. from {bootstrap} bootstrap resamples of "
        "those rows). Best baseline = the lowest pooled ECE among the rows that are neither "
        "the PFN nor NUTS (the reference).\n",
        "| data (test rows pooled) | method | ECE per split | ECE pooled |",
        "| :--- | :--- | ---: | ---: |",
    ]
    for r in results:
        for m in r["pooled"]:
            lines.append(
                f"| {r['data']} ({r['rows']}) | {m} | {r['per_split'][m]:.4f} | "
                f"{r['pooled'][m]:.4f} ± {r['pooled_se'][m]:.4f} |"
            )
    lines += [
        "",
        "| data | best baseline (pooled) | PFN − best, pooled ECE | bootstrap P(PFN ≤ best) | "
        "best baseline (per split) | PFN − best, per split | NUTS pooled ECE (the posterior "
        "the PFN approximates) |",
        "| :--- | :--- | ---: | ---: | :--- | ---: | ---: |",
    ]
    for r in results:
        if "pfn" not in r:
            continue
        ps = r["per_split"]
        lines.append(
            f"| {r['data']} | {r['best_baseline']} | {r['diff']:+.4f} ± {r['diff_se']:.4f} | "
            f"{r['p_not_worse']:.2f} | {r['best_baseline_per_split']} | "
            f"{ps[r['pfn']] - ps[r['best_baseline_per_split']]:+.4f} | "
            + (f"{r['pooled']['NUTS']:.4f} |" if "NUTS" in r["pooled"] else "— |")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs", nargs="+", required=True, type=Path,
        help="the jobs' --out folders (runs of one data set with other methods are merged)",
    )  # fmt: skip
    p.add_argument("--bins", type=int, default=None, help="ECE bins (default: the run's)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help=f"write {SECTION!r} of RESULTS.md")
    args = p.parse_args(argv)
    by_data: dict[str, list[Path]] = {}
    for folder in args.runs:
        data = json.loads((folder / "compare.json").read_text())["data"]
        by_data.setdefault(data, []).append(folder)
    results = []
    for folders in by_data.values():
        cfg = json.loads((folders[0] / "compare.json").read_text())["config"]
        bins = args.bins or cfg["ece_bins"]
        results.append(score(folders, bins, args.bootstrap, args.seed))
    md = markdown(results, bins, args.bootstrap)
    print(md)
    if args.write:
        cmd = "python benchmarks/classifier_calibration.py --runs " + " ".join(
            f"<{r['data']}>" for r in results
        )
        runs = "; ".join(
            f"`pyrobayes compare --data {r['data']} --splits {r['splits']} --methods {m} "
            f"--seed {r['seed']}`"
            for r in results
            for m in r["methods"]
        )
        write_section(
            SECTION,
            f"{SECTION}\n\nCommand: `{cmd} --write`, on the --out folders of {runs} "
            f"(read from their compare.json).\n\n{md}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
