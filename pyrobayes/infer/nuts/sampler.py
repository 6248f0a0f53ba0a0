"""Reference posterior predictives: the exact GP and NUTS.

* :func:`exact_gp_ppd` -- the closed-form GP posterior predictive (re-exported from
  :mod:`pyrobayes.gp`), the right answer for data drawn from the GP prior.
* :func:`nuts_ppd` -- the "gold standard" for any pyrobayes :class:`~pyrobayes.bayesian_model.BayesianModel`:
  Pyro's No-U-Turn sampler draws weights :math:`w_s \\sim p(w \\mid D)` and the PPD is the
  mixture over draws

  .. math:: p(y_* \\mid x_*, D) \\approx \\frac1S \\sum_{s=1}^S p(y_* \\mid f_{w_s}(x_*)),

  built exactly like the SVI posterior predictive (:func:`~pyrobayes.infer.forward_draws`
  then ``model.likelihood.ppd``), so the two are comparable metric for metric.

Example::

    >>> import torch
    >>> from pyrobayes import BayesianModel, Gaussian, NormalPrior, to_pyro
    >>> from pyrobayes.infer.nuts.sampler import nuts_ppd
    >>> model = BayesianModel(to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0)), Gaussian(0.3))
    >>> x = torch.linspace(-2, 2, 20)[:, None]
    >>> y = 0.8 * x[:, 0] - 0.3
    >>> ppd = nuts_ppd(model, x, y, torch.zeros(1, 1), num_warmup=100, num_samples=100,
    ...                progress=False, seed=0)
    >>> ppd.batch_shape
    torch.Size([1])
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from pyro.infer import MCMC, NUTS

from pyrobayes.diagnostics import ConvergenceReport, summarize
from pyrobayes.gp import exact_gp_ppd
from pyrobayes.infer.fast_check import warn_fallback
from pyrobayes.infer.nuts.potential import FLAT, Potential, TracedPotential
from pyrobayes.infer.predictive import forward_draws
from pyrobayes.options import Option
from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD
from pyrobayes.progress import _in_notebook, _is_tty, progress_bar

__all__ = ["NUTSBackend", "NUTSInfo", "exact_gp_ppd", "nuts_diagnostics", "nuts_ppd"]


def _as_input(x: Any, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if t.dim() == 0:
        raise ValueError(f"{name} must have a leading data dimension, got a scalar")
    return t.to(device)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout off: HMC needs a deterministic log density), restored afterwards.
    The likelihood's plate size needs no care: the potential sums over all training points."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _PlainLines:
    """A few plain progress lines for a single-chain run in a log (Pyro's own tqdm bar
    is for terminals), advanced by ``MCMC``'s per-iteration ``hook_fn``."""

    def __init__(self, total: int):
        self._it = iter(progress_bar(range(total), desc="NUTS", unit="steps"))
        self.total, self.n = total, 0

    def __call__(self, kernel: Any, samples: Any, stage: str, i: int) -> None:
        if self.n == 0:
            next(self._it, None)  # the opening line
        self.n += 1
        next(self._it, None)
        if self.n == self.total:
            next(self._it, None)  # the closing line


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for the run without disturbing the caller's RNG state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def nuts_ppd(
    model: torch.nn.Module,
    x_train: Any,
    y_train: Any,
    x_query: Any,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    progress: bool = True,
    seed: int | None = None,
    return_mcmc: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    chunk_size: int | None = 256,
    init: Any = None,
    map_steps: int = 0,
    step_size: float = 0.01,
    init_jitter: float = 0.1,
    mp_context: str | None = None,
    backend: str = "auto",
    compiled: Any = None,
) -> NormalMixturePPD | CategoricalPPD | tuple[NormalMixturePPD | CategoricalPPD, NUTSInfo]:
    """Posterior predictive of a :class:`~pyrobayes.bayesian_model.BayesianModel` by NUTS.

    Runs NUTS on the log joint of ``model(x_train, y=y_train)`` (full batch, eval mode, every
    latent as one flat unconstrained vector; checked once against a Pyro trace of the model),
    ``num_chains`` chains from dispersed starts, keeps ``num_samples`` draws per chain after
    ``num_warmup`` adaptation steps, judges convergence over chains (rank-normalised split
    R-hat, bulk/tail ESS of the PPD's ingredients: :class:`NUTSInfo`; a warning when not
    converged), and averages the likelihood's densities/probabilities over all
    ``num_chains * num_samples`` draws at ``x_query``:

    .. math:: p(y_* \\mid x_*, D) \\approx \\frac1S \\sum_s p(y_* \\mid f_{w_s}(x_*)),
              \\quad w_s \\sim p(w \\mid D) \\text{ by NUTS}.

    Args:
        model: a ``BayesianModel`` (network converted by ``to_pyro`` + likelihood). NUTS
            samples every latent site of the model: the weights and the likelihood's own
            :attr:`~pyrobayes.likelihoods.Likelihood.latent_sites` (e.g. a ``noise_scale``
            with a prior, sampled on its unconstrained scale); the PPD mixes over the joint
            draws by :meth:`~pyrobayes.likelihoods.Likelihood.ppd_from_draws`. A *learned*
            (``learn_scale=True``) noise is a parameter, not a site: it is held at its
            current value.
        x_train, y_train: the training data (tensors or arrays; moved to the model's device).
        x_query: the query inputs.
        num_warmup: NUTS adaptation steps per chain (step size and diagonal mass matrix).
        num_samples: kept draws per chain.
        num_chains: independent chains (default 4: one chain cannot show that it has not
            converged). The NumPyro backend runs them vectorised in one compiled loop; Pyro
            runs them in parallel processes only when ``num_chains <= cpu_count - 1`` (it
            reserves one CPU), else one after another.
        progress: Pyro's progress bar on a terminal/notebook, a few plain lines in a log.
        seed: seeds torch's RNG for this run only (the caller's RNG state is restored).
        return_mcmc: also return a :class:`NUTSInfo` (R-hat, ESS and verdict over chains,
            the constrained draws, Pyro's ``MCMC`` object on that backend).
        target_accept_prob, max_tree_depth: NUTS settings (a tree of depth ``d`` costs up to
            :math:`2^d - 1` gradient evaluations per draw).
        chunk_size: draws evaluated per vectorised forward pass at ``x_query``.
        init: where the chains start (constrained values): ``None`` = the prior draw of the
            setup trace; a ``dict`` ``{site: value}`` (sites not given keep that draw); or an
            ``nn.Module`` with the converted network's parameter names, e.g. the fitted
            deterministic net, which puts the chains where the posterior mass is.
        map_steps: Adam steps (lr ``1e-2``) on the potential from ``init`` before NUTS (a MAP
            start); ``0`` starts at ``init`` itself.
        step_size: NUTS's initial step size (then adapted during warmup; Pyro first
            rescales it by its doubling/halving heuristic at the start point).
        init_jitter: with ``num_chains > 1`` each chain starts at the start point plus
            ``init_jitter * s * N(0, I)`` on the unconstrained scale, on both backends, where
            ``s`` is each coordinate's prior std (``Potential.prior_scale`` of
            ``pyrobayes.infer.nuts.potential``, ``JaxLogDensity.prior_std``: the Normal prior's std of a
            weight, 1 for another site such as a log noise scale), so R-hat can see a chain
            that is stuck; ``0`` starts every chain at the same point.
        mp_context: multiprocessing start method for Pyro's parallel chains (default:
            ``"spawn"`` on CUDA, where forked workers cannot re-initialise CUDA).
        backend: ``"auto"`` (NumPyro when the ``nuts`` extra is installed and the model is
            one it can express -- a Linear chain with element-wise activations, Normal weight
            priors, a Gaussian or Categorical likelihood -- else Pyro), ``"numpyro"``
            (:func:`pyrobayes.infer.nuts.jax_potential.numpyro_nuts`: the same log joint as one
            JAX function, tested equal to the torch potential; an error if it cannot be
            used) or ``"pyro"`` (Pyro's ``MCMC(NUTS)`` on the torch potential).
        compiled: the NumPyro chains compiled ahead for this ``model`` object, data and
            settings (:func:`pyrobayes.infer.nuts.jax_potential.compile_nuts`, e.g. on another
            thread while the network the chains start at is fitted; ``progress`` must match);
            ``ValueError`` if they were compiled for anything else. ``None``: compile here.

    Returns:
        The PPD at ``x_query`` (:class:`~pyrobayes.ppd.NormalMixturePPD` for a Gaussian
        likelihood, :class:`~pyrobayes.ppd.CategoricalPPD` for a Categorical one), and the
        ``MCMC`` object if ``return_mcmc``.

    Example::

        >>> import torch
        >>> from pyrobayes.models.mlp import default_regression_model
        >>> model = default_regression_model()
        >>> x = torch.linspace(-1, 1, 10)[:, None]
        >>> ppd = nuts_ppd(model, x, torch.sin(3 * x[:, 0]), torch.zeros(3, 1),
        ...                num_warmup=20, num_samples=20, progress=False, seed=0)
        >>> ppd.num_draws  # 4 chains x 20 draws
        80
    """
    _check_nuts_args(model, num_warmup, num_samples, num_chains, target_accept_prob)
    if not (math.isfinite(init_jitter) and init_jitter >= 0):
        raise ValueError(f"init_jitter must be a finite number >= 0, got {init_jitter!r}")
    chosen = NUTSBackend.parse(backend)
    device = model.device
    xt, yt, xq = _nuts_inputs(x_train, y_train, x_query, device)

    with _eval_mode(model), _seeded(seed, device):
        potential = _checked_potential(model, xt, yt)
        init_values = _initial_values(potential, init, map_steps)
        density = _numpyro_density(model, xt, yt, potential, chosen, compiled)
        settings = dict(
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            progress=progress,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            init_jitter=init_jitter,
        )
        if density is not None:
            settings["compiled"] = compiled
            draws, mcmc, grads = _run_numpyro(model, xt, yt, density, init_values, settings)
        else:
            extra = dict(step_size=step_size, mp_context=mp_context, device=device)
            (draws, mcmc), grads = _run_pyro(potential, init_values, settings | extra), None
        if isinstance(potential, TracedPotential):
            out = potential.outputs(draws, xq)
        else:
            out = forward_draws(model, draws, xq, chunk_size=chunk_size)
        with torch.no_grad():
            n = num_chains * num_samples
            log_lik = torch.stack(
                [potential.log_likelihood({k: v[i] for k, v in draws.items()}) for i in range(n)]
            )
    ppd = _ppd(model, out, draws)
    info = NUTSInfo.from_draws(
        draws,
        out.reshape(num_chains, num_samples, -1),
        log_lik.reshape(num_chains, num_samples),
        mcmc=mcmc,
        backend=NUTSBackend.PYRO.value if density is None else NUTSBackend.NUMPYRO.value,
        num_grads=grads,
    )
    if not info.converged:
        warnings.warn(
            f"NUTS reference {info.verdict}; run more warmup/samples or more chains",
            stacklevel=2,
        )
    return (ppd, info) if return_mcmc else ppd


