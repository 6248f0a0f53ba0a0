import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrobayes import Categorical, EarlyStopping, Gaussian, fit, to_bayesian
from pyrobayes.infer import load_fit_checkpoint
from pyrobayes.likelihoods import data_size


def regression(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=g)
    return x, y


def new_model(name=None, likelihood=None, **kw):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    lik = likelihood or Gaussian(0.1)
    return to_bayesian(net, delta=0.1, likelihood=lik, prior="normal", name=name, **kw)


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
    with data_size(40):
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
    from pyrobayes.infer.steppers import ScaleLatents as _ScaleLatents

    x, y = regression(8)
    model, _ = new_model()
    with _ScaleLatents(0.25):
        tr = pyro.poutine.trace(model).get_trace(x, y=y)
    assert tr.nodes["obs"]["scale"] == 1.0
    assert tr.nodes[f"{model._pyro_name}.net.0.weight"]["scale"] == 0.25
    h = fit(*new_model(), (x, y), epochs=2, kl_weight=lambda e, n: (e + 1) / n, progress=False)
    assert [r["kl_weight"] for r in h] == [0.5, 1.0]


@pytest.mark.parametrize("noise_prior", [False, True])
def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, noise_prior):
    """Also with a latent noise site: its guide parameters are optimised next to the fused
    stepper's flat tensors, and the saved per-site optimiser state must map back."""
    x, y = regression()
    kw = {"likelihood": Gaussian(noise_prior=dist.LogNormal(-2.0, 0.5))} if noise_prior else {}
    m_full, g_full = new_model(name="full", **kw)
    full = fit(m_full, g_full, (x, y), epochs=4, batch_size=16, lr=0.02, progress=False, seed=3)

    pyro.clear_param_store()
    ckpt = tmp_path / "fit.json"
    m1, g1 = new_model(name="part", **kw)
    fit(m1, g1, (x, y), epochs=2, batch_size=16, lr=0.02, progress=False, seed=3, checkpoint=ckpt)
    assert load_fit_checkpoint(ckpt)["epoch"] == 2
    pyro.clear_param_store()
    m2, g2 = new_model(name="part", **kw)  # a fresh process would rebuild the same objects
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
    torch.save({"weights": torch.zeros(2)}, bad)  # a pickle is never unpickled
    with pytest.raises(ValueError, match="not a readable pyrobayes fit checkpoint"):
        load_fit_checkpoint(bad)
    (tmp_path / "other.json").write_text('{"weights": [1, 2]}')
    with pytest.raises(ValueError, match="not a pyrobayes fit checkpoint"):
        load_fit_checkpoint(tmp_path / "other.json")


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


# --- the data size lives only inside the fit loop -------------------------------------


def test_fit_leaves_no_data_size_on_the_model():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g)
    y = x[:, 0] + 0.1 * torch.randn(100, generator=g)
    model, guide = new_model()
    fit(model, guide, (x, y), epochs=2, batch_size=10, lr=0.01, progress=False)
    assert model.likelihood.dataset_size is None
    # a plain Pyro user traces the model on half the data: the unscaled log-likelihood
    model.eval()
    gtr = pyro.poutine.trace(guide).get_trace(x[:50], y=y[:50])
    tr = pyro.poutine.trace(pyro.poutine.replay(model, trace=gtr)).get_trace(x[:50], y=y[:50])
    obs = tr.nodes["obs"]
    assert obs["scale"] == 1.0
    unscaled = obs["fn"].log_prob(obs["value"]).sum()
    tr.compute_log_prob()
    assert torch.allclose(obs["log_prob_sum"], unscaled)
    # Predictive on more points than N used to raise (plate larger than dataset_size)
    xq = torch.randn(150, 2)
    pred = pyro.infer.Predictive(model, guide=guide, num_samples=3)(xq)
    assert pred["obs"].shape == (3, 150)


def test_explicit_dataset_size_is_the_users_and_fit_keeps_it():
    x, y = regression(40)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    model, guide = to_bayesian(net, likelihood=Gaussian(0.1, dataset_size=400), prior="normal")
    fit(model, guide, (x, y), epochs=1, batch_size=20, progress=False)
    assert model.likelihood.dataset_size == 400
    tr = pyro.poutine.trace(model).get_trace(x[:10], y=y[:10])
    assert tr.nodes["obs"]["scale"] == pytest.approx(40.0)


