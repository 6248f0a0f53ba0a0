"""Probe a bnn-tabular checkpoint: mean held-out NLL (raw units) on fresh prior datasets
against a N(train mean, train std) baseline.

Usage: python benchmarks/probe_pfn_tabular.py CKPT [n_sets]
"""

import sys

import torch

from pyrobayes.pfn import TabularBNNPrior, load_checkpoint


def main() -> None:
    torch.set_num_threads(1)
    pfn = load_checkpoint(sys.argv[1])
    nsets = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    torch.manual_seed(123)
    prior = TabularBNNPrior()
    for n in (10, 50, 200, 500):
        a = b = 0.0
        for _ in range(nsets):
            x, y = prior.sample(1, n + 50)
            x, y = x[0], 3 * y[0] + 7  # raw units: predict must standardise itself
            p = pfn.predict(x[:n], y[:n], x[n:])
            a += -p.log_prob(y[n:]).mean().item()
            base = torch.distributions.Normal(y[:n].mean(), y[:n].std())
            b += -base.log_prob(y[n:]).mean().item()
        print(
            f"n={n:4d}  PFN NLL {a / nsets:.3f}  baseline N(mean,std) {b / nsets:.3f}", flush=True
        )


if __name__ == "__main__":
    main()