class NUTSBackend(Option):
    """Which engine runs :func:`nuts_ppd`'s chains.

    Example::

        >>> NUTSBackend.parse("numpyro") is NUTSBackend.NUMPYRO
        True
    """

    AUTO = "auto"
    NUMPYRO = "numpyro"
    PYRO = "pyro"


def _numpyro_density(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    potential: Potential,
    backend: NUTSBackend,
    compiled: Any = None,
) -> Any:
    """The JAX log joint for the NumPyro backend, or ``None`` for Pyro's: ``auto`` takes
    NumPyro where it is installed and expresses the model (the torch potential must itself
    be the model's log joint: a model Pyro's traces had to take over stays with Pyro);
    ``compiled`` chains bring their own."""
    if compiled is not None:
        if backend is NUTSBackend.PYRO or isinstance(potential, TracedPotential):
            raise ValueError(
                "compiled= holds NumPyro chains, but this run is Pyro's (backend='pyro', or a "
                "model only Pyro's traces can evaluate); leave compiled=None"
            )
        return compiled.density
    if backend is NUTSBackend.PYRO:
        return None
    from pyrobayes.infer.nuts import jax_potential

    if backend is NUTSBackend.AUTO and not jax_potential.available():
        return None
    if isinstance(potential, TracedPotential):
        if backend is NUTSBackend.NUMPYRO:
            raise ValueError(
                "backend='numpyro' cannot run this model: its forward adds to the model, so "
                "only Pyro's traces compute its log joint; use backend='pyro'"
            )
        return None
    try:
        return jax_potential.jax_log_density(model, x, y)
    except NotImplementedError:
        if backend is NUTSBackend.NUMPYRO:
            raise
        return None


