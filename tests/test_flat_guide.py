"""The fused stepper's flat guide storage (``pyrobayes.infer.flat_guide``): the same
updates and the same per-site optimiser state as an optimiser over the guide's own
parameters, and a replaced parameter is picked up, not silently left untrained."""

import pyro.distributions as dist
import pytest
import torch

from pyrobayes import Categorical, Gaussian, to_bayesian
from pyrobayes.infer.flat_guide import flat_optim_state
from pyrobayes.infer.steppers import FusedStepper, default_optimiser

ADAM = default_optimiser(0.01)  # fit's default (element-wise: flat=True)


def _per_site_adam(params):
    return torch.optim.Adam(params, lr=0.01, fused=True)  # the same update, not bound


def _pair(freeze=False, kind="categorical"):
    """``kind``: ``"noise"`` adds a latent noise site to the guide, ``"partial"`` leaves
    the last bias deterministic (a trainable model parameter): both are optimised next to
    the two flat tensors."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    lik = Categorical()
    if kind == "noise":
        net[2] = torch.nn.Linear(8, 1)
        lik = Gaussian(noise_prior=dist.LogNormal(-1.6, 0.8))
    exclude = "2.bias" if kind == "partial" else None
    return to_bayesian(net, delta=0.2, likelihood=lik, freeze=freeze, exclude=exclude)


def _run(stepper, x, y, seeds):
    losses = []
    for s in seeds:
        torch.manual_seed(s)  # the same weight draw in both runs
        losses.append(stepper.step(x, y=y))
    return losses


def _data(kind="categorical"):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 4, generator=g)
    if kind == "noise":
        return x, torch.randn(16, generator=g)
    return x, torch.randint(0, 3, (16,), generator=g)


def _bound_and_plain(kind="categorical"):
    """Two equal (model, guide) pairs: one stepper binds, the other does not."""
    (m1, g1), (m2, g2) = _pair(kind=kind), _pair(kind=kind)
    bound = FusedStepper(m1, g1, ADAM, {"beta": 1.0}, flat=True)
    plain = FusedStepper(m2, g2, _per_site_adam, {"beta": 1.0})
    return bound, plain, g1, g2


def test_bound_steps_equal_an_optimiser_over_the_site_parameters():
    x, y = _data()
    bound, plain, g1, g2 = _bound_and_plain()
    l1 = _run(bound, x, y, [0])
    start = [t.detach().clone() for t in g1.state_dict().values()]
    l1 += _run(bound, x, y, range(1, 4))
    l2 = _run(plain, x, y, range(4))
    assert bound._layout is not None and plain._layout is None
    assert len(bound.params) == 2 and len(plain.params) == 8  # 4 sites x (loc, scale)
    assert bound._flat.is_bound()
    assert l1 == pytest.approx(l2, rel=1e-6)
    s1, s2 = list(g1.state_dict().values()), list(g2.state_dict().values())
    assert len(s1) == len(s2) == 8
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(s1, s2))
    # the site parameters are views of the flat storage: the updates reached them
    assert not any(torch.equal(a, b) for a, b in zip(s1, start))


@pytest.mark.parametrize("kind", ["categorical", "noise", "partial"])
def test_bound_state_is_per_site_and_resumes_exactly(kind):
    x, y = _data(kind)
    bound, plain, g1, _ = _bound_and_plain(kind)
    _run(bound, x, y, range(3))
    _run(plain, x, y, range(3))
    # the two flat tensors, plus the noise site's loc and scale, or the deterministic bias
    assert len(bound.params) == {"categorical": 2, "noise": 4, "partial": 3}[kind]
    a, b = bound.get_state(), plain.get_state()
    assert a["param_groups"][0]["params"] == b["param_groups"][0]["params"]
    assert a["state"].keys() == b["state"].keys()
    for i, s in b["state"].items():
        assert s.keys() == a["state"][i].keys()
        for k, v in s.items():
            assert a["state"][i][k].shape == v.shape and torch.allclose(a["state"][i][k], v)
    # resume from the per-site state (e.g. a checkpoint of an unbound run) into a new
    # bound stepper: the next step equals the uninterrupted one
    m3, g3 = _pair(kind=kind)
    g3.setup(x, y=y)
    with torch.no_grad():  # copy the values (the auto-generated names differ)
        for mine, theirs in ((g3, g1), (m3, bound.model)):
            for t, v in zip(mine.state_dict().values(), theirs.state_dict().values()):
                t.copy_(v)
    resumed = FusedStepper(m3, g3, ADAM, {"beta": 1.0}, flat=True)
    resumed.set_state(b)
    assert _run(resumed, x, y, [3]) == pytest.approx(_run(bound, x, y, [3]), rel=1e-6)
    for mine, theirs in ((g3, g1), (m3, bound.model)):
        s1, s3 = list(theirs.state_dict().values()), list(mine.state_dict().values())
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(s1, s3))
    assert int(resumed.opt.state[resumed.params[0]]["step"]) == 4


def test_a_replaced_site_parameter_is_rebound_and_keeps_training():
    x, y = _data()
    model, guide = _pair()
    st = FusedStepper(model, guide, ADAM, {"beta": 1.0}, flat=True)
    _run(st, x, y, range(2))
    loc = next(t for t in st._flat.site_tensors()[0] if t.dim() == 2)
    loc.data = loc.data.clone()  # e.g. guide.to(...): the view is gone
    assert not st._flat.is_bound()
    before = loc.detach().clone()
    _run(st, x, y, [2])
    assert st._flat.is_bound() and not torch.equal(loc.detach(), before)
    assert int(st.opt.state[st.params[0]]["step"]) == 3  # the Adam state went along


def test_frozen_means_are_not_bound():
    x, y = _data()
    model, guide = _pair(freeze=True)
    st = FusedStepper(model, guide, ADAM, {"beta": 1.0}, flat=True)
    first = _run(st, x, y, [0])[0]
    assert st._layout is None  # the locs are buffers: nothing to bind
    assert all(p.grad is None for p in st.params) and first > 0
    # unbound, the optimiser holds the scales themselves, and the steps still move them
    scales = [t for t in guide.parameters() if t.requires_grad]
    assert {id(t) for t in scales} == {id(t) for t in st.params}
    before = [t.detach().clone() for t in scales]
    _run(st, x, y, [1])
    assert all(not torch.equal(a, t) for a, t in zip(before, scales))


def test_flat_state_refuses_what_it_cannot_merge():
    layout = [("flat", 0, 0, 2, (2,)), ("flat", 0, 2, 3, (1,))]
    s = {"step": torch.tensor(2.0), "exp_avg": torch.zeros(2)}
    partial = {"state": {0: s}, "param_groups": [{"params": [0, 1]}]}
    with pytest.raises(ValueError, match="only some"):
        flat_optim_state(partial, layout, 1)
    steps = {0: s, 1: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(1)}}
    with pytest.raises(ValueError, match="'step' differs"):
        flat_optim_state({"state": steps, "param_groups": [{"params": [0, 1]}]}, layout, 1)
    with pytest.raises(ValueError, match="one group of 2 parameters"):
        flat_optim_state({"state": {}, "param_groups": [{"params": [0]}]}, layout, 1)


def test_fit_gives_the_parameters_their_own_storage_back(tmp_path):
    """During a fit the site parameters are views of two flat tensors; afterwards each has
    its own storage again (safetensors' save_file refuses shared storage), same values."""
    from safetensors.torch import save_file

    from pyrobayes import fit

    x, y = _data()
    model, guide = _pair()
    seen = []

    def during(record):
        storages = {p.untyped_storage().data_ptr() for p in guide.parameters()}
        seen.append(len(storages))

    fit(model, guide, (x, y), epochs=2, batch_size=8, progress=False, callbacks=[during])
    params = list(guide.parameters())
    assert seen == [2, 2]  # bound while fitting: locs in one storage, raw scales in another
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params) == 8
    save_file(guide.state_dict(), str(tmp_path / "guide.safetensors"))
