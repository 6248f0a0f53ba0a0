"""The functional forward over weight draws: the original network evaluated under given
weights.

A converted module keeps an untouched deterministic *twin* of the user's network; the
paths that need ``f_w(x)`` for explicit weights ``w`` (the posterior/prior predictive,
the fused ELBO, the text classifier's predictive, the PFN prior sampler) go through
:func:`twin_forward` (one draw) or :func:`forward_draws` (a stack of ``S`` draws, one
vectorised ``torch.func.vmap`` call per chunk). The one batched path: a plain
``nn.Sequential`` of ``nn.Linear`` and element-wise layers takes one batched matrix
product per layer (``chain_plan`` / ``chain_forward``, and
``chain_forward_one`` for one draw with autograd):

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
    >>> forward_draws(model, sample_prior(model, 3), torch.zeros(5, 2)).shape
    torch.Size([3, 5, 1])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

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
    "twin_forward",
    "forward_draws",
    "fast_block_size",
    "check_input_features",
]


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


def twin_forward(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    *inputs,
    net: nn.Module | None = None,
    fixed: Mapping[str, torch.Tensor] | None = None,
    **kwargs,
) -> torch.Tensor:
    """``output_fn(f_w(*inputs, **kwargs))`` for ONE draw ``w`` (``weights`` keyed by the
    twin's parameter paths). ``net``/``fixed`` may be passed to skip their look-up in hot
    loops; the twin's train/eval mode is the caller's choice.

    Example (``x @ w.T + b`` for the given weights)::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.infer.twin import twin_forward
        >>> model, _ = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1))
        >>> w = {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([0.5])}
        >>> twin_forward(model, w, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
        tensor([[3.5000],
                [2.5000]])
    """
    if net is None:
        net, _ = _converted_root(model)
    if fixed is None:
        fixed = fixed_tensors(net)
    output_fn = getattr(model, "output_fn", None) or default_output
    return output_fn(functional_call(net._pyrobayes_twin, {**fixed, **weights}, inputs, kwargs))


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
    if not inputs or not torch.is_tensor(inputs[0]) or not inputs[0].is_floating_point():
        return
    net, _ = _converted_root(model)
    first = _first_layer(net._pyrobayes_twin)
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


def forward_draws(
    model: nn.Module,
    draws: Mapping[str, torch.Tensor],
    *inputs: torch.Tensor,
    inputs_batched: bool = False,
    chunk_size: int | None = None,
    mc_dropout: bool = False,
    **kwargs,
) -> torch.Tensor:
    """The network's outputs under each of ``S`` weight draws: ``Tensor[S, *out_shape]``.

    Args:
        model: a :class:`~pyrobayes.bayesian_model.BayesianModel` (or a ``to_pyro`` network).
        draws: ``{site: Tensor[S, *shape]}`` (from :func:`sample_prior`, a guide, or MCMC).
        inputs: the network's positional inputs, shared by all draws; with
            ``inputs_batched=True`` each has a leading ``S`` dimension (one data set per draw).
        chunk_size: draws evaluated per vectorised call (bounds peak memory).
        mc_dropout: keep ``nn.Dropout*`` layers active (each draw gets its own mask);
            every other layer (BatchNorm included) stays in eval mode.
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
    net, _ = _converted_root(model)
    sites = bayesian_sites(model)
    if any(s not in draws for s in sites):
        check_sites(model, draws, "draws")
    num = {int(draws[s].shape[0]) for s in sites}
    if len(num) != 1:
        raise ValueError(f"draws disagree on the number of samples: {sorted(num)}")
    (num_draws,) = num
    if inputs_batched and any(x.shape[0] != num_draws for x in inputs):
        raise ValueError("with inputs_batched=True every input needs a leading dimension of size S")
    check_input_features(model, *inputs, inputs_batched=inputs_batched)
    twin, fixed = _eval_twin(net, next(iter(draws.values())).device)
    if mc_dropout:
        _set_dropout(twin, True)
    stacked = {paths[0]: draws[site] for site, paths in sites.items()}
    chain = None
    if not (mc_dropout or kwargs or inputs_batched or len(inputs) != 1):
        chain = _linear_chain(model, twin, inputs[0])
    if chain is not None:
        by_path = {p: draws[site] for site, paths in sites.items() for p in paths}
        with torch.no_grad():
            return _chain_forward(chain, by_path, fixed, inputs[0], num_draws, chunk_size)

    def one(params, *xs):
        return twin_forward(model, params, *xs, net=net, fixed=fixed, **kwargs)

    in_dims = (0, *([0 if inputs_batched else None] * len(inputs)))
    try:
        with torch.no_grad():
            # recurrent twins have no vmap batching rule: the same map as a loop
            return map_draws(one, in_dims, chunk_size=chunk_size, loop=twin_needs_loop(model))(
                stacked, *inputs
            )
    finally:
        if mc_dropout:
            _set_dropout(twin, False)


def _eval_twin(net: nn.Module, fallback_device) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The twin in eval mode on the converted net's device, and the net's fixed tensors."""
    twin = net._pyrobayes_twin
    fixed = fixed_tensors(net)
    device = next(iter(fixed.values())).device if fixed else fallback_device
    if next(twin.parameters(), torch.empty(0, device=device)).device != device:
        twin.to(device)  # the twin is not a registered submodule, so it follows lazily
    twin.eval()
    return twin, fixed


def chain_plan(model: nn.Module, x, device) -> tuple | None:
    """``(chain, fixed, {site: [parameter paths]})`` when :func:`forward_draws` of one
    positional input ``x`` takes the batched Linear-chain path (no dropout sampling, no
    keyword inputs), else ``None``; checks ``x`` against the first layer like
    :func:`forward_draws`. With it, ``chain_forward`` evaluates draws that a caller
    produces block by block (``device``: where the draws live, for a net without fixed
    tensors)."""
    net, _ = _converted_root(model)
    if _linear_chain(model, net._pyrobayes_twin, x) is None:
        return None
    check_input_features(model, x)
    twin, fixed = _eval_twin(net, device)
    return _linear_chain(model, twin, x), fixed, bayesian_sites(model)


def chain_forward(
    plan: tuple,
    draws: Mapping[str, torch.Tensor],
    x,
    out: torch.Tensor | None = None,
    work: dict | None = None,
) -> torch.Tensor:
    """:func:`forward_draws` on a ``chain_plan``: ``draws`` ``{site: [S, *shape]}``,
    evaluated in one block (the caller sizes it with :func:`fast_block_size`), written into
    ``out`` (``[S, N, out_features]``) when given; a caller that evaluates block after
    block passes the same ``work`` dict each time, so the hidden activations reuse their
    buffers."""
    chain, fixed, sites = plan
    by_path = {p: draws[site] for site, paths in sites.items() for p in paths}
    num_draws = int(next(iter(draws.values())).shape[0])
    with torch.no_grad():
        return _chain_forward(chain, by_path, fixed, x, num_draws, num_draws, out, work)


def chain_output(plan: tuple, x: torch.Tensor, num_draws: int) -> torch.Tensor:
    """An empty ``[num_draws, N, out_features]`` tensor for ``chain_forward``'s ``out``
    (the dtype and device its own allocation would have)."""
    last = next(m for _, m in reversed(plan[0]) if type(m) is nn.Linear)
    return x.new_empty(num_draws, x.shape[0], last.out_features)


# parameter-free element-wise layers: they act on a [S, N, F] stack as on [N, F]
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
    nn.modules.dropout._DropoutNd,  # eval mode here (mc_dropout takes the general path)
)


_INPLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}


def _linear_chain(model: nn.Module, twin: nn.Module, x) -> list | None:
    """``[(path, module)]`` when the twin is a plain ``nn.Sequential`` of ``nn.Linear`` and
    element-wise layers applied to one 2-D float input with the default output map, so
    that :func:`_chain_forward` can evaluate all draws with batched matrix products;
    ``None`` otherwise (the general ``vmap`` path)."""
    if getattr(model, "output_fn", None) not in (None, default_output):
        return None
    if not (torch.is_tensor(x) and x.is_floating_point() and x.dim() == 2):
        return None
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


def tied_paths(sites: Mapping[str, list[str]]) -> dict[str, str]:
    """``{alias: path}`` for parameters registered under several paths (tied weights), from
    :func:`~pyrobayes.convert.bayesian_sites`: a per-path forward such as
    ``chain_forward_one`` needs each draw under every path its layers use."""
    return {alias: paths[0] for paths in sites.values() for alias in paths[1:]}


def chain_forward_one(chain, weights, fixed, x: torch.Tensor) -> torch.Tensor:
    """One draw through a :func:`_linear_chain`: ``F.linear`` per layer with the drawn or
    fixed tensors (what ``functional_call`` computes, without swapping the twin's
    parameters in and out; autograd flows through ``weights``)."""
    h = x
    for name, m in chain:
        if type(m) is nn.Linear:
            key_w, key_b = f"{name}.weight", f"{name}.bias"
            w = weights[key_w] if key_w in weights else fixed[key_w]
            b = weights[key_b] if key_b in weights else fixed.get(key_b)
            h = torch.nn.functional.linear(h, w, b)
        else:
            h = m(h)
    return h


def _block_draws(chain, x) -> int:
    """Draws per block so that one layer's ``[draws, N, width]`` activation stays
    cache-sized: one huge activation per layer is slower than the same products in small
    blocks (fresh pages for every large allocation, no reuse from cache)."""
    width = max(max(m.in_features, m.out_features) for _, m in chain if type(m) is nn.Linear)
    per_draw = x.shape[0] * width * x.element_size()
    return max(1, _ACTIVATION_BUDGET // max(per_draw, 1))


def fast_block_size(model: nn.Module, *inputs, mc_dropout: bool = False, **kwargs) -> int | None:
    """Draws per block at which :func:`forward_draws` runs fastest on these inputs (the
    batched Linear-chain path), or ``None`` when the general path applies; callers that
    also sample the draws use it to keep the weight samples cache-sized as well.

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
    net, _ = _converted_root(model)
    chain = _linear_chain(model, net._pyrobayes_twin, inputs[0])
    return None if chain is None else _block_draws(chain, inputs[0])


def _chain_forward(
    chain,
    draws,
    fixed,
    x,
    num_draws: int,
    chunk_size: int | None,
    out: torch.Tensor | None = None,
    work: dict | None = None,
) -> torch.Tensor:
    """All draws of a Linear/element-wise chain: per layer one batched matrix product over the
    draws, :math:`h^{(l)}_s = b_s + h^{(l-1)}_s W_s^\top`, instead of ``vmap`` over
    ``functional_call`` (same products, none of the per-call dispatch). Layers whose
    weights are not Bayesian use their fixed tensors, shared by all draws.

    Every product writes into a buffer: the hidden layers into ``work`` (per layer, one
    block's worth, reused block after block and, when the caller passes the same dict, call
    after call), the last layer straight into its rows of ``out`` (``[num_draws, N,
    out_features]``, allocated when ``None``): a fresh multi-MiB activation per layer and
    block costs more than the product (its cost is measured in ``benchmarks/RESULTS.md``,
    bench_svi). No autograd: callers run it under ``torch.no_grad``."""
    step = num_draws if chunk_size is None else chunk_size
    step = min(step, _block_draws(chain, x))
    work = {} if work is None else work
    last = max(i for i, (_, m) in enumerate(chain) if type(m) is nn.Linear)
    for start in range(0, num_draws, step):
        sl = slice(start, min(start + step, num_draws))
        c = sl.stop - sl.start
        h, owned = x.expand(c, *x.shape), False
        for i, (name, m) in enumerate(chain):
            if type(m) is not nn.Linear:
                # once h is this block's own product (a buffer), the common activations act
                # in place; before the first product h is the caller's input
                inplace = _INPLACE.get(type(m)) if owned else None
                h = inplace(h) if inplace is not None else m(h)
                owned = True
                continue
            key_w, key_b = f"{name}.weight", f"{name}.bias"
            w = draws[key_w][sl] if key_w in draws else fixed[key_w].expand(c, -1, -1)
            if key_b in draws:
                b = draws[key_b][sl].unsqueeze(1)
            elif key_b in fixed and fixed[key_b] is not None:
                b = fixed[key_b]
            else:
                b = None
            shape = (x.shape[0], m.out_features)
            if i == last:
                if out is None:
                    out = h.new_empty(num_draws, *shape)
                dst = out[sl]
            else:
                buf = work.get(name)
                if buf is None or buf.shape[0] < c or buf.shape[1:] != shape:
                    buf = work[name] = h.new_empty(step, *shape)
                dst = buf[:c]
            # bmm then an in-place bias add: measured faster than baddbmm on CPU
            h, owned = torch.bmm(h, w.transpose(1, 2), out=dst), True
            if b is not None:
                h.add_(b)
        if h.data_ptr() != out[sl].data_ptr():  # an out-of-place activation after the last layer
            out[sl].copy_(h)
    return out