# --- bad batches from a DataLoader --------------------------------------------------


def _guide_state(guide):
    return {k: v.clone() for k, v in guide.state_dict().items()}


@pytest.mark.parametrize("where", ["input 0", "targets"])
def test_nan_in_a_loader_batch_is_refused_before_the_step(where):
    x, y = regression(40)
    x, y = x.clone(), y.clone()
    if where == "input 0":
        x[25, 1] = float("nan")  # batch 2 of size 10
    else:
        y[25] = float("inf")
    model, guide = new_model()
    guide.setup(x[:10], y=y[:10])
    # the spy snapshots the guide when batch 2 is assembled (after batch 1's step); the
    # failing batch must leave it exactly so
    calls = []

    class Spy(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            if i == 20:  # first point of batch 2: snapshot the guide after batch 1's step
                calls.append(_guide_state(guide))
            return x[i], y[i]

    loader = torch.utils.data.DataLoader(Spy(), batch_size=10)
    with pytest.raises(ValueError, match=rf"epoch 0, batch 2: {where} contains 1 NaN/inf"):
        fit(model, guide, loader, epochs=1, progress=False)
    after = _guide_state(guide)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert all(torch.equal(after[k], calls[0][k]) for k in after)


def test_nan_in_a_dict_batch_names_the_key():
    x, y = regression(16)
    x = x.clone()
    x[3, 0] = float("nan")
    model, guide = new_model()

    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"input": x[i], "labels": y[i]}

    loader = torch.utils.data.DataLoader(DictData(), batch_size=8)
    with pytest.raises(ValueError, match=r"epoch 0, batch 0: input 'input' contains 1"):
        fit(model, guide, loader, epochs=1, progress=False)


@pytest.mark.parametrize("pyro_optim", [False, True])
def test_non_finite_loss_keeps_the_last_finite_state(pyro_optim):
    """Finite but huge targets overflow the likelihood at step 1: the error leaves guide
    and model exactly as they were after step 0."""
    x, y = regression(20)
    y = y.clone()
    y[10:] = 1e30  # batch 1: (y - f(x))^2 overflows float32 in the likelihood
    model, guide = new_model()
    snaps = []

    class Spy(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            if i == 10:  # batch 1 is assembled after step 0's update
                snaps.append((_guide_state(guide), _guide_state(model)))
            return x[i], y[i]

    loader = torch.utils.data.DataLoader(Spy(), batch_size=10)
    optim = pyro.optim.Adam({"lr": 0.05}) if pyro_optim else None
    with pytest.raises(FloatingPointError, match=r"epoch 0, step 1: .*last finite state"):
        fit(model, guide, loader, epochs=1, lr=0.05, optim=optim, progress=False)
    for module, snap in zip((guide, model), snaps[0]):
        state = module.state_dict()
        assert state.keys() == snap.keys()
        assert all(torch.equal(state[k], snap[k]) for k in snap)


def test_loader_without_batches_is_a_clear_error():
    x, y = regression(5)
    model, guide = new_model()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=10, drop_last=True
    )
    with pytest.raises(ValueError, match="yielded no batches"):
        fit(model, guide, loader, epochs=1, progress=False)


# --- checkpoints: safetensors + JSON ------------------------------------------------


def test_checkpoint_is_json_plus_safetensors_and_never_pickled(tmp_path):
    import json

    from safetensors.torch import load_file

    from pyrobayes.infer.fit_checkpoint import tensor_path

    x, y = regression()
    ckpt = tmp_path / "fit.json"
    fit(*new_model(), (x, y), epochs=2, batch_size=16, progress=False, checkpoint=ckpt)
    meta = json.loads(ckpt.read_text())
    assert meta["format"] == "pyrobayes-fit-checkpoint" and meta["version"] == 2
    tensors = load_file(str(tensor_path(ckpt)))
    assert any(k.startswith("/guide/") for k in tensors)
    assert not list(tmp_path.glob("*.tmp"))
    state = load_fit_checkpoint(ckpt)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    # a tensor file from another save (crash between the two renames) is detected
    other = tmp_path / "other.json"
    fit(*new_model(), (x, y), epochs=1, batch_size=16, progress=False, checkpoint=other)
    tensor_path(other).replace(tensor_path(ckpt))
    with pytest.raises(ValueError, match="different saves"):
        load_fit_checkpoint(ckpt)


