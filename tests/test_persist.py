"""Saving and loading a fitted (model, guide) pair; the param-store path is never silent."""

import pyro
import pytest
import torch
from torch import nn

from pyrobayes import Gaussian, PosteriorPredictive, load, save, to_bayesian
from pyrobayes.infer import fit


def _make(guide="normal", likelihood="categorical", name=None):
    torch.manual_seed(0)  # the same pretrained net every time
    net = nn.Sequential(
        nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4 if likelihood == "categorical" else 1)
    )
    return to_bayesian(net, likelihood=likelihood, guide=guide, name=name)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=g)
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


@pytest.mark.parametrize("guide", ["normal", "lowrank"])
def test_fit_save_load_identical_ppd(tmp_path, guide):
    x, y = _data()
    model, g = _make(guide)
    fit(model, g, (x, y), epochs=20, lr=1e-2, progress=False)  # default: fused when possible
    path = tmp_path / "fit.safetensors"
    save(path, model, g)
    torch.manual_seed(5)
    before = PosteriorPredictive(model, g, num_samples=16)(x).probs
    pyro.clear_param_store()
    model2, g2 = _make(guide)
    fresh = PosteriorPredictive(model2, g2, num_samples=16)
    torch.manual_seed(5)
    untrained = fresh(x).probs
    assert not torch.allclose(untrained, before, atol=1e-4)  # the fit changed something
    model3, g3 = _make(guide)
    load(path, model3, g3, x)
    torch.manual_seed(5)
    after = PosteriorPredictive(model3, g3, num_samples=16)(x).probs
    assert torch.equal(before, after)


def test_load_learned_noise_scale_and_renamed_model(tmp_path):
    x, _ = _data()
    y = x[:, 0] * 2.0
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    model, g = to_bayesian(net, likelihood=Gaussian(0.5, learn_scale=True))
    fit(model, g, (x, y), epochs=20, lr=1e-2, progress=False)
    save(tmp_path / "r.safetensors", model, g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    model2, g2 = to_bayesian(net, likelihood=Gaussian(0.5, learn_scale=True), name="other")
    load(tmp_path / "r.safetensors", model2, g2, x)
    learned = float(model.likelihood.scale.detach())
    assert float(model2.likelihood.scale.detach()) == pytest.approx(learned)
    assert learned != pytest.approx(0.5)
    torch.manual_seed(3)
    a = PosteriorPredictive(model, g, num_samples=8)(x).mean
    torch.manual_seed(3)
    b = PosteriorPredictive(model2, g2, num_samples=8)(x).mean
    assert torch.equal(a, b)


def test_foreign_and_mismatched_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    x, _ = _data()
    model, g = _make()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a pyrobayes saved fit"):
        load(tmp_path / "junk.safetensors", model, g, x)
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a pyrobayes saved fit"):
        load(tmp_path / "other.safetensors", model, g, x)
    g.setup(x)
    save(tmp_path / "ok.safetensors", model, g)
    model_lr, g_lr = _make("lowrank")
    with pytest.raises(ValueError, match="MOPEDNormal guide"):
        load(tmp_path / "ok.safetensors", model_lr, g_lr, x)
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 4))
    model_w, g_w = to_bayesian(wide)
    with pytest.raises(ValueError, match="does not match"):
        load(tmp_path / "ok.safetensors", model_w, g_w, x)
    assert not list(tmp_path.glob("*.tmp"))


def test_param_store_round_trip_reaches_the_predictive(tmp_path):
    x, y = _data()
    model, g = _make(name="clf")
    fit(model, g, (x, y), epochs=20, lr=1e-2, fused=False, progress=False)
    torch.manual_seed(5)
    trained = PosteriorPredictive(model, g, num_samples=16)(x).probs
    pyro.get_param_store().save(tmp_path / "store.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "store.pt")
    # same names as a fresh process would give; the fresh guide was never called, and
    # used to predict from its MOPED initial values, ignoring the loaded store
    model2, g2 = _make(name="clf")
    pred = PosteriorPredictive(model2, g2, num_samples=16)
    pred(x)  # sets the guide up (its model trace draws from the RNG)
    torch.manual_seed(5)
    assert torch.allclose(pred(x).probs, trained, atol=1e-6)
    # a store from another architecture under the same names is an error, not a guess
    pyro.clear_param_store()
    torch.manual_seed(0)
    wide = to_bayesian(nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 4)), name="clf")
    fit(*wide, (x, y), epochs=1, fused=False, progress=False)
    model3, g3 = _make(name="clf")
    with pytest.raises(ValueError, match="belongs to another model"):
        PosteriorPredictive(model3, g3, num_samples=4)(x)


@pytest.mark.parametrize("module", ["pyrobayes.persist", "pyrobayes.infer.twin"])
def test_new_module_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
