"""A MOPED guide owns its flat storage (``guide.loc``, ``guide.scale``): Pyro's traces and
the fused ELBO optimise the same two tensors, and state written per site (before the flat
storage) still loads: fit checkpoints (fit's default optimiser and a Pyro optimiser), saved
fits and Pyro param stores. The per-site fixtures in ``tests/data/legacy_moped`` were
written by main at 1faef37 (``make.py`` there says how)."""

import json
import shutil
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from safetensors.torch import save_file

from pyrobayes import Categorical, Gaussian, fit, load, to_bayesian
from pyrobayes.guides._moped_legacy import flat_optim_state
from pyrobayes.infer.steppers import FusedStepper, TorchStepper, default_optimiser

LEGACY = Path(__file__).parent / "data" / "legacy_moped"


def _pair(name=None, freeze=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return to_bayesian(net, delta=0.2, likelihood=Categorical(), freeze=freeze, name=name)


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_pyro_traces_and_the_fused_elbo_train_the_same_two_tensors():
    x, y = _data()
    model, guide = _pair(name="same")
    guide.setup(x, y=y)
    loc, raw = guide.flat_storage()
    fused = FusedStepper(model, guide, default_optimiser(0.01), {"beta": 1.0})
    traced = TorchStepper(
        model, guide, model, guide, pyro.infer.Trace_ELBO(), default_optimiser(0.01)
    )
    for stepper in (fused, traced):
        before = loc.detach().clone()
        stepper.step(x, y=y)
        assert [id(p) for p in stepper.params] == [id(loc), id(raw)]
        assert not torch.equal(loc.detach(), before)  # the step moved the guide's own tensor
    # Pyro's SVI with its own optimiser: the param store holds the very same tensors
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    before = loc.detach().clone()
    svi.step(x, y=y)
    store = pyro.get_param_store()
    assert sorted(store.keys()) == ["MOPEDNormal.same.loc", "MOPEDNormal.same.scale"]
    assert store._params["MOPEDNormal.same.loc"] is loc
    assert store._params["MOPEDNormal.same.scale"] is raw
    assert not torch.equal(loc.detach(), before)
    # the sites read views: the guide's draws and medians follow the flat tensors
    median = guide.median()["same.net.0.weight"]
    assert torch.equal(median, loc.detach()[: median.numel()].view_as(median))


def test_guides_of_two_models_never_share_a_param_store_entry():
    """Per-model Pyro names: SVI on one guide, then on another, without clearing the store."""
    x, y = _data()
    for name in ("first", "second"):
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(4, 5 if name == "first" else 7))
        model, guide = to_bayesian(net, likelihood=Gaussian(0.1), name=name)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
        svi.step(x, y=torch.randn(16, net[0].out_features))
        assert pyro.get_param_store()[f"MOPEDNormal.{name}.loc"].shape == guide.loc.shape


def test_frozen_means_are_a_buffer_and_fit_leaves_no_shared_storage(tmp_path):
    x, y = _data()
    model, guide = _pair(freeze=True)
    fit(model, guide, (x, y), epochs=2, batch_size=8, progress=False)
    assert [n for n, _ in guide.named_parameters()] == ["scale_unconstrained"]
    assert torch.equal(
        guide.loc, torch.cat([p.reshape(-1) for p in model.net.state_dict().values()])
    )
    save_file(guide.state_dict(), str(tmp_path / "guide.safetensors"))  # no shared storage


class _Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1).double()

    def forward(self, x):
        return self.b(self.a(x).double()).float()


def test_weights_of_mixed_dtypes_are_refused_by_name():
    _, guide = to_bayesian(_Mixed(), likelihood=Gaussian(0.1))
    with pytest.raises(TypeError, match="one tensor, but they differ in dtype"):
        guide.setup(torch.zeros(1, 2))


# --- state written per site, before the flat storage -----------------------------------


def _legacy_pair(freeze=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    lik = Gaussian(noise_prior=dist.LogNormal(-2.0, 0.5))
    return to_bayesian(net, delta=0.1, likelihood=lik, prior="normal", name="legacy", freeze=freeze)


def _legacy_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, generator=g)
    return x, x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(24, generator=g)


