import math

import pyro
import pytest
import torch
from torch import nn

from pyrobayes import Categorical, EarlyStopping, Gaussian, fit, to_bayesian
from pyrobayes.infer import load_fit_checkpoint


def regression(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=g)
    return x, y


def new_model(name=None, **kw):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    return to_bayesian(net, delta=0.1, likelihood=Gaussian(0.1), prior="normal", name=name, **kw)


def test_history_and_loss_decreases():
    x, y = regression()
    model, guide = new_model()
    h = fit(model, guide, (x, y), epochs=30, batch_size=20, lr=0.02, progress=False)
    assert len(h) == 30 and [r["epoch"] for r in h] == list(range(1, 31))
    assert h.losses[-1] < h.losses[0]
    assert all(r["seconds"] > 0 for r in h)


def test_minibatch_plate_scales_likelihood_by_n_over_b():
    x, y = regression(40)
    model, guide = new_model()
    model.likelihood.dataset_size = 40
    tr = pyro.poutine.trace(model).get_trace(x[:10], y=y[:10])
    assert tr.nodes["obs"]["scale"] == pytest.approx(4.0)
    # latent (weight) sites are not scaled: the KL is counted once per step
    latent = [
        s
        for n, s in tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and n != "data"
    ]
    assert latent and all(s["scale"] == 1.0 for s in latent)


def test_kl_weight_scales_latent_sites_only():
    from pyrobayes.infer.fit import _ScaleLatents

    x, y = regression(8)
    model, _ = new_model()
    with _ScaleLatents(0.25):
        tr = pyro.poutine.trace(model).get_trace(x, y=y)
    assert tr.nodes["obs"]["scale"] == 1.0
    assert tr.nodes[f"{model._pyro_name}.net.0.weight"]["scale"] == 0.25
    h = fit(*new_model(), (x, y), epochs=2, kl_weight=lambda e, n: (e + 1) / n, progress=False)
    assert [r["kl_weight"] for r in h] == [0.5, 1.0]


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    x, y = regression()
    m_full, g_full = new_model(name="full")
    full = fit(m_full, g_full, (x, y), epochs=4, batch_size=16, lr=0.02, progress=False, seed=3)

    pyro.clear_param_store()
    ckpt = tmp_path / "fit.pt"
    m1, g1 = new_model(name="part")
    fit(m1, g1, (x, y), epochs=2, batch_size=16, lr=0.02, progress=False, seed=3, checkpoint=ckpt)
    assert load_fit_checkpoint(ckpt)["epoch"] == 2
    pyro.clear_param_store()
    m2, g2 = new_model(name="part")  # a fresh process would rebuild the same objects
    resumed = fit(
        m2,
        g2,
        (x, y),
        epochs=4,
        batch_size=16,
        lr=0.02,
        progress=False,
        seed=3,
        checkpoint=ckpt,
        resume=True,
    )
    assert len(resumed) == 4
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)


def test_foreign_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a pyrobayes fit checkpoint"):
        load_fit_checkpoint(bad)
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        load_fit_checkpoint(tmp_path / "junk.pt")


def test_early_stopping_stops():
    x, y = regression()
    model, guide = new_model()
    stopper = EarlyStopping(patience=1, min_delta=1e9)  # nothing ever improves by 1e9
    h = fit(model, guide, (x, y), epochs=10, callbacks=[stopper], progress=False)
    assert h.stopped_early and len(h) == 2


def test_nan_loss_names_step_and_site():
    x, y = regression()
    model, guide = new_model()
    guide.setup(x, y=y)
    with torch.no_grad():
        next(iter(guide.parameters())).fill_(float("nan"))
    with pytest.raises(
        FloatingPointError, match=r"epoch 0, step 0: first non-finite .*(locs|site)"
    ):
        fit(model, guide, (x, y), epochs=1, progress=False)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda x, y: (x.clone().index_fill_(0, torch.tensor([3]), float("nan")), y),
            "input 0 contains 2 NaN",
        ),
        (
            lambda x, y: (x, y.clone().index_fill_(0, torch.tensor([0, 1]), float("inf"))),
            "targets contains 2 NaN/inf",
        ),
        (lambda x, y: (x, y[:-1]), "different lengths"),
        (lambda x, y: (x[:0], y[:0]), "empty"),
    ],
)
def test_bad_data_raises_clear_errors(make, match):
    x, y = regression()
    model, guide = new_model()
    with pytest.raises(ValueError, match=match):
        fit(model, guide, make(x, y), epochs=1, progress=False)


def test_labels_out_of_range_and_unknown_loss():
    x = torch.randn(10, 2)
    net = nn.Linear(2, 3)
    model, guide = to_bayesian(net, likelihood=Categorical())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        fit(model, guide, (x, torch.full((10,), 3)), epochs=1, progress=False)
    with pytest.raises(ValueError, match="unknown loss 'renyi'"):
        fit(model, guide, (x, torch.zeros(10, dtype=torch.long)), loss="renyi", progress=False)


def test_meanfield_loss_and_dataloader_of_dicts():
    x, y = regression(24)
    model, guide = new_model()

    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 24

        def __getitem__(self, i):
            return {"input": x[i], "labels": y[i]}

    # dict batches feed keyword inputs; the net here takes `input` as its first argument
    loader = torch.utils.data.DataLoader(DictData(), batch_size=8)
    h = fit(model, guide, loader, epochs=2, loss="meanfield", num_particles=2, progress=False)
    assert len(h) == 2 and all(math.isfinite(v) for v in h.losses)
