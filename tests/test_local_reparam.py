import pyro
import torch

from pyrobayes import Categorical, to_bayesian
from pyrobayes.guides import LocalReparameterization
from pyrobayes.infer.fast_elbo import FusedMeanFieldELBO


def test_lrt_outputs_have_the_weight_sampling_moments():
    torch.manual_seed(0)
    loc, scale = torch.randn(3, 5), 0.1 + torch.rand(3, 5)
    x = torch.randn(4, 5)
    with LocalReparameterization() as lrt:
        outs = []
        for _ in range(4000):
            w = loc + scale * torch.randn_like(loc)
            lrt.register(w, loc, scale)
            outs.append(torch.nn.functional.linear(x, w))
    outs = torch.stack(outs)
    mean, var = x @ loc.T, (x * x) @ (scale * scale).T
    # MC standard error of the mean: sqrt(var / 4000); allow 5 of them
    assert torch.all((outs.mean(0) - mean).abs() < 5 * (var / 4000).sqrt())
    assert torch.allclose(outs.var(0), var, rtol=0.1)
    # each row gets its own noise (the point of LRT): rows are not perfectly correlated
    assert abs(torch.corrcoef(outs[:, :, 0].T)[0, 1]) < 0.2


def test_lrt_lowers_gradient_variance_of_the_same_elbo():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    model, guide = to_bayesian(net, delta=0.5, likelihood=Categorical(), prior="normal")
    x, y = torch.randn(128, 20), torch.randint(0, 3, (128,))
    guide.setup(x, y=y)
    fused = FusedMeanFieldELBO(model, guide)
    loc = guide.flat_storage()[0]  # the flat means; the first layer's weight block of it
    a, b = next((a, b) for n, a, b, _ in guide.flat_sites if n.endswith("0.weight"))

    def grads(lrt):
        fused.local_reparam = lrt
        out = []
        for _ in range(60):
            (g,) = torch.autograd.grad(fused.loss(x, y=y), [loc])
            out.append(g[a:b])
        return torch.stack(out)

    pyro.set_rng_seed(1)
    g_plain, g_lrt = grads(False), grads(True)
    # same objective: the mean gradients agree within Monte-Carlo error ...
    se = ((g_plain.var(0) + g_lrt.var(0)) / 60).sqrt()
    assert ((g_plain.mean(0) - g_lrt.mean(0)).abs() < 5 * se + 1e-6).float().mean() > 0.99
    # ... and local reparameterisation has clearly less variance
    assert g_lrt.var(0).sum() < 0.5 * g_plain.var(0).sum()
