"""NUTS reference speed: pyrobayes versus NumPyro on the same posterior.

Side by side in one run, one CPU thread, same posterior, same start, same budget:

* (a) torch: :func:`pyrobayes.infer.nuts.sampler.nuts_ppd` (Pyro's NUTS on the trace-free torch
  potential), one chain;
* (b) backend: :func:`pyrobayes.infer.nuts.jax_potential.numpyro_nuts` (NumPyro's NUTS kernel on
  the JAX log density built from the converted model, all chains in one XLA loop, one after
  another on a CPU);
* (c) NumPyro: ``MCMC(NUTS(model))`` on a hand-written NumPyro model of the same posterior
  (``numpyro.sample`` statements, as a NumPyro user writes it), with 4 chains both
  ``chain_method="vectorized"`` and ``"sequential"``; the ratio is against the faster.

Posteriors: the default 1-D model on the main job's data set (n = 20 from its prior, started
at the fitted MLP's weights) and the tabular model (d = 8, n = 400, latent noise, started at
the generating latents, tree depth 8); 1 and 4 chains (several chains start at the start
point plus 0.1 prior std of jitter, the same starts for (b) and (c)).

Columns: wall time including compilation (what a user waits), compiled time (backend: the
timed compiled loop; NumPyro: the wall time less the seconds JAX reports for tracing,
lowering and compiling during the run), ms per gradient (compiled time / gradient evaluations of all chains,
warmup included), min bulk ESS (``numpyro.diagnostics.effective_sample_size``) of the PPD's
ingredients f(x_test) and the training log-likelihood over chains, that per second of wall
time, max split R-hat of the same (4 chains), held-out NLL of the draw mixture.

Reproduce::

    python benchmarks/bench_reference.py            # 100/200, writes its RESULTS.md section
    python benchmarks/bench_reference.py --quick --no-write
"""

from __future__ import annotations

import os

# one CPU thread for XLA and torch: set before jax/torch are imported
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, mixture_nll_and_mc_se, write_section  # noqa: E402

SECTION = "## bench_reference.py"


def posterior_1d():
    """The main job's data set and model, started at its fitted MLP."""
    from pyrobayes.convert import bayesian_sites
    from pyrobayes.jobs.demo_1d import CompareConfig, _fit_mlp, _load_data
    from pyrobayes.models.mlp import default_regression_model

    cfg = CompareConfig()
    x_tr, y_tr, x_te, y_te, *_ = _load_data(cfg)
    mlp = _fit_mlp(x_tr, y_tr, cfg.mlp_steps, 0)
    torch.manual_seed(0)
    model = default_regression_model(name="d1").eval()
    params = dict(mlp.named_parameters())
    start = {s: params[p[0]].detach().clone() for s, p in bayesian_sites(model).items()}
    spec = {"sizes": (1, 50, 50, 1), "weight_scale": 1.0, "noise": 0.1, "noise_prior": None}
    return "1-D (n=20)", model, (x_tr, y_tr, x_te, y_te), start, spec, 10


def posterior_tabular(d: int = 8, n: int = 400, n_test: int = 200, seed: int = 0):
    """A tabular data set from the PFN's prior, started at its generating latents."""
    from pyrobayes.models.tabular import TABULAR_REGRESSION as cfg
    from pyrobayes.pfn import TabularBNNPrior

    prior = TabularBNNPrior()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x, y, latents = prior.sample_with_latents(1, n + n_test, d)
    model = prior.model(d).eval()
    start = {k: v[0] for k, v in latents.items()}
    spec = {
        "sizes": (d, 50, 50, 1),
        "weight_scale": cfg["weight_scale"],
        "noise": None,
        "noise_prior": (cfg["noise_loc"], cfg["noise_scale"]),
    }
    data = (x[0, :n], y[0, :n], x[0, n:], y[0, n:])
    return f"tabular (d={d}, n={n})", model, data, start, spec, 8