def test_resume_maps_another_auto_generated_name(tmp_path):
    x, y = regression()
    full = fit(*new_model(name="bnn7"), (x, y), epochs=4, batch_size=16, lr=0.02,
               progress=False, seed=3)  # fmt: skip
    pyro.clear_param_store()
    ckpt = tmp_path / "fit.json"
    kw = dict(batch_size=16, lr=0.02, progress=False, seed=3, checkpoint=ckpt)
    fit(*new_model(name="bnn3"), (x, y), epochs=2, **kw)
    pyro.clear_param_store()
    resumed = fit(*new_model(name="bnn7"), (x, y), epochs=4, resume=True, **kw)
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)


def test_resume_into_a_different_model_names_the_mismatch(tmp_path):
    x, y = regression()
    ckpt = tmp_path / "fit.json"
    fit(*new_model(name="a"), (x, y), epochs=1, progress=False, checkpoint=ckpt)
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    model, guide = to_bayesian(net, likelihood=Gaussian(0.1), prior="normal", name="a")
    with pytest.raises(ValueError, match=r"does not match(.|\n)*wrong shape: .*net\.0\.weight"):
        fit(model, guide, (x, y), epochs=2, progress=False, checkpoint=ckpt, resume=True)
    pyro.clear_param_store()
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    model, guide = to_bayesian(net, likelihood=Gaussian(0.1), prior="normal", name="a")
    with pytest.raises(ValueError, match=r"missing from the checkpoint: .*net\.4\.bias"):
        fit(model, guide, (x, y), epochs=2, progress=False, checkpoint=ckpt, resume=True)


# --- learning-rate schedules ------------------------------------------------------------


def test_lr_schedules_and_their_errors():
    x, y = regression(40)
    h = fit(*new_model(), (x, y), epochs=4, batch_size=10, lr_schedule="cosine", progress=False)
    # factor at the last step of each epoch: t = 3, 7, 11, 15 of T = 16
    expected = [0.5 * (1 + math.cos(math.pi * t / 16)) for t in (3, 7, 11, 15)]
    assert [r["lr_factor"] for r in h] == pytest.approx(expected)
    h = fit(*new_model(), (x, y), epochs=4, batch_size=10, lr_schedule="step",
            lr_schedule_options={"step_size": 2, "gamma": 0.5}, progress=False)  # fmt: skip
    assert [r["lr_factor"] for r in h] == [1.0, 1.0, 0.5, 0.5]
    h = fit(*new_model(), (x, y), epochs=2, batch_size=10, progress=False,
            lr_schedule=lambda t, total: 1 - t / total)  # fmt: skip
    assert [r["lr_factor"] for r in h] == pytest.approx([1 - 3 / 8, 1 - 7 / 8])
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'; valid: constant, cosine"):
        fit(*new_model(), (x, y), epochs=1, lr_schedule="linear", progress=False)
    with pytest.raises(ValueError, match="lr_schedule needs a torch optimiser"):
        fit(*new_model(), (x, y), epochs=1, lr_schedule="cosine",
            optim=pyro.optim.Adam({"lr": 0.01}), progress=False)  # fmt: skip


def test_lr_schedule_really_scales_the_update():
    """With a factor 0 schedule nothing moves; the torch path applies the factor."""
    x, y = regression(20)
    model, guide = new_model()
    guide.setup(x, y=y)
    before = _guide_state(guide)
    fit(model, guide, (x, y), epochs=2, lr=0.1, lr_schedule=lambda t, n: 0.0, progress=False)
    after = _guide_state(guide)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pyro_lr_scheduler_is_stepped_per_epoch():
    x, y = regression(20)
    sched = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1},
                                      "gamma": 0.5})  # fmt: skip
    fit(*new_model(), (x, y), epochs=3, optim=sched, progress=False)
    lrs = [o.optimizer.param_groups[0]["lr"] for o in sched.optim_objs.values()]
    assert lrs and all(lr == pytest.approx(0.1 * 0.5**3) for lr in lrs)


