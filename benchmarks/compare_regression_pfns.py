"""Two regression PFN checkpoints on the same fresh prior data sets and real tables.

For each of two priors (the shipped ``bnn-tabular`` one and ``TabularBNNPrior`` with noise
std ~ ``LogNormal(--noise-prior)``), ``--sets`` data sets of 300 rows (200 training, 100
queries) drawn one after another after ``torch.manual_seed(123)``: each PFN's held-out NLL
per query and the paired difference B − A (mean ± s.e.). With ``--data-root``, also the
first ``--splits`` standard splits of UCI tables: each PFN's test NLL (the UCI job's form:
the mixture of 8 random 512-row contexts, ``pfn_subset_ppd``, seed = split) and its
``pfn_self_check`` coverage on the training rows (min-max over splits). It trains nothing.

Reproduce RESULTS "A wider noise prior does not bring yacht into the regression PFN's prior"
(B: the 3 000-step fine-tune of the command given there, written to ``WIDE``)::

    python benchmarks/compare_regression_pfns.py --b WIDE --noise-prior=-2.302585,1.2 \\
        --data-root ../shared/uci
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pyrobayes
from pyrobayes.jobs.tabular_plan import pfn_subset_ppd  # noqa: E402
from pyrobayes.models.tabular import noise_prior_from  # noqa: E402
from pyrobayes.pfn import (  # noqa: E402
    TabularBNNPrior,
    load_checkpoint,
    pfn_self_check,
    pretrained,
)

UCI = ("yacht", "energy", "wine-quality-red", "power-plant")


def prior_rows(a, b, prior: TabularBNNPrior, sets: int) -> tuple[list[float], list[float]]:
    """Held-out NLL per query of ``a`` and ``b`` on ``sets`` data sets from ``prior``."""
    torch.manual_seed(123)
    out: tuple[list[float], list[float]] = ([], [])
    for _ in range(sets):
        x, y = prior.sample(1, 300)
        for rows, pfn in zip(out, (a, b)):
            ppd = pfn.predict(x[0, :200], y[0, :200], x[0, 200:])
            rows.append(float(-ppd.log_prob(y[0, 200:]).mean()))
    return out


def uci_row(a, b, name: str, root: str, splits: int) -> str:
    """Test NLL and self-check coverage of both PFNs on the first ``splits`` splits."""
    from pyrobayes.data.uci import load_uci

    d = load_uci(f"uci:{name}", root=root)
    cells = []
    for pfn in (a, b):
        nlls, covs = [], []
        for k in range(splits):
            tr, te = d.train_index[k], d.test_index[k]
            xt, yt = d.x[tr].float(), d.y[tr].float()
            ppd = pfn_subset_ppd(pfn, xt, yt, d.x[te].float(), subsets=8, seed=k)
            nlls.append(float(-ppd.log_prob(d.y[te].float()).mean()))
            covs.append(pfn_self_check(pfn, d.x[tr], d.y[tr], seed=k).coverage_50)
        cells.append(f"{statistics.mean(nlls):.3f} (50% cov. {min(covs):.2f}-{max(covs):.2f})")
    return f"{name}: A {cells[0]}, B {cells[1]}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default=None, help="checkpoint A (path; default the shipped bnn-tabular)")
    p.add_argument("--b", required=True, help="checkpoint B (path)")
    p.add_argument("--noise-prior", default="-2.302585,1.2", metavar="LOC,SCALE",
                   help="the second prior's noise std ~ LogNormal(LOC, SCALE)")  # fmt: skip
    p.add_argument("--sets", type=int, default=60)
    p.add_argument("--data-root", default=None, help="UCI folder; without it, priors only")
    p.add_argument("--splits", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # out-of-range warnings on real tables: measured here
    a = load_checkpoint(args.a) if args.a else pretrained("bnn-tabular")
    b = load_checkpoint(args.b)
    wide = TabularBNNPrior(noise_prior=noise_prior_from(args.noise_prior))
    for label, prior in (("shipped prior", TabularBNNPrior()), (f"noise {args.noise_prior}", wide)):
        ra, rb = prior_rows(a, b, prior, args.sets)
        diff = [y - x for x, y in zip(ra, rb)]
        se = statistics.stdev(diff) / len(diff) ** 0.5
        print(f"{label}: B - A NLL {statistics.mean(diff):+.4f} ± {se:.4f} ({len(diff)} data sets)")
    for name in UCI if args.data_root else ():
        print(uci_row(a, b, name, args.data_root, args.splits), flush=True)


if __name__ == "__main__":
    main()
