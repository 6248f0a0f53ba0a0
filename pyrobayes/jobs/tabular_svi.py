"""The SVI (MOPED) recipe of the real-data job: one fit, and its choice on training rows.

The job's SVI row is a mean-field Normal guide started at an early-stopped MLP
(:class:`~pyrobayes.guides.MOPEDNormal`, loc = MLP weights, scale = ``delta`` x |w|) on the
shared model :func:`~pyrobayes.models.tabular_regression_model` (fan-in Normal priors,
latent LogNormal noise std). SVI maximises the tempered ELBO

.. math::

    \\mathcal L_\\beta(q) = \\mathbb E_q\\big[\\log p(y \\mid x, w, \\sigma)\\big]
        - \\beta\\, \\mathrm{KL}\\big(q(w, \\sigma)\\,\\|\\,p(w, \\sigma)\\big),

with :math:`\\beta` the KL weight (``fit(kl_weight=...)``); :math:`\\beta = 1` is the ELBO.
With a few hundred rows and ~3,000 weights the KL of a mean-field posterior under the
fan-in prior outweighs the likelihood: :math:`\\beta = 1` pulls the means towards 0 and the
scales towards the prior, the fit gets worse than the MLP it started from and the noise
std grows to explain the misfit (the over-dispersion of issue 21;
``benchmarks/svi_recipe_study.py`` measures it). :class:`SVIRecipe` holds the knobs,
:func:`fit_svi_moped` runs one recipe and :func:`select_svi_recipe` chooses one from a
small grid on an inner validation split of the training rows (never the test rows).

Example::

    >>> SVIRecipe(kl_weight=0.1).layers, SVILayers.parse("last")
    (<SVILayers.ALL: 'all'>, <SVILayers.LAST: 'last'>)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from pyrobayes.infer.fit import LRSchedule
from pyrobayes.options import Option

__all__ = [
    "DEFAULT_DELTAS",
    "SVILayers",
    "SVIRecipe",
    "SVISelection",
    "fit_svi_moped",
    "select_svi_recipe",
    "job_svi",
    "svi_model",
    "svi_nll",
]

# The MOPED deltas the real-data job chooses from on an inner validation split (issue 21,
# benchmarks/svi_recipe_study.py): the best one ranges from 0.003 (energy) over 0.01 (yacht)
# to 0.1 (wine-quality-red), and no single one is as good as the MLP on all three.
DEFAULT_DELTAS = (0.003, 0.01, 0.03, 0.1)


class SVILayers(Option):
    """Which weights of the MLP are Bayesian: ``"all"``, or ``"last"`` (the output layer;
    the hidden layers stay at the MLP's weights, fixed features).

    Example::

        >>> SVILayers.parse("all") is SVILayers.ALL
        True
    """

    ALL = "all"
    LAST = "last"


@dataclass(frozen=True)
class SVIRecipe:
    """One SVI (MOPED) setting.

    Attributes:
        kl_weight: :math:`\\beta` of the tempered ELBO (module docstring), in (0, 1].
        delta: MOPED's relative initial scale, ``scale = delta * |w|``.
        layers: :class:`SVILayers`, which weights are Bayesian.
        steps: full-batch Adam steps.
        lr: Adam step size.
        lr_schedule: a :class:`~pyrobayes.infer.fit.LRSchedule` name, ``"cosine"`` by
            default (the step size decays to 0 over ``steps``, so the fit ends at an average
            of the last iterates, not at one noisy single-sample step) or ``"constant"``.

    Example::

        >>> SVIRecipe(kl_weight=0.0)
        Traceback (most recent call last):
        ...
        ValueError: SVI kl_weight must be in (0, 1], got 0.0
    """

    kl_weight: float = 1.0
    delta: float = 0.1
    layers: SVILayers | str = SVILayers.ALL
    steps: int = 2000
    lr: float = 1e-3
    noise_prior_scale: float | None = None
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        if not 0.0 < self.kl_weight <= 1.0:
            raise ValueError(f"SVI kl_weight must be in (0, 1], got {self.kl_weight}")
        if not (self.delta > 0 and math.isfinite(self.delta)):
            raise ValueError(f"SVI delta must be positive and finite, got {self.delta}")
        if int(self.steps) < 1:
            raise ValueError(f"SVI steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"SVI lr must be positive, got {self.lr}")
        if self.noise_prior_scale is not None and not self.noise_prior_scale > 0:
            raise ValueError(
                f"SVI noise_prior_scale must be positive or None, got {self.noise_prior_scale}"
            )
        object.__setattr__(self, "layers", SVILayers.parse(self.layers, "SVI layers"))
        object.__setattr__(
            self, "lr_schedule", LRSchedule.parse(self.lr_schedule, "SVI lr_schedule").value
        )

    def label(self) -> str:
        """A short name, e.g. ``"beta=0.1,delta=0.1,all"``."""
        noise = "" if self.noise_prior_scale is None else f",noise-prior={self.noise_prior_scale:g}"
        lr = "" if self.lr_schedule == LRSchedule.COSINE.value else f",lr-{self.lr_schedule}"
        return f"beta={self.kl_weight:g},delta={self.delta:g},{self.layers.value}{noise}{lr}"


def svi_model(
    mlp: torch.nn.Module,
    layers: SVILayers | str = SVILayers.ALL,
    noise: float | None = None,
    noise_prior_scale: float | None = None,
):
    """The Bayesian model around a copy of ``mlp``: :func:`~pyrobayes.models.
    tabular_regression_model` for ``layers="all"``; for ``"last"`` the same priors and
    noise on the output layer only, the hidden layers frozen at the MLP's weights.
    ``noise_prior_scale``: the noise prior LogNormal(log ``noise``, that scale) instead of the
    shared one.

    Example::

        >>> from pyrobayes.convert import bayesian_sites
        >>> from pyrobayes.models.mlp import MLP
        >>> model = svi_model(MLP(3, (50, 50), 1, "tanh"), "last")
        >>> [s.split(".")[-2:] for s in bayesian_sites(model)]  # the output layer, net[4]
        [['4', 'weight'], ['4', 'bias']]
    """
    from pyrobayes.bayesian_model import BayesianModel
    from pyrobayes.convert import to_pyro
    from pyrobayes.likelihoods import Gaussian
    from pyrobayes.models import tabular_regression_model
    from pyrobayes.models.tabular import TABULAR_REGRESSION, tabular_noise_prior
    from pyrobayes.priors import LayerwiseNormalPrior

    net = copy.deepcopy(mlp)
    layers = SVILayers.parse(layers, "SVI layers")
    d = net[0].in_features
    noise_prior = (
        tabular_noise_prior()
        if noise_prior_scale is None
        else tabular_noise_prior(math.log(noise), noise_prior_scale)
    )
    if layers is SVILayers.ALL:
        return tabular_regression_model(d, net=net, noise_prior=noise_prior)
    last = str(len(net) - 1)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(last + "."))
    cfg = TABULAR_REGRESSION
    prior = LayerwiseNormalPrior(scale=cfg["weight_scale"], bias_scale=cfg["bias_scale"])
    bnn = to_pyro(net, prior=prior, include=last)
    return BayesianModel(bnn, Gaussian(noise_prior=noise_prior))


def fit_svi_moped(
    x: torch.Tensor,
    y: torch.Tensor,
    mlp: torch.nn.Module,
    noise: float,
    recipe: SVIRecipe = SVIRecipe(),
    seed: int = 0,
    progress: bool = False,
) -> tuple[Any, Any]:
    """SVI with a MOPED guide around ``mlp`` on ``(x, y)`` (full batch), the noise site
    started at ``noise``, maximising the tempered ELBO of the module docstring with the
    recipe's :math:`\\beta`; returns ``(model, guide)``.

    Example::

        >>> from pyrobayes.models.mlp import MLP
        >>> x, y = torch.randn(30, 2), torch.randn(30)
        >>> model, guide = fit_svi_moped(x, y, MLP(2, (50, 50), 1, "tanh"), 0.5,
        ...                              SVIRecipe(delta=0.01, steps=3))
        >>> float(guide.median(x)[model.likelihood.noise_site]) > 0
        True
    """
    import pyro

    from pyrobayes.guides import MOPEDNormal
    from pyrobayes.infer import fit

    model = svi_model(mlp, recipe.layers, noise, recipe.noise_prior_scale)
    guide = MOPEDNormal(model, delta=recipe.delta, init_values={model.likelihood.noise_site: noise})
    pyro.set_rng_seed(seed)
    fit(
        model,
        guide,
        (x, y),
        epochs=int(recipe.steps),
        batch_size=len(x),
        lr=recipe.lr,
        lr_schedule=recipe.lr_schedule,
        kl_weight=recipe.kl_weight,
        progress=progress,
        seed=seed,
    )
    return model, guide


def svi_nll(model: Any, guide: Any, x: torch.Tensor, y: torch.Tensor, num_samples: int) -> float:
    """Mean negative log predictive density of ``(x, y)`` under the fitted pair,
    :math:`-\\frac1m\\sum_i \\log \\frac1S\\sum_s p(y_i \\mid x_i, w_s, \\sigma_s)` over ``S =
    num_samples`` guide draws.

    Example::

        >>> from pyrobayes.models.mlp import MLP
        >>> x, y = torch.randn(30, 2), torch.randn(30)
        >>> model, guide = fit_svi_moped(x, y, MLP(2, (50, 50), 1, "tanh"), 1.0,
        ...                              SVIRecipe(steps=3))
        >>> 0 < svi_nll(model, guide, x, y, num_samples=20) < 5
        True
    """
    from pyrobayes.infer import PosteriorPredictive

    with torch.no_grad():
        ppd = PosteriorPredictive(model, guide, num_samples=num_samples)(x)
        return float(-ppd.log_prob(y).mean())


def check_deltas(deltas: Sequence[float]) -> tuple[float, ...]:
    """``deltas`` as a non-empty tuple of positive finite floats, else a ``ValueError``."""
    out = tuple(float(d) for d in deltas)
    if not out or not all(d > 0 and math.isfinite(d) for d in out):
        raise ValueError(f"svi-deltas must be one or more positive finite numbers, got {deltas}")
    return out


@dataclass(frozen=True)
class SVISelection:
    """What :func:`select_svi_recipe` chose: ``recipe``, and ``scores`` (each candidate's
    label -> inner-validation NLL, standardised units), ``n_fit``/``n_val`` rows, ``tried``
    (every recipe scored, in order: the candidates, then any beyond the grid's edge).

    Example::

        >>> SVISelection(SVIRecipe(), {"beta=1,delta=0.1,all": 1.2}, 80, 20).n_val
        20
    """

    recipe: SVIRecipe
    scores: dict[str, float]
    n_fit: int
    n_val: int
    tried: tuple[SVIRecipe, ...] = ()


def select_svi_recipe(
    x: torch.Tensor,
    y: torch.Tensor,
    candidates: Sequence[SVIRecipe],
    *,
    val_fraction: float = 0.2,
    mlp_steps: int = 2000,
    num_samples: int = 200,
    seed: int = 0,
    extend: int = 0,
    extend_factor: float = math.sqrt(10.0),
) -> SVISelection:
    """Choose the SVI recipe on the training rows ``(x, y)`` only.

    A seeded ``val_fraction`` of the rows is held out; on the rest the job's MLP is fitted
    (:func:`~pyrobayes.jobs.tabular_regression.fit_mlp_heldout`: early-stopped, held-out noise) and
    each candidate's SVI started from it; the candidate with the lowest mean negative log
    predictive density of the held-out rows wins (ties: the earlier one). The caller then
    fits the winner on all of ``(x, y)``. Test rows never reach this function.

    A grid can be too narrow for a data set: with naval's near-noiseless target the smallest
    delta (0.003) already blurs the MLP's predictions more than its noise (inner-validation
    NLL -1.53 vs the MLP's -1.62, while 0.0003 reaches -1.97). So when the winner is the
    smallest or the largest delta of the candidates, up to ``extend`` more deltas are tried
    beyond that edge, each ``extend_factor`` further out, while the score keeps improving
    (a coarse line search on the same held-out rows).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(60, 2, generator=g)
        >>> y = x[:, 0] + 0.3 * torch.randn(60, generator=g)
        >>> grid = [SVIRecipe(delta=d, steps=20) for d in (0.01, 0.1)]
        >>> sel = select_svi_recipe(x, y, grid, mlp_steps=50, num_samples=20)
        >>> sel.recipe in grid, sel.n_fit, sel.n_val
        (True, 48, 12)
    """
    from pyrobayes.jobs.tabular_regression import fit_mlp_heldout

    candidates = list(candidates)
    if not candidates:
        raise ValueError("select_svi_recipe needs at least one candidate recipe")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(x)
    n_val = max(2, int(round(val_fraction * n)))
    if n - n_val < 4:
        raise ValueError(f"{n} training rows are too few to hold out {n_val} for the SVI choice")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, rows = perm[:n_val].to(x.device), perm[n_val:].to(x.device)
    x_fit, y_fit, x_val, y_val = x[rows], y[rows], x[val], y[val]
    mlp, noise, _ = fit_mlp_heldout(x_fit, y_fit, mlp_steps, seed)
    scores: dict[str, float] = {}
    tried: list[SVIRecipe] = []

    def score(recipe: SVIRecipe) -> float:
        tried.append(recipe)
        model, guide = fit_svi_moped(x_fit, y_fit, mlp, noise, recipe, seed=seed)
        nll = svi_nll(model, guide, x_val, y_val, num_samples)
        scores[recipe.label()] = nll if math.isfinite(nll) else math.inf
        return scores[recipe.label()]

    for recipe in candidates:
        score(recipe)
    best = min(candidates, key=lambda r: scores[r.label()])
    best = _extend_delta(best, candidates, scores, score, extend, extend_factor)
    return SVISelection(best, scores, n - n_val, n_val, tuple(tried))


def _extend_delta(
    best: SVIRecipe,
    candidates: list[SVIRecipe],
    scores: dict[str, float],
    score: Any,
    extend: int,
    factor: float,
) -> SVIRecipe:
    """``best``, or a recipe beyond the grid's edge in delta that scores better
    (:func:`select_svi_recipe`); ``score(recipe)`` fits, scores and records one."""
    deltas = sorted({r.delta for r in candidates})
    if extend <= 0 or len(deltas) < 2 or best.delta not in (deltas[0], deltas[-1]):
        return best
    if not factor > 1.0:
        raise ValueError(f"extend_factor must be > 1, got {factor}")
    step = 1.0 / factor if best.delta == deltas[0] else factor
    for _ in range(int(extend)):
        trial = replace(best, delta=best.delta * step)
        if not score(trial) < scores[best.label()]:
            break
        best = trial
    return best


def job_svi(
    x: torch.Tensor,
    y: torch.Tensor,
    mlp: torch.nn.Module,
    noise: float,
    *,
    delta: float | None,
    deltas: Sequence[float] = DEFAULT_DELTAS,
    val_fraction: float = 0.2,
    extend: int = 2,
    steps: int = 2000,
    lr: float = 1e-3,
    lr_schedule: str = "cosine",
    mlp_steps: int = 2000,
    num_samples: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """The real-data job's SVI row on the training rows ``(x, y)``: MOPED around ``mlp``
    (fitted on these rows, held-out ``noise``) with ``delta``, or, for ``delta=None``, the
    delta of ``deltas`` that :func:`select_svi_recipe` chooses on an inner ``val_fraction``
    of these rows (up to ``extend`` more beyond the grid's edge while they score better; one
    candidate: no choice to make), then fitted on all of them. Returns
    ``(model, guide, info)``, ``info`` = ``{"delta", "chosen_on"}`` (+ ``"scores"``).

    Example::

        >>> from pyrobayes.jobs.tabular_regression import fit_mlp_heldout
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(50, 2, generator=g)
        >>> y = x[:, 0] + 0.3 * torch.randn(50, generator=g)
        >>> mlp, noise, _ = fit_mlp_heldout(x, y, 30, seed=0)
        >>> model, guide, info = job_svi(x, y, mlp, noise, delta=None, deltas=(0.01, 0.1),
        ...                              extend=0, steps=5, mlp_steps=30, num_samples=10)
        >>> info["delta"] in (0.01, 0.1), sorted(info["scores"]), info["chosen_on"]
        (True, ['0.01', '0.1'], 'inner validation, 10 of 50 training rows')
    """
    base = SVIRecipe(steps=steps, lr=lr, lr_schedule=lr_schedule)
    info: dict[str, Any] = {}
    if delta is None and len(check_deltas(deltas)) > 1:
        grid = [replace(base, delta=d) for d in check_deltas(deltas)]
        sel = select_svi_recipe(
            x,
            y,
            grid,
            val_fraction=val_fraction,
            mlp_steps=mlp_steps,
            num_samples=num_samples,
            seed=seed,
            extend=extend,
        )
        recipe = sel.recipe
        # the grid's deltas and any tried beyond its edge, in the order they were scored
        info["scores"] = {f"{r.delta:g}": sel.scores[r.label()] for r in sel.tried}
        info["chosen_on"] = f"inner validation, {sel.n_val} of {len(x)} training rows"
    else:
        recipe = replace(base, delta=delta if delta is not None else check_deltas(deltas)[0])
        info["chosen_on"] = "given"
    info["delta"] = recipe.delta
    model, guide = fit_svi_moped(x, y, mlp, noise, recipe, seed=seed, progress=progress)
    return model, guide, info
