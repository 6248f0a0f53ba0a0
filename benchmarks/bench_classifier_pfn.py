"""The classification PFN against NUTS (and SVI) on the same Bayesian classifier, on fresh
data sets from its prior (issue 22, "Measured").

Data sets: the first ``--max-datasets`` (default 120, five per cell) of a cycle through
the grid ``d in {2, 5, 10, 20}`` x ``C in {2, 5}`` classes x ``n in {30, 100, 500}``
training rows (d fastest, then C, then n: any 24 consecutive data sets cover every cell),
each drawn by :meth:`pyrobayes.pfn.TabularBNNClassifierPrior.sample_with_latents` (the
``tabular_classifier_model(d, C)`` classifier, labels from its softmax) with ``--n-test``
held-out queries from the same latent function; data set ``i`` is regenerated from seed
``seed + i``. Per data set, held-out NLL per point (nats) and seconds:

* PFN (``--pfn-checkpoint PATH``, default ``pretrained("bnn-tabular-classifier")``):
  ``predict(x_train, y_train, x_test, num_classes=C)`` with ``--pfn-permutations`` class
  relabellings (default ``predict``'s, 2, as the real-data job), the median of 3 calls
  after a warm-up call, one thread.
* NUTS (:func:`pyrobayes.infer.nuts.nuts_ppd`, ``--nuts-chains`` chains, default 4, its
  default backend: NumPyro where installed) on the same model, every weight sampled. The
  chains start at the weights that generated the data set plus 0.1 prior std of jitter each
  (in ``p(theta, D) = p(D) p(theta | D)`` those weights are an exact posterior draw). A
  reference counts as converged with rank-normalised split R-hat <= 1.05 and bulk and tail
  ESS >= 200 (``NUTSInfo``: the logits at every query and the training log-likelihood, over
  chains, at least 2 chains); the gaps are reported on converged references only.
  ``--nuts-retry K1 K2 ...`` reruns one that did not converge with K1 x the warm-up and
  draws (and ``--nuts-retry-depth``), then K2 x, ...; the last run replaces it. The ladder
  reads the diagnostics alone, never the PFN or the test labels.
* SVI: a MOPED guide (``delta`` 0.1) around an early-stopped MLP of the same shape
  (``fit_mlp_classifier``), ``--svi-steps`` full-batch steps, ``--svi-samples`` draws, as
  the real-data job does; its time includes the MLP.
* Baselines: label frequencies of the training rows (add-one smoothed, x ignored), and the
  oracle (the generating weights' own softmax: no PPD can beat it in expectation).

NUTS and SVI do not depend on the PFN: their results are cached in ``--cache`` (JSON, one
entry per data set holding one result per NUTS/SVI setting, written after every run), so
the run is resumable (kill it and start it again) and a new PFN checkpoint is benchmarked
in seconds (``--cached-only``: no new NUTS/SVI, the table from what the cache holds).

Targets (issue 22): PFN - converged-NUTS held-out NLL <= 0.03 nats/point; PFN >= 1,000x
faster than NUTS per data set; SVI's gap to NUTS stated.

Reproduce::

    python benchmarks/bench_classifier_pfn.py --pfn-checkpoint OUT/bnn-tabular-classifier \\
        --nuts-retry 2 --nuts-retry-depth 10          # the RESULTS.md run (hours, resumable)
    python benchmarks/bench_classifier_pfn.py --cached-only   # table from the cache only
    python benchmarks/bench_classifier_pfn.py --quick --no-write  # 4 tiny data sets
"""

from __future__ import annotations

import os

# one CPU thread for XLA (the NumPyro backend) and torch: set before jax/torch are imported
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, mixture_nll_and_mc_se, write_section  # noqa: E402

from pyrobayes.pfn.model import DEFAULT_CLASS_PERMUTATIONS  # noqa: E402