def _run_numpyro(model, x, y, density, init_values, settings) -> tuple[dict, None, int]:
    """NumPyro's NUTS on ``density``: the constrained draws ``{site: [C * S, ...]}``
    (chain-major), no Pyro ``MCMC``, the gradient count."""
    from pyrobayes.infer.nuts.jax_potential import numpyro_nuts

    seed = int(torch.randint(0, 2**31 - 1, ()))  # from the (seeded) torch RNG
    res = numpyro_nuts(model, x, y, seed=seed, init=init_values, density=density, **settings)
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in res.draws.items()}, None, res.num_grads


def _run_pyro(potential: Potential, init_values, settings) -> tuple[dict, MCMC]:
    """Pyro's ``MCMC(NUTS)`` on the torch potential from jittered starts around the start."""
    u0 = _pyro_starts(potential, init_values, settings["num_chains"], settings.pop("init_jitter"))
    mcmc = _make_mcmc(potential, u0, **settings)
    mcmc.run()
    flat = mcmc.get_samples(group_by_chain=True)[FLAT].reshape(-1, potential.dim)
    return potential.constrain(potential.unpack(flat)), mcmc


def _pyro_starts(
    potential: Potential, init_values: dict[str, torch.Tensor], num_chains: int, jitter: float
) -> torch.Tensor:
    """The flat unconstrained start ``[dim]`` (one chain) or ``[num_chains, dim]``:
    ``u0 + jitter * prior_scale * N(0, I)``, the same spread as the NumPyro backend's starts
    (``Potential.prior_scale``; NUTS sees ONE flat latent vector: Pyro's per-step cost
    grows with the site count)."""
    u0 = potential.pack(potential.unconstrain(init_values)).detach()
    if num_chains == 1:
        return u0
    # distinct starts around the same point, so R-hat can see a chain that is stuck
    noise = torch.randn((num_chains, *u0.shape), dtype=u0.dtype, device=u0.device)
    return u0 + jitter * potential.prior_scale().to(u0) * noise