def numpyro_model(spec: dict):
    """The same posterior as a NumPyro user writes it (weights as [in, out])."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    sizes = spec["sizes"]

    def model(x, y=None):
        h = x
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w_std = spec["weight_scale"] / np.sqrt(a)
            w = numpyro.sample(f"w{i}", dist.Normal(0.0, w_std).expand([a, b]).to_event(2))
            bias = numpyro.sample(f"b{i}", dist.Normal(0.0, 1.0).expand([b]).to_event(1))
            h = h @ w + bias
            if i < len(sizes) - 2:
                h = jnp.tanh(h)
        if spec["noise_prior"] is None:
            sigma = spec["noise"]
        else:
            sigma = numpyro.sample("sigma", dist.LogNormal(*spec["noise_prior"]))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(h[:, 0], sigma), obs=y)

    return model


def to_numpyro_sites(draws: dict[str, torch.Tensor], sites) -> dict:
    """Torch site layout (constrained) -> the hand-written model's unconstrained sites."""
    import jax.numpy as jnp

    out = {}
    layer = 0
    for s in sites:
        v = draws[s.name].detach().cpu().numpy()
        if s.positive:
            out["sigma"] = jnp.asarray(np.log(v))
        elif s.name.endswith("weight"):
            out[f"w{layer}"] = jnp.asarray(np.swapaxes(v, -1, -2))
        else:
            out[f"b{layer}"] = jnp.asarray(v)
            layer += 1
    return out


def from_numpyro_samples(samples: dict, sites) -> dict[str, torch.Tensor]:
    """The hand-written model's draws ``[C, S, ...]`` -> the torch site layout."""
    out, layer = {}, 0
    for s in sites:
        if s.positive:
            out[s.name] = torch.from_numpy(np.array(samples["sigma"]))
        elif s.name.endswith("weight"):
            out[s.name] = torch.from_numpy(np.swapaxes(np.array(samples[f"w{layer}"]), -1, -2))
        else:
            out[s.name] = torch.from_numpy(np.array(samples[f"b{layer}"]))
            layer += 1
    return out


