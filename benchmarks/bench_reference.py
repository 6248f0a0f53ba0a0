"""NUTS reference speed: Pyro's traced model versus the trace-free potential.

Measured in one run, as ratios on the same machine, on the main job's default data set
(draws from the default BNN prior, ``pyrobayes compare`` defaults):

* seconds per potential-energy + gradient evaluation: ``poutine.trace`` of the model (what
  ``NUTS(model)`` differentiates) versus :class:`pyrobayes.infer.potential.Potential`;
* a whole NUTS run (``--warmup``/``--samples``): today's path (``NUTS(model)``, prior-draw
  start) versus :func:`pyrobayes.reference.nuts_ppd` (trace-free potential, started at the
  fitted MLP's weights as the main job does), with the held-out NLL of both and its Monte
  Carlo standard error (per-point log-density spread over the test points is not MC error;
  the MC error here is estimated from batch means of the draws), max R-hat and min ESS.

Reproduce::

    python benchmarks/bench_reference.py                 # 200/200, writes its RESULTS.md section
    python benchmarks/bench_reference.py --warmup 50 --samples 50 --no-write
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, mixture_nll_and_mc_se, write_section  # noqa: E402

SECTION = "## bench_reference.py"


def _data():
    from pyrobayes.compare_job import CompareConfig, _load_data

    x_tr, y_tr, x_te, y_te, *_ = _load_data(CompareConfig())
    return x_tr, y_tr, x_te, y_te


def _per_grad(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def _nll_and_mc_error(model, draws, x_te, y_te, batches: int = 10) -> tuple[float, float]:
    """Held-out NLL of the draw mixture and its Monte Carlo standard error (batch means,
    :func:`_results.mixture_nll_and_mc_se`)."""
    from pyrobayes.infer import forward_draws

    ppd = model.likelihood.ppd_from_draws(forward_draws(model, draws, x_te), draws)
    log_p = torch.distributions.Normal(ppd.loc, ppd.scale).log_prob(y_te)
    return mixture_nll_and_mc_se(log_p, batches)


def main() -> None:
    import pyro
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_sample
    from pyro.infer.mcmc.util import initialize_model

    from pyrobayes.compare_job import CompareConfig, _fit_mlp
    from pyrobayes.infer import forward_draws
    from pyrobayes.infer.potential import FLAT, Potential
    from pyrobayes.models.mlp import default_regression_model
    from pyrobayes.reference import NUTSInfo, nuts_ppd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--reps", type=int, default=200, help="gradient evaluations timed")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    torch.set_num_threads(1)

    x_tr, y_tr, x_te, y_te = _data()
    torch.manual_seed(0)
    model = default_regression_model().eval()

    # one potential + gradient evaluation, both ways, at the same point
    init_params, traced_pot, _, _ = initialize_model(
        model, model_args=(x_tr,), model_kwargs={"y": y_tr}, init_strategy=init_to_sample
    )
    pot = Potential(model, x_tr, y_tr)
    u = {k: v.detach().clone().requires_grad_(True) for k, v in init_params.items()}
    assert torch.allclose(traced_pot(u), pot(u), rtol=1e-4, atol=1e-3)

    def grad_of(f):
        return lambda: torch.autograd.grad(f(u), list(u.values()))

    t_traced = _per_grad(grad_of(traced_pot), args.reps)
    # the trace-free potential as NUTS calls it: one flat latent vector
    flat = pot.pack(u).detach().requires_grad_(True)
    t_free = _per_grad(lambda: torch.autograd.grad(pot({FLAT: flat}), flat), args.reps)

    # whole runs: today's traced NUTS from a prior draw vs nuts_ppd from the fitted MLP
    pyro.set_rng_seed(0)
    ref = default_regression_model()
    t0 = time.perf_counter()
    mcmc = MCMC(
        NUTS(ref, init_strategy=init_to_sample),
        num_samples=args.samples,
        warmup_steps=args.warmup,
        disable_progbar=True,
    )
    ref.eval()
    mcmc.run(x_tr, y=y_tr)
    s_traced = time.perf_counter() - t0
    draws_traced = mcmc.get_samples()
    with torch.no_grad():
        # the same ESS functionals as nuts_ppd reports: f(x_test) per draw, log-likelihood
        f_te = forward_draws(ref, draws_traced, x_te).reshape(1, args.samples, -1)
        ref_pot = Potential(ref, x_tr, y_tr)
        s_draws = [{k: v[i] for k, v in draws_traced.items()} for i in range(args.samples)]
        ll = torch.stack([ref_pot.log_likelihood(d) for d in s_draws]).reshape(1, -1)
    info_traced = NUTSInfo.from_mcmc(mcmc, draws_traced, f_te, ll)
    nll_traced, se_traced = _nll_and_mc_error(ref, info_traced.draws, x_te, y_te)

    mlp = copy.deepcopy(
        _fit_mlp(x_tr, y_tr, CompareConfig().mlp_steps, 0)
    )  # the main job's MLP pre-training
    free = default_regression_model()
    t0 = time.perf_counter()
    _, info = nuts_ppd(
        free,
        x_tr,
        y_tr,
        x_te,
        num_warmup=args.warmup,
        num_samples=args.samples,
        progress=False,
        seed=0,
        return_mcmc=True,
        init=mlp,
    )
    s_free = time.perf_counter() - t0
    nll_free, se_free = _nll_and_mc_error(free, info.draws, x_te, y_te)

    rows = [
        ["potential + gradient (ms)", 1e3 * t_traced, 1e3 * t_free, t_traced / t_free],
        [f"NUTS {args.warmup}/{args.samples} wall (s)", s_traced, s_free, s_traced / s_free],
        [
            "held-out NLL",
            f"{nll_traced:.3f} ± {se_traced:.3f}",
            f"{nll_free:.3f} ± {se_free:.3f}",
            "",
        ],
        ["max R-hat", info_traced.max_r_hat, info.max_r_hat, ""],
        ["min ESS of f(x_test), log-lik", info_traced.min_ess, info.min_ess, ""],
        [
            "ESS per weight coordinate, 5th pct",
            info_traced.ess_coords["p5"],
            info.ess_coords["p5"],
            "",
        ],
    ]
    table = markdown_table(["", "traced (today)", "trace-free", "speed-up"], rows)
    report = (
        f"{SECTION}\n\nDefault data set of `pyrobayes compare` ({len(x_tr)} train, {len(x_te)} test "
        "points), 1 torch thread, one run; the box was shared with other jobs, so only the "
        "ratios are meaningful. Traced = `NUTS(model)` from a prior draw (the old "
        "`nuts_ppd`); trace-free = `nuts_ppd` (potential without Pyro traces, started at the "
        "fitted MLP's weights). NLL ± Monte Carlo standard error (batch means of draws).\n\n"
        f"{table}\n"
    )
    print(report)
    if not args.no_write:
        write_section(SECTION, report)


if __name__ == "__main__":
    main()