@pytest.mark.parametrize("kind", ["fused", "pyro", "frozen"])
def test_a_per_site_checkpoint_resumes_as_the_uninterrupted_run(tmp_path, kind):
    """Checkpoints of two epochs written per site (the weights, the noise site, and the
    optimiser state per site parameter; with ``freeze`` the means are buffers) resume into
    the flat guide: the third epoch's loss is the one the old code's uninterrupted run had."""
    expected = json.loads((LEGACY / "expected.json").read_text())[kind]
    for suffix in ("", ".safetensors"):
        shutil.copy(LEGACY / f"{kind}.json{suffix}", tmp_path / f"{kind}.json{suffix}")
    model, guide = _legacy_pair(freeze=kind == "frozen")
    kw = dict(batch_size=8, lr=0.02, progress=False, seed=3)
    if kind == "pyro":
        kw["optim"] = pyro.optim.Adam({"lr": 0.02})
    h = fit(
        model,
        guide,
        _legacy_data(),
        epochs=3,
        checkpoint=tmp_path / f"{kind}.json",
        resume=True,
        **kw,
    )
    assert h.losses == pytest.approx(expected, rel=1e-5)
    flat = (
        ["scale_unconstrained"]
        if kind == "frozen"
        else ["loc_unconstrained", "scale_unconstrained"]
    )
    assert [n for n, _ in guide.named_parameters()][: len(flat)] == flat


def test_a_per_site_saved_fit_loads_into_the_flat_guide():
    expected = json.loads((LEGACY / "expected.json").read_text())["medians"]
    model, guide = _legacy_pair()
    load(LEGACY / "saved.safetensors", model, guide, torch.zeros(1, 2))
    got = {k: v.tolist() for k, v in guide.median().items()}
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.allclose(torch.tensor(got[k]), torch.tensor(v))


def test_a_per_site_param_store_reaches_a_fresh_flat_guide():
    """A param store saved per site (``MOPEDNormal.locs.<site>``): the predictive's setup
    copies it into the flat tensors instead of predicting from the initial values."""
    from pyrobayes.infer.predictive import sample_posterior

    model, guide = _legacy_pair()
    store = pyro.get_param_store()
    site = "legacy.net.0.bias"
    store.setdefault(f"MOPEDNormal.locs.{site}", torch.full((4,), 3.0))
    store.setdefault(
        f"MOPEDNormal.scales.{site}", torch.full((4,), 1e-3), constraint=guide.scale_constraint
    )
    draws = sample_posterior(guide, 200, torch.zeros(1, 2))
    assert torch.allclose(draws[site].mean(0), torch.full((4,), 3.0), atol=1e-3)
    assert torch.allclose(guide.loc_and_scale(site)[1], torch.full((4,), 1e-3))


def test_per_site_optimiser_state_that_cannot_merge_is_refused():
    model, guide = _pair(name="m")
    guide.setup(_data()[0])
    old = [
        f"{k}.m.net.{p}_unconstrained"
        for k in ("locs", "scales")
        for p in ("0.weight", "0.bias", "2.weight", "2.bias")
    ]
    s = {"step": torch.tensor(2.0), "exp_avg": torch.zeros(32)}
    partial = {"state": {0: s}, "param_groups": [{"params": list(range(8))}]}
    with pytest.raises(ValueError, match="only some"):
        flat_optim_state(guide, old, partial)
    steps = {i: {"step": torch.tensor(float(i)), "exp_avg": torch.zeros(1)} for i in range(8)}
    with pytest.raises(ValueError, match="'step' differs"):
        flat_optim_state(guide, old, {"state": steps, "param_groups": [{"params": list(range(8))}]})
    with pytest.raises(ValueError, match="2 parameter groups"):
        flat_optim_state(guide, old, {"state": {}, "param_groups": [{"params": []}] * 2})


def test_a_moved_guide_trains_without_rebinding():
    """``guide.to(...)`` moves the two flat tensors; the sites' views follow (nothing is
    bound that could go stale), and a further fit trains the moved tensors."""
    x, y = _data()
    model, guide = _pair()
    fit(model, guide, (x, y), epochs=1, batch_size=8, progress=False)
    model.double(), guide.double()
    before = guide.flat_storage()[0].detach().clone()
    fit(model, guide, (x.double(), y), epochs=1, batch_size=8, progress=False)
    loc, raw = guide.flat_storage()
    assert loc.dtype == raw.dtype == torch.float64 and not torch.equal(loc.detach(), before)
    site = guide.flat_sites[0][0]
    assert guide.loc_and_scale(site)[0].dtype == torch.float64
