"""Loading :class:`~pyrobayes.guides.MOPEDNormal` state written before the guide kept its
weights in two flat tensors: checkpoints, saved fits and param stores of that time hold
one parameter per weight site (``locs.<site>_unconstrained``,
``scales.<site>_unconstrained``; ``locs.<site>`` for frozen means) and optimiser state per
site parameter. Each function here maps such state onto the flat layout (site after site,
:attr:`MOPEDNormal.flat_sites`) and leaves state of today's layout alone; nothing else
reads the per-site layout. Likewise a :class:`~pyrobayes.guides.MOPEDLowRank` written
before its Pyro name carried the model's held its parameters under the shared param-store
names ``MOPEDLowRank.loc``/``.cov_factor``/``.scale`` (:func:`shared_name`,
:func:`per_model_optim_state`); its saved fits and torch-optimiser checkpoints never named
them, so they load unchanged.

Example (two sites of an old state dict become one flat loc and one flat raw scale)::

    >>> import torch
    >>> from pyrobayes import to_bayesian, Gaussian
    >>> from pyrobayes.guides._moped_legacy import flat_guide_state
    >>> model, guide = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1), name="m")
    >>> guide.setup(torch.zeros(1, 2))
    >>> old = {"locs.m.net.weight_unconstrained": torch.tensor([[1.0, 2.0]]),
    ...        "locs.m.net.bias_unconstrained": torch.tensor([3.0]),
    ...        "scales.m.net.weight_unconstrained": torch.zeros(1, 2),
    ...        "scales.m.net.bias_unconstrained": torch.zeros(1)}
    >>> new, old_params = flat_guide_state(guide, old)
    >>> new["loc_unconstrained"], len(old_params)
    (tensor([1., 2., 3.]), 4)
"""

from __future__ import annotations

import torch

from pyrobayes._pyro_compat import UNCONSTRAINED_SUFFIX, pyro_name

__all__ = [
    "flat_guide_state",
    "flat_optim_state",
    "pull_legacy_store",
    "shared_name",
    "per_model_optim_state",
]

_FLAT = ("loc_unconstrained", "scale_unconstrained")


def _site_keys(guide, state: dict) -> tuple[list[str], list[str]] | None:
    """The old per-site keys of the guide's flat sites in ``state`` (locs, scales), or
    ``None`` when ``state`` is not of the per-site layout."""
    sites = [name for name, *_ in getattr(guide, "flat_sites", ())]
    if not sites or any(k in state for k in ("loc", *_FLAT)):
        return None
    locs = [
        f"locs.{s}{UNCONSTRAINED_SUFFIX}"
        if f"locs.{s}{UNCONSTRAINED_SUFFIX}" in state
        else f"locs.{s}"
        for s in sites
    ]
    scales = [f"scales.{s}{UNCONSTRAINED_SUFFIX}" for s in sites]
    if not all(k in state for k in locs + scales):
        return None  # not this guide's per-site state: the caller's check names what differs
    return locs, scales


def flat_guide_state(guide, state: dict) -> tuple[dict, list[str] | None]:
    """``(state, old_params)``: a guide ``state_dict`` of the per-site layout with its
    weight sites concatenated into the flat ``loc`` (``loc_unconstrained``, or the
    buffer ``loc`` of a frozen guide) and ``scale_unconstrained``, and the old state's
    trainable parameter names in their order (what its optimiser state is indexed by);
    ``(state, None)`` for a state of today's layout or of another guide."""
    keys = _site_keys(guide, state)
    if keys is None:
        return state, None
    locs, scales = keys
    old_params = [k for k in state if k.endswith(UNCONSTRAINED_SUFFIX)]
    gone = set(locs) | set(scales)
    new = {k: v for k, v in state.items() if k not in gone}
    loc_key = "loc" if getattr(guide, "freeze_loc", False) else "loc_unconstrained"
    new[loc_key] = torch.cat([state[k].reshape(-1) for k in locs])
    new["scale_unconstrained"] = torch.cat([state[k].reshape(-1) for k in scales])
    return new, old_params


def flat_optim_state(guide, old_params: list[str], state: dict) -> dict:
    """An optimiser state saved over the per-site parameters, re-expressed over today's:
    a torch ``state_dict`` (indexed by ``[old guide parameters..., model parameters...]``,
    ``old_params`` from :func:`flat_guide_state`) or a Pyro optimiser's state (keyed by
    param-store names ``<GuideClass>.locs.<site>``). Per-element entries (Adam's moments)
    are concatenated in the flat order; ``ValueError`` when the sites' states cannot form
    one (some sites without state, or stepped a different number of times)."""
    if "param_groups" in state:
        return _torch_state(guide, old_params, state)
    return _pyro_state(guide, state)