def _check_nuts_args(
    model: torch.nn.Module,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    target_accept_prob: float,
) -> None:
    """Validate :func:`nuts_ppd`'s scalar settings and that ``model`` is a BayesianModel."""
    for name, value in (("num_warmup", num_warmup), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive integer, got {num_chains!r}")
    if not 0.0 < target_accept_prob < 1.0:
        raise ValueError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob}")
    if not hasattr(model, "likelihood") or not callable(getattr(model.likelihood, "ppd", None)):
        raise ValueError(
            "nuts_ppd needs a pyrobayes BayesianModel (a converted network with a likelihood), "
            f"got {type(model).__name__}"
        )


def _nuts_inputs(
    x_train: Any, y_train: Any, x_query: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`nuts_ppd`'s data as tensors on ``device``, checked for consistent shapes."""
    xt = _as_input(x_train, device, "x_train")
    yt = _as_input(y_train, device, "y_train")
    xq = _as_input(x_query, device, "x_query")
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x_train has {xt.shape[0]} points but y_train has {yt.shape[0]}")
    if xt.shape[0] == 0:
        raise ValueError("x_train is empty; use prior_predictive for the prior PPD")
    if yt.is_floating_point() and not torch.isfinite(yt).all():
        raise ValueError("y_train contains NaN or infinite values")
    if xq.shape[1:] != xt.shape[1:]:
        raise ValueError(
            f"x_query points have shape {tuple(xq.shape[1:])} but x_train points have "
            f"{tuple(xt.shape[1:])}"
        )
    return xt, yt, xq


def _make_mcmc(
    potential: Potential,
    u0: torch.Tensor,
    device: torch.device,
    *,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    progress: bool,
    target_accept_prob: float,
    max_tree_depth: int,
    step_size: float,
    mp_context: str | None,
) -> MCMC:
    """The ``MCMC(NUTS(potential))`` run of :func:`nuts_ppd`, started at ``u0``."""
    interactive = _is_tty(sys.stderr) or _in_notebook()
    plain = progress and not interactive and num_chains == 1
    kernel = NUTS(
        potential_fn=potential,
        step_size=step_size,
        adapt_step_size=True,
        adapt_mass_matrix=True,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
    )
    return MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=num_warmup,
        num_chains=num_chains,
        initial_params={FLAT: u0},
        # Pyro's tqdm bar where someone watches; plain lines in logs (one chain)
        disable_progbar=not (progress and interactive),
        hook_fn=_PlainLines(num_warmup + num_samples) if plain else None,
        # forked workers cannot re-initialise CUDA
        mp_context=mp_context or ("spawn" if device.type == "cuda" and num_chains > 1 else None),
        transforms={},
    )


