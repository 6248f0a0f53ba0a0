"""``to_pyro``: any ``nn.Module`` becomes a ``PyroModule`` whose chosen weights are
``PyroSample`` sites with priors.

The conversion keeps three things the forward pass needs later:

* each Bayesian parameter's pretrained value, as a buffer ``<attr>_pretrained`` on its
  layer (it centres the MOPED guide and the pretrained prior, and it moves with
  ``.to(device)`` so priors follow the module);
* a *twin*: an untouched deep copy of the original module, evaluated with
  ``torch.func.functional_call`` to run the network over a stack of weight draws without
  Pyro's per-site overhead (see :mod:`pyrobayes.infer.predictive`);
* the site table ``{site name: [parameter paths]}``, where tied parameters (an embedding
  shared with an LM head) share one site.

Example::

    >>> import torch
    >>> from pyrobayes import to_pyro, bayesian_sites
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> bnn = to_pyro(net, prior="layerwise", include=["2."], name="net")
    >>> sorted(bayesian_sites(bnn))
    ['net.2.bias', 'net.2.weight']
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import inspect
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from pyro.nn import PyroModule, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from pyrobayes._pyro_compat import pyro_module_class, pyro_name, set_pyro_name
from pyrobayes.priors import Prior, get_prior

__all__ = [
    "to_pyro",
    "bayesian_sites",
    "BayesianParam",
    "is_converted",
    "check_input_dtype",
    "check_sites",
    "map_draws",
    "twin_needs_loop",
]

PRETRAINED_SUFFIX = "_pretrained"


@dataclass(frozen=True)
class BayesianParam:
    """One sample site: the owning layer's path, the attribute, and tied aliases.

    Example (an LM head tied to the embedding: one site, two paths)::

        >>> from pyrobayes.convert import BayesianParam
        >>> p = BayesianParam(owner="wte", attr="weight", aliases=("lm_head.weight",))
        >>> p.owner, p.attr, p.aliases
        ('wte', 'weight', ('lm_head.weight',))
        >>> p == BayesianParam("wte", "weight", ("lm_head.weight",))
        True
    """

    owner: str
    attr: str
    aliases: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{self.owner}.{self.attr}" if self.owner else self.attr


def _matches(path: str, patterns: Sequence[str]) -> bool:
    r"""A pattern matches a parameter path as a dotted prefix (``"classifier"``), a glob
    (``"*.bias"``) or a regular expression (``r"bert\.encoder\.layer\.[45]\..*"``)."""
    for p in patterns:
        prefix = p.rstrip(".")
        if path == prefix or path.startswith(prefix + "."):
            return True
        if fnmatch.fnmatchcase(path, p):
            return True
        try:
            if re.fullmatch(p, path):
                return True
        except re.error:
            pass
    return False


def _as_list(x: str | Iterable[str] | None) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def _split(path: str) -> tuple[str, str]:
    owner, _, attr = path.rpartition(".")
    return owner, attr


def _prior_fn(prior: Prior, attr: str):
    # PyroSample calls this with the owning layer each time the site is drawn, so the
    # distribution is built on the layer's *current* device and dtype.
    def build(layer: nn.Module):
        return prior(attr, getattr(layer, attr + PRETRAINED_SUFFIX), layer)

    return build


def to_pyro(
    module: nn.Module,
    prior: str | Prior = "normal",
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    include_types: type | tuple[type, ...] | None = None,
    include_frozen: bool = False,
    inplace: bool = False,
    name: str | None = None,
    **prior_kwargs,
) -> PyroModule:
    """Turn ``module`` into a ``PyroModule`` whose selected parameters are ``PyroSample``
    sites drawn from ``prior``.

    Args:
        module: any ``nn.Module`` (MLP, CNN, ``nn.TransformerEncoder``, a Hugging Face model).
        prior: a :class:`~pyrobayes.priors.Prior` or its name (``"normal"``,
            ``"layerwise"``, ``"pretrained"``, ``"scale_mixture"``); ``prior_kwargs`` go to it.
        include: parameter-path patterns to make Bayesian (a prefix such as ``"classifier"``,
            a glob such as ``"*.layer.5.*"`` or a regular expression). ``None``: all.
        exclude: patterns to keep deterministic (applied after ``include``).
        include_types: only parameters owned by layers of these types.
        include_frozen: also make ``requires_grad=False`` parameters Bayesian (default: they
            stay frozen constants).
        inplace: convert ``module`` itself instead of a deep copy.
        name: the Pyro name prefix of every site (default: a fresh ``"bnn<k>"``); give a
            fixed name when guides or checkpoints must match across processes.

    Returns:
        The converted ``PyroModule``; calling it inside SVI draws one weight sample per site.

    Raises:
        ValueError: unknown prior, a pattern that matches no parameter, an include pattern
            that matches only frozen parameters (without ``include_frozen``), a tied
            parameter included under one name and excluded under another, or nothing
            selected.

    Tied parameters (one tensor under several paths, e.g. GPT-2's ``lm_head.weight`` and
    ``transformer.wte.weight``) form one site: including any of its paths makes the
    shared tensor Bayesian everywhere it is used. Excluding one of its paths while
    including another is contradictory and raises.

    Classes that Pyro's ``PyroModule[...]`` cannot take convert too: those deriving from
    ``abc.ABC`` (peft's LoRA layers and ``LoraModel``) and those whose ``__getattr__``
    raises ``KeyError`` (peft's ``ModulesToSaveWrapper``). A layer whose class computes
    ``device``/``dtype`` from ``next(self.parameters())`` (transformers'
    ``PreTrainedModel``, which ``train()`` uses in transformers 5) takes them from its
    buffers, the pretrained weights first, once every parameter is a sample site. Every
    ``nn.Embedding``/``nn.EmbeddingBag`` checks its ids (one min and max per call): an id
    outside ``0 .. num_embeddings - 1`` is a ``ValueError`` naming the layer.

    Example (the weight becomes a prior draw per call, the bias stays a parameter)::

        >>> import torch
        >>> from pyrobayes import to_pyro, bayesian_sites
        >>> lin = torch.nn.Linear(2, 1)
        >>> bnn = to_pyro(lin, exclude="bias", name="m")
        >>> sorted(bayesian_sites(bnn)), torch.equal(bnn.weight_pretrained, lin.weight)
        (['m.weight'], True)
        >>> x = torch.ones(1, 2)
        >>> torch.equal(bnn(x), bnn(x))  # two calls, two weight draws
        False
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"to_pyro expects an nn.Module, got {type(module).__name__}")
    if isinstance(module, PyroModule) and is_converted(module):
        raise ValueError("module is already converted by pyrobayes.to_pyro")
    prior_obj = get_prior(prior, **prior_kwargs)
    includes, excludes = _as_list(include), _as_list(exclude)
    twin = copy.deepcopy(module)
    target = module if inplace else copy.deepcopy(module)

    chosen, frozen = _select_params(target, includes, excludes, include_types, include_frozen)
    _freeze_deterministic(target, chosen, frozen)

    originals = [(m, type(m)) for m in target.modules()]
    for _, cls in originals:
        pyro_module_class(cls)  # a class mixing in abc.ABC needs its own metaclass
    to_pyro_module_(target)
    # A unique Pyro name prefix: PyroModules with equal names share pyro.param entries in
    # the global param store, so two converted copies of one net would silently share.
    set_pyro_name(target, name or _unique_name())
    _install_sites(target, chosen, prior_obj)
    for m, cls in originals:
        m.__class__ = _with_tensor_fallback(cls)

    _install_id_checks(target)
    _install_id_checks(twin)
    tied = [c for c in chosen if c.aliases]
    if tied:
        target.register_forward_pre_hook(_make_tie_hook(tied))
    object.__setattr__(target, "_pyrobayes_sites", tuple(chosen))
    object.__setattr__(target, "_pyrobayes_twin", twin.requires_grad_(False))
    object.__setattr__(target, "_pyrobayes_prior", prior_obj)
    return target


def _param_groups(target: nn.Module) -> tuple[dict[int, list[str]], dict[int, nn.Parameter]]:
    """Parameter paths grouped by tensor identity, so tied weights become a single site."""
    groups: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for path, p in target.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(path)
        params[id(p)] = p
    return groups, params


def _check_patterns_match(all_paths: list[str], patterns: list[str]) -> None:
    """Raise if any pattern matches no parameter path."""
    for pattern in patterns:
        if not any(_matches(path, [pattern]) for path in all_paths):
            raise ValueError(
                f"pattern {pattern!r} matches no parameter; parameters look like "
                f"{all_paths[:5]}{' ...' if len(all_paths) > 5 else ''}"
            )


def _check_tie_consistent(paths: list[str], selected: list[str], excludes: list[str]) -> None:
    """Raise if a tied parameter is included under one path and excluded under another."""
    if selected and len(selected) < len(paths):
        excluded = [path for path in paths if _matches(path, excludes)]
        if excluded:
            # A tied parameter is one tensor, hence one site: it cannot be Bayesian
            # under one name and deterministic under another.
            raise ValueError(
                f"parameters {selected} and {excluded} are tied (one tensor, one sample "
                "site) but the first are included and the second excluded; include or "
                "exclude all of them"
            )


def _check_frozen_includes(includes: list[str], all_paths: list[str], frozen: list[str]) -> None:
    """Raise if an include pattern matches only frozen parameters."""
    frozen_set = set(frozen)
    for pattern in includes:
        hits = [path for path in all_paths if _matches(path, [pattern])]
        if hits and all(path in frozen_set for path in hits):
            raise ValueError(
                f"include pattern {pattern!r} matches only frozen parameters "
                f"(requires_grad=False), e.g. {hits[0]!r}; pass include_frozen=True to "
                "make them Bayesian"
            )


def _select_params(
    target: nn.Module,
    includes: list[str],
    excludes: list[str],
    include_types: type | tuple[type, ...] | None,
    include_frozen: bool,
) -> tuple[list[BayesianParam], list[str]]:
    """The parameters to make Bayesian (one per tied group) and all frozen parameter paths."""
    groups, params = _param_groups(target)
    all_paths = [path for paths in groups.values() for path in paths]
    _check_patterns_match(all_paths, includes + excludes)

    modules = dict(target.named_modules(remove_duplicate=False))
    chosen: list[BayesianParam] = []
    frozen: list[str] = []
    for key, paths in groups.items():
        p = params[key]
        selected = [
            path
            for path in paths
            if (not includes or _matches(path, includes))
            and not _matches(path, excludes)
            and (include_types is None or isinstance(modules[_split(path)[0]], include_types))
        ]
        if not p.requires_grad:
            frozen.extend(paths)
            if not include_frozen:
                continue
        _check_tie_consistent(paths, selected, excludes)
        if selected:
            owner, attr = _split(paths[0])
            chosen.append(BayesianParam(owner, attr, tuple(paths[1:])))
    if not include_frozen and includes:
        _check_frozen_includes(includes, all_paths, frozen)
    if not chosen:
        raise ValueError(
            "no parameter was selected to become Bayesian; check include/exclude/include_types"
        )
    return chosen, frozen


def _freeze_deterministic(
    target: nn.Module, chosen: list[BayesianParam], frozen: list[str]
) -> None:
    """Turn frozen, deterministic parameters into buffers.

    PyroModule would otherwise register them as pyro.param sites with requires_grad=True
    (pyro#3438) and SVI would train them.
    """
    modules = dict(target.named_modules(remove_duplicate=False))
    chosen_paths = {c.path for c in chosen} | {a for c in chosen for a in c.aliases}
    for path in frozen:
        if path in chosen_paths:
            continue
        owner, attr = _split(path)
        layer = modules[owner]
        if attr in layer._parameters:
            value = layer._parameters.pop(attr)
            layer.register_buffer(attr, value.detach())


def _install_sites(target: PyroModule, chosen: list[BayesianParam], prior_obj: Prior) -> None:
    """Replace each chosen parameter by a ``PyroSample`` site (its value kept as a buffer)."""
    modules = dict(target.named_modules(remove_duplicate=False))
    for c in chosen:
        layer = modules[c.owner]
        value = getattr(layer, c.attr).detach().clone()
        delattr(layer, c.attr)
        layer.register_buffer(c.attr + PRETRAINED_SUFFIX, value)
        # PyroModule's own __setattr__, not the layer's: RNNBase.__setattr__ would first
        # write the new value into ``_flat_weights``, which for Pyro RNNs is a descriptor
        # that re-reads every weight attribute, and this one was just deleted. Pyro's
        # descriptor then rebuilds ``_flat_weights`` from the *sampled* weights on every
        # access, so recurrent layers see each draw.
        PyroModule.__setattr__(layer, c.attr, PyroSample(_prior_fn(prior_obj, c.attr)))
        for alias in c.aliases:
            a_owner, a_attr = _split(alias)
            alias_layer = modules[a_owner]
            if a_attr in alias_layer._parameters:
                delattr(alias_layer, a_attr)


# Properties that libraries compute from ``next(self.parameters())``: transformers'
# ``PreTrainedModel.device`` / ``.dtype`` (and through ``device`` its ``train()`` ->
# ``kernelize`` path in 5.x). With every weight a sample site, a converted layer may have no
# parameter left, and the property dies with a bare ``StopIteration``.
_TENSOR_PROPERTIES = ("device", "dtype")
_FALLBACK_CLASSES: dict[type, type] = {}


def _first_buffer(module: nn.Module, floating: bool) -> torch.Tensor:
    """The module's first buffer, the pretrained weights (``<attr>_pretrained``) first."""
    named = list(module.named_buffers())
    named.sort(key=lambda nb: not nb[0].endswith(PRETRAINED_SUFFIX))
    for _, t in named:
        if t.is_floating_point() or not floating:
            return t
    raise RuntimeError(
        f"{type(module).__name__} holds no {'floating-point ' if floating else ''}parameter "
        "or buffer to take its device/dtype from"
    )


def _fallback_property(prop: property, attr: str) -> property:
    def get(self):
        try:
            return prop.fget(self)
        except StopIteration:  # no plain parameter left: the weights live in buffers now
            return getattr(_first_buffer(self, floating=attr == "dtype"), attr)

    return property(get, prop.fset, prop.fdel, prop.__doc__)


class _NewConverted:
    """Unpickling (and ``copy.deepcopy``) helper: an empty object of the converted class
    (as Pyro's ``_PyroModuleMeta._New``; an ``abc.ABC`` class cannot be ``__new__``-ed)."""

    def __init__(self, original: type):
        self.__class__ = _with_tensor_fallback(original)


def _with_tensor_fallback(original: type) -> type:
    """The Pyro class of ``original`` or, made once per class, its subclass whose
    ``device``/``dtype`` properties fall back to the buffers when no parameter is left."""
    if original not in _FALLBACK_CLASSES:
        cls = pyro_module_class(original)
        namespace: dict = {}
        for attr in _TENSOR_PROPERTIES:
            prop = inspect.getattr_static(cls, attr, None)
            if isinstance(prop, property):
                namespace[attr] = _fallback_property(prop, attr)
        if namespace:

            def __reduce__(self):
                state = getattr(self, "__getstate__", self.__dict__.copy)()
                return _NewConverted, (original,), state

            namespace |= {"__reduce__": __reduce__, "__module__": __name__}
            cls = type(cls)(cls.__name__, (cls,), namespace)
        _FALLBACK_CLASSES[original] = cls
    return _FALLBACK_CLASSES[original]


def _install_id_checks(module: nn.Module) -> None:
    """Check the ids every embedding receives (fit, predictive and Pyro traces all call it)."""
    for path, m in module.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            m.register_forward_pre_hook(functools.partial(_check_ids, path))


def _check_ids(path: str, layer: nn.Module, args: tuple) -> None:
    """Raise a ``ValueError`` naming the embedding, its size and the first bad id when an
    id is negative or ``>= num_embeddings`` (torch's own message is ``index out of range
    in self`` on the CPU and a device-side assert on CUDA). One min and one max per call."""
    ids = args[0] if args else None
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.numel() == 0:
        return
    n = layer.num_embeddings
    lo, hi = ids.min(), ids.max()
    try:
        in_range = bool(lo >= 0) and bool(hi < n)
    except RuntimeError:  # ids batched under vmap (one data set per draw): not checkable here
        return
    if not in_range:
        bad = int(lo) if int(lo) < 0 else int(hi)
        name = repr(path) if path else type(layer).__name__
        raise ValueError(
            f"id {bad} is out of range for the embedding {name} with {n} entries "
            f"(valid ids 0..{n - 1}); map unknown tokens to an id the vocabulary has (e.g. "
            "the tokenizer's unknown-token id) or give the embedding more entries"
        )


_counter = itertools.count()


def _unique_name() -> str:
    return f"bnn{next(_counter)}"


def _make_tie_hook(tied: list[BayesianParam]):
    def hook(root: nn.Module, args):
        modules = dict(root.named_modules(remove_duplicate=False))
        for c in tied:
            # Reading the owner's attribute draws the site once (cached for this call);
            # the aliases then see exactly the same tensor.
            value = getattr(modules[c.owner], c.attr)
            for alias in c.aliases:
                a_owner, a_attr = _split(alias)
                object.__setattr__(modules[a_owner], a_attr, value)

    return hook


def is_converted(module: nn.Module) -> bool:
    """Whether ``module`` itself is a network returned by :func:`to_pyro`.

    Example::

        >>> import torch
        >>> from pyrobayes import to_pyro
        >>> from pyrobayes.convert import is_converted
        >>> lin = torch.nn.Linear(2, 1)
        >>> is_converted(lin), is_converted(to_pyro(lin))
        (False, True)
    """
    return hasattr(module, "_pyrobayes_sites")


def _converted_root(module: nn.Module) -> tuple[nn.Module, str]:
    """Find the converted network inside ``module`` (itself or e.g. ``BayesianModel.net``)."""
    for path, m in module.named_modules():
        if is_converted(m):
            return m, path
    raise ValueError("module has no pyrobayes-converted network; call to_pyro first")


def bayesian_sites(module: nn.Module) -> dict[str, list[str]]:
    """``{Pyro sample-site name: [parameter paths in the original module]}``.

    Site names follow the module's current Pyro name prefix (they change when the
    network is wrapped, e.g. by :class:`~pyrobayes.bayesian_model.BayesianModel`).

    Example (wrapping renames the sites, the parameter paths stay)::

        >>> import torch
        >>> from pyrobayes import to_pyro, bayesian_sites, BayesianModel, Gaussian
        >>> bnn = to_pyro(torch.nn.Linear(2, 1), name="lin")
        >>> bayesian_sites(bnn)
        {'lin.weight': ['weight'], 'lin.bias': ['bias']}
        >>> bayesian_sites(BayesianModel(bnn, Gaussian(0.1)))
        {'lin.net.weight': ['weight'], 'lin.net.bias': ['bias']}
    """
    net, _ = _converted_root(module)
    modules = dict(net.named_modules(remove_duplicate=False))
    out: dict[str, list[str]] = {}
    for c in net._pyrobayes_sites:
        prefix = pyro_name(modules[c.owner])
        site = f"{prefix}.{c.attr}" if prefix else c.attr
        out[site] = [c.path, *c.aliases]
    return out


def site_priors(module: nn.Module) -> dict[str, torch.distributions.Distribution]:
    """The prior distribution of every Bayesian site, on the module's current device."""
    net, _ = _converted_root(module)
    modules = dict(net.named_modules(remove_duplicate=False))
    names = bayesian_sites(net if net is module else module)
    out = {}
    for (site, _paths), c in zip(names.items(), net._pyrobayes_sites):
        layer = modules[c.owner]
        out[site] = net._pyrobayes_prior(c.attr, getattr(layer, c.attr + PRETRAINED_SUFFIX), layer)
    return out


def pretrained_values(module: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained value of every Bayesian site (the MOPED initial means)."""
    net, _ = _converted_root(module)
    modules = dict(net.named_modules(remove_duplicate=False))
    names = list(bayesian_sites(module))
    return {
        site: getattr(modules[c.owner], c.attr + PRETRAINED_SUFFIX)
        for site, c in zip(names, net._pyrobayes_sites)
    }


def check_input_dtype(net: nn.Module, *inputs, **kwargs) -> None:
    """Raise a ``TypeError`` naming both dtypes when a floating-point input's dtype differs
    from the network's (Pyro would otherwise fail deep inside a trace with a matmul error).

    Integer inputs (token ids, masks) are not checked.

    >>> import torch
    >>> check_input_dtype(torch.nn.Linear(2, 1).double(), torch.zeros(1, 2))
    Traceback (most recent call last):
    ...
    TypeError: input 0 has dtype torch.float32 but the network's weights are torch.float64; cast the input with .to(torch.float64)
    """
    dtype = next(
        (
            t.dtype
            for t in itertools.chain(net.parameters(), net.buffers())
            if t.is_floating_point()
        ),
        None,
    )
    if dtype is None:
        return
    named = list(enumerate(inputs)) + list(kwargs.items())
    for key, x in named:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
            what = f"input {key}" if isinstance(key, int) else f"input {key!r}"
            raise TypeError(
                f"{what} has dtype {x.dtype} but the network's weights are {dtype}; "
                f"cast the input with .to({dtype})"
            )


def check_sites(module: nn.Module, names: Iterable[str], what: str = "draws") -> None:
    """Raise a ``ValueError`` listing the *difference* between the model's Bayesian sites
    and ``names`` (the keys of a draw dict, a guide's sites, a checkpoint): the sites
    ``what`` lacks and the names the model does not have (a renamed network shows up as
    both, e.g. ``bnn3.0.weight`` missing and ``bnn1.0.weight`` unexpected).

    >>> import torch
    >>> bnn = to_pyro(torch.nn.Linear(2, 1), name="a")
    >>> check_sites(bnn, ["b.weight", "a.bias"])
    Traceback (most recent call last):
    ...
    ValueError: draws do not match the model's sites: missing ['a.weight']; unexpected ['b.weight']
    """
    expected = list(bayesian_sites(module))
    given = list(names)
    missing = [s for s in expected if s not in set(given)]
    if not missing:
        return
    unexpected = [s for s in given if s not in set(expected)]
    raise ValueError(
        f"{what} do not match the model's sites: missing {_head(missing)}; "
        f"unexpected {_head(unexpected)}"
    )


def _head(names: list[str], k: int = 5) -> str:
    return f"{names[:k]}" + (f" (+{len(names) - k} more)" if len(names) > k else "")


# Layers whose fused kernels (aten::lstm, aten::gru, aten::rnn_tanh/relu) have no vmap
# batching rule and no fallback: vmapping over weight draws raises.
_UNBATCHABLE = (nn.RNNBase,)


def twin_needs_loop(module: nn.Module) -> bool:
    """Whether the converted network's twin holds a layer that ``torch.func.vmap`` cannot
    batch over weight draws (recurrent layers), so draws must be evaluated one by one.

    Example::

        >>> import torch
        >>> from pyrobayes import to_pyro
        >>> from pyrobayes.convert import twin_needs_loop
        >>> gru, lin = to_pyro(torch.nn.GRU(2, 3)), to_pyro(torch.nn.Linear(2, 3))
        >>> twin_needs_loop(gru), twin_needs_loop(lin)
        (True, False)
    """
    net, _ = _converted_root(module)
    return any(isinstance(m, _UNBATCHABLE) for m in net._pyrobayes_twin.modules())


def map_draws(fn, in_dims: tuple, *, chunk_size: int | None = None, loop: bool = False):
    """``torch.func.vmap(fn, in_dims, randomness="different", chunk_size=...)``, or with
    ``loop=True`` the same mapping as a Python loop over the leading draw dimension
    (results stacked), for networks :func:`twin_needs_loop` flags.

    ``in_dims`` follows ``vmap``: ``0`` maps an argument (a tensor or a dict of tensors)
    over its first dimension, ``None`` passes it whole to every call.

    >>> import torch
    >>> f = lambda w, x: x @ w
    >>> w, x = torch.randn(3, 2, 1), torch.randn(4, 2)
    >>> a = map_draws(f, (0, None))(w, x)
    >>> b = map_draws(f, (0, None), loop=True)(w, x)
    >>> a.shape, bool(torch.allclose(a, b))
    (torch.Size([3, 4, 1]), True)
    """
    if not loop:
        from torch.func import vmap

        return vmap(fn, in_dims=in_dims, randomness="different", chunk_size=chunk_size)

    def take(arg, dim, i):
        if dim is None:
            return arg
        if isinstance(arg, dict):
            return {k: v[i] for k, v in arg.items()}
        return arg[i]

    def size(arg):
        return len(next(iter(arg.values()))) if isinstance(arg, dict) else len(arg)

    def looped(*args):
        sizes = {size(a) for a, d in zip(args, in_dims) if d is not None}
        if len(sizes) != 1:
            raise ValueError(f"mapped arguments disagree on the number of draws: {sorted(sizes)}")
        (n,) = sizes
        outs = [fn(*(take(a, d, i) for a, d in zip(args, in_dims))) for i in range(n)]
        return torch.stack(outs)

    return looped
