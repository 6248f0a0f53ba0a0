"""to_pyro on module classes Pyro's own class factory cannot take (abc.ABC mix-ins, a
``__getattr__`` that raises KeyError), layers whose ``device``/``dtype`` properties walk
``parameters()``, and out-of-vocabulary ids reaching an embedding."""

import abc
import copy

import pyro
import pytest
import torch
from torch import nn

from pyrobayes import BayesianModel, bayesian_sites, fit, to_bayesian, to_pyro
from pyrobayes.infer import PosteriorPredictive, forward_draws, sample_prior


class Activated(nn.Module, abc.ABC):
    """A user base class mixing in abc.ABC (as peft's LoRA layers do)."""

    @abc.abstractmethod
    def act(self, h: torch.Tensor) -> torch.Tensor: ...


class TanhLinear(Activated):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def act(self, h):
        return torch.tanh(h)

    def forward(self, x):
        return self.act(self.lin(x))


class OwnMeta(abc.ABCMeta):
    pass


class ReluLinear(TanhLinear, metaclass=OwnMeta):
    """A further metaclass on top of ABCMeta: the Pyro class needs one deriving from all."""

    def act(self, h):
        return torch.relu(h)


@pytest.mark.parametrize("root_abc", [True, False])
def test_abc_classes_convert_and_sample(root_abc):
    net = (
        TanhLinear(3, 4)
        if root_abc
        else nn.Sequential(TanhLinear(3, 4), ReluLinear(4, 4), nn.Linear(4, 1))
    )
    bnn = to_pyro(net, name="abc")
    assert isinstance(bnn, pyro.nn.PyroModule) and isinstance(bnn, type(net))
    assert all(isinstance(m, pyro.nn.PyroModule) for m in bnn.modules())
    expected = {f"abc.{n}" for n, _ in net.named_parameters()}
    assert set(bayesian_sites(bnn)) == expected
    x = torch.randn(5, 3)
    with pyro.poutine.trace() as tr:
        out = bnn(x)
    assert {n for n, s in tr.trace.nodes.items() if s["type"] == "sample"} == expected
    assert not torch.equal(out, bnn(x))  # a fresh weight draw per call
    again = copy.deepcopy(bnn)  # through the Pyro class's __reduce__
    assert type(again) is type(bnn) and set(bayesian_sites(again)) == expected
    model = BayesianModel(to_pyro(net, name="abc2"), "gaussian")
    assert forward_draws(model, sample_prior(model, 3), x).shape == (3, 5, net(x).shape[-1])


class Forwarding(nn.Module):
    """peft's ModulesToSaveWrapper in miniature: unknown attributes are looked up on the
    active copy, read straight from ``_modules`` (a KeyError while that entry is absent)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.original = inner
        self.copies = nn.ModuleDict({"default": copy.deepcopy(inner)})

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        return getattr(self.__dict__["_modules"]["copies"]["default"], name)

    def forward(self, x):
        return self.copies["default"](x)


def test_module_with_keyerror_getattr_converts_and_still_forwards():
    net = Forwarding(nn.Linear(3, 2))
    bnn = to_pyro(net, include="copies", name="fw")
    assert sorted(bayesian_sites(bnn)) == ["fw.copies.default.bias", "fw.copies.default.weight"]
    assert bnn.in_features == 3  # the wrapper's forwarding still works after conversion
    assert bnn(torch.randn(4, 3)).shape == (4, 2)
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = bnn.no_such_thing


class ReportsDevice(nn.Linear):
    """Like transformers' ModuleUtilsMixin: device and dtype from ``next(parameters())``."""

    @property
    def device(self) -> torch.device:
        return next(p.device for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_and_dtype_properties_survive_a_fully_bayesian_conversion(dtype):
    net = nn.Sequential(ReportsDevice(3, 4), nn.Tanh(), ReportsDevice(4, 2)).to(dtype)
    bnn = to_pyro(net, name="dev")
    assert list(bnn.parameters()) == []  # every weight is a sample site now
    for layer in (bnn[0], copy.deepcopy(bnn)[2]):
        assert layer.device == torch.device("cpu") and layer.dtype == dtype
        assert isinstance(layer, ReportsDevice)
    partial = to_pyro(net, include="2", name="dev2")  # a plain parameter left: used first
    assert partial[0].device == torch.device("cpu") and partial[0].dtype == dtype


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, ids):
        return self.out(self.emb(ids).mean(-2))


def test_out_of_vocabulary_id_names_the_embedding_in_fit_and_predictive():
    torch.manual_seed(0)
    model, guide = to_bayesian(Bag(), likelihood="categorical", name="bag")
    ids, y = torch.randint(0, 10, (8, 5)), torch.randint(0, 3, (8,))
    fit(model, guide, (ids, y), epochs=2, progress=False)
    assert PosteriorPredictive(model, guide, num_samples=4)(ids).probs.shape == (8, 3)
    msg = r"id 12 is out of range for the embedding 'emb' with 10 entries \(valid ids 0\.\.9\)"
    bad = ids.clone()
    bad[3, 2] = 12
    with pytest.raises(ValueError, match=msg):
        PosteriorPredictive(model, guide, num_samples=4)(bad)
    with pytest.raises(ValueError, match=msg):
        fit(model, guide, (bad, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match=msg):
        fit(model, guide, (bad, y), epochs=1, progress=False, fused=False)
    bad[3, 2] = -1
    with pytest.raises(ValueError, match="id -1 is out of range for the embedding 'emb'"):
        PosteriorPredictive(model, guide, num_samples=4)(bad)
    # Ids batched per draw (inputs_batched) pass through unchecked rather than failing.
    draws = sample_prior(model, 2)
    assert forward_draws(model, draws, ids.expand(2, 8, 5), inputs_batched=True).shape == (
        2,
        8,
        3,
    )