@dataclass
class NUTSInfo:
    """Diagnostics of a NUTS run, judged over chains on the quantities the PPD is made of.

    The functionals are the per-draw predictive output :math:`f_{w_s}(x_*)` at every query
    point and the training log-likelihood :math:`\\sum_i \\log p(y_i \\mid f_{w_s}(x_i))`
    (per weight coordinate diagnostics mean little for a BNN: hidden units are exchangeable,
    so chains may sit in permuted copies of the same mode). ``report`` is
    :func:`pyrobayes.diagnostics.summarize` of them: rank-normalised split R-hat, bulk and
    tail ESS, and a verdict (converged needs at least 2 chains).

    * ``max_r_hat``, ``min_ess`` (bulk), ``min_ess_tail``, ``converged``, ``verdict``: from
      ``report``; ``num_chains``;
    * ``draws``: the constrained ``{site: Tensor[chains * draws, *shape]}`` (chain-major);
    * ``mcmc``: Pyro's ``MCMC`` object (``None`` for another backend); ``backend``;
      ``num_grads``: gradient evaluations of all chains, warm-up included (NumPyro backend;
      ``None`` on Pyro's, which does not report them).

    Example::

        >>> import torch
        >>> from pyrobayes import BayesianModel, Gaussian, NormalPrior, to_pyro
        >>> from pyrobayes.infer.nuts.sampler import nuts_ppd
        >>> net = to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0), name="lin")
        >>> model = BayesianModel(net, Gaussian(0.3))
        >>> x = torch.linspace(-2, 2, 20)[:, None]
        >>> ppd, info = nuts_ppd(model, x, 0.8 * x[:, 0] - 0.3, torch.zeros(1, 1),
        ...                      num_warmup=100, num_samples=100, num_chains=2, progress=False,
        ...                      seed=0, return_mcmc=True)
        >>> {k: tuple(v.shape) for k, v in info.draws.items()}
        {'lin.net.weight': (200, 1, 1), 'lin.net.bias': (200, 1)}
        >>> info.num_chains, info.max_r_hat < 1.05, info.min_ess > 50
        (2, True, True)
        >>> # the posterior means recover the line (the posterior std is ~0.06)
        >>> round(float(info.draws["lin.net.weight"].mean()), 1)
        0.8
        >>> round(float(info.draws["lin.net.bias"].mean()), 1)
        -0.3
    """

    report: ConvergenceReport
    draws: dict[str, torch.Tensor]
    mcmc: MCMC | None = None
    backend: str = "pyro"
    num_grads: int | None = None

    @property
    def max_r_hat(self) -> float:
        return self.report.max_rhat

    @property
    def min_ess(self) -> float:
        return self.report.min_ess_bulk

    @property
    def min_ess_tail(self) -> float:
        return self.report.min_ess_tail

    @property
    def converged(self) -> bool:
        return self.report.converged

    @property
    def verdict(self) -> str:
        return self.report.verdict

    @property
    def num_chains(self) -> int:
        return self.report.num_chains

    @classmethod
    def from_draws(
        cls,
        draws: dict[str, torch.Tensor],
        outputs: torch.Tensor,
        log_lik: torch.Tensor,
        mcmc: MCMC | None = None,
        backend: str = "pyro",
        num_grads: int | None = None,
    ) -> NUTSInfo:
        """From the per-chain predictive ``outputs`` ``[C, S, Q]`` and training
        log-likelihoods ``log_lik`` ``[C, S]``."""
        report = summarize({"f(x*)": outputs.detach(), "log_lik": log_lik.detach()})
        return cls(report=report, draws=draws, mcmc=mcmc, backend=backend, num_grads=num_grads)

    def get_samples(self) -> dict[str, torch.Tensor]:
        """The constrained draws (what ``MCMC.get_samples`` would give on the traced model)."""
        return self.draws


