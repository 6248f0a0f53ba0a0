"""One test per private Pyro hook in pyrobayes._pyro_compat: a Pyro upgrade that breaks
one of them fails here, by name."""

import abc
import pickle

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn

from pyrobayes import _pyro_compat as pc


def model(x):
    w = pyro.sample("w", pyro.distributions.Normal(torch.zeros(3, 2), 1.0).to_event(2))
    b = pyro.sample("b", pyro.distributions.Normal(0.0, 1.0))
    return x @ w + b


@pytest.fixture
def x():
    return torch.randn(4, 3)


def test_setup_prototype(x):
    guide = AutoNormal(model)
    assert guide.prototype_trace is None
    pc.setup_prototype(guide, x)
    assert set(guide.prototype_trace.nodes) >= {"w", "b"}


def test_needs_setup(x):
    guide = AutoNormal(model)
    assert pc.needs_setup(guide)  # lazily built: no parameters before the first call
    pc.setup_prototype(guide, x)
    assert not pc.needs_setup(guide)
    assert not pc.needs_setup(lambda x: None)  # a plain callable guide has nothing to build


def test_unpack_latent(x):
    guide = AutoLowRankMultivariateNormal(model, rank=1)
    pc.setup_prototype(guide, x)
    latent = torch.arange(7.0).expand(5, 7)
    parts = {site["name"]: v for site, v in pc.unpack_latent(guide, latent)}
    assert parts["w"].shape == (5, 3, 2) and parts["b"].shape == (5,)
    assert sorted(
        torch.cat([parts["w"].reshape(5, -1), parts["b"][:, None]], 1)[0].tolist()
    ) == list(range(7))


def test_loc_and_scale(x):
    guide = AutoNormal(model, init_scale=0.3)
    pc.setup_prototype(guide, x)
    loc, scale = pc.loc_and_scale(guide, "w")
    assert loc.shape == scale.shape == (3, 2)
    torch.testing.assert_close(scale, torch.full((3, 2), 0.3))


def test_event_dims(x):
    guide = AutoNormal(model)
    pc.setup_prototype(guide, x)
    assert pc.event_dims(guide) == {"w": 2, "b": 0}


def test_unconstrained_shapes(x):
    guide = AutoLowRankMultivariateNormal(model, rank=1)
    pc.setup_prototype(guide, x)
    assert {k: tuple(v) for k, v in pc.unconstrained_shapes(guide).items()} == {
        "w": (3, 2),
        "b": (),
    }


def test_init_scale():
    assert pc.init_scale(AutoLowRankMultivariateNormal(model, rank=1, init_scale=0.07)) == 0.07


def test_pyro_name_and_set_pyro_name():
    net = PyroModule[nn.Sequential](PyroModule[nn.Linear](2, 2))
    pc.set_pyro_name(net, "renamed")
    assert pc.pyro_name(net) == "renamed"
    assert pc.pyro_name(net[0]) == "renamed.0"


def test_param_constraint_and_unconstrained_suffix():
    m = PyroModule[nn.Linear](2, 1)
    m.s = PyroParam(torch.ones(2), constraint=torch.distributions.constraints.positive)
    assert pc.param_constraint(m, "s") is torch.distributions.constraints.positive
    assert "s" + pc.UNCONSTRAINED_SUFFIX in m._parameters


def test_autonormal_samples_at_unconstrained_site(x):
    # LocalReparameterization recognises AutoNormal's auxiliary "<site>_unconstrained" site.
    guide = AutoNormal(model)
    tr = pyro.poutine.trace(guide).get_trace(x)
    assert "w" + pc.UNCONSTRAINED_SUFFIX in tr.nodes


def test_rnn_flat_weights_follow_samples():
    assert pc.rnn_flat_weights_follow_samples()
    lstm = PyroModule[nn.LSTM](2, 3)
    del lstm.weight_hh_l0
    # PyroModule.__setattr__ directly, as to_pyro does (RNNBase.__setattr__ would read the
    # descriptor while the weight is deleted).
    PyroModule.__setattr__(
        lstm,
        "weight_hh_l0",
        PyroSample(pyro.distributions.Normal(0.0, 1.0).expand([12, 3]).to_event(2)),
    )
    with pyro.poutine.trace() as tr:
        lstm(torch.randn(1, 4, 2))
    assert "weight_hh_l0" in tr.trace.nodes


class _AbcLinear(nn.Linear, abc.ABC):
    pass


def test_pyro_module_class_builds_abc_classes_into_pyros_cache():
    with pytest.raises(TypeError, match="metaclass conflict"):
        PyroModule[type("Fresh", (nn.Linear, abc.ABC), {})]  # Pyro's own factory
    cls = pc.pyro_module_class(_AbcLinear)
    assert PyroModule[_AbcLinear] is cls and issubclass(cls, (_AbcLinear, PyroModule[nn.Linear]))
    assert pc.pyro_module_class(nn.Linear) is PyroModule[nn.Linear]  # plain classes: Pyro's
    m = _AbcLinear(2, 1)
    m.__class__ = cls
    assert type(pickle.loads(pickle.dumps(m))) is cls  # unpickled through Pyro's _New


def test_is_subsample():
    def plated():
        with pyro.plate("data", 10, subsample_size=2):
            pyro.sample("obs", pyro.distributions.Normal(0.0, 1.0), obs=torch.zeros(2))

    tr = pyro.poutine.trace(plated).get_trace()
    kinds = {n: pc.is_subsample(s) for n, s in tr.nodes.items() if s["type"] == "sample"}
    assert kinds == {"data": True, "obs": False}
