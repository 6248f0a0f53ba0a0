"""The deterministic trainer: reproducible, the exact full-batch Adam step, clear errors."""

import pytest
import torch

from pyrobayes.models import MLP
from pyrobayes.models.train import train_network


def _net(seed=0, out=1):
    torch.manual_seed(seed)
    return MLP(2, (8,), out)


def test_same_seed_same_network_and_caller_rng_untouched():
    x, y = torch.randn(50, 2), torch.randint(0, 3, (50,))
    a, b = _net(out=3), _net(out=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ha = train_network(a, x, y, epochs=4, batch_size=16, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    hb = train_network(b, x, y, epochs=4, batch_size=16, seed=7, progress=False)
    assert ha.losses == hb.losses and len(ha.epoch_seconds) == 4
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = _net(out=3)
    train_network(c, x, y, epochs=4, batch_size=16, seed=8, progress=False)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))  # the order matters
    assert not a.training


def test_full_batch_is_plain_adam_on_the_mean_loss():
    x, y = torch.randn(30, 2), torch.randn(30)
    net, ref = _net(), _net()
    train_network(net, x, y, loss="mse", epochs=5, lr=1e-2, batch_size=None, progress=False)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(ref(x).squeeze(-1), y).backward()
        opt.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_bad_arguments_are_named():
    x, y = torch.randn(10, 2), torch.randn(10)
    with pytest.raises(ValueError, match="unknown loss 'l1'; valid: cross_entropy, mse"):
        train_network(_net(), x, y, loss="l1")
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        train_network(_net(), x, y, epochs=2.5)
    with pytest.raises(ValueError, match=r"mse: network output \(10, 3\) does not match"):
        train_network(_net(out=3), x, y, loss="mse", progress=False)
    with pytest.raises(ValueError, match="need as many targets as inputs"):
        train_network(_net(), x, y[:5])
