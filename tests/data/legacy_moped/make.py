"""Write the per-site (pre flat-storage) MOPED fixtures that tests/test_flat_guide.py loads.

Run with the code from before MOPEDNormal owned its flat storage (main at 1faef37 (frozen: b2a13c4, the same MOPED code)):

    PYTHONPATH=/path/to/old/checkout OMP_NUM_THREADS=1 python tests/data/legacy_moped/make.py

It writes, next to itself: ``fused.json`` (+ ``.safetensors``: a 2-epoch fit checkpoint with
fit's default optimiser on the fused path), ``pyro.json`` (the same with ``pyro.optim.Adam``),
``frozen.json`` (fit's default optimiser, ``freeze=True``: the means are buffers),
``saved.safetensors`` (``pyrobayes.save`` after 3 epochs) and ``expected.json`` (the losses
of the uninterrupted 3-epoch runs and the saved guide's medians), all from a 2-4-1 tanh MLP
with a latent noise site.
"""

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyrobayes import Gaussian, fit, save, to_bayesian

HERE = Path(__file__).parent


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, generator=g)
    return x, x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(24, generator=g)


def pair(name, freeze=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    lik = Gaussian(noise_prior=dist.LogNormal(-2.0, 0.5))
    return to_bayesian(net, delta=0.1, likelihood=lik, prior="normal", name=name, freeze=freeze)


def run(kind, epochs, checkpoint=None, resume=False):
    kw = dict(batch_size=8, lr=0.02, progress=False, seed=3)
    if kind == "pyro":
        kw["optim"] = pyro.optim.Adam({"lr": 0.02})
    pyro.clear_param_store()
    model, guide = pair("legacy", freeze=kind == "frozen")
    h = fit(model, guide, data(), epochs=epochs, checkpoint=checkpoint, resume=resume, **kw)
    return model, guide, h


def main():
    expected = {}
    for kind in ("fused", "pyro", "frozen"):
        full = run(kind, 3)
        run(kind, 2, checkpoint=HERE / f"{kind}.json")
        expected[kind] = full[2].losses
        if kind == "fused":
            model, guide, _ = full
            save(HERE / "saved.safetensors", model, guide)
            expected["medians"] = {k: v.tolist() for k, v in guide.median().items()}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
