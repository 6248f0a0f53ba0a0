"""How informative the tabular classification prior's features are about the label, by
weight scale: the numbers behind ``TABULAR_CLASSIFICATION["weight_scale"]``.

For each (scale, d, C): 200 prior data sets of 200 rows (features of ``TabularBNNPrior``),
one weight draw each; reports the within-data-set std of the logits, the expected
conditional label entropy H(y | x, W), the entropy of each data set's label marginal
H(y | W) (their difference: what the features tell about the label), and the Bayes accuracy
E[max_k p(k | x, W)].

    python benchmarks/probe_classifier_prior.py [--scales 1.8 3.0] [--sets 200]
"""

from __future__ import annotations

import argparse

import torch

import pyrobayes.models.tabular as tab
from pyrobayes.infer import forward_draws, sample_prior
from pyrobayes.pfn import TabularBNNPrior


def probe(scale: float, d: int, num_classes: int, sets: int, rows: int) -> dict[str, float]:
    """The statistics of one (scale, d, C) cell (see the module docstring)."""
    old = tab.TABULAR_CLASSIFICATION["weight_scale"]
    tab.TABULAR_CLASSIFICATION["weight_scale"] = scale
    try:
        model = tab.tabular_classifier_model(d, num_classes)
    finally:
        tab.TABULAR_CLASSIFICATION["weight_scale"] = old
    x = TabularBNNPrior(max_features=d).sample_features(sets, rows, d)
    logits = forward_draws(model, sample_prior(model, sets), x, inputs_batched=True)
    p = logits.softmax(-1)
    marginal = p.mean(1)
    return {
        "within_sd": float(logits.std(1).mean()),
        "h_cond": float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()),
        "h_marg": float(-(marginal * marginal.log()).sum(-1).mean()),
        "bayes_acc": float(p.max(-1).values.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.8, 3.0])
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        "| weight scale | d | C | logit sd within a set | H(y|x,W) | H(y|W) | log C | Bayes accuracy |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scale in args.scales:
        for d in (2, 10):
            for c in (2, 5, 10):
                r = probe(scale, d, c, args.sets, args.rows)
                print(
                    f"| {scale} | {d} | {c} | {r['within_sd']:.2f} | {r['h_cond']:.3f} | "
                    f"{r['h_marg']:.3f} | {torch.tensor(float(c)).log():.3f} | {r['bayes_acc']:.3f} |"
                )


if __name__ == "__main__":
    main()
