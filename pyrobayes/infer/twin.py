"""The functional forward over weight draws: the original network evaluated under given
weights, in ONE place.

A converted module keeps an untouched deterministic *twin* of the user's network. Every
path that needs ``f_w(x)`` for explicit weights ``w`` calls :func:`forward_draws`: the
posterior/prior predictive, the fused ELBO, the NUTS potential, the text classifier's
predictive and the PFN prior samplers. It takes one draw (autograd flows: the fused ELBO,
the potential) or ``S`` draws (one vectorised ``torch.func.vmap`` call per chunk, no
autograd), and a draw function lets a caller make the draws block by block as they are
evaluated. The one batched path: a plain ``nn.Sequential`` of ``nn.Linear`` and
element-wise layers (or one bare ``nn.Linear``) on one 2-D input, detected by
:func:`linear_chain`, runs as one matrix product per layer (``F.linear`` for one draw,
``bmm`` over blocks of draws otherwise):

.. math::

    \\text{forward\\_draws}(w_{1:S}, x)_s = g\\big(f_{w_s}(x)\\big), \\qquad s = 1..S,

with ``g`` the model's ``output_fn`` (identity by default).

Example::

    >>> import torch
    >>> from pyrobayes import to_bayesian, Gaussian
    >>> from pyrobayes.infer.twin import forward_draws
    >>> from pyrobayes.infer import sample_prior
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    >>> model, _ = to_bayesian(net, likelihood=Gaussian(0.1))
    >>> draws = sample_prior(model, 3)
    >>> forward_draws(model, draws, torch.zeros(5, 2)).shape
    torch.Size([3, 5, 1])
    >>> forward_draws(model, {k: v[0] for k, v in draws.items()}, torch.zeros(5, 2)).shape
    torch.Size([5, 1])
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from pyrobayes._pyro_compat import pyro_name
from pyrobayes.bayesian_model import default_output
from pyrobayes.convert import (
    PRETRAINED_SUFFIX,
    _converted_root,
    bayesian_sites,
    check_sites,
    map_draws,
    twin_needs_loop,
)

__all__ = [
    "fixed_tensors",
    "forward_draws",
    "linear_chain",
    "fast_block_size",
    "check_input_features",
]

Draws = Mapping[str, torch.Tensor] | Callable[[int, int], Mapping[str, torch.Tensor]]


def fixed_tensors(net: nn.Module, detach: bool = True) -> dict[str, torch.Tensor]:
    """Deterministic parameters and buffers of the converted net, keyed like the twin's
    (``detach=False`` keeps the live parameters, so training through them still works).

    Example (only the excluded bias stays fixed; the weight is a sample site)::

        >>> import torch
        >>> from pyrobayes import to_pyro
        >>> from pyrobayes.infer.twin import fixed_tensors
        >>> net = to_pyro(torch.nn.Linear(2, 1), exclude="bias")
        >>> {k: tuple(v.shape) for k, v in fixed_tensors(net).items()}
        {'bias': (1,)}
        >>> live = fixed_tensors(net, detach=False)
        >>> fixed_tensors(net)["bias"].requires_grad, live["bias"].requires_grad
        (False, True)
    """
    out = {}
    for name, t in net.named_parameters():
        out[name] = t.detach() if detach else t
    for name, t in net.named_buffers():
        if not name.endswith(PRETRAINED_SUFFIX):
            out[name] = t
    return out


_UNSET = object()


@dataclass(eq=False)
class _Layout:
    """What :func:`forward_draws` would otherwise look up by walking the modules on every
    call (the fused ELBO and the NUTS potential call it once per gradient): the net, its
    twin, the sites with their parameter paths and ranks, the first layer, the chain."""

    net: weakref.ref
    twin: nn.Module
    prefix: str  # the net's Pyro name: the site names follow it (wrapping renames them)
    sites: dict[str, list[str]]
    ranks: dict[str, int]
    paths: list[tuple[str, str]]  # (parameter path, site), tied parameters under each path
    first: nn.Module | None
    probe: torch.Tensor | None  # a twin parameter: where the twin lives
    loop: bool
    chain: object = _UNSET  # the twin's Linear chain, or None; found on first use
    uniform: bool = False  # every twin module is in the root's mode (set by this module)


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layout(model: nn.Module) -> _Layout:
    """The cached :class:`_Layout` of ``model``, rebuilt when its net, twin or Pyro name
    changed."""
    lay = _LAYOUTS.get(model)
    if lay is not None:
        net = lay.net()
        if net is not None and net._pyrobayes_twin is lay.twin and pyro_name(net) == lay.prefix:
            return lay
    net, _ = _converted_root(model)
    twin = net._pyrobayes_twin
    sites = bayesian_sites(model)
    lay = _Layout(
        net=weakref.ref(net),
        twin=twin,
        prefix=pyro_name(net),
        sites=sites,
        ranks={s: twin.get_parameter(paths[0]).dim() for s, paths in sites.items()},
        paths=[(p, s) for s, paths in sites.items() for p in paths],
        first=_first_layer(twin),
        probe=next(twin.parameters(), None),
        loop=twin_needs_loop(net),
    )
    _LAYOUTS[model] = lay
    return lay


def _first_layer(twin: nn.Module) -> nn.Module | None:
    for m in twin.modules():
        if next(m.parameters(recurse=False), None) is not None:
            return m
    return None


def check_input_features(model: nn.Module, *inputs, inputs_batched: bool = False) -> None:
    """Raise a clear error when the first input's feature count does not match the first
    layer (``nn.Linear``/``nn.Conv*``), instead of a deep ``vmap`` traceback.

    Example::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.twin import check_input_features
        >>> model, _ = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1))
        >>> check_input_features(model, torch.zeros(4, 2))  # fits: no error
        >>> check_input_features(model, torch.zeros(4, 3))
        Traceback (most recent call last):
            ...
        ValueError: the network's first layer expects 2 features, got x of shape (4, 3)
    """
    _check_features(_layout(model).first, inputs, inputs_batched)


def _check_features(first: nn.Module | None, inputs, inputs_batched: bool) -> None:
    if not inputs or not torch.is_tensor(inputs[0]) or not inputs[0].is_floating_point():
        return
    x = inputs[0]
    if isinstance(first, nn.Linear):
        if x.shape[-1] != first.in_features:
            raise ValueError(
                f"the network's first layer expects {first.in_features} features, "
                f"got x of shape {tuple(x.shape)}"
            )
    elif isinstance(first, nn.modules.conv._ConvNd):
        d = len(first.kernel_size)
        ch_dim = -(d + 1)
        if x.dim() - int(inputs_batched) >= d + 1 and x.shape[ch_dim] != first.in_channels:
            raise ValueError(
                f"the network's first layer expects {first.in_channels} input channels "
                f"(dim {ch_dim}), got x of shape {tuple(x.shape)}"
            )


def _set_dropout(twin: nn.Module, active: bool) -> None:
    for m in twin.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train(active)


def _count_draws(lay: _Layout, model: nn.Module, draws) -> int | None:
    """``None`` for one draw (each site's tensor has its parameter's shape), else ``S``
    (a leading dimension on every site); a ``ValueError`` for missing sites or a mix."""
    try:
        extra = {draws[s].dim() - rank for s, rank in lay.ranks.items()}
    except KeyError:
        check_sites(model, draws, "draws")
        raise
    if extra == {0}:
        return None
    num = {int(draws[s].shape[0]) for s in lay.sites}
    if extra != {1} or len(num) != 1:
        raise ValueError(
            "draws must be one draw (each site its parameter's shape) or S draws (one "
            f"leading dimension of the same size on every site); got sizes {sorted(num)}"
        )
    return num.pop()


def _check_call(lay, model, draws, num_draws, inputs, inputs_batched):
    """``(S or None for one draw, the draws' device or None)``; a ``ValueError`` for draws
    or inputs that do not fit the model."""
    if callable(draws):
        if num_draws is None:
            raise ValueError("draws given as a function need num_draws")
        num, device = int(num_draws), None
    else:
        num, device = _count_draws(lay, model, draws), next(iter(draws.values())).device
    if inputs_batched and (num is None or any(x.shape[0] != num for x in inputs)):
        raise ValueError("with inputs_batched=True every input needs a leading dimension of size S")
    if num is not None:  # S draws; one draw is per gradient (fit checks its data once)
        _check_features(lay.first, inputs, inputs_batched)
    return num, device


def _ready_twin(lay: _Layout, fixed, device, train: bool, mc_dropout: bool) -> nn.Module:
    """The twin on the net's device, in training mode or not (every module), with dropout
    active under ``mc_dropout``. The module walk of ``train()`` runs only when the mode
    changes (it was a measurable part of a small net's potential gradient)."""
    twin = lay.twin
    if fixed:
        device = next(iter(fixed.values())).device
    if device is not None and lay.probe is not None and lay.probe.device != device:
        twin.to(device)  # the twin is not a registered submodule, so it follows lazily
    if not lay.uniform or twin.training != train:
        twin.train(train)
        lay.uniform = True
    if mc_dropout:
        _set_dropout(twin, True)
    return twin


def forward_draws(
    model: nn.Module,
    draws: Draws,
    *inputs,
    num_draws: int | None = None,
    inputs_batched: bool = False,
    chunk_size: int | None = None,
    mc_dropout: bool = False,
    train: bool = False,
    fixed: Mapping[str, torch.Tensor] | None = None,
    **kwargs,
) -> torch.Tensor:
    """The network's output under one weight draw (``Tensor[*out_shape]``) or under each
    of ``S`` draws (``Tensor[S, *out_shape]``): the one functional forward of the library.

    Args:
        model: a :class:`~pyrobayes.bayesian_model.BayesianModel` (or a ``to_pyro`` network).
        draws: ``{site: Tensor[*shape]}`` (ONE draw; autograd flows through it and the
            net's own parameters, as in the network's forward), ``{site: Tensor[S,
            *shape]}`` (from :func:`sample_prior`, a guide, or MCMC; no autograd), or a
            function ``(start, stop) -> {site: Tensor[stop - start, *shape]}`` with
            ``num_draws=S``, called block by block as the draws are evaluated (the
            predictive keeps each block's weights cache-sized). Other keys are ignored.
        inputs: the network's positional inputs, shared by all draws; with
            ``inputs_batched=True`` each has a leading ``S`` dimension (one data set per draw).
        chunk_size: draws evaluated per vectorised call (bounds peak memory).
        mc_dropout: keep ``nn.Dropout*`` layers active (each draw gets its own mask);
            every other layer (BatchNorm included) stays in eval mode.
        train: run the twin in training mode (dropout active, BatchNorm on batch
            statistics), as the fused ELBO does while the model trains.
        fixed: the net's deterministic tensors (:func:`fixed_tensors`), from a caller
            that evaluates many draws of an unchanged net (the NUTS potential).
        kwargs: keyword inputs of the network (shared by all draws, e.g. ``attention_mask``).

    Example (at ``x = (1, 1)`` draw ``s`` of a linear net gives ``w_s1 + w_s2 + b_s``)::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer import sample_prior
        >>> from pyrobayes.infer.twin import forward_draws
        >>> model, _ = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1), name="lin")
        >>> d = sample_prior(model, 3)
        >>> out = forward_draws(model, d, torch.tensor([[1.0, 1.0]]))
        >>> out.shape
        torch.Size([3, 1, 1])
        >>> expected = d["lin.net.weight"].sum((1, 2)) + d["lin.net.bias"][:, 0]
        >>> torch.allclose(out[:, 0, 0], expected)
        True
    """
    lay = _layout(model)
    num, device = _check_call(lay, model, draws, num_draws, inputs, inputs_batched)
    if fixed is None:
        fixed = fixed_tensors(lay.net(), detach=num is not None)
    twin = _ready_twin(lay, fixed, device, train, mc_dropout)
    chain = None
    if len(inputs) == 1 and not kwargs and (num is None or not (mc_dropout or train)):
        chain = None if inputs_batched else _chain_for(lay, model, inputs[0])
    try:
        if num is None:
            return _one_draw(lay, model, chain, draws, fixed, inputs, kwargs)
        if not callable(draws):
            draws = _slicer(draws)
        with torch.no_grad():
            if chain is not None:
                step = min(chunk_size or num, _block_draws(chain, inputs[0]))
                by_path = lambda start, stop: _by_path(lay, draws(start, stop))  # noqa: E731
                return _chain_forward(chain, by_path, fixed, inputs[0], num, step)
            return _general(
                lay, model, draws, fixed, inputs, num, chunk_size or num, kwargs, inputs_batched
            )
    finally:
        if mc_dropout:
            _set_dropout(twin, train)


def _slicer(draws: Mapping[str, torch.Tensor]) -> Callable[[int, int], dict]:
    """Stacked draws as a draw function: views of draws ``start..stop``."""
    return lambda start, stop: {k: v[start:stop] for k, v in draws.items()}


def _by_path(lay: _Layout, draws: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{parameter path: draw}`` with every path of a tied parameter (a per-layer forward
    needs the draw under each path its layers use)."""
    return {p: draws[site] for p, site in lay.paths}


def _output_fn(model: nn.Module):
    return getattr(model, "output_fn", None) or default_output


def _one_draw(lay, model, chain, weights, fixed, inputs, kwargs) -> torch.Tensor:
    """One draw with autograd: ``F.linear`` per layer on a chain (no parameter swap, and
    local reparameterisation sees each ``F.linear``), else ``functional_call``."""
    if chain is not None:
        return _chain_forward(chain, _by_path(lay, weights), fixed, inputs[0])
    by_path = {paths[0]: weights[site] for site, paths in lay.sites.items()}
    out = functional_call(lay.twin, {**fixed, **by_path}, inputs, kwargs)
    return _output_fn(model)(out)


def _general(lay, model, draws, fixed, inputs, num, step, kwargs, inputs_batched):
    """``S`` draws through ``vmap`` over ``functional_call`` (a loop for recurrent twins,
    which have no vmap batching rule), ``step`` draws per call."""
    output_fn = _output_fn(model)

    def one(params, *xs):
        return output_fn(functional_call(lay.twin, {**fixed, **params}, xs, kwargs))

    in_dims = (0, *([0 if inputs_batched else None] * len(inputs)))
    mapped = map_draws(one, in_dims, loop=lay.loop)
    outs = []
    for start in range(0, num, step):
        stop = min(start + step, num)
        d = draws(start, stop)
        params = {paths[0]: d[site] for site, paths in lay.sites.items()}
        xs = [x[start:stop] for x in inputs] if inputs_batched else inputs
        outs.append(mapped(params, *xs))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# parameter-free element-wise layers: they act on a [S, N, F] stack as on [N, F]; dropout
# follows the twin's mode (S draws: eval only, mc_dropout takes the general path)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish)
_ELEMENTWISE += (nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Identity)
_ELEMENTWISE += (nn.modules.dropout._DropoutNd,)


_INPLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}


def linear_chain(model: nn.Module, x) -> list | None:
    """``[(path, module)]`` when the model's twin is a plain ``nn.Sequential`` of
    ``nn.Linear`` and element-wise layers (or one bare ``nn.Linear``, path ``""``) applied
    to one 2-D float input with the default output map: :func:`forward_draws` then takes
    its batched Linear-chain path, and the JAX potential can rebuild the network layer by
    layer. ``None`` otherwise (the general ``functional_call`` path).

    Example::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> nn = torch.nn
        >>> model, _ = to_bayesian(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),
        ...                        likelihood=Gaussian(0.1))
        >>> [path for path, _ in linear_chain(model, torch.zeros(4, 2))]
        ['0', '1', '2']
        >>> linear_chain(model, torch.zeros(5, 4, 2)) is None  # a 3-D input
        True
    """
    return _chain_for(_layout(model), model, x)


def _chain_for(lay: _Layout, model: nn.Module, x) -> list | None:
    if getattr(model, "output_fn", None) not in (None, default_output):
        return None
    if not (torch.is_tensor(x) and x.is_floating_point() and x.dim() == 2):
        return None
    if lay.chain is _UNSET:
        lay.chain = _twin_chain(lay.twin)
    return lay.chain


def _twin_chain(twin: nn.Module) -> list | None:
    """The twin's layers as ``[(path, module)]`` when they form a Linear chain."""
    if type(twin) is nn.Linear:
        return [("", twin)]
    if not isinstance(twin, nn.Sequential) or type(twin).forward is not nn.Sequential.forward:
        return None
    chain = []
    for name, m in twin.named_children():
        if type(m) is nn.Linear:
            chain.append((name, m))
        elif isinstance(m, _ELEMENTWISE) and not list(m.parameters()) and not list(m.buffers()):
            chain.append((name, m))
        else:
            return None
    return chain if any(type(m) is nn.Linear for _, m in chain) else None


_ACTIVATION_BUDGET = 2 * 2**20  # bytes of one layer's activations per block of draws


def _block_draws(chain, x) -> int:
    """Draws per block so that one layer's ``[draws, N, width]`` activation stays
    cache-sized: one huge activation per layer is slower than the same products in small
    blocks (fresh pages for every large allocation, no reuse from cache)."""
    width = max(max(m.in_features, m.out_features) for _, m in chain if type(m) is nn.Linear)
    per_draw = x.shape[0] * width * x.element_size()
    return max(1, _ACTIVATION_BUDGET // max(per_draw, 1))


def fast_block_size(model: nn.Module, *inputs, mc_dropout: bool = False, **kwargs) -> int | None:
    """Draws per block at which :func:`forward_draws` runs fastest on these inputs (the
    batched Linear-chain path), or ``None`` when the general path applies.

    Example (a 2 MiB activation budget: ``2**21 / (N * 64 * 4 bytes)`` draws per block)::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.twin import fast_block_size
        >>> nn = torch.nn
        >>> net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 1))
        >>> model, _ = to_bayesian(net, likelihood=Gaussian(0.1))
        >>> [fast_block_size(model, torch.zeros(n, 2)) for n in (100, 1000)]
        [81, 8]
        >>> fast_block_size(model, torch.zeros(100, 2), mc_dropout=True) is None
        True
    """
    if mc_dropout or kwargs or len(inputs) != 1:
        return None
    chain = linear_chain(model, inputs[0])
    return None if chain is None else _block_draws(chain, inputs[0])


def _chain_forward(chain, draws, fixed, x, num_draws: int | None = None, step: int = 1):
    r"""The one Linear-chain forward, per layer :math:`h^{(l)} = b + h^{(l-1)} W^\top` with
    the drawn weights or, for a layer that is not Bayesian, its fixed tensors.

    ``num_draws=None``: ``draws`` is ONE draw ``{path: [*shape]}``, one ``F.linear`` per
    layer (autograd flows; local reparameterisation intercepts ``F.linear``). Else
    ``draws(start, stop)`` gives blocks of ``step`` draws ``{path: [c, *shape]}``, each
    layer one ``bmm`` over the block, without autograd: the hidden layers write into one
    buffer per layer reused block after block, the last layer straight into its rows of
    the output ``[num_draws, N, out_features]``, and the common activations act in place
    (a fresh multi-MiB activation per layer and block costs more than the product:
    ``benchmarks/RESULTS.md``, bench_svi)."""
    if num_draws is None:
        return _chain_block(chain, draws, fixed, x)
    last = max(i for i, (_, m) in enumerate(chain) if type(m) is nn.Linear)
    out = x.new_empty(num_draws, x.shape[0], chain[last][1].out_features)
    work: dict = {}
    for start in range(0, num_draws, step):
        stop = min(start + step, num_draws)
        dst = out[start:stop]
        h = _chain_block(chain, draws(start, stop), fixed, x, dst, work, last)
        if h.data_ptr() != dst.data_ptr():  # an out-of-place activation after the last layer
            dst.copy_(h)
    return out


def _chain_block(chain, weights, fixed, x, dst=None, work=None, last=-1) -> torch.Tensor:
    """One draw (``dst is None``) or one block of draws written into ``dst`` through the
    chain (see :func:`_chain_forward`; ``work``: the hidden layers' buffers, ``last``: the
    index of the last ``nn.Linear``)."""
    c = None if dst is None else dst.shape[0]
    h, owned = (x if c is None else x.expand(c, *x.shape)), False
    for i, (name, m) in enumerate(chain):
        if type(m) is not nn.Linear:
            # once h is this block's own product (a buffer), the common activations act
            # in place; before the first product h is the caller's input
            inplace = _INPLACE.get(type(m)) if owned else None
            h = inplace(h) if inplace is not None else m(h)
            owned = c is not None
            continue
        prefix = f"{name}." if name else ""
        key_w, key_b = f"{prefix}weight", f"{prefix}bias"
        if c is None:
            w = weights[key_w] if key_w in weights else fixed[key_w]
            b = weights[key_b] if key_b in weights else fixed.get(key_b)
            h = torch.nn.functional.linear(h, w, b)
            continue
        w = weights[key_w] if key_w in weights else fixed[key_w].expand(c, -1, -1)
        b = weights[key_b].unsqueeze(1) if key_b in weights else fixed.get(key_b)
        if i == last:
            dst_i = dst
        else:
            shape = (x.shape[0], m.out_features)
            buf = work.get(name)
            if buf is None or buf.shape[0] < c or buf.shape[1:] != shape:
                buf = work[name] = h.new_empty(c, *shape)
            dst_i = buf[:c]
        # bmm then an in-place bias add: measured faster than baddbmm on CPU
        h, owned = torch.bmm(h, w.transpose(1, 2), out=dst_i), True
        if b is not None:
            h.add_(b)
    return h
