"""The regression PFN's self-check on real tables, next to how its row actually scored.

``pyrobayes.pfn.pfn_self_check`` predicts held-out folds of a split's *training* rows and
reads the coverage of the PFN's central 50% intervals (0.5 for data from its prior). This
script runs it on the training rows of the first ``--splits`` standard splits of each UCI
set (and of the built-in diabetes and motorcycle sets, seeded 90/10 splits as in
``pyrobayes compare --data``), and sets the verdict beside the PFN row's test NLL minus the
best row's, read from ``benchmarks/uci_results.json`` (the UCI table's cache; nothing is
refitted). A check that fails where the PFN scores far from the best row, and passes where it
is close, is a warning a user can trust without a test split.

Reproduce (writes its section of benchmarks/RESULTS.md)::

    python benchmarks/pfn_self_check.py --data-root ../shared/uci --splits 5
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _results import write_section  # noqa: E402

from pyrobayes.data.tabular import load_tabular  # noqa: E402
from pyrobayes.data.uci import load_uci  # noqa: E402
from pyrobayes.pfn import pfn_self_check, pretrained  # noqa: E402

SECTION = "## pfn_self_check.py"
UCI = ("yacht", "energy", "wine-quality-red", "power-plant", "kin8nm", "naval-propulsion-plant")
BUILTIN = ("diabetes", "motorcycle")
CACHE = Path(__file__).with_name("uci_results.json")


def pfn_gap(dataset: str, splits: int, data_root: str | None) -> str:
    """Mean over the first ``splits`` splits of (PFN NLL − MLP NLL) in the UCI cache, both
    rows of today's recipes (``bench_uci``'s fingerprints), on the splits where both ran."""
    import types

    import bench_uci

    if not CACHE.exists():
        return "—"
    args = types.SimpleNamespace(data_root=data_root, overrides={}, progress=False)
    fp = {
        m: bench_uci.method_fingerprint(m, bench_uci._config(dataset, 0, [m], args, "unused"))
        for m in ("pfn", "mlp")
    }
    entries = json.loads(CACHE.read_text())["entries"]
    gaps = []
    for k in range(splits):
        pfn_e = entries.get(bench_uci.entry_key(dataset, k, "pfn", fp["pfn"]))
        mlp_e = entries.get(bench_uci.entry_key(dataset, k, "mlp", fp["mlp"]))
        if pfn_e and mlp_e:
            gaps.append(pfn_e["nll"] - mlp_e["nll"])
    return f"{sum(gaps) / len(gaps):+.3f} ({len(gaps)})" if gaps else "—"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="folder of the UCI sets")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pfn = pretrained("bnn-tabular")
    rows = []
    sets = [(f"uci:{n}", n) for n in UCI] + [(n, n) for n in BUILTIN]
    for data, name in sets:
        if data.startswith("uci:"):
            try:
                tab = load_uci(data, root=args.data_root)
            except FileNotFoundError as err:
                print(f"{name}: skipped ({err})", file=sys.stderr)
                continue
            parts = [tab.train_index[k] for k in range(min(args.splits, tab.num_splits))]
            x, y = tab.x, tab.y
        else:
            tab = load_tabular(name)
            x, y = torch.as_tensor(tab.x), torch.as_tensor(tab.y)
            g = torch.Generator().manual_seed(0)
            n_train = len(y) - round(0.1 * len(y))
            parts = [torch.randperm(len(y), generator=g)[:n_train] for _ in range(args.splits)]
        checks = []
        for k, train in enumerate(parts):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # out-of-range warnings: the check's subject
                checks.append(pfn_self_check(pfn, x[train], y[train], seed=k))
        cov = [c.coverage_50 for c in checks]
        rows.append(
            f"| {name} | {len(parts[0])} x {x.shape[1] if x.dim() > 1 else 1} | "
            f"{min(cov):.3f}-{max(cov):.3f} | {sum(c.coverage_90 for c in checks) / len(checks):.3f} | "
            f"{checks[0].tolerance:.3f} | {sum(not c.ok for c in checks)} of {len(checks)} | "
            f"{pfn_gap(name, args.splits, args.data_root) if data.startswith('uci:') else '—'} |"
        )
        print(rows[-1], flush=True)
    md = (
        f"Each split's training rows only, 5 folds (`pfn_self_check`, PFN `bnn-tabular`); "
        f"first {args.splits} splits (UCI: the standard ones; diabetes, motorcycle: seeded "
        "random 90/10). The last column is the PFN row's test NLL minus the MLP's on the "
        "same splits, from the UCI table's cache (how the PFN actually did; never used by the "
        "check).\n\n"
        "| data | training rows x features | 50% coverage (min-max over splits) | 90% coverage "
        "(mean) | tolerance | failed | PFN NLL − MLP NLL (splits) |\n"
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n"
    )
    if not args.no_write:
        cmd = (
            f"python benchmarks/pfn_self_check.py --data-root ../shared/uci --splits {args.splits}"
        )
        write_section(SECTION, f"{SECTION}\n\nCommand: `{cmd}`\n\n{md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
