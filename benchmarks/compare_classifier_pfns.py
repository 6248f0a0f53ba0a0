"""Two classification PFN checkpoints on the same fresh prior data sets (paired held-out NLL).

Data sets: 120 per prior, data set ``i`` with d in {2, 5, 10, 20} (fastest), C in {2, 5},
n in {30, 100, 500} training rows and 100 queries, drawn by
:meth:`pyrobayes.pfn.TabularBNNClassifierPrior.sample_with_latents` after
``torch.manual_seed(10_000 + i)``; priors: the shipped one (latent logit scale tau ~
LogNormal(0, 1)) and tau = 1. Prints each PFN's mean NLL per query and the paired difference
(B - A, mean ± s.e. over data sets).

Reproduce the fine-tune check of the model card (A: the tau = 1 PFN shipped before session e,
taken from git; B: the shipped one)::

    python benchmarks/compare_classifier_pfns.py --a-rev 8f1d43d
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pyrobayes
from pyrobayes.pfn import TabularBNNClassifierPrior, load_checkpoint, pretrained  # noqa: E402

NAME = "bnn-tabular-classifier"


def checkpoint_at(rev: str, folder: Path):
    """The shipped classifier PFN as of git revision ``rev``."""
    for ext in ("json", "safetensors"):
        blob = subprocess.run(
            ["git", "show", f"{rev}:pyrobayes/pfn/checkpoints/{NAME}.{ext}"],
            check=True, capture_output=True, cwd=Path(__file__).resolve().parent,
        ).stdout  # fmt: skip
        (folder / f"{NAME}.{ext}").write_bytes(blob)
    return load_checkpoint(folder / NAME)


def nll(pfn, x, y, n: int, c: int) -> float:
    ppd = pfn.predict(x[:n], y[:n], x[n:], num_classes=c)
    return float(-ppd.probs.clamp_min(1e-300).log().gather(1, y[n:, None]).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default=None, help="checkpoint A (path); or --a-rev")
    p.add_argument("--a-rev", default=None, help="checkpoint A: the shipped one at this git rev")
    p.add_argument("--b", default=None, help=f"checkpoint B (path; default the shipped {NAME})")
    p.add_argument("--sets", type=int, default=120)
    args = p.parse_args(argv)
    if (args.a is None) == (args.a_rev is None):
        p.error("give exactly one of --a PATH and --a-rev REV")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        a = load_checkpoint(args.a) if args.a else checkpoint_at(args.a_rev, Path(tmp))
    b = load_checkpoint(args.b) if args.b else pretrained(NAME)
    for label, spec in [("tau ~ LogNormal(0, 1)", "default"), ("tau = 1", None)]:
        prior = TabularBNNClassifierPrior(max_features=20, max_classes=5, logit_scale_prior=spec)
        rows = []
        for i in range(args.sets):
            d, c, n = (2, 5, 10, 20)[i % 4], (2, 5)[(i // 4) % 2], (30, 100, 500)[(i // 8) % 3]
            torch.manual_seed(10_000 + i)
            x, y, _ = prior.sample_with_latents(1, n + 100, d, c)
            x, y = x[0], y[0].long()
            rows.append((nll(a, x, y, n, c), nll(b, x, y, n, c)))
        diff = [rb - ra for ra, rb in rows]
        se = statistics.stdev(diff) / len(diff) ** 0.5
        print(f"{label}: A {statistics.mean(r[0] for r in rows):.4f}, B "
              f"{statistics.mean(r[1] for r in rows):.4f}, B - A {statistics.mean(diff):+.4f} "
              f"± {se:.4f} ({len(diff)} data sets)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