def evaluate(model, draws: dict[str, torch.Tensor], data) -> dict:
    """Held-out NLL, min bulk ESS and max split R-hat of f(x_test) and the training
    log-likelihood; ``draws`` ``{site: [C, S, ...]}``."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    from pyrobayes.infer import forward_draws

    x_tr, y_tr, x_te, y_te = data
    c, s = next(iter(draws.values())).shape[:2]
    flat = {k: v.reshape(c * s, *v.shape[2:]).float() for k, v in draws.items()}
    lik = model.likelihood
    noise = lik.noise_site if lik.latent_noise else None
    sigma = flat[noise][:, None] if noise else lik.scale
    f_te = forward_draws(model, flat, x_te)[..., 0]
    f_tr = forward_draws(model, flat, x_tr)[..., 0]
    ll = torch.distributions.Normal(f_tr, sigma).log_prob(y_tr).sum(-1)
    nll, mc_se = mixture_nll_and_mc_se(torch.distributions.Normal(f_te, sigma).log_prob(y_te))
    funcs = torch.cat([f_te.double().reshape(c, s, -1), ll.double().reshape(c, s, 1)], -1).numpy()
    ess = float(np.min(effective_sample_size(funcs)))
    r_hat = float(np.max(split_gelman_rubin(funcs))) if c > 1 else float("nan")
    return {"nll": nll, "nll_se": mc_se, "ess": ess, "r_hat": r_hat}


def run_torch(model, data, start, budget) -> dict:
    """(a) ``nuts_ppd(backend="pyro")``, Pyro's NUTS on the torch potential (the path before
    the NumPyro backend, still the fallback), one chain; gradients counted at the potential."""
    from pyrobayes.infer.nuts import potential as potential_mod
    from pyrobayes.infer.nuts.sampler import nuts_ppd

    calls = [0]
    energy = potential_mod.Potential.energy

    def counted(self, flat):
        calls[0] += 1
        return energy(self, flat)

    potential_mod.Potential.energy = counted
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # R-hat is in the table
            _, info = nuts_ppd(
                model, data[0], data[1], data[2], num_warmup=budget["warmup"],
                num_samples=budget["samples"], max_tree_depth=budget["depth"], progress=False,
                seed=0, return_mcmc=True, init=start, num_chains=1, backend="pyro",
            )  # fmt: skip
    finally:
        potential_mod.Potential.energy = energy
    wall = time.perf_counter() - t0
    draws = {k: v.reshape(1, *v.shape) for k, v in info.draws.items()}
    return {"wall": wall, "compiled": wall, "grads": calls[0], **evaluate(model, draws, data)}


def run_backend(model, data, start, budget, chains: int) -> dict:
    """(b) the NumPyro backend on the converted model's JAX log density."""
    from pyrobayes.infer.nuts.jax_potential import jax_log_density, numpyro_nuts

    t0 = time.perf_counter()
    dens = jax_log_density(model, data[0], data[1])
    res = numpyro_nuts(
        model, data[0], data[1], num_chains=chains, num_warmup=budget["warmup"],
        num_samples=budget["samples"], max_tree_depth=budget["depth"], seed=0, init=start,
        density=dens,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    out = {"wall": wall, "compiled": res.run_seconds, "grads": res.num_grads}
    return {**out, **evaluate(model, res.draws, data)}


def run_numpyro(model, data, start, spec, budget, chains: int, method: str = "vectorized") -> dict:
    """(c) NumPyro's ``MCMC`` on the hand-written model, from (b)'s starts; ``method`` is
    NumPyro's ``chain_method`` (a NumPyro user on one CPU device picks "vectorized" or
    "sequential"; both are run, and (b) is held against the faster)."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import potential_energy

    from pyrobayes.infer.nuts.jax_potential import _starts, jax_log_density

    dens = jax_log_density(model, data[0], data[1])
    u0 = _starts(dens, start, chains, 0.1, seed=0)
    x, y = jnp.asarray(data[0].numpy()), jnp.asarray(data[1].numpy())
    np_model = numpyro_model(spec)
    init = to_numpyro_sites(dens.unpack(u0), dens.sites)
    # same posterior: the hand-written potential equals minus the backend's log density
    one = {k: v[0] for k, v in init.items()}
    pe = float(potential_energy(np_model, (x, y), {}, one))
    assert abs(pe + float(dens.log_density(jnp.asarray(u0[0])))) < 1e-3 * abs(pe), pe
    if chains == 1:
        init = one  # MCMC takes a chain dimension only with several chains

    def mcmc():
        kernel = NUTS(np_model, max_tree_depth=budget["depth"])
        return MCMC(
            kernel, num_warmup=budget["warmup"], num_samples=budget["samples"],
            num_chains=chains, chain_method=method, progress_bar=False,
        )  # fmt: skip

    key = jax.random.PRNGKey(0)
    m = mcmc()
    with compile_timer() as compile_s:
        t0 = time.perf_counter()
        m.run(key, x, y, init_params=init, extra_fields=("num_steps",))
        jax.block_until_ready(m.get_samples())
        wall = time.perf_counter() - t0
    # MCMC traces and compiles inside run (a second run of the same object compiles its loop
    # again: a new potential closure per run), so the compiled time is the wall time less
    # the time JAX reports for tracing, lowering and XLA compilation
    compiled = wall - compile_s[0]
    sample_steps = int(np.sum(m.get_extra_fields()["num_steps"]))
    # the warmup's gradient count (not timed): the same key and starts replay that phase
    w = mcmc()
    w.warmup(key, x, y, init_params=init, extra_fields=("num_steps",), collect_warmup=True)
    warm_steps = int(np.sum(w.get_extra_fields()["num_steps"]))
    samples = m.get_samples(group_by_chain=True)
    draws = from_numpyro_samples(samples, dens.sites)
    out = {"wall": wall, "compiled": compiled, "grads": sample_steps + warm_steps}
    return {**out, **evaluate(model, draws, data)}


@contextlib.contextmanager
def compile_timer():
    """Seconds JAX spends tracing, lowering and compiling inside the block (``[total]``)."""
    import jax

    total, events = [0.0], ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration",
                            "backend_compile_duration")  # fmt: skip

    def listen(event: str, duration: float, **_) -> None:
        if event.rsplit("/", 1)[-1] in events:
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def row(name: str, chains: int, what: str, r: dict) -> list:
    ms = 1e3 * r["compiled"] / max(r["grads"], 1)
    nll = f"{r['nll']:.4f} ± {r['nll_se']:.4f}"
    rhat = "" if np.isnan(r["r_hat"]) else f"{r['r_hat']:.3f}"
    return [name, chains, what, r["wall"], r["compiled"], r["grads"], ms, r["ess"],
            r["ess"] / r["wall"], rhat, nll]  # fmt: skip


def main() -> None:
    import jax

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="smoke budget 20/20, no torch run")
    ap.add_argument("--no-torch", action="store_true", help="skip (a), the slow torch NUTS")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.warmup, args.samples, args.no_torch = 20, 20, True

    rows, ratios = [], []
    for make in (posterior_1d, posterior_tabular):
        name, model, data, start, spec, depth = make()
        budget = {"warmup": args.warmup, "samples": args.samples, "depth": depth}
        if not args.no_torch:
            rows.append(row(name, 1, "(a) torch nuts_ppd", run_torch(model, data, start, budget)))
            print(rows[-1], flush=True)
        for chains in (1, 4):
            b = run_backend(model, data, start, budget, chains)
            rows.append(row(name, chains, "(b) pyrobayes NumPyro backend", b))
            print(rows[-1], flush=True)
            best = None
            for method in ("vectorized", "sequential") if chains > 1 else ("vectorized",):
                c = run_numpyro(model, data, start, spec, budget, chains, method)
                what = "(c) NumPyro, hand-written model" + (f", {method}" if chains > 1 else "")
                rows.append(row(name, chains, what, c))
                print(rows[-1], flush=True)
                best = c if best is None or c["wall"] < best["wall"] else best
            ratios.append(
                [name, chains, b["wall"] / best["wall"], b["compiled"] / best["compiled"]]
            )

    header = ["posterior", "chains", "sampler", "wall incl. compile (s)", "compiled (s)",
              "gradients", "ms / gradient", "min bulk ESS", "ESS / s (wall)",
              "max split R-hat", "held-out NLL ± MC s.e."]  # fmt: skip
    table = markdown_table(header, rows)
    ratio_table = markdown_table(
        ["posterior", "chains", "(b)/best (c) wall time", "(b)/best (c) compiled time"], ratios
    )
    report = (
        f"{SECTION}\n\nNUTS {args.warmup} warmup / {args.samples} draws per chain, one CPU "
        f"thread (XLA: no multi-threaded Eigen, 1 intra-op thread; torch: 1 thread), jax "
        f"{jax.__version__}, float32. Same posterior, same starts for (b) and (c) (one chain: "
        "the start point; 4 chains: plus 0.1 prior std of jitter); (b) runs its chains one after "
        'another on a CPU (`chain_method="auto"`), (c) both ways, and the ratio takes the '
        "faster (c). "
        "ESS/R-hat: of f(x_test) and the training log-likelihood (numpyro.diagnostics). "
        "The box was shared with other jobs: only ratios from one run are meaningful.\n\n"
        f"{table}\n\nTarget (issue 20): (b)/(c) wall time <= 1.0 for 4 chains.\n\n"
        f"{ratio_table}\n"
    )
    print(report)
    if not args.no_write:
        write_section(SECTION, report)


if __name__ == "__main__":
    main()
