"""The ``pyrobayes`` command.

``pyrobayes compare``            the main job: SVI vs PFN vs NUTS/exact GP on 1-D regression;
                                 ``--data`` real tables (regression, or a label column:
                                 classification, ``--task`` to force it)
``pyrobayes classify digits``    Bayesian MLP on digits: calibration and OOD detection
``pyrobayes classify text``      Bayesian head + last layer of a pretrained MiniLM BERT
``pyrobayes pfn train``          train a PFN on a prior over data sets
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pyrobayes.device import check_device

__all__ = ["main", "build_parser", "check_device"]

# subcommand -> module exposing add_arguments(parser) and run(args) -> int
_COMMANDS = {
    "compare": (
        "pyrobayes.jobs.demo_1d",
        "compare PPDs of SVI, a PFN and a reference (1-D from the prior, or real data: --data)",
    ),
    "classify": (
        "pyrobayes.jobs.classify",
        "Bayesian classifiers from pretrained nets (digits, text)",
    ),
}
_PFN_COMMANDS = {"train": ("pyrobayes.pfn.train", "train a PFN on a prior over data sets")}


def _add(sub, name: str, module: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    importlib.import_module(module).add_arguments(p)
    p.set_defaults(_module=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrobayes", description="Bayesian deep learning with Pyro: SVI, PFNs, references."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        _add(sub, name, module, help_text)
    pfn = sub.add_parser("pfn", help="prior-data fitted networks")
    pfn_sub = pfn.add_subparsers(dest="pfn_command", required=True)
    for name, (module, help_text) in _PFN_COMMANDS.items():
        _add(pfn_sub, name, module, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", False):
        import datasets

        datasets.disable_progress_bars()  # its "Generating split" bars too
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, ConnectionError) as exc:
        # Bad input is the user's to fix: one clear line, no traceback.
        command = " ".join(filter(None, (args.command, getattr(args, "pfn_command", None))))
        print(f"pyrobayes {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