def _torch_state(guide, old_params: list[str], state: dict) -> dict:
    groups, old = state["param_groups"], state["state"]
    if len(groups) != 1:
        raise ValueError(
            f"cannot map an optimiser state of {len(groups)} parameter groups onto the "
            "guide's flat parameters (only fit's one group is supported)"
        )
    ids = groups[0]["params"]
    names = [n for n, p in guide.named_parameters() if p.requires_grad]
    span = {name: (a, b) for name, a, b, _ in guide.flat_sites}
    flat: dict[str, list] = {k: [] for k in _FLAT}
    moved: dict[int, int] = {}  # old position -> new position
    for i, name in enumerate(old_params):
        kind, _, rest = name.partition(".")
        site = rest.removesuffix(UNCONSTRAINED_SUFFIX)
        if site in span and kind in ("locs", "scales"):
            key = _FLAT[kind == "scales"]
            flat[key].append((span[site], old.get(ids[i])))
        else:
            moved[i] = names.index(name)
    for i in range(len(old_params), len(ids)):  # the model's parameters come after
        moved[i] = len(names) + i - len(old_params)
    out = {moved[i]: old[ids[i]] for i in moved if ids[i] in old}
    for key, members in flat.items():
        members.sort(key=lambda m: m[0][0])
        merged = _merge([s for _, s in members], [b - a for (a, b), _ in members])
        if merged is not None:
            out[names.index(key)] = merged
    total = len(names) + len(ids) - len(old_params)
    return {"state": out, "param_groups": [{**groups[0], "params": list(range(total))}]}


def _pyro_state(guide, state: dict) -> dict:
    old_prefix, new_prefix = type(guide).__name__, pyro_name(guide)
    span = {name: (a, b) for name, a, b, _ in guide.flat_sites}
    flat: dict[str, list] = {"loc": [], "scale": []}
    out = {}
    for name, value in state.items():
        head, _, rest = name.partition(".")
        kind, _, site = rest.partition(".")
        if head == old_prefix and kind in ("locs", "scales") and site in span:
            flat["loc" if kind == "locs" else "scale"].append((span[site], value))
        elif head == old_prefix:
            out[f"{new_prefix}.{rest}"] = value
        else:
            out[name] = value
    for key, members in flat.items():
        if not members:
            continue
        if len(members) != len(span):
            raise ValueError("optimiser state covers only some of the guide's sites")
        members.sort(key=lambda m: m[0][0])
        states = [v["state"].get(0) for _, v in members]
        merged = _merge(states, [b - a for (a, b), _ in members])
        out[f"{new_prefix}.{key}"] = {
            "state": {} if merged is None else {0: merged},
            "param_groups": members[0][1]["param_groups"],
        }
    return out


def _merge(states: list, sizes: list[int]) -> dict | None:
    """One flat state from the per-site states of one flat tensor."""
    if all(s is None for s in states):
        return None
    if any(s is None for s in states) or len({tuple(sorted(s)) for s in states}) != 1:
        raise ValueError("optimiser state covers only some of the guide's sites")
    merged = {}
    for key in states[0]:
        values = [s[key] for s in states]
        per_element = key != "step" and all(
            torch.is_tensor(v) and v.numel() == n for v, n in zip(values, sizes)
        )
        if per_element:
            merged[key] = torch.cat([v.reshape(-1) for v in values])
        elif all(_same(v, values[0]) for v in values):
            merged[key] = values[0]
        else:
            raise ValueError(f"optimiser state {key!r} differs between the guide's sites")
    return merged


def _same(a, b) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return a == b


@torch.no_grad()
def pull_legacy_store(guide, store) -> None:
    """Copy per-site entries of Pyro's param store (``<GuideClass>.locs.<site>``,
    ``<GuideClass>.scales.<site>``, as a store saved before the flat layout holds them)
    into the guide's flat tensors; entries of today's names are Pyro's own business."""
    sites = getattr(guide, "flat_sites", None)
    if not sites:
        return
    loc, raw = guide.flat_storage()
    prefix = type(guide).__name__
    for name, a, b, shape in sites:
        for kind, target in (("locs", loc), ("scales", raw)):
            full = f"{prefix}.{kind}.{name}"
            if full not in store:
                continue
            value = store[full].detach()
            if tuple(value.shape) != tuple(shape):
                raise ValueError(
                    f"Pyro's param store holds {full!r} with shape {tuple(value.shape)}, but "
                    f"the site has shape {tuple(shape)}: the store belongs to another model "
                    "(pyro.clear_param_store() to ignore it)"
                )
            if kind == "scales":  # the store holds the constrained scale
                value = torch.distributions.biject_to(guide.scale_constraint).inv(value)
            target[a:b] = value.reshape(-1).to(target)


def shared_name(guide, param: str) -> str | None:
    """The shared param-store name (``<GuideClass>.<param>``) a parameter of ``guide`` had
    before the guide's Pyro name carried its model's; ``None`` if the names are the same.

    Example::

        >>> import torch
        >>> from pyrobayes import to_bayesian, Gaussian
        >>> from pyrobayes.guides._moped_legacy import shared_name
        >>> _, guide = to_bayesian(torch.nn.Linear(2, 1), likelihood=Gaussian(0.1),
        ...                        guide="lowrank", name="m")
        >>> shared_name(guide, "cov_factor")
        'MOPEDLowRank.cov_factor'
    """
    old, new = type(guide).__name__, pyro_name(guide)
    return None if old == new else f"{old}.{param}"


def per_model_optim_state(guide, state: dict) -> dict:
    """A Pyro optimiser's state (keyed by param-store names) written under the shared names
    ``<GuideClass>.<param>`` re-keyed to the guide's per-model ones
    (``<GuideClass>.<model>.<param>``); any other state is returned as it is. Without this
    Pyro would hold the old entries back for names that never come, and a resumed fit would
    silently restart its optimiser."""
    if "param_groups" in state or not hasattr(guide, "named_pyro_params"):
        return state
    rename = {}
    for param, _ in guide.named_pyro_params():
        old = shared_name(guide, param)
        if old is not None and old in state:
            rename[old] = f"{pyro_name(guide)}.{param}"
    return {rename.get(k, k): v for k, v in state.items()}