SECTION = "## bench_classifier_pfn.py"
DS = (2, 5, 10, 20)
CS = (2, 5)
NS = (30, 100, 500)
RHAT_MAX = 1.05
ESS_MIN = 200  # bulk and tail, over all chains (as bench_tabular.py)
DEFAULT_CACHE = Path(__file__).with_name("classifier_pfn_cache.json")
PFN_NAME = "bnn-tabular-classifier"


def cell(i: int) -> tuple[int, int, int]:
    """Data set ``i``'s ``(d, n, C)``: d cycles fastest, then C, then n (24 per cycle)."""
    return DS[i % 4], NS[(i // 8) % 3], CS[(i // 4) % 2]


def logit_scale_prior(args: argparse.Namespace):
    """The prior's latent logit scale (``--logit-scale-prior``: default the shipped one,
    ``none``: tau = 1, or ``LOC,SCALE``), or ``None``."""
    from pyrobayes.models.tabular import logit_scale_prior_from

    return logit_scale_prior_from(getattr(args, "logit_scale_prior", "default"))


def dataset(i: int, seed: int, n_test: int, tau_prior=None):
    """Data set ``i``: its model, ``(x_train, y_train, x_test, y_test)`` (labels as long) and
    the generating weights (one row of the batch; with ``tau_prior``, a latent logit scale
    among them)."""
    from pyrobayes.pfn import TabularBNNClassifierPrior

    d, n, c = cell(i)
    prior = TabularBNNClassifierPrior(
        max_features=max(DS), max_classes=max(CS), logit_scale_prior=tau_prior
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + i)
        x, y, latents = prior.sample_with_latents(1, n + n_test, d, c)
    x, y = x[0], y[0].long()
    latents = {k: v[0] for k, v in latents.items()}
    return prior.model(d, c), (x[:n], y[:n], x[n:], y[n:]), latents


def label_log_probs(probs_per_draw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[S, m]`` log-probability of each held-out label under each draw (float64; a
    probability that underflowed to 0 counts as 1e-300, not -inf)."""
    p = probs_per_draw.double().gather(-1, y.view(1, -1, 1).expand(len(probs_per_draw), -1, 1))
    return p[..., 0].clamp_min(1e-300).log()


def converged(r_hat: float, ess_bulk: float, ess_tail: float, chains: int) -> bool:
    """``summarize(..., rhat_max=RHAT_MAX, ess_min=ESS_MIN).converged`` from the worst values
    (a NaN R-hat fails)."""
    return bool(chains >= 2 and r_hat <= RHAT_MAX and min(ess_bulk, ess_tail) >= ESS_MIN)


def is_converged(r: dict) -> bool:
    return converged(r["max_r_hat"], r["min_ess"], r["min_ess_tail"], r["num_chains"])


# ----------------------------------------------------------------- NUTS and SVI (cached)


def run_nuts(i: int, args: argparse.Namespace, scale: int, depth: int) -> dict:
    """NUTS on data set ``i`` with ``scale`` x the warm-up and draws, max tree depth ``depth``."""
    from pyrobayes.infer.nuts import nuts_ppd

    model, (xt, yt, xq, yq), latents = dataset(i, args.seed, args.n_test, logit_scale_prior(args))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the R-hat warning: R-hat is in the table
        ppd, info = nuts_ppd(
            model,
            xt,
            yt,
            xq,
            num_warmup=scale * args.nuts_warmup,
            num_samples=scale * args.nuts_samples,
            max_tree_depth=depth,
            num_chains=args.nuts_chains,
            progress=False,
            seed=args.seed + i,
            return_mcmc=True,
            init=latents,
        )
    seconds = time.perf_counter() - t0
    nll, mc_se = mixture_nll_and_mc_se(label_log_probs(ppd.probs_per_draw, yq))
    return {
        "warmup": scale * args.nuts_warmup,
        "samples": scale * args.nuts_samples,
        "depth": depth,
        "nll": nll,
        "mc_se": mc_se,
        "accuracy": float((ppd.probs.argmax(-1) == yq).double().mean()),
        "max_r_hat": float(info.max_r_hat),
        "min_ess": float(info.min_ess),
        "min_ess_tail": float(info.min_ess_tail),
        "num_chains": info.num_chains,
        "converged": converged(info.max_r_hat, info.min_ess, info.min_ess_tail, info.num_chains),
        "backend": str(info.backend),
        "num_grads": info.num_grads,
        "seconds": seconds,
    }


def run_svi(i: int, args: argparse.Namespace) -> dict:
    """SVI (MOPED around an early-stopped MLP) on data set ``i``, as the real-data job."""
    import pyro

    from pyrobayes.guides import MOPEDNormal
    from pyrobayes.infer import PosteriorPredictive, fit
    from pyrobayes.jobs.tabular_classification import fit_mlp_classifier
    from pyrobayes.models import tabular_classifier_model

    _, (xt, yt, xq, yq), _ = dataset(i, args.seed, args.n_test, logit_scale_prior(args))
    d, _, c = cell(i)
    seed = args.seed + i
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    t0 = time.perf_counter()
    mlp, _ = fit_mlp_classifier(xt, yt, c, args.mlp_steps, seed)
    model = tabular_classifier_model(
        d, c, net=copy.deepcopy(mlp), logit_scale_prior=logit_scale_prior(args)
    )
    guide = MOPEDNormal(model, delta=args.svi_delta)
    fit(model, guide, (xt, yt), epochs=args.svi_steps, batch_size=len(xt), lr=1e-3,
        progress=False, seed=seed)  # fmt: skip
    ppd = PosteriorPredictive(model, guide, num_samples=args.svi_samples)(xq)
    seconds = time.perf_counter() - t0
    mlp_nll = float(torch.nn.functional.cross_entropy(mlp(xq).detach(), yq))
    return {
        "nll": float(-ppd.log_prob(yq).mean()),
        "accuracy": float((ppd.probs.argmax(-1) == yq).double().mean()),
        "mlp_nll": mlp_nll,
        "seconds": seconds,
    }


def _ds_key(args: argparse.Namespace, i: int) -> str:
    tau = logit_scale_prior(args)  # another prior: other data sets (tau = 1: no suffix)
    suffix = "" if tau is None else f"-tau{float(tau.loc):g},{float(tau.scale):g}"
    return f"seed{args.seed}-i{i}-test{args.n_test}" + suffix


def _nuts_key(args: argparse.Namespace, scale: int, depth: int) -> str:
    return (
        f"nuts-w{scale * args.nuts_warmup}-s{scale * args.nuts_samples}-depth{depth}"
        f"-chains{args.nuts_chains}"
    )


def _svi_key(args: argparse.Namespace) -> str:
    return f"svi-mlp{args.mlp_steps}-steps{args.svi_steps}-delta{args.svi_delta}-draws{args.svi_samples}"


class Cache:
    """``{data set key: {setting key: result}}`` in a JSON file, rewritten atomically after
    every new result (a killed run keeps every finished one). Each write first merges what
    the file holds then, so runs on disjoint data sets (``--only``) can share one file."""

    def __init__(self, path: str | Path, cached_only: bool):
        self.path, self.cached_only = Path(path), cached_only
        self.data = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, ds: str, key: str, compute) -> dict | None:
        if key not in self.data.get(ds, {}):
            if self.cached_only:
                return None
            result = compute()
            self.data = self._read()  # another run's results since this one started
            self.data.setdefault(ds, {})[key] = result
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        return self.data[ds][key]


def nuts_result(cache: Cache, args: argparse.Namespace, i: int) -> dict | None:
    """Data set ``i``'s reference: the ``args`` budget, then the ``--nuts-retry`` ladder
    where a run did not converge (the last run replaces it; ``retried``)."""
    ds = _ds_key(args, i)
    depth = args.nuts_max_tree_depth
    r = cache.get(ds, _nuts_key(args, 1, depth), lambda: run_nuts(i, args, 1, depth))
    if r is None:
        return None
    _log_nuts(i, r)
    deeper = args.nuts_retry_depth or depth
    for scale in args.nuts_retry:
        if is_converged(r):
            break
        again = cache.get(
            ds, _nuts_key(args, scale, deeper), lambda s=scale: run_nuts(i, args, s, deeper)
        )
        if again is None:  # --cached-only and never run
            return {**r, "not_run": scale}
        r = {**again, "retried": True}
        _log_nuts(i, r)
    return r


def retime(pfn, rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Speed measured in one run (``--retime-nuts``): per data set with a reference, the PFN
    call then NUTS again at the reference's final budget (warm-up, draws, depth), one after
    the other in this process, so both see the same machine load. The rerun only times NUTS:
    the cache and the NLL tables keep the reference that filled it."""
    out = []
    for r in rows:
        nuts = r["nuts"]
        if nuts is None or nuts.get("not_run"):
            continue
        i = r["i"]
        pfn_s = pfn_result(pfn, i, args)["seconds"]
        again = run_nuts(i, args, nuts["warmup"] // args.nuts_warmup, nuts["depth"])
        out.append({"i": i, "d": r["d"], "n": r["n"], "c": r["c"], "pfn_s": pfn_s,
                    "nuts_s": again["seconds"]})  # fmt: skip
        print(f"  retimed #{i}: NUTS {again['seconds']:.1f} s, PFN {1000 * pfn_s:.1f} ms, "
              f"{again['seconds'] / pfn_s:,.0f}x", flush=True)  # fmt: skip
    return out


def retime_table(timed: list[dict]) -> str:
    """The ``--retime-nuts`` section: per n, and overall, total NUTS s over total PFN s."""
    lines = []
    for n in (*NS, None):
        sel = [t for t in timed if n is None or t["n"] == n]
        if not sel:
            continue
        nuts, pfn = sum(t["nuts_s"] for t in sel), sum(t["pfn_s"] for t in sel)
        lines.append([str(n) if n else "all", str(len(sel)), f"{nuts / len(sel):.1f}",
                      f"{1000 * pfn / len(sel):.1f}", f"{nuts / pfn:,.0f}"])  # fmt: skip
    header = ["n", "data sets", "NUTS s (mean)", "PFN ms (mean)", "NUTS s / PFN s"]
    return markdown_table(header, lines)


def _log_nuts(i: int, r: dict) -> None:
    d, n, c = cell(i)
    print(
        f"  NUTS #{i} (d={d}, n={n}, C={c}, {r['warmup']}/{r['samples']}, depth {r['depth']}): "
        f"NLL {r['nll']:.4f} ± {r['mc_se']:.4f}, R-hat {r['max_r_hat']:.3f}, ESS bulk "
        f"{r['min_ess']:.0f} tail {r['min_ess_tail']:.0f}, "
        f"{'converged' if is_converged(r) else 'NOT converged'}, {r['seconds']:.0f} s",
        flush=True,
    )


# ----------------------------------------------------------------- the PFN (not cached)


def load_pfn(path: str | None):
    from pyrobayes.pfn import load_checkpoint, pretrained

    return load_checkpoint(path) if path else pretrained(PFN_NAME)


def pfn_result(pfn, i: int, args: argparse.Namespace) -> dict:
    """PFN NLL and seconds on data set ``i``, with the label-frequency and oracle NLLs."""
    from pyrobayes.infer import forward_draws

    model, (xt, yt, xq, yq), latents = dataset(i, args.seed, args.n_test, logit_scale_prior(args))
    c = cell(i)[2]
    kw = {"num_classes": c, "class_permutations": args.pfn_permutations}
    pfn.predict(xt, yt, xq[:8], **kw)  # warm-up: one-off allocations
    times = []
    for _ in range(3):  # the median of 3: one call of ~10-100 ms is at the mercy of the load
        t0 = time.perf_counter()
        ppd = pfn.predict(xt, yt, xq, **kw)
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[1]
    freq = (torch.bincount(yt, minlength=c).double() + 1) / (len(yt) + c)
    tau = latents.pop(model.likelihood.scale_site, None) if model.likelihood.latent_sites else None
    with torch.no_grad():
        logits = forward_draws(model, {k: v[None] for k, v in latents.items()}, xq)[0]
    logits = logits if tau is None else tau * logits
    oracle = float(torch.nn.functional.cross_entropy(logits.double(), yq))
    return {
        "nll": float(label_log_probs(ppd.probs_per_draw, yq).neg().mean()),
        "accuracy": float((ppd.probs.argmax(-1) == yq).double().mean()),
        "sum_to_one": float((ppd.probs.sum(-1) - 1).abs().max()),
        "frequency_nll": float(-freq[yq].log().mean()),
        "oracle_nll": oracle,
        "seconds": seconds,
    }


# ----------------------------------------------------------------- tables


def _mean_se(v: list[float]) -> tuple[float, float]:
    if not v:
        return float("nan"), float("nan")
    t = torch.tensor(v, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(t.mean()), se


def _pm(v: list[float], signed: bool = False) -> str:
    m, se = _mean_se(v)
    if math.isnan(m):
        return "–"
    if len(v) == 1:
        return f"{m:+.3f}" if signed else f"{m:.3f}"
    return f"{m:+.3f} ± {se:.3f}" if signed else f"{m:.3f} ± {se:.3f}"


def _summary_row(label: list, rows: list[dict]) -> list:
    """One table row over ``rows`` (data sets): gaps on converged NUTS references only."""
    ref = [r for r in rows if r["nuts"] is not None]
    ok = [r for r in ref if is_converged(r["nuts"])]
    svi_ok = [r for r in ok if r["svi"] is not None]
    t_pfn = sum(r["pfn"]["seconds"] for r in ref)
    ratio = sum(r["nuts"]["seconds"] for r in ref) / t_pfn if ref and t_pfn > 0 else float("nan")
    return [
        *label,
        len(rows),
        f"{len(ok)}/{len(ref)}",
        _pm([r["pfn"]["nll"] - r["nuts"]["nll"] for r in ok], True),
        _pm([r["svi"]["nll"] - r["nuts"]["nll"] for r in svi_ok], True),
        _pm([r["pfn"]["nll"] for r in rows]),
        _pm([r["nuts"]["nll"] for r in ok]),
        _pm([r["pfn"]["frequency_nll"] for r in rows]),
        _pm([r["pfn"]["oracle_nll"] for r in rows]),
        f"{ratio:,.0f}" if ratio == ratio else "–",
        f"{1e3 * sum(r['pfn']['seconds'] for r in rows) / len(rows):.0f}",
        f"{sum(r['nuts']['seconds'] for r in ref) / max(len(ref), 1):.0f}",
        f"{sum(r['svi']['seconds'] for r in rows if r['svi']) / max(1, sum(1 for r in rows if r['svi'])):.0f}",
    ]


HEADER = ["data sets", "NUTS converged", "PFN − NUTS", "SVI − NUTS", "PFN NLL",
          "NUTS NLL", "label-frequency NLL", "oracle NLL", "NUTS s / PFN s",
          "PFN ms", "NUTS s", "SVI s"]  # fmt: skip


def cell_table(rows: list[dict]) -> str:
    """Per (d, n, C) cell, then per d, then overall (module docstring; NLL nats/point)."""
    out = []
    for n in NS:
        for c in CS:
            for d in DS:
                sub = [r for r in rows if (r["d"], r["n"], r["c"]) == (d, n, c)]
                if sub:
                    out.append(_summary_row([d, n, c], sub))
    for d in DS:
        sub = [r for r in rows if r["d"] == d]
        if sub:
            out.append(_summary_row([d, "all", "all"], sub))
    out.append(_summary_row(["**all**", "all", "all"], rows))
    return markdown_table(["d", "n", "C", *HEADER], out)


def set_table(rows: list[dict]) -> str:
    """One line per data set with a NUTS reference."""
    out = []
    for r in rows:
        nu, s = r["nuts"], r["svi"]
        if nu is None:
            continue
        conv = ("yes" if is_converged(nu) else "**no**") + (
            f" ({nu['warmup']}/{nu['samples']}, depth {nu['depth']})" if nu.get("retried") else ""
        )
        out.append([
            r["i"], r["d"], r["n"], r["c"], f"{nu['nll']:.4f} ± {nu['mc_se']:.4f}",
            f"{r['pfn']['nll']:.4f}", f"{s['nll']:.4f}" if s else "–",
            f"{r['pfn']['oracle_nll']:.4f}", f"{r['pfn']['nll'] - nu['nll']:+.4f}",
            f"{nu['max_r_hat']:.3f}", f"{nu['min_ess']:.0f}", f"{nu['min_ess_tail']:.0f}", conv,
            f"{nu['seconds']:.0f}", f"{nu['seconds'] / r['pfn']['seconds']:,.0f}",
        ])  # fmt: skip
    header = ["#", "d", "n", "C", "NUTS NLL ± MC s.e.", "PFN NLL", "SVI NLL", "oracle NLL",
              "PFN − NUTS", "R-hat", "bulk ESS", "tail ESS", "converged", "NUTS s",
              "NUTS s / PFN s"]  # fmt: skip
    return markdown_table(header, out)


def headline(rows: list[dict]) -> dict:
    ref = [r for r in rows if r["nuts"] is not None]
    ok = [r for r in ref if is_converged(r["nuts"])]
    t_pfn = sum(r["pfn"]["seconds"] for r in ref)
    return {
        "n_ref": len(ref),
        "n_converged": len(ok),
        "n_retried": sum(bool(r["nuts"].get("retried")) for r in ref),
        "pfn_gap": _mean_se([r["pfn"]["nll"] - r["nuts"]["nll"] for r in ok]),
        "pfn_gap_all": _mean_se([r["pfn"]["nll"] - r["nuts"]["nll"] for r in ref]),
        "svi_gap": _mean_se([r["svi"]["nll"] - r["nuts"]["nll"] for r in ok if r["svi"]]),
        "speedup": sum(r["nuts"]["seconds"] for r in ref) / t_pfn if t_pfn else float("nan"),
        "max_sum_error": max((r["pfn"]["sum_to_one"] for r in rows), default=0.0),
    }


def report(args: argparse.Namespace, rows: list[dict], checkpoint_note: str) -> str:
    h = headline(rows)
    met = "met" if h["pfn_gap"][0] <= 0.03 else "NOT met"
    fast = "met" if h["speedup"] >= 1000 else "NOT met"
    frac = h["n_converged"] / h["n_ref"] if h["n_ref"] else float("nan")
    retry = (
        f" `--nuts-retry {' '.join(map(str, args.nuts_retry))}`: {h['n_retried']} references "
        "that had not converged were rerun with more warm-up and draws (max tree depth "
        f"{args.nuts_retry_depth or args.nuts_max_tree_depth}); the last run replaces them."
        if args.nuts_retry
        else ""
    )
    return f"""{SECTION}

`{command_line(args)}` ({len(rows)} prior data sets, {args.n_test} held-out queries each
from the same latent function; grid d {DS} x n {NS} x C {CS}). NUTS {args.nuts_warmup}/{args.nuts_samples}
per chain, max tree depth {args.nuts_max_tree_depth}, {args.nuts_chains} chains started at the
generating weights plus 0.1 prior std of jitter each; SVI: MOPED (delta {args.svi_delta}) around an
early-stopped MLP ({args.mlp_steps} steps at most), {args.svi_steps} full-batch steps, {args.svi_samples} draws.
Machine: {platform.machine()}, {os.cpu_count()} cores, one torch/XLA thread, shared with other jobs
(NUTS/SVI times come from the runs that filled the cache, PFN times from this run).
PFN: {checkpoint_note}.

NUTS convergence (rank-normalised split R-hat <= {RHAT_MAX}, bulk and tail ESS >= {ESS_MIN} of the
logits at every query and the training log-likelihood, over chains): **{h["n_converged"]}/{h["n_ref"]}
converged ({100 * frac:.0f}%)**.{retry}

**PFN − NUTS held-out NLL: {h["pfn_gap"][0]:+.3f} ± {h["pfn_gap"][1]:.3f} nats/point** over the
converged references (target <= 0.03: {met}; over all {h["n_ref"]}: {h["pfn_gap_all"][0]:+.3f} ±
{h["pfn_gap_all"][1]:.3f}). **SVI − NUTS: {h["svi_gap"][0]:+.3f} ± {h["svi_gap"][1]:.3f}**.
PFN time per data set vs NUTS: **{h["speedup"]:,.0f}x faster** (target >= 1,000x: {fast}; NUTS
times from the runs that filled the cache, at their load; `--retime-nuts` measures both in one run).
PFN probabilities sum to 1 within {h["max_sum_error"]:.1e}.

Per (d, n, C) cell, per d and overall (NLL in nats per held-out point, mean ± s.e. over data
sets; the gaps on converged references only; "NUTS s / PFN s" = total NUTS seconds over total
PFN seconds on the data sets with a reference):

{cell_table(rows)}

<details><summary>Per data set</summary>

{set_table(rows)}

</details>
"""


def command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/bench_classifier_pfn.py"]
    if args.quick:
        parts.append("--quick")
    elif args.only is not None:
        parts.append(f"--only {' '.join(map(str, args.only))}")
    else:
        parts.append(f"--max-datasets {args.max_datasets}")
    if args.nuts_retry:
        parts.append(f"--nuts-retry {' '.join(map(str, args.nuts_retry))}")
    if args.nuts_retry_depth:
        parts.append(f"--nuts-retry-depth {args.nuts_retry_depth}")
    if args.pfn_checkpoint:
        parts.append("--pfn-checkpoint PATH")
    if args.pfn_permutations != DEFAULT_CLASS_PERMUTATIONS:
        parts.append(f"--pfn-permutations {args.pfn_permutations}")
    if args.logit_scale_prior != "default":
        parts.append(f"--logit-scale-prior {args.logit_scale_prior}")
    if args.cached_only:
        parts.append("--cached-only")
    if args.retime_nuts:
        parts.append("--retime-nuts")
    return " ".join(parts)


def checkpoint_note(path: str | None) -> str:
    from pyrobayes.pfn.checkpoint import read_checkpoint_json
    from pyrobayes.pfn.pretrained import CHECKPOINT_DIR

    path = path or str(CHECKPOINT_DIR / PFN_NAME)
    info = read_checkpoint_json(path)
    t, cfg = info.get("training", {}), info.get("config", {})
    total = t.get("train_config", {}).get("steps", "?")
    return (
        f"`{Path(path).name}` (d_model {cfg.get('d_model')}, {cfg.get('n_layers')} layers), "
        f"step {t.get('steps', '?')} of {total} ({t.get('seconds', 0) / 3600:.1f} h), "
        f"weights sha256 {info.get('sha256', '?')[:12]}"
    )


# ----------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-datasets", type=int, default=120, help="data sets (24 = 1 per cell)")
    p.add_argument("--only", type=int, nargs="+", default=None, metavar="I",
                   help="run these data set indices only (e.g. one cell's)")  # fmt: skip
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--pfn-checkpoint", default=None, help=f"default: pretrained {PFN_NAME!r}")
    p.add_argument("--pfn-permutations", type=int, default=DEFAULT_CLASS_PERMUTATIONS,
                   help="class relabellings the PFN averages over (predict's default; the "
                   "time grows with them)")  # fmt: skip
    p.add_argument("--logit-scale-prior", default="default", metavar="LOC,SCALE",
                   help="the data sets', NUTS's and SVI's latent logit scale tau ~ "
                   "LogNormal(LOC, SCALE); default: the shipped prior's (0,1); none: tau = 1 "
                   "(the prior of the PFN before 5 Dec 2026)")  # fmt: skip
    p.add_argument("--nuts-warmup", type=int, default=150)
    p.add_argument("--nuts-samples", type=int, default=300)
    p.add_argument("--nuts-max-tree-depth", type=int, default=8)
    p.add_argument("--nuts-chains", type=int, default=4)
    p.add_argument("--nuts-retry", type=int, nargs="*", default=[], metavar="K",
                   help="K1 [K2 ...]: rerun a reference that did not converge with K1 x "
                   "warm-up and draws (and --nuts-retry-depth), then K2 x, ...")  # fmt: skip
    p.add_argument("--nuts-retry-depth", type=int, default=None)
    p.add_argument("--mlp-steps", type=int, default=2000)
    p.add_argument("--svi-steps", type=int, default=2000)
    p.add_argument("--svi-delta", type=float, default=0.1)
    p.add_argument("--svi-samples", type=int, default=200)
    p.add_argument("--no-svi", action="store_true")
    p.add_argument("--cache", default=str(DEFAULT_CACHE))
    p.add_argument("--cached-only", action="store_true",
                   help="run no NUTS/SVI: the table from the data sets the cache holds")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="4 data sets (n=30, C=2), NUTS 100/100 depth 6, 300 MLP/SVI steps, "
                   "100 queries")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    p.add_argument("--retime-nuts", action="store_true",
                   help="time NUTS again next to the PFN on the selected data sets (speed "
                   "from one run; the cache is not changed)")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.max_datasets, args.n_test = min(args.max_datasets, 4), 100
        args.nuts_warmup, args.nuts_samples, args.nuts_max_tree_depth = 100, 100, 6
        args.mlp_steps = args.svi_steps = 300
        args.svi_samples = 100
    if any(k < 2 for k in args.nuts_retry) or args.nuts_retry != sorted(set(args.nuts_retry)):
        p.error(f"--nuts-retry needs increasing factors >= 2, got {args.nuts_retry}")
    if args.max_datasets < 1:
        p.error("--max-datasets must be >= 1")
    try:
        logit_scale_prior(args)
    except ValueError as exc:
        p.error(f"--logit-scale-prior: {exc}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    pfn = load_pfn(args.pfn_checkpoint)
    cache = Cache(args.cache, args.cached_only)
    rows = []
    t_start = time.perf_counter()
    todo = args.only if args.only is not None else range(args.max_datasets)
    for i in todo:
        d, n, c = cell(i)
        nuts = nuts_result(cache, args, i)
        svi = None
        if not args.no_svi:
            svi = cache.get(_ds_key(args, i), _svi_key(args), lambda i=i: run_svi(i, args))
        if args.cached_only and nuts is None and svi is None:
            continue
        rows.append({"i": i, "d": d, "n": n, "c": c, "nuts": nuts, "svi": svi,
                     "pfn": pfn_result(pfn, i, args)})  # fmt: skip
        print(f"data set #{i} of {len(todo)} (d={d}, n={n}, C={c}): PFN NLL "
              f"{rows[-1]['pfn']['nll']:.4f}" + (f", SVI {svi['nll']:.4f}" if svi else "")
              + f" ({time.perf_counter() - t_start:.0f} s so far)", flush=True)  # fmt: skip
    if not rows:
        raise SystemExit(f"no data set in {args.cache} for these settings (--cached-only)")
    text = report(args, rows, checkpoint_note(args.pfn_checkpoint))
    if args.retime_nuts:
        timed = retime(pfn, rows, args)
        total = sum(t["nuts_s"] for t in timed) / sum(t["pfn_s"] for t in timed)
        text += (
            f"\n**Speed in one run** (`--retime-nuts`: the PFN call, then NUTS again at the "
            f"reference's final budget, data set by data set in one process, so both saw the "
            f"same load; load average {os.getloadavg()[0]:.1f} at the end): NUTS / PFN "
            f"**{total:,.0f}x** over {len(timed)} data sets (target >= 1,000x: "
            f"{'met' if total >= 1000 else 'NOT met'}).\n\n{retime_table(timed)}\n"
        )
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return rows


if __name__ == "__main__":
    main()