def test_minibatch_cosine_fit_recovers_the_exact_meanfield_optimum():
    """Bayesian linear regression, prior N(0, s^2 I), known noise sigma: the posterior is
    N(mu, Lambda^-1) with Lambda = Phi^T Phi / sigma^2 + I / s^2, mu = Lambda^-1 Phi^T y /
    sigma^2, and the mean-field Normal optimum has means mu and variances 1/diag(Lambda).
    One fit, minibatches of 10 out of 60 (plate scaling N/B = 6), cosine schedule to 0."""
    sigma, s_prior, n = 0.3, 1.0, 60
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = 0.8 * x[:, 0] - 0.4 * x[:, 1] + 0.3 + sigma * torch.randn(n, generator=g).double()
    phi = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    lam = phi.T @ phi / sigma**2 + torch.eye(3, dtype=x.dtype) / s_prior**2
    mu = torch.linalg.solve(lam, phi.T @ y / sigma**2)
    mf_std = lam.diagonal().rsqrt()  # ~0.04

    torch.manual_seed(0)
    model, guide = to_bayesian(
        nn.Linear(2, 1).double(),
        delta=0.1,
        prior="normal",
        prior_kwargs={"scale": s_prior},
        likelihood=Gaussian(sigma),
        name="blr_cos",
    )
    fit(model, guide, (x, y), epochs=1200, batch_size=10, lr=0.03, lr_schedule="cosine",
        progress=False, seed=0)  # fmt: skip
    loc_w, scale_w = guide.loc_and_scale("blr_cos.net.weight")
    loc_b, scale_b = guide.loc_and_scale("blr_cos.net.bias")
    loc = torch.cat([loc_w.flatten(), loc_b]).detach()
    scale = torch.cat([scale_w.flatten(), scale_b]).detach()
    # The schedule anneals the step to 0, so the end point sits at the optimum up to the
    # gradient noise of the last steps (measured: means 0.06 std off, stds 3.5% off; the
    # same fit at a constant lr ends 0.66 std and 29% off). A wrong N/B scaling would
    # shrink the stds by sqrt(6), far outside 10%.
    assert torch.allclose(loc, mu, atol=0.1 * float(mf_std.min()))
    assert torch.allclose(scale, mf_std, rtol=0.1)


def test_fit_config_and_keywords():
    from pyrobayes.infer import FitConfig

    x, y = regression(20)
    cfg = FitConfig(epochs=3, batch_size=10, lr=0.02, progress=False)
    assert len(fit(*new_model(), (x, y), cfg)) == 3
    assert len(fit(*new_model(), (x, y), cfg, epochs=2)) == 2  # keywords override
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['epoch'\]"):
        fit(*new_model(), (x, y), epoch=2)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        FitConfig(epochs=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 5


@pytest.mark.parametrize(
    "n, shuffle, seed", [(50, True, 3), (48, True, 0), (50, False, 1), (50, True, None)]
)
def test_tensor_batches_follow_the_dataloader_order_and_random_draws(n, shuffle, seed):
    """``fit`` batches in-memory tensors by indexing instead of a ``DataLoader``: over
    several passes the batches, the loader generator's state and (for ``seed=None``) the
    global RNG state are exactly those of ``DataLoader(TensorDataset(...))``."""
    from torch.utils.data import DataLoader, TensorDataset

    from pyrobayes.infer.fit_data import make_loader as _make_loader

    x, y = torch.randn(n, 3), torch.arange(n)
    ours = _make_loader((x, y), 16, shuffle, seed)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ref = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle, generator=gen)
    assert len(ours) == len(ref) == -(-n // 16)
    torch.manual_seed(7)
    got = [[b[1].clone() for b in ours] for _ in range(3)]
    state = torch.get_rng_state()
    torch.manual_seed(7)
    want = [[b[1] for b in ref] for _ in range(3)]
    assert all(torch.equal(a, b) for ga, wa in zip(got, want) for a, b in zip(ga, wa))
    assert [len(g) for g in got] == [len(w) for w in want]
    assert torch.equal(state, torch.get_rng_state())
    if seed is not None:
        assert torch.equal(ours.generator.get_state(), ref.generator.get_state())
    if shuffle:
        assert not torch.equal(torch.cat(got[0]), torch.arange(n))  # it did shuffle
