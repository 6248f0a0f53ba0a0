"""An optional JAX/NumPyro backend for the NUTS reference (extra ``nuts``: jax, numpyro).

:func:`jax_log_density` rebuilds the log joint of a :class:`~pyrobayes.bayesian_model.BayesianModel`
as ONE jittable JAX function of a flat unconstrained vector ``u``,

.. math:: \\log p(u) = \\sum_k \\log \\mathcal N(w_k; m_k, s_k^2)
          + \\log p_\\sigma(e^{u_\\sigma}) + u_\\sigma
          + \\sum_{i=1}^N \\log p(y_i \\mid f_w(x_i), \\sigma),

the same number as minus ``pyrobayes.infer.nuts.potential.Potential`` (the torch potential
``nuts_ppd`` uses; a test checks value and gradient at random points), for the models the
comparison uses: a plain ``nn.Sequential`` of ``nn.Linear`` and element-wise activations,
Normal priors on the weight sites (deterministic parameters are constants), and a Gaussian
likelihood with a fixed (or learned, then held) scale or a latent noise std on its log
scale, or a Categorical likelihood. Anything else raises ``NotImplementedError`` naming
what it cannot express; the caller falls back to the torch potential.

:func:`numpyro_nuts` runs NumPyro's NUTS kernel (its functional ``hmc`` API) on it, several
chains vectorised in one compiled XLA loop on one device, and returns the draws in the torch
site layout.

Example (the log joint of the default 1-D model at a prior draw)::

    >>> import torch
    >>> from pyrobayes.models.mlp import default_regression_model
    >>> from pyrobayes.infer.nuts.jax_potential import jax_log_density
    >>> model = default_regression_model(name="reg")
    >>> x = torch.linspace(-1, 1, 10)[:, None]
    >>> dens = jax_log_density(model, x, torch.sin(3 * x[:, 0]))
    >>> dens.dim, [s.name for s in dens.sites][:2]
    (2701, ['reg.net.0.weight', 'reg.net.0.bias'])
    >>> bool(dens.log_density(dens.sample_prior(1)[0]) < 0)
    True
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from torch import nn
from torch.distributions import biject_to, constraints

from pyrobayes._pyro_compat import is_subsample
from pyrobayes.convert import _converted_root, bayesian_sites
from pyrobayes.infer.twin import fixed_tensors, linear_chain
from pyrobayes.likelihoods import Categorical, Gaussian

__all__ = [
    "CompiledNUTS",
    "JaxLogDensity",
    "JaxSite",
    "NumpyroNUTSResult",
    "available",
    "compile_nuts",
    "jax_log_density",
    "numpyro_nuts",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def available() -> bool:
    """Whether the ``nuts`` extra (jax, numpyro) is installed.

    Example::

        >>> isinstance(available(), bool)
        True
    """
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("jax", "numpyro"))


def _require_jax():
    try:
        import jax
        import numpyro  # noqa: F401
    except ImportError as err:  # pragma: no cover - the extra is installed in the dev setup
        raise ImportError(
            "the NumPyro NUTS backend needs jax and numpyro: pip install 'pyrobayes[nuts]'"
        ) from err
    return jax


@dataclass(frozen=True)
class JaxSite:
    """One latent site's slice ``[start, stop)`` of the flat vector; ``positive``: sampled on
    the log scale (``value = exp(u)``, the bijection ``biject_to`` gives a positive support).

    Example::

        >>> import torch
        >>> from pyrobayes.models.tabular import tabular_regression_model
        >>> from pyrobayes.infer.nuts.jax_potential import jax_log_density
        >>> model = tabular_regression_model(2, name="tab")
        >>> dens = jax_log_density(model, torch.zeros(4, 2), torch.zeros(4))
        >>> dens.sites[0]
        JaxSite(name='tab.net.0.weight', shape=(50, 2), start=0, stop=100, positive=False)
        >>> dens.sites[-1]
        JaxSite(name='tab.likelihood.noise_scale', shape=(), start=2751, stop=2752, positive=True)
    """

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int
    positive: bool = False


@dataclass
class JaxLogDensity:
    """The log joint as a JAX function of one flat unconstrained vector, and its layout.

    * ``log_density(u)``: ``u`` ``[dim]`` -> scalar (jittable, differentiable);
      ``potential(u) = -log_density(u)`` is what NUTS takes.
    * ``sites``: the flat layout (weight sites in trace order, then the likelihood's latent
      sites); ``pack``/``unpack`` map torch values (constrained) to and from it.
    * ``x64``: the model is float64, so evaluate inside ``jax.enable_x64(True)``
      (:meth:`precision` is that context; ``numpyro_nuts`` enters it).
    * ``prior_std``: per coordinate, the prior std on the unconstrained scale (the Normal
      prior's std of a weight, 1 for a positive site), the unit of :func:`numpyro_nuts`'s
      start jitter (the torch path's ``Potential.prior_scale``).

    Example::

        >>> import torch
        >>> from pyrobayes import BayesianModel, Gaussian, NormalPrior, to_pyro
        >>> model = BayesianModel(to_pyro(torch.nn.Linear(2, 1), prior=NormalPrior(1.0),
        ...                               name="lin"), Gaussian(0.3))
        >>> dens = jax_log_density(model, torch.zeros(5, 2), torch.zeros(5))
        >>> dens.dim, [(s.name, tuple(s.shape)) for s in dens.sites]
        (3, [('lin.net.weight', (1, 2)), ('lin.net.bias', (1,))])
    """

    log_density: Callable[[Any], Any]
    sites: tuple[JaxSite, ...]
    dim: int
    dtype: torch.dtype
    device: torch.device
    prior_std: np.ndarray
    sample_prior: Callable[[int, torch.Generator | None], np.ndarray] = field(repr=False)

    @property
    def x64(self) -> bool:
        return self.dtype == torch.float64

    def precision(self) -> contextlib.AbstractContextManager:
        """``jax.enable_x64`` for a float64 model (scoped: other users of jax are unaffected)."""
        jax = _require_jax()
        return jax.enable_x64(True) if self.x64 else contextlib.nullcontext()

    def potential(self, u):
        return -self.log_density(u)

    def pack(self, values: Mapping[str, torch.Tensor]) -> np.ndarray:
        """``{site: constrained value [*batch, *shape]}`` -> flat unconstrained ``[*batch, dim]``."""
        missing = [s.name for s in self.sites if s.name not in values]
        if missing:
            raise ValueError(f"missing latent sites {missing[:3]}")
        first = torch.as_tensor(values[self.sites[0].name])
        batch = first.shape[: first.dim() - len(self.sites[0].shape)]
        parts = []
        for s in self.sites:
            v = torch.as_tensor(values[s.name]).detach().to("cpu", torch.float64)
            if v.shape != (*batch, *s.shape):
                raise ValueError(
                    f"value of {s.name!r} has shape {tuple(v.shape)}, expected {(*batch, *s.shape)}"
                )
            v = v.log() if s.positive else v
            parts.append(v.reshape(*batch, s.stop - s.start))
        return torch.cat(parts, -1).numpy().astype(_np_dtype(self.dtype))

    def unpack(self, flat: Any) -> dict[str, torch.Tensor]:
        """Flat unconstrained ``[*batch, dim]`` -> ``{site: constrained torch tensor}`` on the
        model's device and dtype."""
        arr = torch.from_numpy(np.array(flat)).to(self.device, self.dtype)
        if arr.shape[-1] != self.dim:
            raise ValueError(f"flat latent vector must end in {self.dim}, got {tuple(arr.shape)}")
        batch = arr.shape[:-1]
        out = {}
        for s in self.sites:
            v = arr[..., s.start : s.stop].reshape((*batch, *s.shape))
            out[s.name] = v.exp() if s.positive else v
        return out


def _np_dtype(dtype: torch.dtype):
    if dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(
            f"the JAX backend evaluates float32 or float64 models, got {dtype}"
        )
    return np.float64 if dtype == torch.float64 else np.float32


def _activation(module: nn.Module):
    """The JAX version of an element-wise layer, or ``NotImplementedError``."""
    import jax
    import jax.numpy as jnp

    t = type(module)
    if t in (nn.Identity,) or isinstance(module, nn.modules.dropout._DropoutNd):
        return lambda h: h  # eval mode: the potential is deterministic
    simple = {
        nn.Tanh: jnp.tanh,
        nn.ReLU: jax.nn.relu,
        nn.Sigmoid: jax.nn.sigmoid,
        nn.SiLU: jax.nn.silu,
    }
    if t in simple:
        return simple[t]
    if t is nn.GELU:
        approx = module.approximate == "tanh"
        return lambda h: jax.nn.gelu(h, approximate=approx)
    if t is nn.LeakyReLU:
        slope = float(module.negative_slope)
        return lambda h: jax.nn.leaky_relu(h, slope)
    if t is nn.ELU:
        alpha = float(module.alpha)
        return lambda h: jax.nn.elu(h, alpha)
    raise NotImplementedError(
        f"the JAX backend has no {t.__name__} layer (supported: Linear, Tanh, ReLU, Sigmoid, "
        "GELU, SiLU, LeakyReLU, ELU, Identity, Dropout); use the torch potential"
    )


def _normal_prior(site: str, d, shape: torch.Size) -> tuple[np.ndarray, np.ndarray]:
    """Per-element ``(loc, scale)`` of a Normal prior on a real support, flattened."""
    base = d.base_dist if isinstance(d, torch.distributions.Independent) else d
    support = d.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if not (
        type(base).__name__ == "Normal" and support is constraints.real and d.event_shape == shape
    ):
        raise NotImplementedError(
            f"the JAX backend needs a Normal prior over the whole of site {site!r}, "
            f"got {type(base).__name__} with event shape {tuple(d.event_shape)}; use the torch potential"
        )
    loc, scale = torch.broadcast_tensors(base.loc.detach(), base.scale.detach())
    loc, scale = loc.expand(shape), scale.expand(shape)
    return loc.reshape(-1).double().cpu().numpy(), scale.reshape(-1).double().cpu().numpy()


def _positive_prior_fn(site: str, d):
    """``log p(sigma)`` in JAX as a function of ``log sigma`` for a latent positive scalar (a
    noise std, a logit scale; LogNormal, HalfNormal), checked to be sampled as ``exp(u)``
    like ``biject_to`` does in torch."""
    import jax.numpy as jnp

    t = biject_to(d.support)
    u = torch.tensor([-1.2, 0.3], dtype=torch.float64)
    v = t(u)
    if not (torch.allclose(v, u.exp()) and torch.allclose(t.log_abs_det_jacobian(u, v), u)):
        raise NotImplementedError(
            f"site {site!r}: the JAX backend samples positive sites as exp(u), but "
            f"biject_to({d.support}) is {t}; use the torch potential"
        )
    name = type(d).__name__
    if name == "LogNormal":
        m, s = float(d.loc), float(d.scale)
        c = -math.log(s) - _HALF_LOG_2PI

        def log_p(log_sigma):
            return c - log_sigma - 0.5 * ((log_sigma - m) / s) ** 2

        return log_p
    if name == "HalfNormal":
        s = float(d.scale)
        c = math.log(2.0) - math.log(s) - _HALF_LOG_2PI

        def log_p(log_sigma):
            return c - 0.5 * (jnp.exp(log_sigma) / s) ** 2

        return log_p
    raise NotImplementedError(
        f"the JAX backend has no {name} prior for site {site!r} (LogNormal, HalfNormal); "
        "use the torch potential"
    )


def _trace_latents(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One trace of the model in eval mode: ``{site: (prior, value)}`` of its latent sites.
    The caller's RNG is left as it was (only the priors are read), so a seeded ``nuts_ppd``
    draws the same chains whether the density was built inside it or ahead
    (:func:`compile_nuts`)."""
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            tr = poutine.trace(model).get_trace(x, y=y)
    finally:
        model.train(was_training)
    out = {}
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if is_subsample(site):
            continue
        out[name] = (site["fn"], site["value"].detach())
    return out


def _layers(model: nn.Module, x: torch.Tensor, sites: Mapping[str, list[str]]):
    """``[(kind, payload)]``: ``("linear", (weight source, bias source, out_features))`` with a
    source ``("site", name)`` / ``("const", array)`` / ``None``; ``("act", fn)``."""
    net, _ = _converted_root(model)
    chain = linear_chain(model, x)  # a bare nn.Linear is a chain of one layer, path ""
    if chain is None:
        raise NotImplementedError(
            "the JAX backend needs the network to be a plain nn.Sequential of nn.Linear and "
            "element-wise layers on one 2-D float input with the default output map; "
            f"got {type(net._pyrobayes_twin).__name__}; use the torch potential"
        )
    by_path = {p: s for s, paths in sites.items() for p in paths}
    fixed = fixed_tensors(net)
    dtype = _np_dtype(x.dtype)

    def source(key):
        if key in by_path:
            return ("site", by_path[key])
        t = fixed.get(key)
        return None if t is None else ("const", t.detach().cpu().numpy().astype(dtype))

    layers = []
    for name, m in chain:
        if type(m) is nn.Linear:
            prefix = f"{name}." if name else ""
            w = source(f"{prefix}weight")
            if w is None:
                raise NotImplementedError(f"layer {name!r}: no weight found")
            layers.append(("linear", (w, source(f"{prefix}bias"))))
        else:
            layers.append(("act", _activation(m)))
    return layers, chain[max(i for i, (_, m) in enumerate(chain) if type(m) is nn.Linear)][1]


def _likelihood_fn(model: nn.Module, x, y, last: nn.Linear, latents: Mapping[str, tuple]):
    """``(log p(y | f, u_extra), {extra site: prior})``: the likelihood's summed term in JAX."""
    import jax
    import jax.numpy as jnp

    lik = model.likelihood
    extra = [s for s in latents if s not in bayesian_sites(model)]
    dtype = _np_dtype(x.dtype)
    if type(lik) is Categorical:
        labels = Categorical._labels(x.new_zeros(x.shape[0], last.out_features), y)
        idx = labels.cpu().numpy().astype(np.int32)[:, None]
        if not lik.latent_scale:
            if extra:
                raise NotImplementedError(f"Categorical likelihood with latent sites {extra}")

            def categorical(f, u_extra):
                return jnp.take_along_axis(jax.nn.log_softmax(f, -1), idx, -1).sum()

            return categorical, []
        if extra != [lik.scale_site]:
            raise NotImplementedError(
                f"Categorical likelihood: latent sites {extra}, expected only {lik.scale_site!r}"
            )
        log_prior_tau = _positive_prior_fn(lik.scale_site, latents[lik.scale_site][0])

        def scaled(f, u_extra):
            log_tau = u_extra[0]
            ll = jnp.take_along_axis(jax.nn.log_softmax(f * jnp.exp(log_tau), -1), idx, -1).sum()
            return ll + log_prior_tau(log_tau) + log_tau  # + log_tau: the Jacobian of exp

        return scaled, [lik.scale_site]
    if type(lik) is not Gaussian:
        raise NotImplementedError(
            f"the JAX backend has Gaussian and Categorical likelihoods, got {type(lik).__name__}"
        )
    y_np = Gaussian._squeeze(y).detach().cpu().numpy().astype(dtype)
    if last.out_features != 1 or y_np.ndim != 1:
        raise NotImplementedError(
            f"the JAX backend's Gaussian likelihood takes one output per point, got "
            f"{last.out_features} outputs and targets of shape {tuple(y.shape)}"
        )
    n = y_np.shape[0]
    if not lik.latent_noise:
        if extra:
            raise NotImplementedError(f"Gaussian likelihood with unknown latent sites {extra}")
        scale = float(lik.scale.detach())  # a learned scale is held at its value, as in torch
        const, half_prec = -n * (math.log(scale) + _HALF_LOG_2PI), 0.5 / scale**2

        def fixed(f, u_extra):
            r = f[:, 0] - y_np
            return const - half_prec * jnp.dot(r, r)

        return fixed, []
    if extra != [lik.noise_site]:
        raise NotImplementedError(
            f"Gaussian likelihood: latent sites {extra}, expected only {lik.noise_site!r}"
        )
    log_prior = _positive_prior_fn(lik.noise_site, latents[lik.noise_site][0])

    def latent(f, u_extra):
        log_sigma = u_extra[0]
        r = f[:, 0] - y_np
        # + log_sigma: the Jacobian of sigma = exp(u)
        ll = -n * (log_sigma + _HALF_LOG_2PI) - 0.5 * jnp.dot(r, r) * jnp.exp(-2 * log_sigma)
        return ll + log_prior(log_sigma) + log_sigma

    return latent, [lik.noise_site]


def jax_log_density(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> JaxLogDensity:
    """The log joint of ``model(x, y=y)`` (full data) as a JAX function of one flat
    unconstrained vector; see the module docstring for what it can express.

    Example (the same value as the torch potential, with the sign flipped)::

        >>> import torch
        >>> from pyrobayes.models.mlp import default_regression_model
        >>> from pyrobayes.infer.nuts.potential import Potential
        >>> model = default_regression_model().double()
        >>> x = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]
        >>> y = torch.sin(x[:, 0])
        >>> dens = jax_log_density(model, x, y)
        >>> pot = Potential(model, x, y)
        >>> w = pot.prior_draw()
        >>> with dens.precision():
        ...     lp = float(dens.log_density(dens.pack(w)))
        >>> abs(lp + float(pot(pot.unconstrain(w)))) < 1e-8 * abs(lp)
        True
    """
    import jax.numpy as jnp

    _require_jax()
    x = torch.as_tensor(x)
    dtype = _np_dtype(x.dtype)
    sites = bayesian_sites(model)
    layers, last = _layers(model, x, sites)
    latents = _trace_latents(model, x, y)
    loglik, extra = _likelihood_fn(model, x, y, last, latents)

    weight_sites = [s for s in latents if s in sites]
    layout, locs, scales, offset = [], [], [], 0
    for s in weight_sites:
        prior, value = latents[s]
        loc, scale = _normal_prior(s, prior, value.shape)
        layout.append(JaxSite(s, tuple(value.shape), offset, offset + value.numel()))
        locs.append(loc)
        scales.append(scale)
        offset += value.numel()
    n_w = offset
    for s in extra:
        layout.append(JaxSite(s, (), offset, offset + 1, positive=True))
        offset += 1
    loc = np.concatenate(locs) if locs else np.zeros(0)
    scale = np.concatenate(scales) if scales else np.zeros(0)
    inv_scale = (1.0 / scale).astype(dtype)
    loc_scaled = (loc / scale).astype(dtype)
    const = float(-(np.log(scale) + _HALF_LOG_2PI).sum())
    views = {s.name: (s.start, s.stop, s.shape) for s in layout}
    x_np = x.detach().cpu().numpy().astype(dtype)

    def param(src, u):
        if src is None or src[0] == "const":
            return None if src is None else src[1]
        a, b, shape = views[src[1]]
        return u[a:b].reshape(shape)

    def log_density(u):
        z = u[:n_w] * inv_scale - loc_scaled
        lp = const - 0.5 * jnp.dot(z, z)
        h = x_np
        for kind, payload in layers:
            if kind == "act":
                h = payload(h)
                continue
            w, b = param(payload[0], u), param(payload[1], u)
            h = h @ w.T
            if b is not None:
                h = h + b
        return lp + loglik(h, u[n_w:])

    prior_std = np.concatenate([scale, np.ones(len(extra))]).astype(dtype)

    def sample_prior(num: int, generator: torch.Generator | None = None) -> np.ndarray:
        """``num`` flat unconstrained prior draws ``[num, dim]``."""
        draws = {}
        for s in layout:
            prior = latents[s.name][0]
            with torch.random.fork_rng(devices=[]):
                if generator is not None:
                    torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))
                draws[s.name] = prior.sample((num,)).reshape(num, *s.shape)
        return dens.pack(draws)

    dens = JaxLogDensity(
        log_density=log_density,
        sites=tuple(layout),
        dim=offset,
        dtype=x.dtype,
        device=x.device,
        prior_std=prior_std,
        sample_prior=sample_prior,
    )
    return dens


@dataclass
class NumpyroNUTSResult:
    """What :func:`numpyro_nuts` returns.

    * ``draws``: ``{site: Tensor[chains, samples, *shape]}``, constrained, on the model's
      device and dtype (the layout ``nuts_ppd``'s torch path gives after a reshape).
    * ``flat``: the unconstrained draws ``[chains, samples, dim]`` (numpy, ``density.sites``).
    * ``log_density``: the log joint of each draw ``[chains, samples]`` (numpy).
    * ``num_steps``: gradient evaluations (leapfrog steps) per iteration ``[chains,
      warmup + samples]``; ``diverging`` ``[chains, samples]``; ``step_size`` ``[chains]``.
    * ``compile_seconds`` (tracing + XLA compilation), ``run_seconds`` (the compiled loop,
      all chains together: vectorised chains advance in lockstep, so there is no per-chain
      wall time; ``num_steps`` says how the work splits across chains).

    Example (see :func:`numpyro_nuts` for a run)::

        >>> import dataclasses
        >>> [f.name for f in dataclasses.fields(NumpyroNUTSResult)][:4]
        ['draws', 'flat', 'log_density', 'num_steps']
    """

    draws: dict[str, torch.Tensor]
    flat: np.ndarray
    log_density: np.ndarray
    num_steps: np.ndarray
    diverging: np.ndarray
    step_size: np.ndarray
    compile_seconds: float
    run_seconds: float
    density: JaxLogDensity = field(repr=False)

    @property
    def seconds(self) -> float:
        return self.compile_seconds + self.run_seconds

    @property
    def num_grads(self) -> int:
        """All gradient evaluations of the run, every chain, warmup included."""
        return int(self.num_steps.sum())


def _starts(
    dens: JaxLogDensity, init: Any, num_chains: int, init_jitter: float, seed: int
) -> np.ndarray:
    """Per-chain flat unconstrained starts ``[num_chains, dim]`` (see :func:`numpyro_nuts`)."""
    gen = torch.Generator().manual_seed(int(seed))
    if init is None:
        return dens.sample_prior(num_chains, gen)
    if isinstance(init, Mapping):
        start = dens.pack(init)
    else:
        start = np.asarray(torch.as_tensor(init).detach().cpu(), dtype=_np_dtype(dens.dtype))
        if start.shape == (num_chains, dens.dim):
            return start
    if start.shape != (dens.dim,):
        raise ValueError(
            f"init must be a dict of site values, a flat vector [{dens.dim}] or one per chain "
            f"[{num_chains}, {dens.dim}], got shape {tuple(start.shape)}"
        )
    if num_chains == 1:
        return start[None]
    noise = torch.randn(num_chains, dens.dim, generator=gen, dtype=torch.float64).numpy()
    return (start + init_jitter * dens.prior_std * noise).astype(start.dtype)


def _chain_fns(dens: JaxLogDensity, num_warmup: int, num_samples: int, kernel_kw: dict):
    """Per-chain ``init(u0, key) -> carry`` and ``run(carry, start, n) -> carry``: ``n`` NUTS
    iterations from iteration ``start``, the kept draws written into fixed-size buffers."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn=dens.potential, algo="NUTS")
    total = num_warmup + num_samples

    def init(u0, key):
        state = init_kernel(u0, num_warmup, rng_key=key, **kernel_kw)
        bufs = (
            jnp.zeros((num_samples, dens.dim), u0.dtype),
            jnp.zeros(num_samples, u0.dtype),
            jnp.zeros(num_samples, bool),
            jnp.zeros(total, jnp.int32),
        )
        return state, bufs

    def run(carry, start, n):
        def body(i, carry):
            state, (z, pe, div, steps) = carry
            state = sample_kernel(state)
            # warmup iterations write slot 0, which the first kept draw overwrites
            k = jnp.maximum(i - num_warmup, 0)
            z = z.at[k].set(state.z)
            pe = pe.at[k].set(state.potential_energy)
            div = div.at[k].set(state.diverging)
            steps = steps.at[i].set(state.num_steps.astype(jnp.int32))
            return state, (z, pe, div, steps)

        return jax.lax.fori_loop(start, start + n, body, carry)

    return init, run


def numpyro_nuts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    init: Any = None,
    init_jitter: float = 0.1,
    max_tree_depth: int = 10,
    target_accept_prob: float = 0.8,
    step_size: float = 1.0,
    chain_method: str = "auto",
    progress: bool = False,
    density: JaxLogDensity | None = None,
    compiled: CompiledNUTS | None = None,
) -> NumpyroNUTSResult:
    """NUTS on :func:`jax_log_density` of ``model(x, y=y)`` with NumPyro's kernel, all chains
    in one compiled XLA loop on JAX's default device.

    Args:
        model, x, y: a :class:`~pyrobayes.bayesian_model.BayesianModel` and the full training set
            (the model is not modified; it is traced once in eval mode).
        num_chains, num_warmup, num_samples: chains, adaptation iterations (step size and
            diagonal mass matrix, NumPyro's windowed schedule) and kept draws per chain.
        seed: the JAX key of the chains and the start jitter.
        init: where the chains start. ``None``: each chain at its own prior draw (dispersed;
            in a BNN such chains often settle in different modes, which R-hat then shows).
            A dict ``{site: constrained value}`` with every latent site (e.g. the fitted
            network's weights, a MAP point or the generating latents) or a flat
            unconstrained vector ``[dim]`` (``density.sites`` layout): one chain starts there,
            several at ``start + init_jitter * prior_std * N(0, I)`` on the unconstrained
            scale (jitter in units of each coordinate's prior std: far enough apart that a
            stuck chain shows in R-hat, close enough that all start in the fitted basin).
            ``[num_chains, dim]``: exactly these starts.
        max_tree_depth, target_accept_prob, step_size: NUTS settings (NumPyro's defaults;
            ``step_size`` is the initial one, then adapted).
        chain_method: ``"vectorized"`` (one ``vmap``: chains advance in lockstep, each
            tree as long as the longest), ``"sequential"`` (``lax.map``: one chain after
            another in the same compiled loop) or ``"auto"``: sequential on a CPU (about 2x
            faster there for the comparison's BNNs, ``benchmarks/bench_reference.py``), in
            equal groups on as many threads as there are cores (same draws as one thread),
            vectorised on an accelerator.
        progress: a few plain lines (the loop then runs in 10 compiled blocks).
        density: a prebuilt :func:`jax_log_density` of the same model and data.
        compiled: chains compiled ahead by :func:`compile_nuts` for this model object, data
            and settings (checked: ``ValueError`` otherwise); then nothing is compiled here.

    Returns:
        :class:`NumpyroNUTSResult`.

    Raises:
        NotImplementedError: the model is beyond :func:`jax_log_density`; use the torch path.

    Example::

        >>> import torch
        >>> from pyrobayes import BayesianModel, Gaussian, NormalPrior, to_pyro
        >>> model = BayesianModel(to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0),
        ...                               name="lin"), Gaussian(0.3))
        >>> x = torch.linspace(-2, 2, 20)[:, None]
        >>> res = numpyro_nuts(model, x, 0.8 * x[:, 0] - 0.3, num_chains=2, num_warmup=50,
        ...                    num_samples=50, seed=0)
        >>> tuple(res.draws["lin.net.weight"].shape), res.num_steps.shape
        ((2, 50, 1, 1), (2, 100))
        >>> round(float(res.draws["lin.net.weight"].mean()), 1)
        0.8
    """
    budget = {
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "max_tree_depth": max_tree_depth,
        "target_accept_prob": target_accept_prob,
        "step_size": step_size,
        "progress": progress,
    }
    if compiled is None:
        compiled = compile_nuts(model, x, y, chain_method=chain_method, density=density, **budget)
    else:
        compiled.check(model, x, y, **budget)
    u0 = _starts(compiled.density, init, num_chains, init_jitter, seed)
    with compiled.density.precision():
        return _run_chains(compiled, u0, seed)


@dataclass
class CompiledNUTS:
    """NumPyro NUTS chains compiled for one model, data set and budget, not yet run: what
    :func:`compile_nuts` returns and :func:`numpyro_nuts` (``compiled=``) and
    :func:`pyrobayes.infer.nuts.sampler.nuts_ppd` (``compiled=``) run. Compiling does not need the
    starts or the seed, so a job can compile while it fits the network the chains start at
    (``pyrobayes compare`` does, on another thread: XLA compiles outside Python's GIL).

    * ``density``: the :class:`JaxLogDensity`; ``model``, ``x``, ``y``: what it was built
      from; ``settings``: the budget and NUTS settings;
    * ``init``, ``runs``: the compiled ``init(u0, keys)`` and ``{n: run(carry, start)}``
      (``n`` iterations per call), waiting for a compilation still running on its thread;
      ``compile_seconds``: tracing, lowering and XLA compilation (waits likewise);
      :meth:`wait`.

    Example (see :func:`compile_nuts`)::

        >>> import dataclasses
        >>> sorted(f.name for f in dataclasses.fields(CompiledNUTS))[:3]
        ['density', 'future', 'lower_seconds']
    """

    density: JaxLogDensity
    model: nn.Module = field(repr=False)
    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    settings: dict
    lower_seconds: float
    future: Future = field(repr=False)

    def wait(self) -> CompiledNUTS:
        """Block until XLA's compilation is done (re-raising its error, if any)."""
        self.future.result()
        return self

    @property
    def init(self) -> Any:
        return self.future.result()[0]

    @property
    def runs(self) -> dict:
        return self.future.result()[1]

    @property
    def compile_seconds(self) -> float:
        return self.lower_seconds + self.future.result()[2]

    def check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings) -> None:
        """Raise ``ValueError`` unless these chains were compiled for ``model`` (the same
        object), equal ``x``/``y`` and these settings (``None`` = any)."""
        if model is not self.model:
            raise ValueError("compiled NUTS chains belong to another model object")
        same = (
            x.shape == self.x.shape
            and y.shape == self.y.shape
            and torch.equal(x.detach().cpu(), self.x.detach().cpu())
            and torch.equal(y.detach().cpu(), self.y.detach().cpu())
        )
        if not same:
            raise ValueError("compiled NUTS chains were built for other training data")
        wrong = {
            k: (v, self.settings[k])
            for k, v in settings.items()
            if v is not None and k in self.settings and v != self.settings[k]
        }
        if wrong:
            detail = ", ".join(f"{k}={a!r} (compiled: {b!r})" for k, (a, b) in wrong.items())
            raise ValueError(f"compiled NUTS chains have other settings: {detail}")


def compile_nuts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    max_tree_depth: int = 10,
    target_accept_prob: float = 0.8,
    step_size: float = 1.0,
    chain_method: str = "auto",
    progress: bool = False,
    density: JaxLogDensity | None = None,
    background: bool = False,
) -> CompiledNUTS:
    """Build :func:`jax_log_density` of ``model(x, y=y)`` and compile :func:`numpyro_nuts`'s
    chains for it (same arguments); run them with ``numpyro_nuts(..., compiled=...)``.

    ``background=True``: trace and lower here, then let XLA compile on another thread
    (outside Python's GIL) and return at once; using the result waits for it. On a machine
    with a free core the compilation then costs no wall time beside CPU-bound Python work
    (``pyrobayes compare`` fits its MLP meanwhile).

    Example::

        >>> import torch
        >>> from pyrobayes import BayesianModel, Gaussian, NormalPrior, to_pyro
        >>> model = BayesianModel(to_pyro(torch.nn.Linear(1, 1), prior=NormalPrior(1.0),
        ...                               name="lin"), Gaussian(0.3))
        >>> x = torch.linspace(-2, 2, 20)[:, None]
        >>> y = 0.8 * x[:, 0] - 0.3
        >>> chains = compile_nuts(model, x, y, num_chains=2, num_warmup=50, num_samples=50)
        >>> res = numpyro_nuts(model, x, y, num_chains=2, num_warmup=50, num_samples=50,
        ...                    compiled=chains, seed=0)
        >>> round(float(res.draws["lin.net.weight"].mean()), 1)
        0.8
    """
    _require_jax()
    for name, v in (("num_chains", num_chains), ("num_samples", num_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(num_warmup, bool) or not isinstance(num_warmup, int) or num_warmup < 0:
        raise ValueError(f"num_warmup must be a non-negative integer, got {num_warmup!r}")
    if chain_method not in ("auto", "vectorized", "sequential"):
        raise ValueError(
            f"chain_method must be 'auto', 'vectorized' or 'sequential', got {chain_method!r}"
        )
    if chain_method == "auto":
        import jax

        # on a CPU the vectorised chains wait for the longest tree of each iteration and
        # gain nothing from batching 50-wide matrices: one after another is ~2x faster
        chain_method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
        threads = _chain_threads(num_chains) if chain_method == "sequential" else 1
    else:
        threads = 1
    dens = density if density is not None else jax_log_density(model, x, y)
    settings = {
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "max_tree_depth": int(max_tree_depth),
        "target_accept_prob": float(target_accept_prob),
        "step_size": float(step_size),
        "chain_method": chain_method,
        "chain_threads": threads,
        "progress": bool(progress),
    }
    with dens.precision():
        lowered, lower_seconds = _lower_chains(dens, settings)
    if background:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xla-compile")
        future = pool.submit(_compile_lowered, lowered)
        pool.shutdown(wait=False)  # the thread ends with the compilation
    else:
        future = Future()
        future.set_result(_compile_lowered(lowered))
    return CompiledNUTS(dens, model, x, y, settings, lower_seconds, future)


def _lower_chains(dens: JaxLogDensity, settings: dict) -> tuple[tuple, float]:
    """The lowered ``init`` and ``{n: run}`` of :func:`compile_nuts`, and their seconds."""
    import jax

    warmup, samples = settings["num_warmup"], settings["num_samples"]
    c = settings["num_chains"] // settings.get("chain_threads", 1)  # chains per thread
    kernel_kw = {k: settings[k] for k in ("step_size", "target_accept_prob", "max_tree_depth")}
    init, run = _chain_fns(dens, warmup, samples, kernel_kw)
    if settings["chain_method"] == "vectorized":
        init_all = jax.vmap(init)
        run_all = jax.vmap(run, in_axes=(0, None, None))
    else:
        init_all = lambda u, k: jax.lax.map(lambda a: init(*a), (u, k))  # noqa: E731
        run_all = lambda c, s, n: jax.lax.map(lambda a: run(a, s, n), c)  # noqa: E731
    u0 = jax.ShapeDtypeStruct((c, dens.dim), _np_dtype(dens.dtype))
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.PRNGKey(0), c))
    total = warmup + samples
    block = _block(total, settings["progress"])
    t0 = time.perf_counter()
    init_l = jax.jit(init_all).lower(u0, keys)
    carry = jax.eval_shape(init_all, u0, keys)
    runs_l = {
        n: jax.jit(run_all, static_argnums=2, donate_argnums=0).lower(carry, 0, n)
        for n in {block, total % block or block}
    }
    return (init_l, runs_l), time.perf_counter() - t0


def _compile_lowered(lowered: tuple) -> tuple[Any, dict, float]:
    """XLA compilation of :func:`_lower_chains`'s output (no Python tracing: thread-safe
    beside the caller's torch work)."""
    t0 = time.perf_counter()
    init_l, runs_l = lowered
    init_c = init_l.compile()
    runs = {n: r.compile() for n, r in runs_l.items()}
    return init_c, runs, time.perf_counter() - t0


def _block(total: int, progress: bool) -> int:
    """Iterations per compiled call: all of them, or a tenth with progress lines."""
    return total if not progress else max(1, math.ceil(total / 10))


def _chain_threads(num_chains: int) -> int:
    """Threads for sequential chains on a CPU: the largest divisor of ``num_chains`` not
    above the cores this process may use. XLA runs a compiled call outside Python's GIL,
    so each thread's group of chains gets its own core (the chains and their keys are the
    same as in one thread: the draws do not change)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(k for k in range(1, min(num_chains, cores or 1) + 1) if num_chains % k == 0)


def _run_chains(compiled: CompiledNUTS, u0: np.ndarray, seed: int) -> NumpyroNUTSResult:
    """Run the compiled chains from ``u0`` ``[chains, dim]``; see :func:`numpyro_nuts`.
    With ``chain_threads`` > 1 the chains run in that many equal groups, one per thread."""
    import jax
    import jax.numpy as jnp

    from pyrobayes.progress import progress_bar

    dens, st = compiled.density, compiled.settings
    total = st["num_warmup"] + st["num_samples"]
    progress = st["progress"]
    block = _block(total, progress)
    keys = jax.random.split(jax.random.PRNGKey(int(seed)), u0.shape[0])
    groups = st.get("chain_threads", 1)
    per = u0.shape[0] // groups

    def run_group(g: int) -> Any:
        carry = compiled.init(
            jnp.asarray(u0[g * per : (g + 1) * per]), keys[g * per : (g + 1) * per]
        )
        starts = range(0, total, block)
        for start in progress_bar(starts, enabled=progress and g == 0, desc="NUTS", unit="blocks"):
            carry = compiled.runs[min(block, total - start)](carry, start)
            if progress:
                jax.block_until_ready(carry)  # so that the progress lines tell the time
        return jax.block_until_ready(carry)

    t0 = time.perf_counter()
    if groups == 1:
        carry = run_group(0)
    else:
        with ThreadPoolExecutor(max_workers=groups, thread_name_prefix="nuts-chains") as pool:
            parts = list(pool.map(run_group, range(groups)))
        carry = jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *parts)
    state, (z, pe, div, steps) = carry
    run_s = time.perf_counter() - t0
    flat = np.asarray(z)
    return NumpyroNUTSResult(
        draws=dens.unpack(flat),
        flat=flat,
        log_density=-np.asarray(pe),
        num_steps=np.asarray(steps),
        diverging=np.asarray(div),
        step_size=np.asarray(state.adapt_state.step_size),
        compile_seconds=compiled.compile_seconds,
        run_seconds=run_s,
        density=dens,
    )
