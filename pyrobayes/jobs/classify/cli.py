"""Command line of ``pyrobayes classify digits|text``."""

from __future__ import annotations

import argparse
import sys

from pyrobayes.options import Option

__all__ = ["ClassifyDataset", "add_arguments", "run"]


class ClassifyDataset(Option):
    """Which pipeline ``pyrobayes classify`` runs."""

    DIGITS = "digits"
    TEXT = "text"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pyrobayes classify digits|text``."""
    parser.add_argument(
        "dataset",
        choices=[t.value for t in ClassifyDataset],
        help="digits (MLP) or text (MiniLM BERT)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="deterministic training epochs (digits 30, text 5)"
    )
    parser.add_argument(
        "--svi-epochs", type=int, default=None, help="SVI epochs (digits 300, text 20)"
    )
    parser.add_argument(
        "--num-samples", type=int, default=None, help="posterior draws (digits 100, text 30)"
    )
    parser.add_argument("--delta", type=float, default=0.05, help="MOPED relative initial scale")
    parser.add_argument(
        "--prior-scale",
        type=float,
        default=None,
        help="std of the prior around the pretrained weights (digits 5.0, text 0.02)",
    )
    parser.add_argument(
        "--bayes", default="head+last", help="text: Bayesian part: head, head+last, last:K, all"
    )
    parser.add_argument(
        "--task", default="sentiment", help="text: 'sentiment' (shipped) or a GLUE task name"
    )
    parser.add_argument(
        "--model", default=None, help="text: model folder or Hub name (default: shipped MiniLM-L6)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="batch size (digits 64, text 16)"
    )
    parser.add_argument(
        "--out", default="pyrobayes-out", help="folder for tables and reliability diagrams"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--smoke", action="store_true", help="tiny fast configuration (seconds)")


def run(args: argparse.Namespace) -> int:
    """Run ``pyrobayes classify`` from parsed arguments; returns the exit code."""
    from pyrobayes.device import check_device

    check_device(args.device, allow_auto=True)
    common = {
        "seed": args.seed,
        "out": args.out,
        "progress": not args.no_progress,
        "smoke": args.smoke,
        "device": args.device,
        "delta": args.delta,
    }
    picked = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "svi_epochs": args.svi_epochs,
            "num_samples": args.num_samples,
            "prior_scale": args.prior_scale,
            "batch_size": args.batch_size,
        }.items()
        if v is not None
    }
    from pyrobayes.data import DataUnavailableError

    try:
        if args.dataset == ClassifyDataset.DIGITS.value:
            from pyrobayes.jobs.classify.digits import run_digits

            run_digits(**common, **picked)
        else:
            from pyrobayes.jobs.classify.text import run_text

            run_text(task=args.task, model_name=args.model, bayes=args.bayes, **common, **picked)
    except DataUnavailableError as err:
        print(f"pyrobayes classify: error: {err}", file=sys.stderr)
        return 2
    return 0