def nuts_diagnostics(info: NUTSInfo) -> dict[str, float]:
    """The columns a comparison table shows next to the NUTS row (``compare_ppds``'s
    ``diagnostics``): max R-hat, min bulk and tail ESS, the number of chains.

    Example::

        >>> import torch
        >>> from pyrobayes.diagnostics import summarize
        >>> g = torch.Generator().manual_seed(0)
        >>> report = summarize({"f(x*)": torch.randn(4, 200, 3, generator=g)})
        >>> info = NUTSInfo(report=report, draws={})
        >>> sorted(nuts_diagnostics(info)), nuts_diagnostics(info)["chains"]
        (['chains', 'ess', 'ess_tail', 'r_hat'], 4.0)
    """
    return {
        "r_hat": info.max_r_hat,
        "ess": info.min_ess,
        "ess_tail": info.min_ess_tail,
        "chains": float(info.num_chains),
    }


def _checked_potential(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Potential:
    """The trace-free potential where it is the model's own log joint (checked once against
    the setup trace), else Pyro's traces of the model, said once."""
    potential = Potential(model, x, y)
    reason = potential.verify()
    if reason is None:
        _check_latent_sites(model, potential)
        return potential
    warn_fallback(reason, "Pyro's traces of the model for NUTS")
    return TracedPotential.from_potential(potential)


def _check_latent_sites(model: torch.nn.Module, potential: Potential) -> None:
    """The non-weight latent sites of the trace must be the likelihood's declared
    ``latent_sites``: the PPD needs their draws, and only the likelihood knows how to use them."""
    declared = tuple(model.likelihood.latent_sites)
    undeclared = [s for s in potential.extra_sites if s not in declared]
    absent = [s for s in declared if s not in potential.extra_sites]
    if undeclared or absent:
        raise ValueError(
            f"{type(model.likelihood).__name__} samples latent site(s) {potential.extra_sites} "
            f"but declares latent_sites={declared}; its latent_sites property must name every "
            "latent sample site of the likelihood (and ppd_from_draws must turn their draws "
            "into the PPD)"
        )


def _ppd(
    model: torch.nn.Module, out: torch.Tensor, draws: dict[str, torch.Tensor]
) -> NormalMixturePPD | CategoricalPPD:
    """The mixture over draws, by the likelihood's own API (a latent noise scale varies per
    draw, so each mixture component gets its own)."""
    lik = model.likelihood
    if not lik.latent_sites:
        return lik.ppd(out)
    return lik.ppd_from_draws(out, draws)


def _initial_values(potential: Potential, init: Any, map_steps: int) -> dict[str, torch.Tensor]:
    """Constrained starting values: the given weights (dict of sites, or a network with the
    converted net's parameter names), else the prior draw of the setup trace; then
    ``map_steps`` of Adam on the potential (a MAP start, where the posterior mass is)."""
    values = dict(potential.init_values)
    if init is not None:
        if isinstance(init, torch.nn.Module):
            params = dict(init.named_parameters())
            for site, path in potential.weight_paths.items():
                if path not in params:
                    raise ValueError(f"init network has no parameter {path!r} (site {site!r})")
                values[site] = params[path].detach().to(values[site])
        elif isinstance(init, dict):
            unknown = [k for k in init if k not in values]
            if unknown:
                raise ValueError(
                    f"init has unknown sites {unknown[:3]}; latent sites are {list(values)[:3]} ..."
                )
            values.update({k: torch.as_tensor(v).detach().to(values[k]) for k, v in init.items()})
        else:
            raise ValueError(
                f"init must be a dict of site values or an nn.Module, got {type(init).__name__}"
            )
        for k, v in values.items():
            if v.shape != potential.init_values[k].shape:
                raise ValueError(
                    f"init for {k!r} has shape {tuple(v.shape)}, expected {tuple(potential.init_values[k].shape)}"
                )
    if map_steps > 0:
        u = {
            s: t.detach().clone().requires_grad_(True)
            for s, t in potential.unconstrain(values).items()
        }
        opt = torch.optim.Adam(list(u.values()), lr=1e-2)
        for _ in range(map_steps):
            opt.zero_grad()
            potential(u).backward()
            opt.step()
        values = potential.constrain({s: t.detach() for s, t in u.items()})
    return values
